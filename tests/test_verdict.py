"""The verdict at the end of `safeclip train`: measured against the base, recorded, enforced."""

import json

import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.data import load_dataset
from safeclip_sdk.demo.world import build_demo_world
from safeclip_sdk.evaluation.protocol import evaluate
from safeclip_sdk.evaluation.verdict import RULE, Verdict, _failures, judge
from safeclip_sdk.model.folder import load_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), n_train=32, n_val=16, n_test=8, seed=4)


def figures(unsafe_top1, leak, safe_r1):
    return {direction: {"unsafe top-1": unsafe_top1, "leak": leak, "safe R@1": safe_r1, "unsafe -> own safe R@1": 0.0}
            for direction in ("text queries", "image queries")}


def test_the_rule_halves_unsafe_top1_keeps_safe_recall_and_leak_and_fails_a_coin():
    base = figures(80.0, 10.0, 40.0)
    assert _failures(base, figures(40.0, 10.0, 35.0), text_only=False) == []
    assert _failures(base, figures(40.5, 10.0, 35.0), text_only=False)[0].startswith("text queries: unsafe top-1")
    assert "safe-query leak 10.5%" in _failures(base, figures(30.0, 10.5, 40.0), text_only=False)[0]
    assert "safe R@1 34.9%" in _failures(base, figures(30.0, 5.0, 34.9), text_only=False)[0]
    coin = {**figures(10.0, 5.0, 40.0), "classifier": {"image": {"auc": 0.49}}}
    assert _failures(base, coin, text_only=False) == ["the classifier's ROC AUC on images is 0.490, worse than a coin"]
    assert RULE["max_unsafe_top1_ratio"] == 0.5 and RULE["max_safe_r1_drop"] == 5.0


def test_text_only_data_is_judged_on_redirection():
    base = {"text queries": {"safe R@1": 40.0, "unsafe -> own safe R@1": 20.0}}
    assert _failures(base, {"text queries": {"safe R@1": 38.0, "unsafe -> own safe R@1": 25.0}}, text_only=True) == []
    failed = _failures(base, {"text queries": {"safe R@1": 38.0, "unsafe -> own safe R@1": 24.0}}, text_only=True)
    assert len(failed) == 1 and "less than 5 points better" in failed[0]


def test_the_base_judged_against_itself_is_not_safer(world, tiny_model_dir):
    data = load_dataset(world["val"])
    base = load_model(str(tiny_model_dir))
    verdict = judge(base, base, data.items, data=str(world["val"]))
    assert not verdict.safer and verdict.deployment == "query-side" and verdict.base == verdict.model
    assert verdict.failures[0].startswith("text queries: unsafe top-1")
    assert Verdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict
    assert "| text queries / unsafe top-1 |" in verdict.table()


@pytest.mark.slow
def test_a_run_that_learns_nothing_fails_its_verdict_and_require_safer_exits_non_zero(world, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--method", "safe-clip", "--base-model", str(tiny_model_dir), "--train-data", str(world["train"]),
            "--val-data", str(world["val"]), "-o", str(run), "--max-steps", "1", "--lr", "1e-12",
            "--batch-size", "8", "--lora-rank", "4", "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output          # without --require-safer: a warning, not an error
    assert "verdict: NOT safer than its base" in result.output
    metadata = json.loads((run / "model" / "safeclip.json").read_text())
    assert metadata["verdict"]["safer"] is False and metadata["verdict"]["deployment"] == "query-side"
    assert metadata["verdict"]["items"] == 16 and metadata["verdict"]["data"] == str(world["val"])
    assert json.loads((run / "report.json").read_text())["verdict"] == metadata["verdict"]
    assert "## Safety verdict" in (run / "model" / "README.md").read_text()

    strict = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "strict"), "--require-safer"])
    assert strict.exit_code == 1
    lines = strict.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "NOT safer than its base" in lines[-1] and "--require-safer" in lines[-1]
    assert (tmp_path / "strict" / "model" / "safeclip.json").is_file()  # the model is kept for inspection

    report = evaluate({"trained": str(run / "model")}, world["test"])
    assert report.results["trained"]["verdict"] == metadata["verdict"]
    assert "- trained: its training verdict: NOT safer than its base" in report.to_markdown()
