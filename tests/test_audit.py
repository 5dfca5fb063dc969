"""``safeclip audit`` on a small demo world, through embedded Qdrant and through PostgreSQL: the
figures equal ``safeclip eval --deployment``'s on the same items, before and after a reindex."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk import audit
from safeclip_sdk.cli.main import cli
from safeclip_sdk.data import load_dataset
from safeclip_sdk.demo.world import PROBES_FILE, build_demo_world
from safeclip_sdk.evaluation.deployment import IMAGES, TEXT_QUERIES, TEXTS, compare_deployments
from safeclip_sdk.index.audit_report import AuditReport, value
from safeclip_sdk.index.contract import BASE, FULL_REINDEX, QUERY_SIDE, SAFE, SCORE_FILTER, SIDE_BY_SIDE
from safeclip_sdk.index.reindex import reindex
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import DEFAULT_VECTOR, Point, VectorSpec
from safeclip_sdk.metrics.moderation import shift_score
from safeclip_sdk.model.folder import load_model, save_model_dir
from safeclip_sdk.runtime.encoder import Encoder

ALIAS = "gallery"
# audit mode -> the deployment `safeclip eval --deployment` measures it as
AS_EVALUATED = {BASE: BASE, QUERY_SIDE: QUERY_SIDE, SAFE: FULL_REINDEX, SCORE_FILTER: SIDE_BY_SIDE}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), n_train=4, n_val=16, n_test=16, image_size=32)


@pytest.fixture(scope="module")
def safe_model_dir(tmp_path_factory, tiny_model_dir):
    """Another tiny model folder that names ``tiny_model_dir`` as its base."""
    torch.manual_seed(1)
    loaded = load_model("safeclip-tiny")
    out = tmp_path_factory.mktemp("safe_model")
    save_model_dir(out, loaded.model, loaded.model_cfg, loaded.preprocess_cfg,
                   metadata={"method": "safe-clip", "base_model": {"source": str(tiny_model_dir), "pretrained": None}})
    return out


@pytest.fixture(scope="module")
def encoders(tiny_model_dir, safe_model_dir):
    return Encoder.load(tiny_model_dir, device="cpu"), Encoder.load(safe_model_dir, device="cpu")


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
                                                                           safe_model_dir, tmp_path):
    base, safe = encoders
    items = index_gallery(store, world, base)
    threshold = filter_threshold(items, base, safe)
    evaluated = compare_deployments(str(tiny_model_dir), str(safe_model_dir), world["test"],
                                    thresholds={IMAGES: threshold, TEXTS: threshold}).modes
    probes = Path(world["test"]).parent / PROBES_FILE

    before = audit(store, ALIAS, encoder=safe, base_encoder=base, probes=probes)
    assert list(before.modes) == [BASE, QUERY_SIDE]
    assert any("mode 'safe' not measured" in note for note in before.notes)
    assert_equal_to_evaluation(before, evaluated, [BASE, QUERY_SIDE])

    reindex(store, ALIAS, encoder=safe, model=safe_model_dir, image_field="image",
            image_root=Path(world["test"]).parent, progress=False)
    after = audit(store, ALIAS, safe_model_dir, probes, max_score=threshold, json_path=tmp_path / "a.json",
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
