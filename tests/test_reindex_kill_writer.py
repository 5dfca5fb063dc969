"""A follow-up reindex (v1 -> v2) killed with SIGKILL at random moments while the application writes
every point through ``complete_point``: no write is ever refused, and v2 ends with the writer's state.

The reindex runs in a subprocess (tests/reindex_worker.py) so it can be killed, and the writer is a
thread of the test process, so the store must be shared between processes: PostgreSQL with
pgvector (the real server of tests/conftest_pg.py). The first run passes ``--new-version`` (the
alias already serves v1, built by this model with these settings); the reruns that finish the
killed job do not, as a retry must not start a third version when a kill lands after the job is done.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.index.reindex import reindex
from tests.reindex_world import cosine, everything, make_text_collection, without_reserved
from tests.test_reindex_live import Writer
from tests.test_reindex_resume import _log_lines

pytestmark = pytest.mark.service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir)


def test_complete_point_writer_through_a_killed_follow_up_reindex_on_pgvector(pg_dsn, tmp_path, tiny_model_dir,
                                                                              encoder):
    count, batch = 300, 16
    store = open_store(pg_dsn)
    dim = encoder.space.stored_dim
    payloads = make_text_collection(store, "docs-v0", count, dim, alias="docs", step=2)
    reindex(store, "docs", encoder=encoder, text_field="text", batch_size=batch, progress=False)
    assert store.alias_target("docs") == "docs-safeclip-v1"

    writer_store = open_store(pg_dsn)  # the application's own connection
    writer = Writer(writer_store, "docs", payloads, dim, seed=15, complete_with=encoder)
    log = tmp_path / "work.log"
    # the worker writes its report next to "db"; run it in tmp_path so that relative path stays there
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.reindex_worker", pg_dsn, str(tiny_model_dir), str(log), str(batch)]
    moments = random.Random(20261215)
    # each run is killed a random moment after it first writes, the third once the alias has switched
    # (the pass that carries late writes over is where a kill can lose them)
    schedule = [("upsert", 1.0), ("upsert", 1.0), ("final", 0.02)]
    kills, phases, outputs = 0, [], []
    writer.start()
    try:
        for attempt, (waited_for, longest) in enumerate(schedule):
            flags = ["--new-version"] if attempt == 0 else []
            process = subprocess.Popen(command + flags, cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
            seen = len(_log_lines(log))
            deadline = time.time() + 120

            def reached():
                lines = _log_lines(log)[seen:]  # what this run did: "embed 1" is its model probe
                if waited_for == "upsert":
                    return any(line.startswith("upsert") for line in lines)
                return bool(lines) and store.read_state("reindex:docs")["phase"] == waited_for

            while process.poll() is None and time.time() < deadline and not reached():
                time.sleep(0.01)
            time.sleep(moments.uniform(0.0, longest))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            outputs.append(process.communicate()[0].decode(errors="replace"))
            phases.append(store.read_state("reindex:docs")["phase"])
            if "done" in _log_lines(log)[seen:]:  # it finished before the kill
                break
        if "done" not in _log_lines(log):
            finished = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True,
                                      timeout=300)
            assert finished.returncode == 0, finished.stdout + finished.stderr
        time.sleep(0.3)  # writes after the job is done, to v2
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None, f"a write was refused: {type(writer.error).__name__}: {writer.error}"
    assert kills >= 2, f"the runs ended before they could be killed (phases {phases}): {outputs}"
    assert writer.writes > 50, "the writer should have written throughout the reindex"

    job = store.read_state("reindex:docs")
    assert job["phase"] == "done" and job["plan"]["source"] == "docs-safeclip-v1"
    assert store.alias_target("docs") == job["plan"]["target"] == "docs-safeclip-v2"
    new = everything(store, "docs")
    assert {i: without_reserved(p.payload) for i, p in new.items()} == writer.state
    assert all("safe" in p.vectors for p in new.values())
    ids = sorted(new)
    expected = encoder.encode_text([new[i].payload["text"] for i in ids])
    stale = [i for i, e in zip(ids, expected) if cosine(new[i].vectors["safe"], e) <= 0.999]
    assert not stale, f"safe vectors that are not the embedding of their text: {stale[:10]}"
    print(f"kills {kills} in phases {phases}, {writer.writes} writes, after switch {job.get('after_switch')}")
    writer_store.close()
    store.close()
