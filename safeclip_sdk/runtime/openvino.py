"""The Encoder's OpenVINO runtime: an export folder's OpenVINO IR (``export/openvino.py`` writes it)
compiled for the CPU with the settings the export was checked and timed with. openvino is imported
only when this runtime is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..export.manifest import Manifest, file_in_export
from ..export.openvino import compile_encoder


class OpenVinoRuntime:
    """Both encoders of one OpenVINO variant (``fp32`` or ``int8``) of an export folder, on the CPU."""

    def __init__(self, folder: Path, manifest: Manifest, precision: str, device: str, num_threads: int | None):
        try:
            import openvino as ov
        except ImportError as error:
            raise ModelLoadError("backend 'openvino' needs OpenVINO: pip install 'safeclip[openvino]'") from error
        if device not in ("auto", "cpu"):
            raise ModelLoadError(f"backend 'openvino' runs on the CPU, not on '{device}' (use device 'cpu' or 'auto')")
        section = manifest.openvino
        if not section:
            raise ModelLoadError(f"{folder}: the export has no OpenVINO variants (add them with "
                                 f"`safeclip export MODEL --openvino {folder}`)")
        if precision not in section["variants"]:
            raise ModelLoadError(f"{folder}: no {precision} OpenVINO variant in the export "
                                 f"(available: {', '.join(section['variants'])})")
        variant = section["variants"][precision]
        core = ov.Core()
        self.device = "cpu"
        self.image = _compile(core, folder, variant["image_encoder"]["file"], num_threads)
        self.text = _compile(core, folder, variant["text_encoder"]["file"], num_threads)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image(pixels)

    def encode_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self.text(input_ids)


def _compile(core, folder: Path, name: str, num_threads: int | None):
    path = file_in_export(folder, name)
    try:
        return compile_encoder(core, path, num_threads)
    except Exception as error:  # OpenVINO raises RuntimeError and its own types for unreadable files
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"{path}: OpenVINO cannot load it ({first_line})") from error
