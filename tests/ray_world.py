"""One local Ray (two CPUs) for the Ray engine tests, started once per session and shut down at its end."""

from __future__ import annotations

import pytest

from tests.services import require_module


@pytest.fixture(scope="session")
def local_ray():
    """The address of a local Ray with two CPUs and no GPU."""
    ray = require_module("ray", "ray is not installed (pip install 'safeclip[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
