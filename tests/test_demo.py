"""The README's main job, in its seconds-long --quick form: every stage runs and leaves its output."""

import json

import pytest
from click.testing import CliRunner

from safeclip_sdk import load_model
from safeclip_sdk.cli.main import cli
from safeclip_sdk.export import load_manifest

pytestmark = pytest.mark.slow


def test_quick_demo_trains_evaluates_exports_and_searches(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output

    for stage in ("world", "base CLIP pre-training", "Safe-CLIP fine-tuning", "evaluation", "ONNX export", "search",
                  "vector database", "service"):
        assert f"[{stage}] done" in result.output
    # the vector-database stage: a live reindex that lost no write, each deployment measured, a picture
    assert "live writes check: all" in result.output
    for deployment in ("base model", "safe model, query side", "safe vectors (full reindex)"):
        assert f"| {deployment} |" in result.output
    assert "recommended deployment on this measurement:" in result.output
    assert (out / "search.png").stat().st_size > 0
    # the service stage: each route answered over HTTP; the demo's Safe-CLIP model has no classifier
    for request in ("GET /healthz", "GET /readyz", "POST /v1/embeddings", "POST /v1/search", "GET /metrics"):
        assert f"| {request} | 200 |" in result.output
    assert "| POST /v1/moderations | 400 | error: model 'safe-clip-demo' has no classifier" in result.output
    assert "to keep it running: safeclip serve" in result.output
    assert json.loads((out / "safe-clip" / "model" / "safeclip.json").read_text())["base_model"]["source"] == \
        str(out / "base" / "model")
    load_model(str(out / "safe-clip" / "model"))
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["results"]) == {"base", "safe-clip"}
    assert "fp32" in load_manifest(out / "onnx").variants
    assert "| safe-clip |" in (out / "evaluation.md").read_text()
    _readme_commands_after_the_demo_work(out)

    # a second run reuses the trained models instead of training again
    weights = [out / "base" / "model" / "open_clip_model.safetensors",
               out / "safe-clip" / "model" / "open_clip_model.safetensors"]
    written = [path.stat().st_mtime_ns for path in weights]
    again = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out), "--device", "cpu", "--no-export"])
    assert again.exit_code == 0, again.output
    assert [path.stat().st_mtime_ns for path in weights] == written


def _readme_commands_after_the_demo_work(out):
    """README "After the demo": search the demo's live collection (the model comes from its index
    record) and evaluate the safe model, each in a fresh process as a user types it."""
    import subprocess
    import sys

    safeclip = [sys.executable, "-m", "safeclip_sdk"]
    search = subprocess.run([*safeclip, "search", "--qdrant", str(out / "qdrant"), "--collection", "demo-images",
                             "--text", "a red clock on the grass", "-k", "3", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert len(hits["results"]) == 3 and all("image" in hit["payload"] for hit in hits["results"])
    evaluate = subprocess.run([*safeclip, "eval", str(out / "safe-clip" / "model"), "--data",
                               str(out / "world" / "test.jsonl"), "--device", "cpu"],
                              capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "| base |" in evaluate.stdout and "safer than its base" in evaluate.stdout  # the training verdict
