"""Errors that reach users as one clear line (the CLI prints them without a traceback)."""


class SafeclipError(Exception):
    """A problem with the user's input or environment, described in one line."""


class DataError(SafeclipError):
    """A dataset row or file that cannot be used; the message names the file and line."""


class ModelLoadError(SafeclipError):
    """A base model or model folder that cannot be loaded."""


class ExportError(SafeclipError):
    """An export that failed or did not pass its parity check."""
