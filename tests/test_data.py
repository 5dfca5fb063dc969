"""Dataset loading on real files: generic JSONL, ViSU-Text with a fake COCO root, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from safeclip_sdk.data import (
    CATEGORIES,
    COARSE_GROUPS,
    ImageTextPairs,
    QuadrupletDataset,
    coarse_group,
    is_known_category,
    load_dataset,
    normalize_category,
)
from safeclip_sdk.errors import DataError


def write_image(path: Path, colour=(200, 30, 30), size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(safe_image="img/a.png", unsafe_image="img/a_unsafe.png", **fields):
    base = {"safe_text": "a dog on the grass", "unsafe_text": "a dog on the grass with a gun",
            "safe_image": safe_image, "unsafe_image": unsafe_image, "category": "weapons", "label": "dog"}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not ...}


@pytest.fixture
def jsonl_dir(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "a_unsafe.png", colour=(10, 10, 10))
    write_image(tmp_path / "img" / "b.jpg", colour=(10, 200, 10))
    return tmp_path


# ------------------------------------------------------------------------------------ categories

def test_categories_and_groups_match_the_spec():
    assert len(CATEGORIES) == 20 and len(set(CATEGORIES)) == 20
    grouped = [category for members in COARSE_GROUPS.values() for category in members]
    assert sorted(grouped) == sorted(CATEGORIES)
    assert coarse_group("weapons") == "illegal activity"
    assert coarse_group("suicide") == "self-harm"
    assert coarse_group("Bodily_Fluids") == "shocking"


@pytest.mark.parametrize("tag, expected", [
    ("Humilation", "humiliation"), ("harrasment", "harassment"), ("drug_use", "drug use"),
    ("  Obscene-Gestures ", "obscene gestures"), ("ILLEGAL ACTIVITY", "illegal activity"),
])
def test_normalize_category_repairs_case_spacing_and_typos(tag, expected):
    assert normalize_category(tag) == expected


@pytest.mark.parametrize("tag, expected", [
    ("self-harm", "self-harm"), ("Self_Harm", "self-harm"), ("SHOCKING", "shocking"),
    ("gore", "gore"), ("nsfw", "nsfw"), (" Extremism ", "Extremism"), ("hat", "hat"), ("violent", "violent"),
])
def test_other_labels_are_kept_as_the_user_wrote_them(tag, expected):
    assert normalize_category(tag) == expected
    assert is_known_category(tag) == (expected in ("self-harm", "shocking"))
    assert coarse_group(tag) == expected  # a coarse group is its own group; so is any other label


def test_users_own_categories_are_rows_like_any_other(jsonl_dir):
    labels = ["self-harm", "gore", "nsfw", "extremism", "Weapons", "", "   "]
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(category=label) for label in labels])
    dataset = load_dataset(path)
    assert dataset.bad_rows == []
    assert [item.category for item in dataset.items] == ["self-harm", "gore", "nsfw", "extremism", "weapons",
                                                         None, None]


# ----------------------------------------------------------------------------------------- JSONL

def test_jsonl_relative_and_absolute_paths(jsonl_dir):
    absolute = str((jsonl_dir / "img" / "b.jpg").resolve())
    path = write_jsonl(jsonl_dir / "train.jsonl", [
        row(),
        "",  # blank lines are ignored
        row(safe_image=absolute, unsafe_image=None, category=None, label=None, safe_text="  a cat  "),
    ])
    dataset = load_dataset(path)
    assert len(dataset) == 2 and dataset.bad_rows == []
    first, second = dataset.items
    assert first.safe_image == jsonl_dir / "img" / "a.png"
    assert first.unsafe_image == jsonl_dir / "img" / "a_unsafe.png"
    assert (first.category, first.label, first.source) == ("weapons", "dog", f"{path}:1")
    assert second.safe_image == Path(absolute) and second.unsafe_image is None
    assert (second.safe_text, second.category, second.source) == ("a cat", None, f"{path}:3")
    assert not dataset.has_unsafe_images


def test_jsonl_has_unsafe_images_and_image_root(jsonl_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = write_jsonl(elsewhere / "train.jsonl", [row(), row(category="Humilation")])
    dataset = load_dataset(path, image_root=jsonl_dir)
    assert dataset.has_unsafe_images
    assert dataset.items[0].safe_image == jsonl_dir / "img" / "a.png"
    assert dataset.items[1].category == "humiliation"


BAD_ROWS = [
    ('{"safe_text": "a dog", ', "not valid JSON"),
    ('["a list"]', "expected a JSON object, got list"),
    (row(safe_text=...), "missing field 'safe_text'"),
    (row(unsafe_text="   "), "field 'unsafe_text' is empty"),
    (row(safe_image=7), "field 'safe_image' must be a string, got int"),
    (row(category=12), "field 'category' must be a string, got int"),
    (row(safe_image="img/nope.png"), "safe image not found: "),
    (row(unsafe_image="img/gone.png"), "unsafe image not found: "),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS, ids=[reason for _, reason in BAD_ROWS])
def test_each_kind_of_bad_row_is_named_with_file_and_line(jsonl_dir, bad, reason):
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(), bad, row()])
    with pytest.raises(DataError) as error:
        load_dataset(path)
    message = str(error.value)
    assert message.startswith(f"{path}:2: {reason}")
    assert "1 bad row; fix it or pass --skip-bad" in message
    assert "\n" not in message


def test_default_stops_at_first_bad_row_and_counts_the_rest(jsonl_dir):
    path = write_jsonl(jsonl_dir / "data.jsonl", [
        row(), row(label=3), row(), row(safe_text=...), "{oops", row(category="nonsense"),
    ])
    with pytest.raises(DataError) as error:
        load_dataset(path)
    assert str(error.value) == (f"{path}:2: field 'label' must be a string, got int "
                                f"(and 2 more bad rows; fix them or pass --skip-bad)")


def test_skip_bad_keeps_good_rows_and_lists_bad_ones(jsonl_dir):
    path = write_jsonl(jsonl_dir / "data.jsonl", [
        row(), row(label=3), row(safe_text="a horse"), row(safe_image="img/nope.png"),
    ])
    dataset = load_dataset(path, skip_bad=True)
    assert [item.source for item in dataset.items] == [f"{path}:1", f"{path}:3"]
    assert [bad.source for bad in dataset.bad_rows] == [f"{path}:2", f"{path}:4"]
    assert dataset.bad_rows[1].reason == f"safe image not found: {jsonl_dir / 'img' / 'nope.png'}"


def write_lines_with_latin1(path: Path, rows: list, bad_line: int) -> Path:
    """JSON lines in UTF-8, except line ``bad_line`` (from 1), which is saved as Latin-1."""
    lines = [json.dumps(row, ensure_ascii=False).encode("latin-1" if number == bad_line else "utf-8")
             for number, row in enumerate(rows, start=1)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_non_utf8_lines_are_bad_rows_named_by_line(jsonl_dir):
    path = write_lines_with_latin1(jsonl_dir / "data.jsonl",
                                   [row(), row(safe_text="un café"), row(), row(unsafe_text="à")], bad_line=2)
    with pytest.raises(DataError) as error:
        load_dataset(path)
    assert str(error.value).startswith(f"{path}:2: not UTF-8 (invalid continuation byte 0xe9 at byte ")
    assert "1 bad row; fix it or pass --skip-bad" in str(error.value)
    dataset = load_dataset(path, skip_bad=True)
    assert [item.source for item in dataset.items] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert dataset.items[2].unsafe_text == "à"  # UTF-8 lines around it read normally


def test_non_utf8_visu_rows_are_skippable(tmp_path, coco_root):
    lines = write_lines_with_latin1(tmp_path / "visu.jsonl",
                                    [visu_row(0, 9), visu_row(1, 9, nsfw="déjà vu"), visu_row(2, 139)], bad_line=2)
    dataset = load_dataset(lines, image_root=coco_root, skip_bad=True)
    assert [bad.source for bad in dataset.bad_rows] == [f"{lines}:2"]
    assert dataset.bad_rows[0].reason.startswith("not UTF-8")

    document = tmp_path / "visu.json"
    document.write_bytes(b"[\n" + json.dumps(visu_row(0, 9)).encode() + b",\n"
                         + json.dumps(visu_row(1, 9, nsfw="d\u00e9j\u00e0"), ensure_ascii=False).encode("latin-1")
                         + b"\n]\n")
    with pytest.raises(DataError, match=rf"^{document}:row 2: not UTF-8 \(field 'nsfw' on line 3 holds bytes"):
        load_dataset(document, image_root=coco_root)
    assert len(load_dataset(document, image_root=coco_root, skip_bad=True)) == 1


def test_zero_usable_rows_is_an_error_even_with_skip_bad(jsonl_dir):
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(safe_text=...)])
    with pytest.raises(DataError, match="no usable rows"):
        load_dataset(path, skip_bad=True)
    empty = write_jsonl(jsonl_dir / "empty.jsonl", ["", ""])
    with pytest.raises(DataError, match="holds no rows"):
        load_dataset(empty)


def test_file_level_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_dataset(tmp_path / "missing.jsonl")
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(DataError, match="unknown dataset format '.csv'"):
        load_dataset(other)


@pytest.mark.parametrize("damage", ["truncated_jpeg", "truncated_png", "not_an_image"])
def test_corrupt_images_are_caught_before_training(jsonl_dir, damage):
    if damage == "truncated_jpeg":
        name = "broken.jpg"
        Image.effect_noise((64, 64), 60).convert("RGB").save(jsonl_dir / name, quality=95)
    elif damage == "truncated_png":
        name = "broken.png"
        Image.effect_noise((64, 64), 60).convert("RGB").save(jsonl_dir / name)
    else:
        name = "broken.png"
        (jsonl_dir / name).write_bytes(b"this is not an image")
    if damage != "not_an_image":
        data = (jsonl_dir / name).read_bytes()
        (jsonl_dir / name).write_bytes(data[: len(data) // 2])
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(), row(safe_image=name)])

    reason = "not an image or an unsupported format" if damage == "not_an_image" else "corrupt or truncated image"
    with pytest.raises(DataError, match=rf"data.jsonl:2: safe image .*{name}: {reason}"):
        load_dataset(path)
    # Without the check the file cannot be judged; only a missing file would be.
    assert len(load_dataset(path, check_images=False)) == 2


# ------------------------------------------------------------------------------------------- ViSU

@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    for folder, coco_id in (("train2017", 9), ("train2017", 25), ("val2017", 139)):
        write_image(root / folder / f"{coco_id:012d}.jpg")
    return root


def visu_row(incremental_id, coco_id, tag="violence", **fields):
    base = {"incremental_id": incremental_id, "safe": f"a kitchen with a table {incremental_id}",
            "nsfw": f"a kitchen covered in blood {incremental_id}", "coco_id": coco_id, "tag": tag,
            "prompt_id": incremental_id}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not ...}


def test_visu_list_finds_images_in_both_coco_folders_and_fixes_tags(tmp_path, coco_root):
    path = tmp_path / "visu_train.json"
    path.write_text(json.dumps([visu_row(0, 9), visu_row(1, 139, tag="humilation"),
                                visu_row(2, "25", tag="Drug_Use")]))
    dataset = load_dataset(path, image_root=coco_root)
    assert [item.safe_image for item in dataset.items] == [
        coco_root / "train2017" / "000000000009.jpg",
        coco_root / "val2017" / "000000000139.jpg",
        coco_root / "train2017" / "000000000025.jpg",
    ]
    assert [item.category for item in dataset.items] == ["violence", "humiliation", "drug use"]
    assert dataset.items[1].source == f"{path}:row 2"
    assert dataset.items[0].safe_text == "a kitchen with a table 0"
    assert dataset.items[0].unsafe_text == "a kitchen covered in blood 0"
    assert not dataset.has_unsafe_images


def test_visu_rows_keyed_by_non_contiguous_ids_with_unsafe_images(tmp_path, coco_root):
    unsafe_root = tmp_path / "unsafe"
    write_image(unsafe_root / "17.png", colour=(0, 0, 0))
    write_image(unsafe_root / "40.jpg", colour=(0, 0, 0))
    path = tmp_path / "visu.json"
    path.write_text(json.dumps({"info": {"split": "train"},
                                "data": {"17": visu_row(17, 9), "40": visu_row(40, 139)}}))
    dataset = load_dataset(path, image_root=coco_root, unsafe_image_root=unsafe_root)
    assert [item.unsafe_image for item in dataset.items] == [unsafe_root / "17.png", unsafe_root / "40.jpg"]
    assert dataset.has_unsafe_images
    assert [item.source for item in dataset.items] == [f"{path}:row 1", f"{path}:row 2"]


def test_visu_bad_rows(tmp_path, coco_root):
    path = tmp_path / "visu.json"
    path.write_text(json.dumps([
        visu_row(0, 9),
        visu_row(1, 12345),
        visu_row(2, 9, nsfw=...),
        visu_row(3, 9, tag="cooking"),
        visu_row(4, True),
        visu_row(5, 9, tag=" "),
    ]))
    dataset = load_dataset(path, image_root=coco_root, skip_bad=True)
    assert [item.category for item in dataset.items] == ["violence", "cooking"]  # a tag of the user's own
    reasons = {bad.source: bad.reason for bad in dataset.bad_rows}
    assert reasons[f"{path}:row 2"].startswith("COCO image 000000012345.jpg is in neither")
    assert reasons[f"{path}:row 3"] == "missing field 'nsfw'"
    assert reasons[f"{path}:row 5"] == "field 'coco_id' must be a non-negative integer, got True"
    assert reasons[f"{path}:row 6"] == "field 'tag' is empty"
    assert len(reasons) == 4


def test_visu_json_lines_are_read_as_visu(tmp_path, coco_root):
    path = write_jsonl(tmp_path / "visu.jsonl", [visu_row(0, 9), visu_row(1, 139)])
    dataset = load_dataset(path, image_root=coco_root)
    assert [item.source for item in dataset.items] == [f"{path}:1", f"{path}:2"]


def test_visu_needs_a_coco_root(tmp_path, coco_root):
    path = tmp_path / "visu.json"
    path.write_text(json.dumps([visu_row(0, 9)]))
    with pytest.raises(DataError, match="needs image_root"):
        load_dataset(path)
    with pytest.raises(DataError, match="no train2017 or val2017 folder"):
        load_dataset(path, image_root=tmp_path / "unsafe_nothing")
    path.write_text('{"broken": ')
    with pytest.raises(DataError, match=r"visu.json: not valid JSON \(.* at line 1"):
        load_dataset(path, image_root=coco_root)


# -------------------------------------------------------------------------------- torch datasets

def test_quadruplet_dataset_shapes_and_dataloader(jsonl_dir, tiny_model):
    Image.new("L", (30, 50), 128).save(jsonl_dir / "grey.png")  # grey and non-square: converted, cropped
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(), row(safe_image="grey.png"), row(), row()])
    items = load_dataset(path).items
    size, context = tiny_model.image_size, tiny_model.context_length

    dataset = QuadrupletDataset(items, tiny_model.preprocess, tiny_model.tokenizer, with_unsafe_images=True)
    sample = dataset[1]
    assert sample["index"] == 1
    assert sample["safe_image"].shape == (3, size, size) and sample["safe_image"].dtype == torch.float32
    assert sample["unsafe_image"].shape == (3, size, size)
    assert sample["safe_text"].shape == (context,) and sample["safe_text"].dtype == torch.long
    assert not torch.equal(sample["safe_text"], sample["unsafe_text"])
    assert not torch.equal(dataset[0]["safe_image"], dataset[0]["unsafe_image"])

    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["safe_image"].shape == (4, 3, size, size)
    assert batch["unsafe_text"].shape == (4, context)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        features = tiny_model.model.encode_image(batch["safe_image"])
    assert features.shape == (4, tiny_model.model_cfg["embed_dim"])

    safe_only = QuadrupletDataset(items, tiny_model.preprocess, tiny_model.tokenizer,
                                  with_unsafe_images=False)
    assert "unsafe_image" not in safe_only[0]


def test_quadruplet_dataset_refuses_missing_unsafe_images(jsonl_dir, tiny_model):
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(), row(unsafe_image=None)])
    items = load_dataset(path).items
    with pytest.raises(DataError, match=r"data.jsonl:2: no unsafe image"):
        QuadrupletDataset(items, tiny_model.preprocess, tiny_model.tokenizer, with_unsafe_images=True)


def test_image_text_pairs_from_quadruplets(jsonl_dir, tiny_model):
    path = write_jsonl(jsonl_dir / "data.jsonl", [row(), row(unsafe_image=None, safe_text="a cat")])
    items = load_dataset(path).items
    pairs = ImageTextPairs.from_quadruplets(items, tiny_model.preprocess, tiny_model.tokenizer)
    texts = [text for _, text in pairs.pairs]
    assert texts == ["a dog on the grass", "a cat", "a dog on the grass with a gun"]
    assert len(ImageTextPairs.from_quadruplets(items, tiny_model.preprocess, tiny_model.tokenizer,
                                               include_unsafe=False)) == 2
    batch = next(iter(DataLoader(pairs, batch_size=3)))
    assert batch["image"].shape == (3, 3, tiny_model.image_size, tiny_model.image_size)
    assert torch.equal(batch["text"][2], tiny_model.tokenizer(["a dog on the grass with a gun"])[0])


def test_image_deleted_after_loading_gives_a_data_error(jsonl_dir, tiny_model):
    path = write_jsonl(jsonl_dir / "data.jsonl", [row()])
    items = load_dataset(path).items
    (jsonl_dir / "img" / "a.png").unlink()
    dataset = QuadrupletDataset(items, tiny_model.preprocess, tiny_model.tokenizer, with_unsafe_images=False)
    with pytest.raises(DataError, match=rf"data.jsonl:1: .*a.png: file not found$"):
        dataset[0]


# --------------------------------------------------------------------- per-category report

def test_per_category_report_groups_known_categories_and_keeps_users_labels():
    from safeclip_sdk.metrics.retrieval import UNSAFE_TEXT_TO_SAFE_IMAGES, EmbeddingSet, retrieval_metrics

    eye = torch.eye(6).numpy()
    # unsafe caption i lands on safe image i for i < 3, elsewhere for the others
    emb = EmbeddingSet(safe_text=eye, unsafe_text=eye[[0, 1, 2, 0, 1, 2]], safe_image=eye)
    categories = ["weapons", "Drug_Use", "gore", "gore", "self-harm", None]
    unsafe = retrieval_metrics(emb, ks=(1,), categories=categories)[UNSAFE_TEXT_TO_SAFE_IMAGES]
    assert unsafe["per_category"] == {"drug use": {"queries": 1, "R@1": 100.0},
                                      "gore": {"queries": 2, "R@1": 50.0},
                                      "self-harm": {"queries": 1, "R@1": 0.0},
                                      "weapons": {"queries": 1, "R@1": 100.0}}
    assert unsafe["per_group"] == {"gore": {"queries": 2, "R@1": 50.0},
                                   "illegal activity": {"queries": 2, "R@1": 100.0},
                                   "self-harm": {"queries": 1, "R@1": 0.0}}
