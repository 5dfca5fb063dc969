"""TensorRT engines for an ONNX export: ``image_encoder.plan`` and ``text_encoder.plan``.

Engines are built with TensorRT's Python API (builder, ONNX parser, one optimisation profile on
the batch axis) and recorded with their hashes under ``"tensorrt"`` in ``manifest.json``. A plan
runs only with the TensorRT version and GPU model it was built with, so build it on the serving
machine. ``tensorrt`` is imported only when engines are built: it needs an NVIDIA GPU and CUDA.

Precision: ``fp16=True`` builds mixed fp16/fp32 engines. TensorRT 10 and older build them from
the fp32 encoders with ``BuilderFlag.FP16`` (TensorRT picks fp16 kernels where they are
accurate enough); TensorRT 11 removed that flag and builds networks with the types written in
the ONNX graph, so it uses the fp16 ONNX variant (``export_onnx(..., fp16=True)``).
``fp16=False`` builds fp32 engines from the fp32 encoders.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .._utils.files import atomic_write
from .manifest import file_entry, load_manifest

logger = logging.getLogger(__name__)


def build_tensorrt_engines(onnx_dir: str | os.PathLike, *, fp16: bool = True, min_batch: int = 1,
                           opt_batch: int = 32, max_batch: int = 256, workspace_gb: float = 4) -> dict[str, Any]:
    """Build one TensorRT engine per encoder of the export in ``onnx_dir`` and add them to its manifest.

    Args:
        onnx_dir: a folder written by :func:`safeclip_sdk.export.export_onnx`.
        fp16: build mixed-precision fp16 engines (see the module docstring) instead of fp32 ones.
        min_batch, opt_batch, max_batch: the batch sizes the engines accept (min..max) and are
            tuned for (opt).
        workspace_gb: the builder's scratch-memory limit.

    Returns:
        The manifest's ``"tensorrt"`` entry: ``{"image_encoder": {"file", "sha256"}, "text_encoder": ...,
        "precision", "source_variant", "batch", "tensorrt_version", "device"}``.

    Raises:
        ExportError: TensorRT is not installed, the export lacks what the build needs, or
        TensorRT cannot parse or build an encoder.
    """
    onnx_dir = Path(onnx_dir)
    manifest = load_manifest(onnx_dir, verify_hashes=True)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f"TensorRT batch sizes must satisfy 1 <= min <= opt <= max, got "
                          f"{min_batch}, {opt_batch}, {max_batch}")
    trt = _import_tensorrt(onnx_dir)
    weakly_typed = hasattr(trt.BuilderFlag, "FP16")
    source_variant = "fp16" if fp16 and not weakly_typed else "fp32"
    if source_variant not in manifest.variants:
        raise ExportError(f"TensorRT {trt.__version__} builds fp16 engines from the fp16 ONNX variant, which "
                          f"{onnx_dir} does not have: export again with fp16 (--fp16) first")

    height, width = manifest.image["size"]
    inputs = {
        "image_encoder": (manifest.image["input"], (3, int(height), int(width))),
        "text_encoder": (manifest.text["input"], (int(manifest.text["context_length"]),)),
    }
    trt_logger = trt.Logger(trt.Logger.WARNING)
    engines: dict[str, Any] = {}
    for encoder, (input_name, item_shape) in inputs.items():
        onnx_path = onnx_dir / manifest.variants[source_variant][encoder]["file"]
        logger.info("building TensorRT engine from %s (batch %d..%d)", onnx_path.name, min_batch, max_batch)
        shapes = tuple((batch, *item_shape) for batch in (min_batch, opt_batch, max_batch))
        plan = _build_engine(trt, trt_logger, onnx_path, input_name, shapes,
                             fp16_flag=fp16 and weakly_typed, workspace_bytes=int(workspace_gb * (1 << 30)))
        path = onnx_dir / f"{encoder}.plan"
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(plan))
        engines[encoder] = file_entry(path)
    engines.update({
        "precision": "fp16" if fp16 else "fp32",
        "source_variant": source_variant,
        "batch": {"min": min_batch, "opt": opt_batch, "max": max_batch},
        "tensorrt_version": trt.__version__,
        "device": _gpu_name(),
    })
    manifest.tensorrt = engines
    manifest.save(onnx_dir)
    return engines


def _import_tensorrt(onnx_dir: Path):
    try:
        import tensorrt
    except (ImportError, OSError) as error:  # OSError: the package is there but its CUDA libraries are not
        raise ExportError(f"TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and CUDA); "
                          f"ONNX files were written to {onnx_dir}") from error
    return tensorrt


def _build_engine(trt, trt_logger, onnx_path: Path, input_name: str, shapes: tuple[tuple[int, ...], ...], *,
                  fp16_flag: bool, workspace_bytes: int) -> bytes:
    """A serialized engine for one ONNX encoder, with a min/opt/max optimisation profile."""
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise ExportError(f"{onnx_path.name}: TensorRT cannot parse it ({errors[0] if errors else 'no details'})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{onnx_path.name}: TensorRT could not build an engine (see TensorRT's messages above)")
    return bytes(plan)


def _network_flags(trt) -> int:
    """Explicit batch: the default from TensorRT 10, a flag before it."""
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None
