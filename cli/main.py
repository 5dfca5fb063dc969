"""The ``safeclip`` console script: each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import importlib
import logging

import click

from safeclip_sdk import __version__
from safeclip_sdk.errors import SafeclipError

# subcommand name -> module under safeclip_sdk.cli holding a click command called `command`
SUBCOMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "export": "export",
    "embed": "embed",
    "demo": "demo",
    "reindex": "reindex",
    "search": "search",
    "audit": "audit",
    "classify": "classify",
    "serve": "serve",
}


class SafeclipGroup(click.Group):
    """Loads subcommands on demand and turns SafeclipError into a one-line message."""

    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        return importlib.import_module(f"safeclip_sdk.cli.{SUBCOMMANDS[name]}").command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SafeclipError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=SafeclipGroup)
@click.version_option(__version__, prog_name="safeclip")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Make CLIP embedding spaces safe: train, evaluate, export, embed, reindex a vector database, search,
    audit, classify and serve."""
    # other libraries (open_clip logs every load at INFO) stay at WARNING unless --verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("safeclip_sdk").setLevel(logging.DEBUG if verbose else logging.INFO)


if __name__ == "__main__":
    cli()
