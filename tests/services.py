"""Real services the tests start themselves (PostgreSQL, Ray): skipped on a developer's machine
that lacks them, but a failure on CI, where `.ci/run` installs everything, so that a service that
silently stopped starting cannot turn its tests into skips."""

from __future__ import annotations

import importlib
import os

import pytest


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required on CI)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(reason)
