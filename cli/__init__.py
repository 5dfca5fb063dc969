"""The ``safeclip`` command line (installed as ``safeclip_sdk.cli``)."""
