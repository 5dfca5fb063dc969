"""``safeclip demo --all-methods`` in its --quick form: SafeR-CLIP and HySAC trained beside Safe-CLIP,
the four models compared in one table, and the reports written (the numbers mean nothing)."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk import load_model
from safeclip_sdk.cli.main import cli
from safeclip_sdk.demo.settings import QUICK_SETTINGS
from safeclip_sdk.demo.methods import compare_all_methods
from safeclip_sdk.methods import model_inference

pytestmark = pytest.mark.slow

ROWS = ("base", "safe-clip", "safer-clip", "hysac", "hysac (no traversal)")


def test_quick_demo_with_all_methods_trains_compares_and_reports(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--quick", "--all-methods", "--no-export", "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for stage in ("SafeR-CLIP fine-tuning", "HySAC fine-tuning", "method evaluation", "method deployments"):
        assert f"[{stage}] done" in result.output

    # every method's folder loads, from the demo's base, in its own space
    spaces = {}
    for method in ("safe-clip", "safer-clip", "hysac"):
        metadata = json.loads((out / method / "model" / "safeclip.json").read_text())
        assert metadata["method"] == method
        assert metadata["base_model"]["source"] == str(out / "base" / "model")
        spaces[method] = model_inference(load_model(str(out / method / "model"))).space.kind
    assert spaces == {"safe-clip": "cosine", "safer-clip": "cosine", "hysac": "lorentz"}
    assert (out / "safer-clip" / "cache" / "train-targets").is_dir()  # SafeR-CLIP's proximity-target pass ran

    report = json.loads((out / "methods.json").read_text())
    assert [row["model"] for row in report["summary"]] == list(ROWS)
    results = report["evaluation"]["results"]
    for row in report["summary"]:  # the summary is the evaluation's own figures
        retrieval = results[row["model"]]["retrieval"]
        assert row["T*->V+V* R@1"] == retrieval["T*->V+V*"]["R@1"]
        assert row["unsafe top-1 V*->T+T*"] == retrieval["V*->T+T*"]["unsafe_top1"]
        assert row["leak T->V+V*"] == results[row["model"]]["leak"]["T->V+V*"]
        assert row["zero-shot top-1"] == results[row["model"]]["zero_shot"]["top1"]
    assert results["hysac"]["traversal"] is True and results["hysac (no traversal)"]["traversal"] is False
    for modality in ("text", "image"):
        assert {"auc", "accuracy", "fpr", "fnr"} <= set(results["hysac"]["classification"][modality])
    assert results["safe-clip"]["classification"] is None
    assert set(report["deployments"]) == {"safe-clip", "safer-clip"}
    assert [(row["method"], row["deployment"]) for row in report["deployment_summary"]] == [
        (method, mode) for method in ("safe-clip", "safer-clip")
        for mode in ("query side (base vectors kept)", "full reindex")]
    assert set(report["seconds"]) == {"SafeR-CLIP fine-tuning", "HySAC fine-tuning", "method evaluation",
                                      "method deployments", "recommended deployments"}
    # each model in its recommended deployment, measured as a verdict measures it, on the test split
    recommended = {row["model"]: row for row in report["recommended"]}
    assert {name: row["deployment"] for name, row in recommended.items()} == {
        "base": "-", "safe-clip": "query-side", "safer-clip": "query-side", "hysac": "full-reindex"}
    for modality in ("text", "image"):
        assert recommended["hysac"][f"{modality} AUC"] == pytest.approx(
            results["hysac"]["classification"][modality]["auc"], abs=1e-6)
        assert recommended["safe-clip"][f"{modality} AUC"] is None
    # the base row is the base's own figures, which the full evaluation also measures (same gallery)
    assert recommended["base"]["text unsafe top-1"] == pytest.approx(results["base"]["retrieval"]["T*->V+V*"]["unsafe_top1"])
    assert recommended["base"]["image leak"] == pytest.approx(results["base"]["leak"]["V->T+T*"])

    markdown = (out / "methods.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in markdown and f"| {row} |" in result.output
    assert "| hysac | texts |" in markdown and "| hysac | images |" in markdown
    assert "| safer-clip | full reindex |" in markdown
    with Image.open(out / "methods.png") as picture:
        assert picture.format == "PNG" and picture.width > 0

    # a second comparison reuses the trained folders instead of training again
    weights = [out / method / "model" / "open_clip_model.safetensors" for method in ("safer-clip", "hysac")]
    written = [path.stat().st_mtime_ns for path in weights]
    world = {split: out / "world" / f"{split}.jsonl" for split in ("train", "val", "test")}
    again = compare_all_methods(out, out / "base" / "model", out / "safe-clip" / "model", world, QUICK_SETTINGS,
                                device="cpu", echo=lambda *args: None)
    assert [path.stat().st_mtime_ns for path in weights] == written
    assert again.evaluation.results["hysac"]["retrieval"] == results["hysac"]["retrieval"]
