import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk.cli.main import cli
from safeclip_sdk.demo.world import build_demo_world
from safeclip_sdk.data import load_dataset
from safeclip_sdk.evaluation.deployment import (IMAGE_QUERIES, IMAGES, TEXT_QUERIES, TEXTS, DeploymentReport,
                                                compare_deployments, deployment_metrics)
from safeclip_sdk.index.contract import BASE, FULL_REINDEX, QUERY_SIDE, SIDE_BY_SIDE
from safeclip_sdk.metrics.retrieval import rank_with_hidden
from safeclip_sdk.evaluation.deployment_report import recommend
from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.evaluation.protocol import evaluate
from safeclip_sdk.metrics.retrieval import (UNSAFE_IMAGE_TO_ALL_TEXTS, UNSAFE_TEXT_TO_ALL_IMAGES, EmbeddingSet,
                                            rank_ground_truth)
from safeclip_sdk.model.folder import load_model

N = 4
E = np.eye(3 * N, dtype=np.float32)


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def redirecting_world():
    """Base: safe items of quadruplet i at e_i, unsafe ones at e_{N+i}. The safe model moves every
    unsafe item exactly onto its safe counterpart's ORIGINAL place e_i, keeps the safe captions and
    lets the safe images drift a little (towards e_{2N+i}): preservation is never perfect."""
    safe_ids, unsafe_ids = np.arange(N), N + np.arange(N)
    base = EmbeddingSet(safe_text=E[safe_ids], unsafe_text=E[unsafe_ids], safe_image=E[safe_ids],
                        unsafe_image=E[unsafe_ids])
    safe = EmbeddingSet(safe_text=E[safe_ids], unsafe_text=E[safe_ids],
                        safe_image=unit(E[safe_ids] + 0.3 * E[2 * N + safe_ids]), unsafe_image=E[safe_ids])
    return base, safe


def test_full_reindex_leaks_unsafe_images_into_safe_queries_and_query_side_does_not():
    base, safe = redirecting_world()
    modes = deployment_metrics(base, safe, ks=(1, 2))
    assert list(modes) == [BASE, QUERY_SIDE, FULL_REINDEX]  # no thresholds: no side-by-side

    text = {mode: modes[mode][TEXT_QUERIES] for mode in modes}
    # base: every unsafe caption finds its own unsafe image; safe captions their own image
    assert text[BASE]["unsafe_queries"] == {"queries": N, "R@1": 0.0, "R@2": 100.0, "unsafe_top1": 100.0}
    assert text[BASE]["safe_queries"] == {"queries": N, "R@1": 100.0, "R@2": 100.0, "leak": 0.0}
    # query-side: redirected queries against the original images find the safe image
    assert text[QUERY_SIDE]["unsafe_queries"]["unsafe_top1"] == 0.0
    assert text[QUERY_SIDE]["safe_queries"]["leak"] == 0.0
    # full reindex: the unsafe images now sit exactly where the safe queries are, closer than
    # the drifted safe images: every query, safe or unsafe, gets the unsafe image first
    assert text[FULL_REINDEX]["unsafe_queries"] == {"queries": N, "R@1": 0.0, "R@2": 100.0, "unsafe_top1": 100.0}
    assert text[FULL_REINDEX]["safe_queries"] == {"queries": N, "R@1": 0.0, "R@2": 100.0, "leak": 100.0}
    assert text[BASE]["gallery"] == 2 * N and text[BASE]["unsafe_gallery_items"] == N

    image = {mode: modes[mode][IMAGE_QUERIES] for mode in modes}
    assert image[BASE]["unsafe_queries"]["unsafe_top1"] == 100.0
    assert image[QUERY_SIDE]["unsafe_queries"]["unsafe_top1"] == 0.0
    # full reindex: safe and unsafe captions coincide; ties go to the safe item
    assert image[FULL_REINDEX]["unsafe_queries"]["unsafe_top1"] == 0.0
    assert image[FULL_REINDEX]["safe_queries"]["leak"] == 0.0


def test_side_by_side_hides_items_above_the_threshold():
    base, safe = redirecting_world()
    # image shift: safe images ~0.042, unsafe images 1.0; text shift: safe 0, unsafe 1.0
    modes = deployment_metrics(base, safe, thresholds={IMAGES: 0.5, TEXTS: 0.5}, ks=(1,))
    text = modes[SIDE_BY_SIDE][TEXT_QUERIES]
    assert (text["hidden_safe_items"], text["hidden_safe_pct"], text["hidden_unsafe_pct"]) == (0, 0.0, 100.0)
    assert text["unsafe_queries"]["unsafe_top1"] == 0.0 and text["unsafe_queries"]["R@1"] == 100.0
    assert text["threshold"] == 0.5
    # a threshold below the drifted safe images hides them too: every result list is empty
    hidden_all = deployment_metrics(base, safe, thresholds={IMAGES: 0.01}, ks=(1,))[SIDE_BY_SIDE]
    assert list(hidden_all) == [TEXT_QUERIES]
    assert hidden_all[TEXT_QUERIES]["hidden_safe_pct"] == 100.0
    assert hidden_all[TEXT_QUERIES]["safe_queries"] == {"queries": N, "R@1": 0.0, "leak": 0.0}


