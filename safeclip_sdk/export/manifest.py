"""``manifest.json``: what an export folder holds, how to feed it, and proof that it is intact.

Every runtime that reads an export (``safeclip_sdk.encoder.Encoder``, your own service) starts
here. Format version 1::

    {
      "format": "safeclip-onnx", "format_version": 1, "safeclip_version": "0.1.0",
      "source_model": "runs/safe-clip/model",     # what was exported (path or open_clip name)
      "method": "safe-clip",                      # from the model's safeclip.json, or null
      "weights_sha256": "...",                    # hash of the exported weights (see weights_sha256)
      "opset": 20,
      "embed_dim": 512,
      "image": {"input": "pixel_values", "output": "image_embeds",   # float32 [B, 3, H, W] -> [B, D]
                "size": [224, 224], "mode": "RGB", "mean": [...], "std": [...],
                "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0},
      "text": {"input": "input_ids", "output": "text_embeds",        # int64 [B, L] -> [B, D]
               "tokenizer": "open_clip:simple" | "hf:<name>", "context_length": 77,
               "tokenizer_kwargs": {...}},                          # only for hf: tokenizers that have them
      "variants": {
        "fp32": {"image_encoder": {"file": "image_encoder.onnx", "sha256": "..."},
                 "text_encoder": {"file": "text_encoder.onnx", "sha256": "..."},
                 "parity": {"reference": "torch fp32", "min_cosine_required": 0.9999,
                            "image": {"min_cosine": ..., "max_abs_diff": ..., "batch_sizes": [4, 1]},
                            "text": {...}}},
        "fp16": {... "image_encoder.fp16.onnx" ...,
                 "session_options": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"}},
        "int8": {... "image_encoder.int8.onnx" ...,
                 "retrieval": {"data": "...", "quadruplets": N, "max_r1_drop": 1.0,
                               "fp32": {"T->V": 41.2, ...}, "int8": {"T->V": 40.9, ...}}}
      },
      "tensorrt": {"image_encoder": {"file": "image_encoder.plan", "sha256": "..."},
                   "text_encoder": {...}, "precision": "fp16", "source_variant": "fp32",
                   "batch": {"min": 1, "opt": 32, "max": 256}, "tensorrt_version": "10.x",
                   "device": "NVIDIA H100 80GB HBM3"}       # optional
    }

Both encoders output L2-normalised embeddings. A variant's optional ``session_options`` are
onnxruntime ``SessionOptions`` its sessions need (the fp16 graphs crash onnxruntime's CPU layout
optimizer, level ``ORT_ENABLE_ALL``; ``ORT_ENABLE_EXTENDED`` runs them correctly). ``parity``
entries that could not be measured on the exporting host read ``{"checked": false, "reason": ...}``.
``int8`` has ``retrieval`` only when the export was given evaluation data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..models import atomic_write_text

MANIFEST_NAME = "manifest.json"
FORMAT = "safeclip-onnx"
FORMAT_VERSION = 1
ENCODERS = ("image_encoder", "text_encoder")


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of an export folder (see the module docstring for each field)."""

    source_model: str
    embed_dim: int
    image: dict[str, Any]
    text: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensorrt: dict[str, Any] | None = None
    method: str | None = None
    weights_sha256: str | None = None
    opset: int | None = None
    safeclip_version: str = ""

    def files(self) -> list[str]:
        """Every file the manifest references (names relative to the export folder)."""
        sections = list(self.variants.values()) + ([self.tensorrt] if self.tensorrt else [])
        return [section[encoder]["file"] for section in sections for encoder in ENCODERS]

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "safeclip_version": self.safeclip_version,
            "source_model": self.source_model,
            "method": self.method,
            "weights_sha256": self.weights_sha256,
            "opset": self.opset,
            "embed_dim": self.embed_dim,
            "image": self.image,
            "text": self.text,
            "variants": self.variants,
        }
        if self.tensorrt:
            data["tensorrt"] = self.tensorrt
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Parse a manifest dict; ExportError (naming ``where``) when it is not a version-1 manifest."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ExportError(f"{where}: not a safeclip export manifest (expected \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{where}: format_version {data.get('format_version')!r} is not supported "
                              f"(this safeclip reads version {FORMAT_VERSION})")
        missing = [key for key in ("source_model", "embed_dim", "image", "text", "variants") if key not in data]
        if missing:
            raise ExportError(f"{where}: missing field '{missing[0]}'")
        manifest = cls(
            source_model=data["source_model"],
            embed_dim=int(data["embed_dim"]),
            image=data["image"],
            text=data["text"],
            variants=data["variants"],
            tensorrt=data.get("tensorrt"),
            method=data.get("method"),
            weights_sha256=data.get("weights_sha256"),
            opset=data.get("opset"),
            safeclip_version=data.get("safeclip_version", ""),
        )
        sections = [*manifest.variants.items(), *([("tensorrt", manifest.tensorrt)] if manifest.tensorrt else [])]
        for name, section in sections:
            for encoder in ENCODERS:
                entry = section.get(encoder) if isinstance(section, dict) else None
                if not isinstance(entry, dict) or not {"file", "sha256"} <= entry.keys():
                    raise ExportError(f"{where}: {name} has no valid '{encoder}' entry ({{\"file\", \"sha256\"}})")
        return manifest

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/manifest.json`` atomically."""
        path = Path(out_dir) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load_manifest(directory: str | os.PathLike, *, verify_hashes: bool = True) -> Manifest:
    """Read ``directory/manifest.json``; with ``verify_hashes`` also check that every file it
    references exists and still has the recorded sha256.

    Raises:
        ExportError: one line naming the manifest or the file that is missing, changed or invalid.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{path}: not found (is {directory} a safeclip ONNX export folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"{path}: cannot read the manifest ({error})") from error
    manifest = Manifest.from_dict(data, str(path))
    if verify_hashes:
        _verify_files(directory, manifest)
    return manifest


def _verify_files(directory: Path, manifest: Manifest) -> None:
    """ExportError naming the first referenced file that is missing or whose sha256 changed."""
    sections = list(manifest.variants.values()) + ([manifest.tensorrt] if manifest.tensorrt else [])
    for section in sections:
        for encoder in ENCODERS:
            entry = section[encoder]
            file = directory / entry["file"]
            if not file.is_file():
                raise ExportError(f"{file}: listed in {MANIFEST_NAME} but missing")
            if file_sha256(file) != entry["sha256"]:
                raise ExportError(f"{file}: sha256 mismatch with {MANIFEST_NAME} (file changed after export?)")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (engines and encoders can be gigabytes)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def file_entry(path: Path) -> dict[str, str]:
    """A manifest ``{"file", "sha256"}`` entry for a file inside the export folder."""
    return {"file": path.name, "sha256": file_sha256(path)}
