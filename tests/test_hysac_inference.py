"""A HySAC model folder through loading, the Encoder (torch and ONNX) and the export manifest."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.errors import ExportError, ModelLoadError
from safeclip_sdk.export.manifest import MANIFEST_NAME, load_manifest
from safeclip_sdk.methods.hysac import lorentz as L
from safeclip_sdk.methods import model_inference
from safeclip_sdk.methods.hysac.space import LORENTZ, LorentzSpace
from safeclip_sdk.model.folder import load_model
from safeclip_sdk.methods import load_checked_model

from hysac_world import CURVATURE, SPACE, TEXT_SCALE

TEXTS = ["a dog on the beach", "two people walking in the snow at night", "a red car"]


def test_the_space_travels_with_the_model_folder(hysac_world, tiny_model_dir):
    inference = model_inference(load_model(str(hysac_world["folder"])))
    assert isinstance(inference.space, LorentzSpace) and inference.space.to_dict() == SPACE
    assert inference.settings.threshold == hysac_world["hysac"]["calibration"]["threshold"]
    assert inference.threshold("text") == hysac_world["hysac"]["calibration_modality"]["text"]["threshold"]
    # a folder that records no space is cosine with the model's embedding size
    plain = model_inference(load_model(str(tiny_model_dir)))
    assert plain.space.to_dict() == {"kind": "cosine", "dim": 64} and not plain.classifies


def test_torch_encoder_returns_lorentz_points_of_the_projection(hysac_world):
    encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    assert encoder.space.kind == LORENTZ and encoder.inference.classifies
    points = encoder.encode_text(TEXTS)
    loaded = load_model(str(hysac_world["folder"]))
    with torch.no_grad():
        features = loaded.model.encode_text(loaded.tokenizer(TEXTS))  # raw projection outputs
    np.testing.assert_allclose(points, L.exp_map0(TEXT_SCALE * features, CURVATURE).numpy(), rtol=1e-5, atol=1e-6)
    # not unit rows: the distance from the origin is |scale * f|
    np.testing.assert_allclose(encoder.space.unsafe_score(points), TEXT_SCALE * features.norm(dim=1).numpy(),
                               rtol=1e-5)
    images = encoder.encode_image(hysac_world["safe_images"][:2])
    assert images.shape == (2, 64) and not np.allclose(np.linalg.norm(images, axis=1), 1.0)


def test_onnx_export_holds_the_projection_and_agrees_with_torch(hysac_world, hysac_onnx):
    manifest = load_manifest(hysac_onnx)
    assert manifest.embedding_space == SPACE and manifest.space.to_dict() == SPACE
    assert manifest.method_metadata == {"hysac": hysac_world["hysac"]}
    for tower in ("image", "text"):
        parity = manifest.variants["fp32"]["parity"][tower]
        assert parity["min_cosine"] >= 0.9999
        assert parity["max_origin_distance_rel_error"] <= parity["max_origin_distance_rel_error_allowed"] == 1e-3
    graph = onnx.load(str(hysac_onnx / "text_encoder.onnx")).graph
    assert "Sinh" in {node.op_type for node in graph.node}  # exp_map0 runs inside the exported graph

    torch_encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    onnx_encoder = Encoder.load(hysac_onnx, backend="onnx", device="cpu")
    assert onnx_encoder.space == torch_encoder.space
    assert onnx_encoder.inference.settings == torch_encoder.inference.settings
    images = hysac_world["safe_images"] + hysac_world["unsafe_images"]
    for expected, actual in ((torch_encoder.encode_text(TEXTS), onnx_encoder.encode_text(TEXTS)),
                             (torch_encoder.encode_image(images), onnx_encoder.encode_image(images))):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(onnx_encoder.space.unsafe_score(actual), torch_encoder.space.unsafe_score(expected),
                                   rtol=1e-4)
        assert not np.allclose(np.linalg.norm(actual, axis=1), 1.0)


def test_manifest_space_is_validated_on_load(hysac_onnx, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(hysac_onnx, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    for change, message in ((lambda d: d["embedding_space"].update(curvature=0), "'embedding_space.curvature'"),
                            (lambda d: d["embedding_space"].update(dim=32), "'embedding_space.dim' is 32"),
                            (lambda d: d["hysac"]["calibration"].update(threshold="high"), "'hysac.calibration'"),
                            # the method needs its space: a manifest that lost it is not read as cosine
                            (lambda d: d.pop("embedding_space"), "a HySAC model embeds into the lorentz space, but "
                                                                 "the file records no 'embedding_space'"),
                            (lambda d: (d.pop("embedding_space"), d.pop("method")), "records no 'embedding_space'")):
        broken = json.loads(json.dumps(data))
        change(broken)
        (copy / MANIFEST_NAME).write_text(json.dumps(broken))
        with pytest.raises(ExportError, match=message) as error:
            Encoder.load(copy, backend="onnx")
        assert "\n" not in str(error.value)


def test_model_folder_with_a_bad_space_fails_before_loading_weights(hysac_world, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(hysac_world["folder"], copy)
    metadata = json.loads((copy / "safeclip.json").read_text())
    metadata["embedding_space"]["image_scale"] = -1
    (copy / "safeclip.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="'embedding_space.image_scale' must be a positive number, got -1"):
        load_checked_model(str(copy))


def _gallery(store, encoder, images):
    from safeclip_sdk.integrations.base import Point, VectorSpec

    space = encoder.space
    store.create_collection("gallery", {"image": VectorSpec(space.stored_dim, space.distance)})
    vectors = space.to_stored(encoder.encode_image(images))
    store.upsert("gallery", [Point(i, {"file": path.name}, {"image": vectors[i]}) for i, path in enumerate(images)])


def test_search_moves_hysac_queries_to_the_safe_boundary_unless_switched_off(hysac_world, tmp_path):
    from click.testing import CliRunner

    from safeclip_sdk.cli.main import cli
    from safeclip_sdk.integrations import open_store
    from safeclip_sdk.index.search import SafeSearch, SearchError

    encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    space, images = encoder.space, hysac_world["safe_images"] + hysac_world["unsafe_images"]
    query = hysac_world["unsafe_texts"][-1]  # the furthest text from the origin
    point = encoder.encode_text([query])
    tau = hysac_world["hysac"]["distance_stats"]["image_safe"]["p95"]
    assert space.unsafe_score(point)[0] > tau

    store = open_store(tmp_path / "db")
    _gallery(store, encoder, images)
    on, off = SafeSearch(store, "gallery", encoder), SafeSearch(store, "gallery", encoder, traversal=False)
    np.testing.assert_allclose(off.embed(query), space.to_query(point)[0], rtol=1e-6)
    moved = on.embed(query)
    assert moved[0] < 0  # a query vector [-q_t, q]
    np.testing.assert_allclose(space.unsafe_score(moved[1:]), tau, rtol=1e-5)  # exactly at the boundary
    np.testing.assert_allclose(moved[1:] / np.linalg.norm(moved[1:]), point[0] / np.linalg.norm(point[0]), rtol=1e-5)

    stored = space.to_stored(encoder.encode_image(images))
    expected = {}
    for name, searcher in (("on", on), ("off", off)):
        hits = searcher.search(query, limit=len(images))
        ids = [hit.id for hit in hits]
        # Qdrant's DOT ranking of the stored vectors is the geodesic ranking of the (moved) query,
        # and its scores are the Lorentz inner products
        geodesic = -space.similarity(searcher.embed(query)[None, 1:], stored[:, 1:])[0]
        assert ids == list(np.argsort(geodesic, kind="stable"))
        np.testing.assert_allclose([hit.score for hit in hits], stored[ids] @ searcher.embed(query), rtol=1e-4)
        expected[name] = (ids, [hit.score for hit in hits])
    assert not np.allclose(expected["on"][1], expected["off"][1])

    plain = tmp_path / "plain"
    shutil.copytree(hysac_world["folder"], plain)
    metadata = json.loads((plain / "safeclip.json").read_text())
    del metadata["hysac"]
    (plain / "safeclip.json").write_text(json.dumps(metadata))
    untraversable = Encoder.load(plain, backend="torch", device="cpu")
    with pytest.raises(SearchError, match="records no traversal settings .*traversal=False \\(--no-traversal\\)"):
        SafeSearch(store, "gallery", untraversable)
    assert [hit.id for hit in SafeSearch(store, "gallery", untraversable, traversal=False).search(
        query, limit=len(images))] == expected["off"][0]
    store.close()

    for flags, name in (([], "on"), (["--no-traversal"], "off")):
        result = CliRunner().invoke(cli, ["search", "--qdrant", str(tmp_path / "db"), "--collection", "gallery",
                                          "--model", str(hysac_world["folder"]), "--text", query, "-k",
                                          str(len(images)), "--json", *flags])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)["results"]
        assert [row["id"] for row in rows] == expected[name][0]
        np.testing.assert_allclose([row["score"] for row in rows], expected[name][1], rtol=1e-5)