def test_hidden_items_are_removed_from_the_ranking():
    rng = np.random.default_rng(1)
    queries, gallery = rng.normal(size=(30, 16)), rng.normal(size=(60, 16))
    hidden = rng.random(60) < 0.3
    ranking = rank_with_hidden(queries, gallery, num_safe=30, hidden=hidden, block_size=7)
    scores = unit(queries) @ unit(gallery).T
    for i in range(30):
        shown = np.flatnonzero(~hidden)
        assert ranking.ranks[i] == (60 if hidden[i] else np.sum(scores[i, shown] > scores[i, i]))
        assert ranking.top1_unsafe[i] == (shown[np.argmax(scores[i, shown])] >= 30)
    # hiding one unsafe item lowers the rank of exactly the queries it outscored the truth for
    plain = rank_ground_truth(queries, gallery, num_safe=30)
    masked = rank_with_hidden(queries, gallery, num_safe=30, hidden=np.arange(60) == 59)
    assert np.array_equal(masked.ranks, plain.ranks - (scores[:, 59] > scores[np.arange(30), np.arange(30)]))


def test_text_only_data_gives_the_directions_that_exist():
    base, safe = redirecting_world()
    base.unsafe_image = safe.unsafe_image = None
    modes = deployment_metrics(base, safe, thresholds={TEXTS: 0.5}, ks=(1,))
    text = modes[BASE][TEXT_QUERIES]
    assert text["gallery"] == N and "unsafe_top1" not in text["unsafe_queries"] and "leak" not in text["safe_queries"]
    image = modes[QUERY_SIDE][IMAGE_QUERIES]
    assert "unsafe_queries" not in image and image["safe_queries"]["leak"] == 0.0
    assert list(modes[SIDE_BY_SIDE]) == [IMAGE_QUERIES]


def test_models_of_different_embedding_sizes_are_refused():
    base, safe = redirecting_world()
    wider = EmbeddingSet(*(np.pad(values, ((0, 0), (0, 1))) for values in dataclasses.astuple(safe)))
    with pytest.raises(SafeclipError, match="12 dimensions and the safe model into 13"):
        deployment_metrics(base, wider)


def _modes(rows):
    """``{mode: {direction: metrics}}`` from ``(mode, direction, unsafe_top1, leak, safe R@1)``."""
    modes = {}
    for mode, direction, unsafe_top1, leak, recall in rows:
        modes.setdefault(mode, {})[direction] = {
            "unsafe_queries": {"R@1": 0.0, "unsafe_top1": unsafe_top1}, "safe_queries": {"R@1": recall, "leak": leak}}
    return modes


def test_recommendation_follows_the_numbers():
    # the first measurement (text queries), image queries made up
    modes = _modes([(BASE, TEXT_QUERIES, 84.8, 11.6, 30.0), (BASE, IMAGE_QUERIES, 82.0, 20.0, 30.0),
                    (QUERY_SIDE, TEXT_QUERIES, 13.6, 7.2, 31.0), (QUERY_SIDE, IMAGE_QUERIES, 60.0, 30.0, 20.0),
                    (FULL_REINDEX, TEXT_QUERIES, 21.8, 19.0, 25.0), (FULL_REINDEX, IMAGE_QUERIES, 80.0, 70.0, 8.0)])
    ranking, sentence = recommend(modes, min_safe_recall_ratio=0.5)
    assert [row["mode"] for row in ranking[TEXT_QUERIES]] == [QUERY_SIDE, FULL_REINDEX, BASE]
    assert ranking[TEXT_QUERIES][0]["mean_unsafe_top1"] == pytest.approx(10.4)
    # full reindex keeps less than half of the base's safe-query R@1 on image queries
    assert [row["mode"] for row in ranking[IMAGE_QUERIES]] == [QUERY_SIDE, BASE, FULL_REINDEX]
    assert not ranking["overall"][-1]["eligible"] and ranking["overall"][0]["mode"] == QUERY_SIDE
    assert sentence.startswith("Safest overall: query-side")
    assert "unsafe top-1 13.6%, leak 7.2%" in sentence
    assert "full-reindex (not eligible: safe-query R@1 under 50% of the base's on image queries)" in sentence

    # the same numbers with the modes' roles swapped recommend the other mode
    swapped = {BASE: modes[BASE], QUERY_SIDE: modes[FULL_REINDEX], FULL_REINDEX: modes[QUERY_SIDE]}
    assert recommend(swapped, min_safe_recall_ratio=0.0)[1].startswith("Safest overall: full-reindex")


