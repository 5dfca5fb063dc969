"""``python -m safeclip_sdk`` runs the CLI (also what torchrun launches: ``torchrun -m safeclip_sdk train``)."""

from safeclip_sdk.cli.main import cli

cli()
