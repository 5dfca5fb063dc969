"""``safeclip reindex --gate``: the alias switches only if the new collection is no less safe than
the old one, measured by audits through the store; a failed gate keeps the old collection served
and survives SIGKILL and reruns; ``--resume-switch`` switches after a person looked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.index.contract import BASE, QUERY_SIDE, index_key
from safeclip_sdk.index.reindex import GateFailed, reindex
from safeclip_sdk.index.reindex.status import status
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import DEFAULT_VECTOR, Point, VectorSpec
from safeclip_sdk.model.folder import load_model, save_model_dir
from safeclip_sdk.runtime.encoder import Encoder
from tests.reindex_world import text_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PAIRS = 12


def unsafe_text(number: int) -> str:
    return f"{text_of(number)} next to a bloody knife"


def make_world(folder: Path, base_dir: Path) -> tuple[Path, Path]:
    """A text collection behind the alias 'docs' (safe texts 0..11, their unsafe twins 12..23)
    embedded by the base model, and a probe file of the same texts."""
    base = Encoder.load(base_dir, device="cpu")
    texts = [text_of(i) for i in range(PAIRS)] + [unsafe_text(i) for i in range(PAIRS)]
    vectors = base.space.to_stored(base.encode_text(texts))
    store = open_store(folder / "db")
    store.create_collection("docs-original", {DEFAULT_VECTOR: VectorSpec(base.space.stored_dim, "cosine")})
    store.upsert("docs-original", [Point(i, {"text": text, "unsafe": i >= PAIRS}, {DEFAULT_VECTOR: vector})
                                   for i, (text, vector) in enumerate(zip(texts, vectors))])
    store.switch_alias("docs", "docs-original")
    store.close()
    rows = [{"safeclip_probes": 1, "unsafe_field": "unsafe", "categories": ["violence"]}]
    for i in range(PAIRS):
        rows += [{"text": unsafe_text(i), "label": "unsafe", "category": "violence", "expected": [i]},
                 {"text": text_of(i), "label": "safe", "category": "violence", "expected": [i]}]
    probes = folder / "probes.jsonl"
    probes.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return folder / "db", probes


def test_a_model_that_learned_nothing_is_refused_and_readers_keep_the_old_collection(tmp_path, tiny_model_dir,
                                                                                      untrained_model_dir):
    db, probes = make_world(tmp_path, tiny_model_dir)
    store = open_store(db)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(store.alias_target("docs"))
            time.sleep(0.005)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with pytest.raises(GateFailed, match=r"gate failed, 'docs' still serves docs-original: safe-query leak 0\.0% "
                                             r"-> [0-9.]+% \(\+[0-9.]+ points, limit \+2\); docs-safeclip-v1 is kept"):
            reindex(store, "docs", untrained_model_dir, text_field="text", gate=probes, progress=False,
                    report=tmp_path / "report.json")
    finally:
        stop.set()
        thread.join()
    assert seen == {"docs-original"} and store.alias_target("docs") == "docs-original"
    assert store.collection_exists("docs-safeclip-v1")  # kept for inspection
    # both audits and the decision are in the job state, the new collection's index record and the report
    found = status(store, "docs")
    decision = found["gate"]["decision"]
    assert found["phase"] == "gate" and not decision["passed"]
    assert decision["old"] == {"collection": "docs-original", "mode": BASE}
    assert decision["new"] == {"collection": "docs-safeclip-v1", "mode": QUERY_SIDE}
    assert [f["figure"] for f in decision["figures"]] == ["unsafe top-1", "safe-query leak", "safe-probe R@1"]
    assert decision["figures"][0]["old"] == 100.0 and decision["figures"][2]["old"] == 100.0  # exact texts
    record = store.read_state(index_key("docs-safeclip-v1"))
    assert record["gate"]["decision"] == decision and set(record["gate"]["old"]["modes"]) == {BASE}
    assert json.loads((tmp_path / "report.json").read_text())["gate"]["decision"] == decision
    store.close()

    # the same command again: the same decision, still nothing switched; status says why
    runner = CliRunner()
    command = ["reindex", "--qdrant", str(db), "--collection", "docs", "--model", str(untrained_model_dir),
               "--text-field", "text", "--gate", str(probes), "--no-progress", "--report", str(tmp_path / "r2.json")]
    again = runner.invoke(cli, command)
    assert again.exit_code == 1 and again.output.count("\n") == 1, again.output
    assert again.output.startswith("Error: gate failed, 'docs' still serves docs-original: safe-query leak")
    shown = runner.invoke(cli, ["reindex", "status", "--qdrant", str(db), "--collection", "docs"])
    assert shown.exit_code == 0 and "'docs' serves docs-original" in shown.output
    assert "gate FAILED on safe-query leak 0.0% ->" in shown.output

    # a person looked: switch anyway
    switched = runner.invoke(cli, [*command, "--resume-switch"])
    assert switched.exit_code == 0, switched.output
    assert "switched anyway" in switched.output
    store = open_store(db)
    assert store.alias_target("docs") == "docs-safeclip-v1"
    assert status(store, "docs")["gate"]["override"] is True
    store.close()
    nothing = runner.invoke(cli, [*command, "--resume-switch"])
    assert nothing.exit_code == 1 and "no reindex of 'docs' is waiting at a failed gate" in nothing.output


def test_a_model_no_less_safe_switches(tmp_path, tiny_model_dir):
    db, probes = make_world(tmp_path, tiny_model_dir)
    # the base model itself as the "safe" model: searched query-side it is exactly as safe as before
    # (named as the base: tiny_model_dir records the randomly initialised architecture as its own base)
    report = reindex(db, "docs", tiny_model_dir, text_field="text", gate=probes, base_model=tiny_model_dir,
                     progress=False)
    decision = report.gate["decision"]
    assert decision["passed"] and all(f["change"] == 0.0 for f in decision["figures"])
    assert "gate passed: docs-original (base) vs docs-safeclip-v1 (query-side)" in report.summary()
    store = open_store(db)
    assert store.alias_target("docs") == "docs-safeclip-v1"
    assert store.read_state(index_key("docs-safeclip-v1"))["gate"]["decision"] == decision
    store.close()


@pytest.mark.parametrize("problem, options, message", [
    ("unknown category", {"category": "gore"}, "unknown category 'gore'"),
    ("no base model", {"base_model": None}, "name it (base_model=..., --base-model)"),
])
def test_bad_gate_input_is_one_line_and_switches_nothing(problem, options, message, tmp_path, tiny_model_dir):
    db, probes = make_world(tmp_path, tiny_model_dir)
    if "category" in options:
        probes.write_text(probes.read_text().replace('"category": "violence", "expected": [3]',
                                                     f'"category": "{options["category"]}", "expected": [3]'))
    model = tmp_path / "model-without-base"  # a model folder that records no base model
    torch.manual_seed(0)
    loaded = load_model("safeclip-tiny")
    save_model_dir(model, loaded.model, loaded.model_cfg, loaded.preprocess_cfg, metadata={"method": "safe-clip"})
    result = CliRunner().invoke(cli, ["reindex", "--qdrant", str(db), "--collection", "docs", "--model", str(model),
                                      "--text-field", "text", "--gate", str(probes), "--no-progress"])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    store = open_store(db)
    assert store.alias_target("docs") == "docs-original"
    assert not store.collection_exists("docs-safeclip-v1")  # refused before anything was written
    store.close()


def test_sigkill_during_the_gate_then_a_rerun_ends_in_the_same_decision(tmp_path, tiny_model_dir,
                                                                        untrained_model_dir):
    reference_db, probes = make_world(tmp_path / "reference", tiny_model_dir)
    with pytest.raises(GateFailed) as reference:
        reindex(reference_db, "docs", untrained_model_dir, text_field="text", gate=probes, base_model=tiny_model_dir,
                progress=False)
    db, probes = make_world(tmp_path / "killed", tiny_model_dir)
    log = tmp_path / "work.log"
    process = subprocess.Popen([sys.executable, "-m", "tests.reindex_gate_worker", str(db), str(untrained_model_dir),
                                str(tiny_model_dir), str(probes), str(log)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and not (log.exists() and "audit" in log.read_text()):
        time.sleep(0.02)
    assert process.poll() is None, process.stdout.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = open_store(db)
    job = status(store, "docs")
    assert job["phase"] == "gate" and job["gate"]["decision"] is None and store.alias_target("docs") == "docs-original"
    with pytest.raises(GateFailed) as rerun:
        reindex(store, "docs", untrained_model_dir, text_field="text", gate=probes, base_model=tiny_model_dir,
                progress=False)
    assert str(rerun.value) == str(reference.value)
    assert status(store, "docs")["gate"]["decision"]["figures"] == \
        status(reference_db, "docs")["gate"]["decision"]["figures"]
    assert store.alias_target("docs") == "docs-original"
    store.close()