def test_a_filter_that_hides_everything_is_not_recommended():
    modes = _modes([(BASE, TEXT_QUERIES, 80.0, 10.0, 30.0), (QUERY_SIDE, TEXT_QUERIES, 20.0, 8.0, 30.0),
                    (SIDE_BY_SIDE, TEXT_QUERIES, 0.0, 0.0, 0.0)])
    ranking, sentence = recommend(modes, min_safe_recall_ratio=0.5)
    assert ranking["overall"][0]["mode"] == QUERY_SIDE and ranking["overall"][-1]["mode"] == SIDE_BY_SIDE
    assert sentence.startswith("Safest overall: query-side")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), n_train=4, n_val=16, n_test=16, image_size=32)


def test_cli_deployment_end_to_end(world, tiny_model_dir, untrained_model_dir, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, [
        "eval", str(untrained_model_dir), "--data", str(world["test"]), "--deployment", "--val-data", str(world["val"]),
        "--device", "cpu", "--json", str(out / "deployment.json"), "--markdown", str(out / "deployment.md"),
        "--plot", str(out / "roc.png")])
    assert result.exit_code == 0, result.output
    report = DeploymentReport.from_json((out / "deployment.json").read_text())
    assert report.base["source"] == str(tiny_model_dir) and report.val_dataset == str(world["val"])
    assert list(report.modes) == [BASE, QUERY_SIDE, FULL_REINDEX, SIDE_BY_SIDE]
    for modality in (IMAGES, TEXTS):
        moderation = report.moderation[modality]
        assert 0.0 <= moderation["test_auc"] <= 1.0 and moderation["threshold_from"] == "val"
        assert moderation["test"]["safe_items"] == moderation["test"]["unsafe_items"] == 16
    assert report.recommendation.startswith("Safest overall: ")
    assert (out / "deployment.md").read_text() == report.to_markdown()
    assert "**Text queries** against a gallery of 32 items (16 unsafe)" in result.output

    # base and full reindex are the protocol's own unsafe directions for the base and safe model
    protocol = evaluate({"base": str(tiny_model_dir), "safe": str(untrained_model_dir)}, world["test"], ks=(1, 10))
    for mode, name in ((BASE, "base"), (FULL_REINDEX, "safe")):
        for direction, protocol_direction in ((TEXT_QUERIES, UNSAFE_TEXT_TO_ALL_IMAGES),
                                              (IMAGE_QUERIES, UNSAFE_IMAGE_TO_ALL_TEXTS)):
            expected = protocol.results[name]["retrieval"][protocol_direction]
            measured = report.modes[mode][direction]["unsafe_queries"]
            assert (measured["R@1"], measured["R@10"], measured["unsafe_top1"]) == (
                expected["R@1"], expected["R@10"], expected["unsafe_top1"])

    with Image.open(out / "roc.png") as picture:
        assert picture.format == "PNG" and picture.size == (560, 560)
        colours = {colour for _, colour in picture.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # one curve per modality


def test_same_model_on_both_sides_changes_nothing(world, tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    data = load_dataset(world["test"])
    text_only = dataclasses.replace(data, items=[dataclasses.replace(item, unsafe_image=None) for item in data.items])
    report = compare_deployments(model, model, text_only, thresholds={TEXTS: 0.5})
    assert report.text_only and list(report.moderation) == [TEXTS]
    assert report.modes[BASE] == report.modes[QUERY_SIDE] == report.modes[FULL_REINDEX]
    # nothing moved, so the filter hides nothing
    assert report.modes[SIDE_BY_SIDE][IMAGE_QUERIES]["hidden_safe_items"] == 0
    assert any("no unsafe images" in note for note in report.notes)
    assert json.loads(report.to_json())["modes"] == report.modes


@pytest.mark.parametrize("arguments, message", [
    (["--plot", "roc.png"], "--plot needs --deployment"),
    (["--deployment", "--no-base"], "cannot be combined"),
    (["--deployment", "--target-fpr", "5"], "not a fraction between 0 and 1"),
])
def test_cli_deployment_errors(world, untrained_model_dir, arguments, message):
    result = CliRunner().invoke(cli, ["eval", str(untrained_model_dir), "--data", str(world["test"]), "--device", "cpu",
                                      *arguments])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_two_models_are_refused_with_deployment(world, untrained_model_dir, tiny_model_dir):
    result = CliRunner().invoke(cli, ["eval", str(untrained_model_dir), str(tiny_model_dir), "--data", str(world["test"]),
                                      "--deployment"])
    assert result.exit_code != 0 and "one safe MODEL" in result.output


def test_unknown_threshold_modality_is_refused(world, tiny_model_dir):
    with pytest.raises(SafeclipError, match="only 'images' and 'texts'"):
        compare_deployments(str(tiny_model_dir), str(tiny_model_dir), world["test"], thresholds={"audio": 0.1})
