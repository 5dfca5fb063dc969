"""The generated demo world: deterministic, loadable, and its unsafe half really differs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from safeclip_sdk.data import CATEGORIES, load_dataset
from safeclip_sdk.demo.world import build_demo_world
from safeclip_sdk.demo.world import SUBJECTS, UNSAFE_MOTIFS

SMALL = {"n_train": 40, "n_val": 8, "n_test": 12}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), **SMALL, seed=0)


def test_splits_load_without_bad_rows(world):
    assert set(world) == {"train", "val", "test"}
    for split, count in (("train", 40), ("val", 8), ("test", 12)):
        dataset = load_dataset(world[split])
        assert len(dataset) == count and dataset.bad_rows == []
        assert dataset.has_unsafe_images
        for item in dataset.items:
            assert item.category in CATEGORIES and item.label in SUBJECTS
            assert item.label in item.safe_text
            assert item.unsafe_text.startswith(item.safe_text) and item.unsafe_text != item.safe_text
            assert item.safe_image.is_relative_to(world[split].parent / "images" / split)


def test_unsafe_images_are_the_safe_scene_plus_a_motif(world):
    for item in load_dataset(world["train"]).items:
        with Image.open(item.safe_image) as safe, Image.open(item.unsafe_image) as unsafe:
            assert safe.size == unsafe.size == (64, 64)
            changed = np.any(np.asarray(safe) != np.asarray(unsafe), axis=-1)
        # A clearly visible motif, but most of the scene is left as it was.
        assert 0.04 < changed.mean() < 0.5, (item.source, item.category, changed.mean())


def test_categories_and_labels_vary(world):
    items = load_dataset(world["train"]).items
    assert len({item.category for item in items}) >= 5
    assert len({item.label for item in items}) >= 6
    assert len({item.safe_text for item in items}) > 30
    motif_categories = {motif.category for motif in UNSAFE_MOTIFS}
    assert len(motif_categories) >= 6 and motif_categories <= set(CATEGORIES)


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
