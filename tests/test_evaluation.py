import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk.cli.evaluate import model_names
from safeclip_sdk.cli.main import cli
from safeclip_sdk.data.quadruplets import Quadruplet
from safeclip_sdk.evaluation.protocol import (TEXT_ONLY_NOTE, EvalReport, base_model_of, encode_quadruplets, evaluate,
                                              zero_shot_accuracy, zero_shot_folder_accuracy)
from safeclip_sdk.metrics.retrieval import (IMAGE_TO_TEXT, TEXT_TO_IMAGE, UNSAFE_IMAGE_TO_ALL_TEXTS,
                                            UNSAFE_IMAGE_TO_UNSAFE_TEXTS, UNSAFE_TEXT_TO_ALL_IMAGES,
                                            UNSAFE_TEXT_TO_SAFE_IMAGES, UNSAFE_TEXT_TO_UNSAFE_IMAGES, EmbeddingSet,
                                            cosine, rank_ground_truth, retrieval_metrics)
from safeclip_sdk.model.folder import load_model

E = np.eye(8, dtype=np.float32)
HALF = np.float32(np.sqrt(0.5))


def hand_built(with_unsafe_images=True):
    """Safe images 2 and 3 swapped; unsafe captions: redirected (0), on their own unsafe image (1),
    tied between safe and unsafe image (2), on another quadruplet's unsafe image (3)."""
    return EmbeddingSet(
        safe_text=E[[0, 1, 2, 3]],
        safe_image=E[[0, 1, 3, 2]],
        unsafe_text=np.stack([E[0], E[5], HALF * (E[3] + E[6]), E[4]]),
        unsafe_image=E[[4, 5, 6, 7]] if with_unsafe_images else None,
    )


def test_retrieval_on_hand_built_embeddings_with_2n_galleries():
    results = retrieval_metrics(hand_built(), ks=(1, 2), categories=["violence", "violence", "sexual", None],
                                block_size=3)
    assert list(results) == [TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNSAFE_TEXT_TO_ALL_IMAGES, UNSAFE_IMAGE_TO_ALL_TEXTS,
                             UNSAFE_TEXT_TO_UNSAFE_IMAGES, UNSAFE_IMAGE_TO_UNSAFE_TEXTS]
    # unsafe to unsafe: caption 3 (E4) finds unsafe image 0 before its own; unsafe image 0 (E4) finds caption 3
    for direction in (UNSAFE_TEXT_TO_UNSAFE_IMAGES, UNSAFE_IMAGE_TO_UNSAFE_TEXTS):
        assert (results[direction]["gallery"], results[direction]["R@1"], results[direction]["R@2"]) == (4, 75.0, 100.0)
        assert "unsafe_top1" not in results[direction]
    # the swapped safe images 2 and 3 rank second; ties at 0 with the others do not push them down
    assert results[TEXT_TO_IMAGE] == {"queries": 4, "gallery": 4, "R@1": 50.0, "R@2": 100.0}
    assert results[IMAGE_TO_TEXT] == {"queries": 4, "gallery": 4, "R@1": 50.0, "R@2": 100.0}

    unsafe_text = results[UNSAFE_TEXT_TO_ALL_IMAGES]
    # ranks 0, 1 (own unsafe image first), 0 (tie goes to the ground truth), 1 (another unsafe image)
    assert (unsafe_text["gallery"], unsafe_text["R@1"], unsafe_text["R@2"]) == (8, 50.0, 100.0)
    assert unsafe_text["unsafe_top1"] == 50.0
    assert unsafe_text["per_category"] == {
        "sexual": {"queries": 1, "R@1": 100.0, "R@2": 100.0, "unsafe_top1": 0.0},
        "violence": {"queries": 2, "R@1": 50.0, "R@2": 100.0, "unsafe_top1": 50.0},
    }
    unsafe_image = results[UNSAFE_IMAGE_TO_ALL_TEXTS]
    # images 0-2 meet an unsafe caption first; image 3 is orthogonal to everything (all tied)
    assert (unsafe_image["R@1"], unsafe_image["R@2"], unsafe_image["unsafe_top1"]) == (25.0, 100.0, 75.0)
    assert unsafe_image["per_category"]["violence"]["unsafe_top1"] == 100.0


def test_text_only_mode_ranks_unsafe_captions_against_safe_images_only():
    emb = hand_built(with_unsafe_images=False)
    emb.unsafe_text = E[[1, 0, 3, 3]]  # ground truths: e0, e1, e3, e2 -> only caption 2 finds its image
    results = retrieval_metrics(emb, ks=(1, 10))
    assert list(results) == [TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNSAFE_TEXT_TO_SAFE_IMAGES]
    assert results[UNSAFE_TEXT_TO_SAFE_IMAGES] == {"queries": 4, "gallery": 4, "R@1": 25.0, "R@10": 100.0}


def test_ties_count_for_the_ground_truth_and_for_safe_items():
    same = np.ones((5, 3), dtype=np.float32)
    results = retrieval_metrics(EmbeddingSet(same, same, same, same), ks=(1,))
    for direction in (TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNSAFE_TEXT_TO_ALL_IMAGES, UNSAFE_IMAGE_TO_ALL_TEXTS):
        assert results[direction]["R@1"] == 100.0
    assert results[UNSAFE_TEXT_TO_ALL_IMAGES]["unsafe_top1"] == 0.0


@pytest.mark.parametrize("block_size", [1, 8, 53, 1000])
def test_blockwise_ranking_equals_full_matrix(block_size):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((106, 16)).astype(np.float32)
    queries = gallery[:53] + 1.5 * rng.standard_normal((53, 16)).astype(np.float32)  # noisy ground truths
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    full = unit(queries) @ unit(gallery).T
    order = np.argsort(-full, axis=1)
    expected_ranks = np.array([np.flatnonzero(row == i)[0] for i, row in enumerate(order)])

    ranking = rank_ground_truth(queries, gallery, num_safe=53, block_size=block_size)
    np.testing.assert_array_equal(ranking.ranks, expected_ranks)
    np.testing.assert_array_equal(ranking.top1_unsafe, order[:, 0] >= 53)
    assert 0 < ranking.top1_unsafe.sum() < 53 and 0 < (expected_ranks == 0).sum() < 53  # not a degenerate case


def test_similarity_is_pluggable():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    dot = lambda q, g: q @ g.T  # noqa: E731
    assert rank_ground_truth(queries, gallery, similarity=cosine).ranks.tolist() == [0]  # same direction: tie
    assert rank_ground_truth(queries, gallery, similarity=dot).ranks.tolist() == [1]  # longer vector wins


def write_png(path, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (30 + seed, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture
def quadruplets(tmp_path):
    """Six quadruplets over real PNG files (one grey, one RGBA), with categories and labels."""
    modes = ["RGB", "L", "RGBA", "RGB", "RGB", "RGB"]
    labels = ["dog", "cat", "dog", "car", "cat", "car"]
    categories = ["violence", "sexual", "violence", None, "hate", "sexual"]
    return [Quadruplet(safe_text=f"a photo of a {labels[i]} number {i}",
                       unsafe_text=f"a violent photo of a {labels[i]} number {i}",
                       safe_image=write_png(tmp_path / f"safe{i}.png", i, modes[i]),
                       unsafe_image=write_png(tmp_path / f"unsafe{i}.png", 100 + i),
                       category=categories[i], label=labels[i], source=f"test:{i}")
            for i in range(6)]


def test_encode_quadruplets_matches_the_model_on_real_files(tiny_model, quadruplets):
    emb = encode_quadruplets(tiny_model, quadruplets, batch_size=4)
    embed_dim = tiny_model.model_cfg["embed_dim"]
    for values in (emb.safe_text, emb.unsafe_text, emb.safe_image, emb.unsafe_image):
        assert values.shape == (6, embed_dim) and values.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-5)

    preprocess = tiny_model.preprocess
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(item.unsafe_image).convert("RGB")) for item in quadruplets])
        expected_images = tiny_model.model.encode_image(images, normalize=True).numpy()
        tokens = tiny_model.tokenizer([item.safe_text for item in quadruplets])
        expected_texts = tiny_model.model.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(emb.unsafe_image, expected_images, atol=1e-5)
    np.testing.assert_allclose(emb.safe_text, expected_texts, atol=1e-5)


def test_zero_shot_from_labels_and_from_an_image_folder_agree(tiny_model, quadruplets, tmp_path):
    from_labels = zero_shot_accuracy(tiny_model, quadruplets)
    assert from_labels["images"] == 6 and from_labels["classes"] == 3

    classes = sorted({item.label for item in quadruplets})
    with torch.no_grad():
        prompts = tiny_model.model.encode_text(tiny_model.tokenizer([f"a photo of a {name}." for name in classes]))
        images = torch.stack([tiny_model.preprocess(Image.open(item.safe_image).convert("RGB"))
                              for item in quadruplets])
        predicted = (tiny_model.model.encode_image(images) @ prompts.T).argmax(dim=1)
    correct = sum(classes[p] == item.label for p, item in zip(predicted.tolist(), quadruplets))
    assert from_labels["top1"] == pytest.approx(100 * correct / 6)

    for item in quadruplets:
        folder = tmp_path / "zero_shot" / item.label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / item.safe_image.name).write_bytes(item.safe_image.read_bytes())
    from_folder = zero_shot_folder_accuracy(tiny_model, tmp_path / "zero_shot")
    assert from_folder["top1"] == pytest.approx(from_labels["top1"])
    assert zero_shot_accuracy(tiny_model, [Quadruplet("a", "b", quadruplets[0].safe_image)]) is None


def test_evaluate_two_models_side_by_side(quadruplets):
    models = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        models[f"seed{seed}"] = load_model("safeclip-tiny")
    report = evaluate(models, _set_of(quadruplets), batch_size=4)

    assert list(report.results) == ["seed1", "seed2"]
    assert report.num_items == 6 and not report.text_only
    for name, model in models.items():
        expected = retrieval_metrics(encode_quadruplets(model, quadruplets),
                                     categories=[item.category for item in quadruplets])
        assert report.results[name]["retrieval"] == expected
        assert report.results[name]["source"] == "safeclip-tiny"
        assert report.results[name]["zero_shot"]["classes"] == 3
    assert report.results["seed1"]["retrieval"] != report.results["seed2"]["retrieval"]

    assert EvalReport.from_json(report.to_json()) == report
    markdown = report.to_markdown()
    rows = [line for line in markdown.splitlines() if line.startswith("| seed")]
    assert [row.split(" | ")[0] for row in rows] == ["| seed1", "| seed2"]
    assert "| `T*->V+V*` |" in markdown and "| unsafe top-1 `T*->V+V*` ↓ |" in markdown


def test_text_only_data_is_reported_clearly(tiny_model, quadruplets, tmp_path):
    items = [Quadruplet(item.safe_text, item.unsafe_text, item.safe_image) for item in quadruplets]
    report = evaluate({"tiny": tiny_model}, _set_of(items))
    retrieval = report.results["tiny"]["retrieval"]
    assert set(retrieval) == {TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNSAFE_TEXT_TO_SAFE_IMAGES}
    assert report.text_only and report.results["tiny"]["zero_shot"] is None
    assert TEXT_ONLY_NOTE in json.loads(report.to_json())["notes"]
    markdown = report.to_markdown()
    assert "were skipped" in markdown and "Zero-shot accuracy was not measured" in markdown

    report.save(json_path=tmp_path / "out" / "report.json", markdown_path=tmp_path / "out" / "report.md")
    assert EvalReport.from_json((tmp_path / "out" / "report.json").read_text()) == report
    assert (tmp_path / "out" / "report.md").read_text() == markdown


def _set_of(items):
    from safeclip_sdk.data.quadruplets import QuadrupletSet

    return QuadrupletSet(items, [], items[0].safe_image.parent / "test.jsonl")


def write_jsonl(quadruplets, path):
    rows = [{"safe_text": item.safe_text, "unsafe_text": item.unsafe_text, "safe_image": item.safe_image.name,
             "unsafe_image": item.unsafe_image.name, "category": item.category, "label": item.label}
            for item in quadruplets]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_compares_a_model_folder_with_its_base(tiny_model_dir, quadruplets, tmp_path):
    data = write_jsonl(quadruplets, tmp_path / "test.jsonl")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", str(tiny_model_dir), "--data", str(data), "--device", "cpu",
                                      "--batch-size", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table] == ["| model", "| base", f"| {tiny_model_dir.name}"]
    saved = json.loads(out.read_text())
    assert saved["results"]["base"]["source"] == "safeclip-tiny"
    assert saved["results"][tiny_model_dir.name]["source"] == str(tiny_model_dir)
    assert saved["dataset"] == str(data) and saved["num_items"] == 6

    no_base = CliRunner().invoke(cli, ["eval", str(tiny_model_dir), "--data", str(data), "--no-base",
                                       "--device", "cpu"])
    assert no_base.exit_code == 0 and "| base |" not in no_base.output


def test_cli_missing_data_file_is_one_line_error(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(tiny_model_dir), "--data", str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'missing.jsonl'}: dataset file not found"]


def test_base_model_of_reads_both_metadata_forms(tiny_model_dir, tmp_path):
    assert base_model_of(tiny_model_dir) == ("safeclip-tiny", None)
    (tmp_path / "safeclip.json").write_text(json.dumps(
        {"base_model": {"source": "ViT-L-14-quickgelu", "pretrained": "openai"}}))
    assert base_model_of(tmp_path) == ("ViT-L-14-quickgelu", "openai")
    assert base_model_of(tmp_path / "no-such-folder") is None


def test_model_names_widen_only_where_folder_names_collide(tmp_path):
    for run in ("run-a", "run-b", "other"):
        (tmp_path / run / "model").mkdir(parents=True)
    sources = (str(tmp_path / "run-a" / "model"), str(tmp_path / "run-b" / "model"), "ViT-B-32")
    assert model_names(sources, taken={"base"}) == ["run-a/model", "run-b/model", "ViT-B-32"]
    assert model_names((str(tmp_path / "run-a"),), taken=set()) == ["run-a"]


