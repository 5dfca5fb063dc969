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
                  "vector database"):
        assert f"[{stage}] done" in result.output
    # the vector-database stage: a live reindex that lost no write, each deployment measured, a picture
    assert "live writes check: all" in result.output
    for deployment in ("base model", "safe model, query side", "safe vectors (full reindex)"):
        assert f"| {deployment} |" in result.output
    assert "recommended deployment on this measurement:" in result.output
    assert (out / "search.png").stat().st_size > 0
    assert json.loads((out / "safe-clip" / "model" / "safeclip.json").read_text())["base_model"]["source"] == \
        str(out / "base" / "model")
    load_model(str(out / "safe-clip" / "model"))
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["results"]) == {"base", "safe-clip"}
    assert "fp32" in load_manifest(out / "onnx").variants
    assert "| safe-clip |" in (out / "evaluation.md").read_text()

    # a second run reuses the trained models instead of training again
    weights = [out / "base" / "model" / "open_clip_model.safetensors",
               out / "safe-clip" / "model" / "open_clip_model.safetensors"]
    written = [path.stat().st_mtime_ns for path in weights]
    again = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out), "--device", "cpu", "--no-export"])
    assert again.exit_code == 0, again.output
    assert [path.stat().st_mtime_ns for path in weights] == written
