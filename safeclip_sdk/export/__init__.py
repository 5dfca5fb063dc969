"""Exports of a safeclip model: ONNX encoders (fp32/fp16/int8) with a manifest, TensorRT engines,
OpenVINO IR (fp32/int8) beside them, and Hugging Face CLIPModel folders."""

from .hf import export_hf
from .manifest import Manifest, load_manifest
from .._utils.files import file_sha256
from .onnx import export_onnx
from .openvino import export_openvino
from .tensorrt import build_tensorrt_engines

__all__ = [
    "Manifest",
    "build_tensorrt_engines",
    "export_hf",
    "export_onnx",
    "export_openvino",
    "file_sha256",
    "load_manifest",
]
