"""``Encoder.load(backend="auto")`` picks the fastest runtime the folder allows."""

from __future__ import annotations

from safeclip_sdk.runtime.encoder import Encoder, fastest_backend


def test_model_folder_runs_on_torch(tiny_model_dir):
    assert fastest_backend(tiny_model_dir) == "torch"
    encoder = Encoder.load(tiny_model_dir, backend="auto")
    assert encoder.backend == "torch"
    assert encoder.space.kind == "cosine" and encoder.space.stored_dim == encoder.embed_dim


def test_export_folder_runs_on_onnxruntime_without_tensorrt(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    assert fastest_backend(tmp_path) == "onnx"
    assert fastest_backend(tmp_path, device="cpu") == "onnx"
