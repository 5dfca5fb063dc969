"""safeclip reindex against a real local Qdrant and the real tiny model: layouts, adoption,
rollback, cleanup, failed sources, dry runs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import Point, VectorSpec
from safeclip_sdk.metrics.moderation import shift_score
from safeclip_sdk.index.reindex import ReindexError, cleanup, complete_point, reindex, rollback
from safeclip_sdk.index.contract import ERROR_FIELD
from tests.reindex_world import (cosine, everything, make_text_collection, original_vector, text_of,
                                 without_reserved, write_image)

COUNT = 150


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir)


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "db")
    yield opened
    opened.close()


def test_side_by_side_adds_safe_vectors_and_scores(store, encoder, tmp_path):
    dim = encoder.space.stored_dim
    payloads = make_text_collection(store, "docs-original", COUNT, dim, alias="docs")
    old = everything(store, "docs-original")

    report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=32, progress=False,
                     report=tmp_path / "report.json")

    assert store.alias_target("docs") == "docs-safeclip-v1" == report.target
    new = everything(store, "docs")
    assert set(new) == set(payloads)
    texts = [payloads[i]["text"] for i in sorted(payloads)]
    safe = dict(zip(sorted(payloads), encoder.encode_text(texts)))
    for point_id, point in new.items():
        assert without_reserved(point.payload) == payloads[point_id]
        assert np.allclose(point.vectors[""], old[point_id].vectors[""], atol=1e-6)  # original kept
        assert cosine(point.vectors["safe"], safe[point_id]) > 0.999
        expected_score = shift_score(old[point_id].vectors[""][None], safe[point_id][None])[0]
        assert point.payload["safeclip_shift"] == pytest.approx(expected_score, abs=1e-5)
    assert store.read_state("index:docs-safeclip-v1") == {
        "mode": "side-by-side", "model": encoder.source, "space": encoder.space.to_dict(), "vectors": {"": "safe"},
        "score_field": "safeclip_shift", "threshold": None}
    assert store.collection_exists("docs-original")  # kept for rollback
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["embedded"] == COUNT and written["failures"] == [] and written["verification"]["checked"] > 0
    assert written["passes"][0]["missing"] == written["passes"][0]["changed"] == 0


def test_full_mode_replaces_one_named_vector_and_carries_the_others(store, encoder):
    dim = encoder.space.stored_dim
    rng = np.random.default_rng(1)
    store.create_collection("items-v0", {"image": VectorSpec(dim, "cosine"), "text": VectorSpec(dim, "cosine"),
                                         "tags": VectorSpec(8, "dot")})
    points = [Point(i, {"caption": text_of(i)}, {"image": original_vector(rng, dim), "text": original_vector(rng, dim),
                                                  "tags": rng.normal(size=8).astype(np.float32)}) for i in range(60)]
    store.upsert("items-v0", points)
    store.switch_alias("items", "items-v0")

    with pytest.raises(ReindexError, match="say which one"):
        reindex(store, "items", encoder=encoder, text_field="caption", mode="full", progress=False)
    reindex(store, "items", encoder=encoder, text_field="caption", vectors=["text=text"], mode="full",
            batch_size=16, progress=False)

    new = everything(store, "items")
    assert set(store.vector_specs("items")) == {"image", "text", "tags"}
    safe = encoder.encode_text([p.payload["caption"] for p in points])
    for point, expected in zip(points, safe):
        stored = new[point.id]
        assert stored.payload == point.payload  # full mode adds no score
        assert cosine(stored.vectors["text"], expected) > 0.999
        assert np.allclose(stored.vectors["image"], point.vectors["image"], atol=1e-6)
        assert np.array_equal(stored.vectors["tags"], point.vectors["tags"])


def test_vector_size_that_does_not_fit_the_model(store, encoder):
    make_text_collection(store, "small-v0", 40, 24, alias="small")
    with pytest.raises(ReindexError, match="size 24 but the model stores 64"):
        reindex(store, "small", encoder=encoder, text_field="text", mode="full", progress=False)
    with pytest.raises(ReindexError, match="--no-score"):
        reindex(store, "small", encoder=encoder, text_field="text", progress=False)
    assert store.list_collections() == ["small-v0"]  # nothing was written

    reindex(store, "small", encoder=encoder, text_field="text", score=False, progress=False)
    specs = store.vector_specs("small")
    assert (specs[""].size, specs["safe"].size) == (24, 64)
    assert all("safeclip_shift" not in p.payload for p in everything(store, "small", False).values())


def test_missing_collection_and_missing_field(store, encoder):
    with pytest.raises(ReindexError, match="no collection or alias 'nowhere'"):
        reindex(store, "nowhere", encoder=encoder, text_field="text", progress=False)
    make_text_collection(store, "docs-v0", 30, encoder.space.stored_dim, alias="docs")
    with pytest.raises(ReindexError, match="payload field 'txet'.*fields seen: n, text"):
        reindex(store, "docs", encoder=encoder, text_field="txet", progress=False)


def test_plain_collection_is_adopted_only_when_asked_and_can_roll_back(store, encoder):
    dim = encoder.space.stored_dim
    payloads = make_text_collection(store, "docs", 80, dim)
    original = everything(store, "docs")
    with pytest.raises(ReindexError, match="plain collection.*--adopt"):
        reindex(store, "docs", encoder=encoder, text_field="text", progress=False)

    report = reindex(store, "docs", encoder=encoder, text_field="text", adopt=True, progress=False)

    assert report.adopted and report.source == "docs-safeclip-v1" and report.target == "docs-safeclip-v2"
    assert store.alias_target("docs") == "docs-safeclip-v2"
    copy = everything(store, "docs-safeclip-v1")  # the verbatim copy the alias pointed at first
    assert {i: p.payload for i, p in copy.items()} == payloads
    assert all(np.allclose(copy[i].vectors[""], original[i].vectors[""], atol=1e-6) for i in payloads)

    assert rollback(store, "docs") == "docs-safeclip-v1"
    assert store.alias_target("docs") == "docs-safeclip-v1"
    assert rollback(store, "docs") == "docs-safeclip-v2"  # and forward again
    assert cleanup(store, "docs", dry_run=True) == ["docs-safeclip-v1"]
    assert cleanup(store, "docs") == ["docs-safeclip-v1"]
    assert store.list_collections() == ["docs-safeclip-v2"]
    with pytest.raises(ReindexError, match="was dropped"):
        rollback(store, "docs")


def test_rerun_of_a_finished_reindex_is_already_done_and_new_version_makes_v2(store, encoder):
    make_text_collection(store, "docs-v0", 50, encoder.space.stored_dim, alias="docs")
    reindex(store, "docs", encoder=encoder, text_field="text", progress=False)
    before = everything(store, "docs")

    again = reindex(store, "docs", encoder=encoder, text_field="text", drop_old=True, progress=False)
    assert again.already_done and again.target == "docs-safeclip-v1" and again.embedded_this_run == 0
    assert "already done" in again.summary()
    assert store.list_collections() == ["docs-safeclip-v1", "docs-v0"]
    assert everything(store, "docs").keys() == before.keys()
    # other settings are a new version without asking
    other = reindex(store, "docs", encoder=encoder, text_field="text", on_error="skip", progress=False)
    assert not other.already_done and other.target == "docs-safeclip-v2"
    rollback(store, "docs")

    report = reindex(store, "docs", encoder=encoder, text_field="text", drop_old=True, new_version=True,
                     progress=False)
    assert (report.source, report.target, report.dropped_old) == ("docs-safeclip-v1", "docs-safeclip-v3", True)
    assert store.list_collections() == ["docs-safeclip-v2", "docs-safeclip-v3", "docs-v0"]
    assert set(store.vector_specs("docs")) == {"", "safe"}


def _collection_with_bad_sources(store, encoder, tmp_path):
    root = tmp_path / "images"
    write_image(root / "good" / "a.png", 0)
    write_image(root / "good" / "b.png", 1)
    (root / "notes.png").write_text("this is not an image")
    write_image(tmp_path / "outside.png", 2)
    rng = np.random.default_rng(3)
    payloads = {0: {"path": "good/a.png"}, 1: {"path": "good/b.png"}, 2: {"path": "../outside.png"},
                3: {"path": "notes.png"}, 4: {"title": "no path"}, 5: {"path": "good/missing.png"}}
    store.create_collection("pics-v0", {"": VectorSpec(encoder.space.stored_dim, "cosine")})
    store.upsert("pics-v0", [Point(i, p, {"": original_vector(rng, encoder.space.stored_dim)})
                             for i, p in payloads.items()])
    store.switch_alias("pics", "pics-v0")
    return root, payloads


def test_unreadable_sources_keep_their_old_vectors_with_a_flag(store, encoder, tmp_path):
    root, payloads = _collection_with_bad_sources(store, encoder, tmp_path)
    old = everything(store, "pics-v0")
    report = reindex(store, "pics", encoder=encoder, image_field="path", image_root=root, mode="full",
                     progress=False, report=tmp_path / "out" / "report.json")

    reasons = {failure["id"]: failure["reason"] for failure in report.failures}
    assert set(reasons) == {2, 3, 4, 5}
    assert "outside the image root" in reasons[2]
    assert "not an image" in reasons[3] or "cannot identify" in reasons[3]
    assert "payload field 'path' is missing" in reasons[4]
    assert "not found" in reasons[5]
    new = everything(store, "pics")
    assert set(new) == set(payloads)  # nothing dropped
    for point_id in reasons:
        assert new[point_id].payload[ERROR_FIELD] == reasons[point_id]
        assert np.allclose(new[point_id].vectors[""], old[point_id].vectors[""], atol=1e-6)
    safe = encoder.encode_image([root / "good" / "a.png", root / "good" / "b.png"])
    assert cosine(new[0].vectors[""], safe[0]) > 0.999 and cosine(new[1].vectors[""], safe[1]) > 0.999
    assert ERROR_FIELD not in new[0].payload
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {f["id"] for f in written["failures"]} == {2, 3, 4, 5} and written["kept"] == 4


def test_unreadable_sources_are_left_out_and_counted_with_skip(store, encoder, tmp_path):
    root, payloads = _collection_with_bad_sources(store, encoder, tmp_path)
    report = reindex(store, "pics", encoder=encoder, image_field="path", image_root=root, on_error="skip",
                     progress=False)
    assert report.skipped == 4 and report.points == 2 and {f["id"] for f in report.failures} == {2, 3, 4, 5}
    assert set(everything(store, "pics")) == {0, 1}
    assert report.passes[-1]["expected_absent"] == 4 and report.passes[-1]["missing"] == 0
    assert "4 sources could not be read: 4 left out" in report.summary()


def test_dry_run_writes_nothing(store, encoder):
    make_text_collection(store, "docs-v0", 70, encoder.space.stored_dim, alias="docs")
    before = (store.list_collections(), store.read_state("reindex:docs"))
    report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, dry_run=True, progress=False)
    plan = report.plan
    assert report.dry_run and report.target == plan["target"]
    assert (store.list_collections(), store.read_state("reindex:docs")) == before
    assert plan["target"] == "docs-safeclip-v1" and plan["points"] == 70 and plan["mode"] == "side-by-side"
    assert plan["sample"]["fields_found"] == {"text": 48} and plan["sample"]["examples"][0]["text"] == text_of(0)
    assert plan["target_vectors"] == {"(unnamed)": "size 64, cosine", "safe": "size 64, cosine"}
    assert plan["estimated_seconds"] > 0


def test_complete_point_gives_an_application_point_the_safe_layout(store, encoder):
    make_text_collection(store, "docs-v0", 20, encoder.space.stored_dim, alias="docs")
    reindex(store, "docs", encoder=encoder, text_field="text", progress=False)
    original = original_vector(np.random.default_rng(9), encoder.space.stored_dim)
    point = complete_point(store, "docs", Point(500, {"text": "a red boat"}, {"": original}), encoder)
    safe = encoder.encode_text(["a red boat"])[0]
    assert cosine(point.vectors["safe"], safe) > 0.999 and np.array_equal(point.vectors[""], original)
    assert point.payload["safeclip_shift"] == pytest.approx(float(shift_score(original[None], safe[None])[0]), abs=1e-5)


@pytest.mark.slow
def test_cli_reindex_rollback_cleanup(tmp_path, encoder, tiny_model_dir):
    db = tmp_path / "db"
    store = open_store(db)
    make_text_collection(store, "docs-v0", 40, encoder.space.stored_dim, alias="docs")
    store.close()
    runner = CliRunner()
    base = ["reindex", "--qdrant", str(db), "--collection", "docs", "--model", str(tiny_model_dir),
            "--text-field", "text", "--no-progress"]
    dry = runner.invoke(cli, base + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["target"] == "docs-safeclip-v1"
    with runner.isolated_filesystem(temp_dir=tmp_path):
        done = runner.invoke(cli, base + ["--batch-size", "16"])
        assert done.exit_code == 0, done.output
        assert "docs-v0 -> docs-safeclip-v1 (side-by-side), 40 points" in done.output
        assert json.loads(open("reindex-docs.json").read())["points"] == 40
    back = runner.invoke(cli, ["reindex", "rollback", "--qdrant", str(db), "--collection", "docs"])
    assert back.exit_code == 0 and "now points at docs-v0" in back.output
    bad = runner.invoke(cli, base[:7] + ["--text-field", "text", "--collection", "nowhere"])
    assert bad.exit_code == 1 and bad.output.strip().count("\n") == 0 and "no collection or alias 'nowhere'" in bad.output
    gone = runner.invoke(cli, ["reindex", "cleanup", "--qdrant", str(db), "--collection", "docs"])
    assert gone.exit_code == 0 and "dropped docs-safeclip-v1" in gone.output


def test_side_by_side_keep_leaves_unreadable_points_without_a_safe_vector(store, encoder, tmp_path):
    root, payloads = _collection_with_bad_sources(store, encoder, tmp_path)
    old = everything(store, "pics-v0")
    report = reindex(store, "pics", encoder=encoder, image_field="path", image_root=root, progress=False)
    new = everything(store, "pics")
    assert set(new) == set(payloads) and report.kept == 4
    for point_id in (2, 3, 4, 5):
        assert "safe" not in new[point_id].vectors and "safeclip_shift" not in new[point_id].payload
        assert ERROR_FIELD in new[point_id].payload
        assert np.allclose(new[point_id].vectors[""], old[point_id].vectors[""], atol=1e-6)
    assert "safe" in new[0].vectors and "safeclip_shift" in new[0].payload


def test_follow_up_side_by_side_drops_the_old_safe_vector_of_points_whose_source_now_fails(store, encoder, tmp_path):
    root = tmp_path / "images"
    for number in range(4):
        write_image(root / f"{number}.png", number)
    rng = np.random.default_rng(5)
    store.create_collection("pics-v0", {"": VectorSpec(encoder.space.stored_dim, "cosine")})
    store.upsert("pics-v0", [Point(i, {"path": f"{i}.png"}, {"": original_vector(rng, encoder.space.stored_dim)})
                             for i in range(4)])
    store.switch_alias("pics", "pics-v0")
    reindex(store, "pics", encoder=encoder, image_field="path", image_root=root, progress=False)
    first = everything(store, "pics")
    assert all("safe" in point.vectors and "safeclip_shift" in point.payload for point in first.values())

    (root / "2.png").unlink()
    (root / "3.png").write_text("this is not an image any more")
    report = reindex(store, "pics", encoder=encoder, image_field="path", image_root=root, new_version=True,
                     progress=False)

    assert report.target == "pics-safeclip-v2" == store.alias_target("pics") and report.kept == 2
    second = everything(store, "pics")
    for point_id in (2, 3):
        assert set(second[point_id].vectors) == {""} and "safeclip_shift" not in second[point_id].payload
        assert ERROR_FIELD in second[point_id].payload
        assert np.allclose(second[point_id].vectors[""], first[point_id].vectors[""], atol=1e-6)
    for point_id in (0, 1):
        assert "safe" in second[point_id].vectors and ERROR_FIELD not in second[point_id].payload


def test_an_unfinished_job_resumes_only_with_its_settings(store, encoder):
    make_text_collection(store, "docs-v0", 60, encoder.space.stored_dim, alias="docs")
    job = {}

    class Stop(Exception):
        pass

    original_write = store.write_state

    def stop_after_first_page(key, state):
        original_write(key, state)
        if key == "reindex:docs" and state["counters"]["copied"] >= 16:
            job.update(state)
            raise Stop

    store.write_state = stop_after_first_page
    with pytest.raises(Stop):
        reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, progress=False)
    store.write_state = original_write
    assert job["phase"] == "copy"
    with pytest.raises(ReindexError, match="unfinished reindex of .docs. .*other settings \\(mode, score_field\\)"):
        reindex(store, "docs", encoder=encoder, text_field="text", mode="full", progress=False)
    report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, progress=False)
    assert report.resumed and report.embedded_this_run <= 60 - 16 + 16 * 3 + 32
    assert set(everything(store, "docs", False)) == set(range(60))


def test_upserts_are_split_to_stay_under_the_request_limit():
    from safeclip_sdk.index.reindex.pipeline import request_chunks

    points = [Point(i, {"text": "x" * 1000}, {"": np.zeros(512, dtype=np.float32)}) for i in range(100)]
    chunks = request_chunks(points, max_bytes=64_000)
    assert [p.id for chunk in chunks for p in chunk] == list(range(100))
    assert all(len(chunk) <= 64_000 // (12 * 512 + 1000) + 1 for chunk in chunks) and len(chunks) > 1
