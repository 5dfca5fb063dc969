"""The Ray engine of safeclip reindex on a local Ray (two CPUs), the embedded Qdrant and the tiny model:
the same collection as the single-process engine, a SIGKILLed driver that resumes, a GPU request
on a CPU-only host that fails at once, and nothing of Ray imported without it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import Point
from safeclip_sdk.index.reindex import reindex
from safeclip_sdk.index.contract import ERROR_FIELD
from tests.reindex_world import everything, make_text_collection, original_vector
from tests.ray_world import local_ray  # noqa: F401 - the session's Ray

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
COUNT = 150


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, "auto")


def make_world(store, dim: int) -> None:
    """The text collection behind alias ``docs``, plus two points whose source cannot be read."""
    make_text_collection(store, "docs-original", COUNT, dim, alias="docs")
    rng = np.random.default_rng(5)
    store.upsert("docs-original", [Point(1000, {"n": 1000}, {"": original_vector(rng, dim)}),
                                   Point(1001, {"text": "", "n": 1001}, {"": original_vector(rng, dim)})])


def assert_same_collection(left: dict, right: dict) -> None:
    assert set(left) == set(right) and len(left) == COUNT + 2
    for point_id, point in left.items():
        other = right[point_id]
        assert point.payload.keys() == other.payload.keys()
        for key, value in point.payload.items():
            assert value == pytest.approx(other.payload[key], abs=1e-5)
        assert point.vectors.keys() == other.vectors.keys()
        for name, vector in point.vectors.items():
            np.testing.assert_allclose(vector, other.vectors[name], atol=1e-5)


def local_result(tmp_path, encoder) -> dict:
    store = open_store(tmp_path / "local-db")
    make_world(store, encoder.space.stored_dim)
    reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, num_ranges=4, progress=False)
    points = everything(store, "docs")
    store.close()
    return points


def test_ray_engine_writes_what_the_local_engine_writes(tmp_path, local_ray, encoder, tiny_model_dir):
    store = open_store(tmp_path / "db")
    make_world(store, encoder.space.stored_dim)
    report = reindex(store, "docs", tiny_model_dir, text_field="text", batch_size=16, num_ranges=4,
                     progress=False, engine="ray", workers=2)

    assert store.alias_target("docs") == "docs-safeclip-v1"
    assert report.embedded == COUNT and report.kept == 2 and len(report.failures) == 2
    assert report.verification["checked"] > 0 and report.passes[0]["missing"] == report.passes[0]["changed"] == 0
    ray_points = everything(store, "docs")
    assert ray_points[1000].payload[ERROR_FIELD] == "payload field 'text' is missing"
    store.close()
    assert_same_collection(ray_points, local_result(tmp_path, encoder))


def _upserts(log: Path) -> int:
    return sum("safeclip-v1" in line for line in log.read_text().splitlines()) if log.exists() else 0


def test_sigkilled_ray_reindex_resumes_with_only_the_unfinished_pages(tmp_path, local_ray, encoder,
                                                                     tiny_model_dir):
    db, log = tmp_path / "db", tmp_path / "log"
    store = open_store(db)
    make_world(store, encoder.space.stored_dim)
    store.close()
    environment = {**os.environ, "RAY_ADDRESS": local_ray, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "tests.reindex_ray_worker", str(db), str(tiny_model_dir),
                                str(log)], cwd=REPO, env=environment, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while _upserts(log) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = _upserts(log)
    assert 3 <= written < COUNT // 16  # killed in the middle of the copy

    store = open_store(db)
    job = store.read_state("reindex:docs")
    assert job["phase"] == "copy" and job["counters"]["copied"] >= 16 * (written - 1)
    report = reindex(store, "docs", tiny_model_dir, text_field="text", batch_size=16, num_ranges=4,
                     progress=False, engine="ray")
    assert report.resumed and store.alias_target("docs") == "docs-safeclip-v1"
    assert report.embedded_this_run <= COUNT + 2 - 16 * (written - 1)  # the committed pages were not redone
    resumed = everything(store, "docs")
    store.close()
    assert_same_collection(resumed, local_result(tmp_path, encoder))


def test_a_gpu_or_cpu_request_beyond_the_host_fails_at_once(tmp_path, local_ray, encoder, tiny_model_dir):
    assert ray.cluster_resources().get("GPU", 0) == 0  # this test is about a host without GPUs
    store = open_store(tmp_path / "db")
    make_world(store, encoder.space.stored_dim)
    started = time.time()
    with pytest.raises(SafeclipError, match=r"1 worker\(s\) with 1 GPU\(s\) each need 1 GPU\(s\), but .* has 0"):
        reindex(store, "docs", tiny_model_dir, text_field="text", progress=False, engine="ray", gpus_per_worker=1)
    assert time.time() - started < 10
    assert store.read_state("reindex:docs") is None and store.alias_target("docs") == "docs-original"
    store.close()

    result = CliRunner().invoke(cli, ["reindex", "--qdrant", str(tmp_path / "db"), "--collection", "docs",
                                      "--model", str(tiny_model_dir), "--text-field", "text", "--engine", "ray",
                                      "--workers", "2", "--gpus-per-worker", "1", "--no-progress"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "\n" not in message and "need 2 GPU(s)" in message and "Traceback" not in message

    result = CliRunner().invoke(cli, ["reindex", "--qdrant", str(tmp_path / "db"), "--collection", "docs",
                                      "--model", str(tiny_model_dir), "--text-field", "text", "--engine", "ray",
                                      "--workers", "2", "--cpus-per-worker", "2", "--no-progress"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "\n" not in message and "need 4 CPU(s), but the local Ray instance has 2" in message
    store = open_store(tmp_path / "db")
    assert store.read_state("reindex:docs") is None
    store.close()


def test_without_the_ray_engine_nothing_of_ray_is_imported():
    code = ("import sys, safeclip_sdk.index.reindex, safeclip_sdk.runtime.embed, safeclip_sdk.cli.main\n"
            "loaded = [name for name in sys.modules if name == 'ray' or name.startswith('ray.')]\n"
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_against_a_server_the_actors_write_and_the_result_is_the_same(tmp_path, local_ray, encoder,
                                                                      tiny_model_dir, pg_dsn):
    from safeclip_sdk.index.reindex.ray_engine import workers_write

    assert workers_write(pg_dsn) and not workers_write(str(tmp_path / "db"))
    store = open_store(pg_dsn)
    make_world(store, encoder.space.stored_dim)
    store.close()
    report = reindex(pg_dsn, "docs", tiny_model_dir, text_field="text", batch_size=16, num_ranges=4,
                     progress=False, engine="ray", workers=2)

    assert report.embedded == COUNT and report.kept == 2
    assert report.passes[0]["missing"] == report.passes[0]["changed"] == 0
    store = open_store(pg_dsn)
    job = store.read_state("reindex:docs")
    assert all(span["done"] for span in job["ranges"]) and job["counters"]["copied"] == COUNT + 2
    written = everything(store, "docs")
    store.close()
    assert_same_collection(written, local_result(tmp_path, encoder))
