"""Shared fixtures: tiny real open_clip models, built without any download."""

from __future__ import annotations

import pytest
import torch

from safeclip_sdk.model.folder import load_model


@pytest.fixture
def tiny_model():
    """A freshly initialised `safeclip-tiny` open_clip CLIP (3.4M parameters), seeded."""
    torch.manual_seed(0)
    return load_model("safeclip-tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved `safeclip-tiny` model folder (open_clip local-dir layout), shared by the session."""
    from safeclip_sdk.model.folder import save_model_dir

    torch.manual_seed(0)
    loaded = load_model("safeclip-tiny")
    out = tmp_path_factory.mktemp("tiny_model")
    save_model_dir(out, loaded.model, loaded.model_cfg, loaded.preprocess_cfg,
                   metadata={"method": "base", "base_model": "safeclip-tiny"})
    return out


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory, tiny_model_dir):
    """A model that learned nothing: another random `safeclip-tiny` folder naming `tiny_model_dir`
    as its base (a safe model whose deployments, audits and gates can be measured)."""
    from safeclip_sdk.model.folder import save_model_dir

    torch.manual_seed(1)
    loaded = load_model("safeclip-tiny")
    out = tmp_path_factory.mktemp("untrained")
    save_model_dir(out, loaded.model, loaded.model_cfg, loaded.preprocess_cfg,
                   metadata={"method": "safe-clip", "base_model": {"source": str(tiny_model_dir), "pretrained": None}})
    return out


from tests.conftest_pg import pg_dsn, pg_server  # noqa: E402,F401 - the PostgreSQL fixtures

# `service`: the test starts PostgreSQL or Ray; `slow`: its fixtures train or export a model first
SERVICE_FIXTURES = {"pg_server", "pg_dsn", "local_ray"}
SLOW_FIXTURES = {"hysac_world", "hysac_onnx", "onnx_export", "fp32_export"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if fixtures & SERVICE_FIXTURES or (callspec is not None and "pgvector" in callspec.id):
            item.add_marker(pytest.mark.service)
        if fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def hysac_world(tmp_path_factory):
    """A calibrated HySAC `safeclip-tiny` model folder, its test data and pictures (tests/hysac_world.py)."""
    from hysac_world import build_world

    return build_world(tmp_path_factory.mktemp("hysac_world"))


@pytest.fixture(scope="session")
def hysac_onnx(hysac_world, tmp_path_factory):
    """The fp32 ONNX export of the HySAC world's model folder."""
    from safeclip_sdk.export import export_onnx

    out = tmp_path_factory.mktemp("hysac_onnx")
    export_onnx(hysac_world["folder"], out)
    return out
