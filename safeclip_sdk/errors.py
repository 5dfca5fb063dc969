"""Errors that reach users as one clear line (the CLI prints them without a traceback)."""


class SafeclipError(Exception):
    """A problem with the user's input or environment, described in one line."""


class DataError(SafeclipError):
    """A dataset row or file that cannot be used; the message names the file and line."""


class ModelLoadError(SafeclipError):
    """A base model or model folder that cannot be loaded."""


class ExportError(SafeclipError):
    """An export that failed or did not pass its parity check."""


class ImageError(DataError):
    """An image that cannot be used; the message names the item and what is wrong."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason
