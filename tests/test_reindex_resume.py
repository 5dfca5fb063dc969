"""Resumption and faults: SIGKILL at random moments, a failing or unreachable server, no key leaks."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import StoreError
from safeclip_sdk.integrations.retry import RetryPolicy
from safeclip_sdk.index.reindex import ReindexError, reindex
from safeclip_sdk.index.reindex.engine import check_resumable
from safeclip_sdk.index.reindex.pipeline import PREFETCH
from tests.faulty_store import FaultyStore
from tests.reindex_world import everything, fast_folder, make_text_collection, without_reserved

pytestmark = pytest.mark.service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir)


def _log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def folder(tmp_path):
    with fast_folder(tmp_path) as path:
        yield path


def test_sigkill_at_random_moments_then_finish(folder, tiny_model_dir, encoder):
    count, batch = 600, 16
    db = folder / "db"
    store = open_store(db)
    payloads = make_text_collection(store, "docs-v0", count, encoder.space.stored_dim, alias="docs")
    store.close()
    log = folder / "work.log"
    command = [sys.executable, "-m", "tests.reindex_worker", str(db), str(tiny_model_dir), str(log), str(batch)]
    moments = random.Random(20261201)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen = len(_log_lines(log))
        deadline = time.time() + 120
        # once this run writes, wait a random moment more and kill it
        while process.poll() is None and time.time() < deadline and \
                not any(line.startswith("upsert") for line in _log_lines(log)[seen:]):
            time.sleep(0.02)
        time.sleep(moments.uniform(0.0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        if "done" in _log_lines(log):  # it finished before the kill
            break
    if "done" not in _log_lines(log):
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stdout + finished.stderr
    assert kills >= 2, "the runs ended before they could be killed: the test did not test resumption"

    store = open_store(db)
    target = store.alias_target("docs")
    assert target == "docs-safeclip-v1"
    new = everything(store, "docs", with_vectors=["safe"])
    assert {i: without_reserved(p.payload) for i, p in new.items()} == payloads
    assert all("safe" in p.vectors for p in new.values())
    job = store.read_state("reindex:docs")
    assert job["phase"] == "done"
    assert job["passes"][0]["missing"] == job["passes"][0]["changed"] == job["passes"][0]["extra"] == 0
    lines = _log_lines(log)
    upserted = sum(int(line.split()[1]) for line in lines if line.startswith("upsert") and line.endswith(target))
    # a kill loses at most the page written but not yet recorded
    assert count <= upserted <= count + kills * batch
    embedded = sum(int(line.split()[1]) for line in lines if line.startswith("embed") and line != "embed 1")
    runs = kills + 1
    verify_samples = 32
    assert embedded <= count + kills * (PREFETCH + 1) * batch + runs * verify_samples
    store.close()


def test_failing_server_stops_with_one_line_and_a_rerun_completes(folder, encoder):
    inner = open_store(folder / "db")
    payloads = make_text_collection(inner, "docs-v0", 200, encoder.space.stored_dim, alias="docs")
    store = FaultyStore(inner, retry=RetryPolicy(attempts=3, base_delay=0.0))
    store.fail("upsert", ConnectionError("connection refused"), after=4)  # the server goes away mid-copy

    with pytest.raises(StoreError) as failure:
        reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, progress=False)
    message = str(failure.value)
    assert "\n" not in message and inner.name in message and "upsert" in message and "after 3 attempts" in message
    job = inner.read_state("reindex:docs")
    assert job["phase"] == "copy" and job["counters"]["copied"] == 64  # four pages were in before it failed

    store.heal()
    store.fail("scroll", ConnectionError("reset by peer"), times=2)  # transient: retried, then fine
    report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, progress=False)
    assert report.resumed and report.embedded_this_run <= 200 - 64 + 16 * (PREFETCH + 1) + 32
    new = everything(inner, "docs")
    assert {i: without_reserved(p.payload) for i, p in new.items()} == payloads
    inner.close()


def test_unreachable_server_names_it_and_never_the_key(tmp_path, tiny_model_dir, monkeypatch, caplog):
    secret = "sk-test-5ecret-never-print-me"
    monkeypatch.setenv("QDRANT_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    store = open_store("http://127.0.0.1:9", retries=1, retry_base_delay=0.0, timeout=1)
    with pytest.raises(StoreError) as failure:
        reindex(store, "docs", tiny_model_dir, text_field="text", progress=False,
                report=tmp_path / "report.json")
    message = str(failure.value)
    assert "qdrant http://127.0.0.1:9" in message and "\n" not in message and secret not in message
    assert secret not in caplog.text

    result = CliRunner().invoke(cli, ["-v", "reindex", "--qdrant", "http://127.0.0.1:9", "--collection", "docs",
                                      "--model", str(tiny_model_dir), "--text-field", "text", "--no-progress",
                                      "--report", str(tmp_path / "cli-report.json")])
    assert result.exit_code == 1
    assert "http://127.0.0.1:9" in result.output and secret not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: qdrant http://127.0.0.1:9")
    for report in tmp_path.glob("*.json"):
        assert secret not in report.read_text()


def test_a_job_older_than_a_setting_resumes_while_that_setting_is_off():
    job = {"plan": {"alias": "docs"}, "phase": "copy", "settings": {"mode": "full"}, "probe": [1.0, 0.0],
           "model": "m"}
    check_resumable(job, {"mode": "full", "category_scores": False}, [1.0, 0.0])
    with pytest.raises(ReindexError, match=r"used other settings \(category_scores\)"):
        check_resumable(job, {"mode": "full", "category_scores": True}, [1.0, 0.0])
    with pytest.raises(ReindexError, match=r"used other settings \(mode\)"):
        check_resumable(job, {"mode": "side-by-side", "category_scores": False}, [1.0, 0.0])
