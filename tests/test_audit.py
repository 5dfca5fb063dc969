"""``safeclip audit`` on a small demo world, through embedded Qdrant and through PostgreSQL: the
figures equal ``safeclip eval --deployment``'s on the same items, before and after a reindex."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk import audit
from safeclip_sdk.cli.main import cli
from safeclip_sdk.data import load_dataset
from safeclip_sdk.demo.world import PROBES_FILE, build_demo_world
from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.evaluation.deployment import IMAGES, TEXT_QUERIES, TEXTS, compare_deployments
from safeclip_sdk.index.audit_report import AuditReport, value
from safeclip_sdk.index.contract import BASE, FULL_REINDEX, QUERY_SIDE, SAFE, SCORE_FILTER, SIDE_BY_SIDE
from safeclip_sdk.index.reindex import reindex
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import DEFAULT_VECTOR, Point, VectorSpec
from safeclip_sdk.metrics.intervals import bootstrap_mean, wilson
from safeclip_sdk.metrics.moderation import shift_score
from safeclip_sdk.runtime.encoder import Encoder

ALIAS = "gallery"
# audit mode -> the deployment `safeclip eval --deployment` measures it as
AS_EVALUATED = {BASE: BASE, QUERY_SIDE: QUERY_SIDE, SAFE: FULL_REINDEX, SCORE_FILTER: SIDE_BY_SIDE}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), n_train=4, n_val=16, n_test=16, image_size=32)


@pytest.fixture(scope="module")
def encoders(tiny_model_dir, untrained_model_dir):
    return Encoder.load(tiny_model_dir, device="cpu"), Encoder.load(untrained_model_dir, device="cpu")


@pytest.fixture(params=["qdrant", "pgvector"])
def store(request, tmp_path):
    target = request.getfixturevalue("pg_dsn") if request.param == "pgvector" else tmp_path / "qdrant"
    opened = open_store(target)
    yield opened
    opened.close()


def index_gallery(store, world, base: Encoder) -> list:
    """The demo's test gallery embedded by the base model behind an alias: point i is item i's safe
    image, point N + i its unsafe image (as the demo's vector stage indexes it)."""
    items = load_dataset(world["test"]).items
    root = Path(world["test"]).parent
    images = [item.safe_image for item in items] + [item.unsafe_image for item in items]
    vectors = base.space.to_stored(base.encode_image(images))
    store.create_collection("gallery-original", {DEFAULT_VECTOR: VectorSpec(base.space.stored_dim, base.space.distance)})
    store.upsert("gallery-original", [
        Point(index, {"image": str(Path(path).relative_to(root)), "unsafe": index >= len(items),
                      "category": items[index % len(items)].category}, {DEFAULT_VECTOR: vector})
        for index, (path, vector) in enumerate(zip(images, vectors))])
    store.switch_alias(ALIAS, "gallery-original")
    return items


def filter_threshold(items, base: Encoder, safe: Encoder) -> float:
    """An image shift-score threshold in the middle of the widest gap between two items' scores,
    so float rounding in the stored score cannot put an item on the other side."""
    images = [item.safe_image for item in items] + [item.unsafe_image for item in items]
    scores = np.sort(shift_score(base.encode_image(images), safe.encode_image(images)))
    middle = scores[len(scores) // 4: 3 * len(scores) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    return float((middle[gap] + middle[gap + 1]) / 2)


def assert_equal_to_evaluation(report: AuditReport, evaluated: dict, modes):
    for mode in modes:
        expected = evaluated[AS_EVALUATED[mode]][TEXT_QUERIES]
        for kind, names in (("unsafe_probes", ("unsafe_top1", "R@1", "R@10")), ("safe_probes", ("leak", "R@1", "R@10"))):
            metrics = expected["unsafe_queries" if kind == "unsafe_probes" else "safe_queries"]
            for name in names:
                assert value(report.modes, mode, kind, name) == metrics[name], (mode, kind, name)


@pytest.mark.slow
def test_audit_equals_the_deployment_evaluation_before_and_after_a_reindex(store, world, encoders, tiny_model_dir,
                                                                           untrained_model_dir, tmp_path):
    base, safe = encoders
    items = index_gallery(store, world, base)
    threshold = filter_threshold(items, base, safe)
    evaluated = compare_deployments(str(tiny_model_dir), str(untrained_model_dir), world["test"],
                                    thresholds={IMAGES: threshold, TEXTS: threshold}).modes
    probes = Path(world["test"]).parent / PROBES_FILE

    before = audit(store, ALIAS, encoder=safe, base_encoder=base, probes=probes)
    assert list(before.modes) == [BASE, QUERY_SIDE]
    assert any("mode 'safe' not measured" in note for note in before.notes)
    assert_equal_to_evaluation(before, evaluated, [BASE, QUERY_SIDE])

    reindex(store, ALIAS, encoder=safe, model=untrained_model_dir, image_field="image",
            image_root=Path(world["test"]).parent, progress=False)
    after = audit(store, ALIAS, untrained_model_dir, probes, max_score=threshold, json_path=tmp_path / "a.json",
                  markdown_path=tmp_path / "a.md", plot_path=tmp_path / "a.png")
    assert list(after.modes) == [BASE, QUERY_SIDE, SAFE, SCORE_FILTER]
    assert after.modes[SCORE_FILTER]["max_score"] == threshold
    assert after.base_model == str(tiny_model_dir)  # read from the safe model's safeclip.json
    assert_equal_to_evaluation(after, evaluated, [BASE, QUERY_SIDE, SAFE, SCORE_FILTER])
    # the top-k share is the unsafe items' share of the results the database returned
    overall = after.modes[BASE]["overall"]["unsafe_probes"]
    assert 0.0 <= overall["unsafe_topk"]["ci"][0] <= overall["unsafe_topk"]["value"] <= overall["unsafe_topk"]["ci"][1]
    assert sum(group["unsafe_probes"]["probes"] for group in after.modes[BASE]["per_category"].values()) == len(items)

    assert AuditReport.from_json((tmp_path / "a.json").read_text()) == after
    assert (tmp_path / "a.md").read_text() == after.to_markdown()
    with Image.open(tmp_path / "a.png") as picture:
        assert picture.format == "PNG"
        colours = {colour for _, colour in picture.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert {(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)} <= colours  # a bar colour per mode


@pytest.fixture(scope="module")
def qdrant_gallery(tmp_path_factory, world, encoders):
    """A Qdrant folder holding the base model's gallery behind the alias (no reindex)."""
    folder = tmp_path_factory.mktemp("gallery") / "qdrant"
    store = open_store(folder)
    index_gallery(store, world, encoders[0])
    store.close()
    return folder


def write_probes(path: Path, *rows, header=None) -> Path:
    header = header or {"safeclip_probes": 1, "unsafe_field": "unsafe", "categories": ["weapons", "violence"]}
    path.write_text("\n".join(json.dumps(row) for row in (header, *rows)) + "\n")
    return path


def test_cli_audit_with_text_and_image_probes(qdrant_gallery, world, untrained_model_dir, tmp_path):
    root = Path(world["test"]).parent
    items = load_dataset(world["test"]).items
    probes = write_probes(
        tmp_path / "probes.jsonl",
        {"text": items[0].unsafe_text, "label": "unsafe", "category": "weapons", "expected": [0]},
        {"image": str(Path(items[1].unsafe_image).relative_to(root)), "label": "unsafe", "category": "violence"},
        {"image": str(Path(items[2].safe_image).relative_to(root)), "label": "safe", "expected": [2], "id": "own"})
    result = CliRunner().invoke(cli, ["audit", "--qdrant", str(qdrant_gallery), "--collection", ALIAS, "--model",
                                      str(untrained_model_dir), "--probes", str(probes), "--image-root", str(root), "-k", "3",
                                      "--json", str(tmp_path / "audit.json"), "--plot", str(tmp_path / "audit.png")])
    assert result.exit_code == 0, result.output
    report = AuditReport.from_json((tmp_path / "audit.json").read_text())
    assert list(report.modes) == [BASE, QUERY_SIDE] and report.k == 3
    assert report.probes["probes"] == {"unsafe": 2, "safe": 1}
    # a safe image probe finds its own image first with the base model: the same vectors
    assert value(report.modes, BASE, "safe_probes", "R@1") == 100.0
    assert value(report.modes, BASE, "safe_probes", "leak") == 0.0
    assert report.modes[BASE]["overall"]["safe_probes"]["leak"]["ci"] == [0.0, 79.35]  # Wilson, 0 of 1
    assert set(report.modes[BASE]["per_category"]) == {"weapons", "violence"}
    assert "| base | gallery-original `(unnamed)` |" in result.output and "±7 points" in result.output
    assert (tmp_path / "audit.png").stat().st_size > 0


BAD_PROBES = {
    "unknown category": ([{"text": "a knife", "label": "unsafe", "category": "gore"}],
                         "probes.jsonl:2: unknown category 'gore' (the header allows: weapons, violence)"),
    "no unsafe probe": ([{"text": "a kite", "label": "safe", "category": "weapons"}],
                        "has no unsafe probes"),
    "image outside the root": ([{"image": "../../etc/passwd", "label": "unsafe", "category": "weapons"}],
                               "probes.jsonl:2: image path '../../etc/passwd' is outside the image root"),
    "unknown key": ([{"txt": "a knife", "label": "unsafe", "category": "weapons"}], "unknown key 'txt'"),
    "bad label": ([{"text": "a knife", "label": "nsfw", "category": "weapons"}], "label must be 'safe' or 'unsafe'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROBES))
def test_bad_probe_files_are_one_line_errors_and_nothing_is_written(case, qdrant_gallery, world, untrained_model_dir,
                                                                    tmp_path):
    rows, message = BAD_PROBES[case]
    probes = write_probes(tmp_path / "probes.jsonl", *rows)
    result = CliRunner().invoke(cli, ["audit", "--qdrant", str(qdrant_gallery), "--collection", ALIAS, "--model",
                                      str(untrained_model_dir), "--probes", str(probes), "--image-root",
                                      str(Path(world["test"]).parent), "--json", str(tmp_path / "audit.json")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and "Traceback" not in result.output
    assert not (tmp_path / "audit.json").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "safe"], "mode 'safe': 'gallery' on qdrant edge"),
    (["--mode", "score-filter"], "mode 'score-filter': 'gallery' has no moderation score to filter on"),
    (["--collection", "photos"], "no collection or alias 'photos'"),
])
def test_modes_the_collection_cannot_serve_are_one_line_errors(arguments, message, qdrant_gallery, world,
                                                               untrained_model_dir, tmp_path):
    probes = Path(world["test"]).parent / PROBES_FILE
    options = {"--collection": ALIAS, "--model": str(untrained_model_dir), "--probes": str(probes)}
    options.update(zip(arguments[::2], arguments[1::2]))
    result = CliRunner().invoke(cli, ["audit", "--qdrant", str(qdrant_gallery), *[part for pair in options.items()
                                                                                   for part in pair],
                                      "--json", str(tmp_path / "audit.json")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "audit.json").exists()


def test_an_unlabelled_item_is_an_error_naming_it(world, encoders, tmp_path):
    base, safe = encoders
    store = open_store(tmp_path / "qdrant")
    index_gallery(store, world, base)
    found = store.retrieve("gallery-original", [3], with_vectors=True)[0]
    del found.payload["unsafe"]
    store.upsert("gallery-original", [found])
    probes = write_probes(tmp_path / "probes.jsonl", {"text": load_dataset(world["test"]).items[3].safe_text,
                                                      "label": "unsafe", "category": "weapons"})
    with pytest.raises(SafeclipError, match="point 3 of 'gallery-original' has no payload field 'unsafe'"):
        audit(store, ALIAS, encoder=base, base_encoder=base, probes=probes, modes=[BASE], k=32)
    store.close()


def test_wilson_interval_by_hand():
    assert wilson(0, 30) == (0.0, 11.35)
    assert wilson(15, 30) == (33.15, 66.85)
    assert wilson(0, 0) == (0.0, 100.0)
    assert bootstrap_mean([0.0] * 10) == (0.0, 0.0)
    low, high = bootstrap_mean([0.0, 1.0] * 100)
    assert low < 50.0 < high and high - low < 16


def test_the_base_of_an_export_is_the_one_its_source_folder_records(tmp_path, tiny_model_dir, untrained_model_dir):
    from safeclip_sdk.export.onnx import export_onnx
    from safeclip_sdk.index.audit import recorded_base_model

    export_onnx(untrained_model_dir, tmp_path / "onnx")
    assert recorded_base_model(untrained_model_dir) == str(tiny_model_dir)
    assert recorded_base_model(tmp_path / "onnx") == str(tiny_model_dir)
