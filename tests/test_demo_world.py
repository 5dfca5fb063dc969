"""The generated demo world: deterministic, loadable, varied, with held-out object combinations, and
unsafe captions that are rewrites of their safe twins."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import safeclip_sdk
from safeclip_sdk.data import CATEGORIES, load_dataset
from safeclip_sdk.demo.world import CAPTION_TEMPLATES, DEMO_CATEGORIES, SUBJECTS, UNSAFE_MOTIFS, build_demo_world
from safeclip_sdk.demo.world_objects import object_sprite

SMALL = {"n_train": 40, "n_val": 8, "n_test": 12}
# Enough train scenes for every object type to appear, and enough val/test scenes to measure.
MEDIUM = {"n_train": 300, "n_val": 60, "n_test": 60}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), **SMALL, seed=0)


@pytest.fixture(scope="module")
def medium_rows(tmp_path_factory):
    files = build_demo_world(tmp_path_factory.mktemp("medium"), **MEDIUM, seed=3)
    return {split: _rows(path) for split, path in files.items()}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _inserted_words(safe: str, unsafe: str) -> list[str] | None:
    """The words ``unsafe`` adds to ``safe`` as one contiguous run, or None if it is no such rewrite."""
    safe_words, unsafe_words = _words(safe), _words(unsafe)
    extra = len(unsafe_words) - len(safe_words)
    for cut in range(len(safe_words) + 1):
        if extra > 0 and unsafe_words[:cut] + unsafe_words[cut + extra:] == safe_words:
            return unsafe_words[cut:cut + extra]
    return None


def test_splits_load_without_bad_rows(world):
    assert set(world) == {"train", "val", "test"}
    for split, count in (("train", 40), ("val", 8), ("test", 12)):
        dataset = load_dataset(world[split])
        assert len(dataset) == count and dataset.bad_rows == []
        assert dataset.has_unsafe_images
        for item, row in zip(dataset.items, _rows(world[split])):
            assert item.category in CATEGORIES and item.label in SUBJECTS
            assert item.label == row["objects"][0]
            # The unsafe caption rewrites the safe one: one phrase put in, every object still named.
            assert _inserted_words(item.safe_text, item.unsafe_text), (item.safe_text, item.unsafe_text)
            for name in row["objects"]:
                assert name in item.safe_text and name in item.unsafe_text
            assert item.safe_image.is_relative_to(world[split].parent / "images" / split)


def test_unsafe_images_are_the_safe_scene_plus_a_motif(world):
    for item in load_dataset(world["train"]).items:
        with Image.open(item.safe_image) as safe, Image.open(item.unsafe_image) as unsafe:
            assert safe.size == unsafe.size == (64, 64)
            changed = np.any(np.asarray(safe) != np.asarray(unsafe), axis=-1)
        # A clearly visible motif in a free quadrant, but most of the scene is left as it was.
        assert 0.04 < changed.mean() < 0.5, (item.source, item.category, changed.mean())


def test_categories_and_labels_vary(world):
    items = load_dataset(world["train"]).items
    assert len({item.category for item in items}) >= 5
    assert len({item.label for item in items}) >= 6
    assert len({item.safe_text for item in items}) > 30
    motif_categories = {motif.category for motif in UNSAFE_MOTIFS}
    assert len(motif_categories) >= 6 and motif_categories <= set(CATEGORIES)


def test_hundreds_of_object_types_each_with_its_own_drawing():
    assert len(SUBJECTS) >= 200 and len(set(SUBJECTS)) == len(SUBJECTS)
    assert all(1 <= len(name.split()) <= 2 for name in SUBJECTS)
    drawings = {object_sprite(name, "red", 26).tobytes() for name in SUBJECTS}
    assert len(drawings) == len(SUBJECTS)
    redrawn = object_sprite.__wrapped__(SUBJECTS[5], "blue", 26)  # past the cache
    assert redrawn.tobytes() == object_sprite(SUBJECTS[5], "blue", 26).tobytes()


def test_every_category_has_several_motifs_and_phrasings():
    assert set(DEMO_CATEGORIES) <= set(CATEGORIES)
    for category in DEMO_CATEGORIES:
        motifs = [motif for motif in UNSAFE_MOTIFS if motif.category == category]
        phrasings = {phrase for motif in motifs for phrase in motif.phrases + motif.endings}
        assert len(motifs) >= 2 and len(phrasings) >= 3, category


def test_scenes_hold_one_to_three_objects_in_many_templates(medium_rows):
    rows = [row for split_rows in medium_rows.values() for row in split_rows]
    assert {len(row["objects"]) for row in rows} == {1, 2, 3}
    assert len(CAPTION_TEMPLATES) >= 6 and len({row["template"] for row in rows}) >= 6
    assert len({row["motif"] for row in rows}) == len(UNSAFE_MOTIFS)


def test_val_and_test_combinations_never_occur_in_train(medium_rows):
    train_pairs = {frozenset(pair) for row in medium_rows["train"]
                   for pair in itertools.combinations(row["objects"], 2)}
    train_combinations = {frozenset(row["objects"]) for row in medium_rows["train"]}
    for split in ("val", "test"):
        multi = [row for row in medium_rows[split] if len(row["objects"]) > 1]
        assert len(multi) > len(medium_rows[split]) // 2
        for row in multi:
            assert frozenset(row["objects"]) not in train_combinations, (split, row["objects"])
            assert not train_pairs & {frozenset(pair) for pair in itertools.combinations(row["objects"], 2)}
    assert {name for row in medium_rows["train"] for name in row["objects"]} == set(SUBJECTS)


def test_an_unsafe_captions_nearest_safe_caption_is_its_twin(medium_rows):
    for split, rows in medium_rows.items():
        safe_words = [set(_words(row["safe_text"])) for row in rows]
        own_twin = 0
        for index, row in enumerate(rows):
            unsafe = set(_words(row["unsafe_text"]))
            similarity = [len(unsafe & safe) / len(unsafe | safe) for safe in safe_words]
            own_twin += similarity[index] >= max(similarity)
        assert own_twin > 0.7 * len(rows), (split, own_twin, len(rows))


def test_captions_fit_the_demo_models_context(medium_rows):
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except Exception as error:  # a broken torch/torchvision install fails with RuntimeError, not ImportError
        pytest.skip(f"open_clip's tokenizer cannot be imported: {error}")
    config = Path(safeclip_sdk.__file__).parent / "model" / "configs" / "safeclip-demo.json"
    context_length = json.loads(config.read_text())["text_cfg"]["context_length"]
    tokenizer = SimpleTokenizer()
    longest = max((row["unsafe_text"] for rows in medium_rows.values() for row in rows),
                  key=lambda text: len(tokenizer.encode(text)))
    assert len(tokenizer.encode(longest)) + 2 <= context_length, longest  # + start and end tokens


def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    again = build_demo_world(tmp_path / "again", **SMALL, seed=0)
    other = build_demo_world(tmp_path / "other", **SMALL, seed=1)
    image = "images/train/00003_unsafe.png"
    assert again["train"].read_bytes() == world["train"].read_bytes()
    assert (again["train"].parent / image).read_bytes() == (world["train"].parent / image).read_bytes()
    assert other["train"].read_bytes() != world["train"].read_bytes()
    assert (other["train"].parent / image).read_bytes() != (world["train"].parent / image).read_bytes()


def test_an_existing_world_is_reused_and_a_different_one_rebuilt(tmp_path):
    files = build_demo_world(tmp_path, n_train=6, n_val=2, n_test=2)
    marker = json.loads((tmp_path / "world.json").read_text())
    assert marker["settings"]["n_train"] == 6
    before = files["train"].stat().st_mtime_ns
    assert build_demo_world(tmp_path, n_train=6, n_val=2, n_test=2) == files
    assert files["train"].stat().st_mtime_ns == before

    build_demo_world(tmp_path, n_train=3, n_val=2, n_test=2)
    assert len(load_dataset(files["train"])) == 3
    assert not (tmp_path / "images" / "train" / "00005_safe.png").exists()


def test_image_size_is_honoured(tmp_path):
    files = build_demo_world(tmp_path, n_train=2, n_val=1, n_test=1, image_size=96)
    with Image.open(load_dataset(files["test"]).items[0].unsafe_image) as image:
        assert image.size == (96, 96)