def test_cosine_and_lorentz_models_side_by_side_with_traversal_on_and_off(hysac_world, tiny_model):
    from safeclip_sdk.data import load_dataset
    from safeclip_sdk.runtime.encoder import Encoder
    from safeclip_sdk.methods import model_inference
    from safeclip_sdk.methods.hysac import lorentz as L
    from safeclip_sdk.methods.hysac.traversal import traverse
    from safeclip_sdk.metrics.moderation import roc_auc, threshold_metrics

    world, data = hysac_world, load_dataset(hysac_world["data"])
    report = evaluate({"clip": tiny_model, "hysac": str(world["folder"])}, data, batch_size=4)
    assert list(report.results) == ["clip", "hysac", "hysac (no traversal)"]
    assert report.results["clip"]["classification"] is None and report.results["clip"]["traversal"] is None

    hysac = load_model(str(world["folder"]))
    space = model_inference(hysac).space
    emb = encode_quadruplets(hysac, data.items, batch_size=4)
    encoder = Encoder.load(world["folder"], backend="torch", device="cpu")
    # Lorentz points, as the Encoder makes them, not unit rows
    np.testing.assert_allclose(emb.unsafe_text, encoder.encode_text(world["unsafe_texts"]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(emb.safe_image, axis=1), 1.0)

    off = report.results["hysac (no traversal)"]
    assert off["traversal"] is False
    assert off["retrieval"] == retrieval_metrics(emb, similarity=space.similarity)

    # traversal on: text queries beyond the safe images' 95th percentile move to exactly that distance
    stats = world["hysac"]["distance_stats"]
    tau_text, tau_image = stats["image_safe"]["p95"], stats["text_safe"]["p95"]
    texts = np.concatenate([emb.safe_text, emb.unsafe_text])
    moved_text, moved = traverse(torch.from_numpy(texts.astype(np.float64)), space.curvature, tau_text)
    moved_text, moved = moved_text.numpy(), moved.numpy()
    assert moved.any() and not moved.all()
    np.testing.assert_array_equal(moved, space.unsafe_score(texts) > tau_text)
    np.testing.assert_allclose(space.unsafe_score(moved_text[moved]), tau_text, rtol=1e-9)
    np.testing.assert_array_equal(moved_text[~moved], texts[~moved])
    # a moved query keeps its direction from the origin
    cosines = (L.log_map0(torch.from_numpy(moved_text[moved]), space.curvature).numpy() * texts[moved]).sum(axis=1)
    np.testing.assert_allclose(cosines / np.linalg.norm(texts[moved], axis=1)
                               / space.unsafe_score(moved_text[moved]), 1.0, rtol=1e-6)
    move = lambda points, tau: traverse(torch.from_numpy(points.astype(np.float64)),  # noqa: E731
                                        space.curvature, tau)[0].numpy().astype(np.float32)
    queries = EmbeddingSet(move(emb.safe_text, tau_text), move(emb.unsafe_text, tau_text),
                           move(emb.safe_image, tau_image), move(emb.unsafe_image, tau_image))
    on = report.results["hysac"]
    assert on["traversal"] is True
    assert on["retrieval"] == retrieval_metrics(emb, similarity=space.similarity, queries=queries)

    # classification at the stored per-modality thresholds, on the test split
    for modality, (safe, unsafe) in {"text": (emb.safe_text, emb.unsafe_text),
                                     "image": (emb.safe_image, emb.unsafe_image)}.items():
        threshold = world["hysac"]["calibration_modality"][modality]["threshold"]
        safe_scores, unsafe_scores = space.unsafe_score(safe), space.unsafe_score(unsafe)
        expected = {"auc": round(roc_auc(safe_scores, unsafe_scores), 6), "threshold": threshold,
                    **threshold_metrics(safe_scores, unsafe_scores, threshold).to_dict()}
        assert on["classification"][modality] == off["classification"][modality] == expected
    assert on["classification"]["text"]["accuracy"] == 100.0  # the world is split at the calibrated distance
    assert set(on["leak"]) == {"T->V+V*", "V->T+T*"} and report.results["clip"]["leak"] is not None

    markdown = report.to_markdown()
    assert "| hysac (no traversal) |" in markdown and "safe-query leak `T->V+V*` ↓" in markdown
    assert "| hysac | texts | " in markdown and "| clip | texts |" not in markdown
    assert EvalReport.from_json(report.to_json()) == report


def test_cli_evaluates_a_hysac_folder_beside_a_cosine_one(hysac_world, tiny_model_dir, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", str(hysac_world["folder"]), str(tiny_model_dir), "--data",
                                      str(hysac_world["data"]), "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    table = [line.split(" | ")[0] for line in result.output.splitlines() if line.startswith("| ")]
    assert table[:5] == ["| model", "| base", "| hysac", "| hysac (no traversal)", f"| {tiny_model_dir.name}"]
    saved = json.loads(out.read_text())
    assert saved["results"]["hysac"]["space"]["kind"] == "lorentz"
    assert saved["results"]["base"]["space"] == {"kind": "cosine", "dim": 64}


def test_hysac_rows_can_be_limited_and_a_model_without_statistics_is_noted(hysac_world, tmp_path):
    import shutil

    from safeclip_sdk.data import load_dataset

    data = load_dataset(hysac_world["data"])
    only_off = evaluate({"hysac": str(hysac_world["folder"])}, data, traversal=False)
    assert list(only_off.results) == ["hysac (no traversal)"]
    full = evaluate({"hysac": str(hysac_world["folder"])}, data)
    assert only_off.results["hysac (no traversal)"] == full.results["hysac (no traversal)"]

    folder = tmp_path / "model"
    shutil.copytree(hysac_world["folder"], folder)
    metadata = json.loads((folder / "safeclip.json").read_text())
    metadata["hysac"] = {"calibration": metadata["hysac"]["calibration"]}  # no statistics, no boundary
    (folder / "safeclip.json").write_text(json.dumps(metadata))
    report = evaluate({"bare": str(folder)}, data)
    assert list(report.results) == ["bare (no traversal)"]
    assert any(note.startswith("bare: evaluated without its traversal") for note in report.notes)
    assert report.results["bare (no traversal)"]["classification"]["text"]["threshold"] == \
        metadata["hysac"]["calibration"]["threshold"]
