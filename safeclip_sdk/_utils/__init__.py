"""Helpers every stage may use: atomic file writes and hashing, devices, import shims, plots."""
