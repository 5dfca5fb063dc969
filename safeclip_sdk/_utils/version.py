"""The package version, recorded in model folders and export manifests."""

__version__ = "0.1.0"
