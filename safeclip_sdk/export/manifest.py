"""``manifest.json``: what an export folder holds, how to feed it, and proof that it is intact.

Every runtime that reads an export (``safeclip_sdk.runtime.encoder.Encoder``, your own service) starts
here. Format version 1::

    {
      "format": "safeclip-onnx", "format_version": 1, "safeclip_version": "0.1.0",
      "source_model": "runs/safe-clip/model",     # what was exported (path or open_clip name)
      "method": "safe-clip",                      # from the model's safeclip.json, or null
      "weights_sha256": "...",                    # hash of the exported weights (see weights_sha256)
      "opset": 20,
      "embed_dim": 512,
      "embedding_space": {"kind": "cosine", "dim": 512},   # or another registered space with its keys
      ...                                         # the method's own keys of the model's safeclip.json
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
                   "device": "NVIDIA H100 80GB HBM3"},      # optional
      "category_classifier": {...},      # optional: the model folder's per-category classifier as
                                         # small graphs and its settings (see category_onnx.py)
      "openvino": {"openvino_version": "2026.4.1",                  # optional (see openvino.py)
                   "variants": {"fp32": {"image_encoder": {"file": "image_encoder.xml", "sha256": "...",
                                                           "weights": {"file": "image_encoder.bin", "sha256": "..."}},
                                         "text_encoder": {...}, "parity": {...}},
                                "int8": {..., "retrieval": {...}, "calibration": {...}}}},
      "speed": {"cpu": "AMD EPYC", "threads": 2, "batch": 32, "measured_at": "2026-12-03T20:00:00Z",   # optional
                "items_per_s": {"onnx/fp32": {"image": 17.9, "text": 24.1}, "openvino/int8": {...}, ...}}
    }

Both encoders output embeddings in ``embedding_space`` (see ``safeclip_sdk.model.spaces``): L2-normalised
rows for ``cosine``; for another space, whatever its ``embed`` computes is part of the graphs (a
hyperbolic projection, say); a manifest without the key is cosine. The method named by ``method``
reads its own keys (and checks the space) through ``safeclip_sdk.methods.inference_of``, exactly as
for the model folder. A variant's optional ``session_options`` are
onnxruntime ``SessionOptions`` its sessions need (the fp16 graphs crash onnxruntime's CPU layout
optimizer, level ``ORT_ENABLE_ALL``; ``ORT_ENABLE_EXTENDED`` runs them correctly). ``parity``
entries that could not be measured on the exporting host read ``{"checked": false, "reason": ...}``.
``int8`` has ``retrieval`` only when the export was given evaluation data. ``speed`` holds the
images/s and texts/s of every variant of the folder measured in one run on the exporting machine
(``runtime/precision`` keys); ``Encoder.load(backend="auto")`` picks the fastest of them.

Loading checks every field a runtime reads (types, ranges, choices) and names the key that is
wrong (``manifest.json: 'image.mean' must be ...``). File entries are names inside the export
folder: absolute paths, ``..`` and symlinks that lead outside it are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import ExportError, ModelLoadError
from .._utils.files import atomic_write_text, file_sha256
from ..methods import Inference, inference_of
from ..model.spaces import EmbeddingSpace, cosine_space

MANIFEST_NAME = "manifest.json"
FORMAT = "safeclip-onnx"
FORMAT_VERSION = 1
ENCODERS = ("image_encoder", "text_encoder")
# the manifest's own keys; any other top-level key belongs to the model's method
FIELDS = ("format", "format_version", "safeclip_version", "source_model", "method", "weights_sha256", "opset",
          "embed_dim", "embedding_space", "image", "text", "variants", "tensorrt", "category_classifier",
          "openvino", "speed")


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
    embedding_space: dict[str, Any] | None = None
    method_metadata: dict[str, Any] = field(default_factory=dict)  # the method's own top-level keys
    category_classifier: dict[str, Any] | None = None
    openvino: dict[str, Any] | None = None
    speed: dict[str, Any] | None = None

    def inference(self, where: str | os.PathLike = MANIFEST_NAME) -> Inference:
        """What the model's method does with these encoders: space, classifier, query transformation."""
        return inference_of(self._metadata(), self.embed_dim, f"{where}/{MANIFEST_NAME}")

    @property
    def space(self) -> EmbeddingSpace:
        """The encoders' embedding space (cosine for manifests that record none)."""
        return self.inference().space

    def _metadata(self) -> dict[str, Any]:
        return {**self.method_metadata, "method": self.method, "embedding_space": self.embedding_space}

    def files(self) -> list[str]:
        """Every file the manifest references (names relative to the export folder)."""
        return [entry["file"] for entry in self.file_entries()]

    def file_entries(self) -> list[dict[str, str]]:
        """Every ``{"file", "sha256"}`` entry: the encoders of each variant and engine (OpenVINO's with their
        weights), the classifier's files."""
        sections = list(self.variants.values()) + ([self.tensorrt] if self.tensorrt else [])
        entries = [section[encoder] for section in sections for encoder in ENCODERS]
        for section in (self.openvino or {}).get("variants", {}).values():
            entries += [entry for encoder in ENCODERS for entry in (section[encoder], section[encoder]["weights"])]
        if self.category_classifier:
            entries += [self.category_classifier["settings"], *self.category_classifier["heads"].values()]
        return entries

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
            "embedding_space": self.embedding_space or cosine_space(self.embed_dim).to_dict(),
            "image": self.image,
            "text": self.text,
            "variants": self.variants,
        }
        data.update(self.method_metadata)
        if self.tensorrt:
            data["tensorrt"] = self.tensorrt
        if self.category_classifier:
            data["category_classifier"] = self.category_classifier
        if self.openvino:
            data["openvino"] = self.openvino
        if self.speed:
            data["speed"] = self.speed
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Parse a manifest dict; ExportError (naming ``where``) when it is not a version-1 manifest."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ExportError(f"{where}: not a safeclip export manifest (expected \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{where}: format_version {data.get('format_version')!r} is not supported "
                              f"(this safeclip reads version {FORMAT_VERSION})")
        _validate(data, where)
        return cls(
            source_model=data["source_model"],
            embed_dim=data["embed_dim"],
            image=data["image"],
            text=data["text"],
            variants=data["variants"],
            tensorrt=data.get("tensorrt"),
            method=data.get("method"),
            weights_sha256=data.get("weights_sha256"),
            opset=data.get("opset"),
            safeclip_version=data.get("safeclip_version", ""),
            embedding_space=data.get("embedding_space"),
            method_metadata={key: value for key, value in data.items() if key not in FIELDS},
            category_classifier=data.get("category_classifier"),
            openvino=data.get("openvino"),
            speed=data.get("speed"),
        )

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
    for name in manifest.files():
        file_in_export(directory, name)
    if verify_hashes:
        _verify_files(directory, manifest)
    return manifest


def _verify_files(directory: Path, manifest: Manifest) -> None:
    """ExportError naming the first referenced file that is missing, outside the folder, or whose
    sha256 changed."""
    for entry in manifest.file_entries():
        file = file_in_export(directory, entry["file"])
        if not file.is_file():
            raise ExportError(f"{file}: listed in {MANIFEST_NAME} but missing")
        if file_sha256(file) != entry["sha256"]:
            raise ExportError(f"{file}: sha256 mismatch with {MANIFEST_NAME} (file changed after export?)")


def file_in_export(directory: str | os.PathLike, name: str) -> Path:
    """The path of a manifest file entry; ExportError when it leads outside ``directory``
    (through ``..``, an absolute path or a symlink)."""
    directory = Path(directory)
    _check_file_name(name, f"{directory / MANIFEST_NAME}: file entry")
    path = directory / name
    if path.exists() and not path.resolve().is_relative_to(directory.resolve()):
        raise ExportError(f"{path}: listed in {MANIFEST_NAME} but leads outside the export folder "
                          f"(to {path.resolve()})")
    return path


def file_entry(path: Path) -> dict[str, str]:
    """A manifest ``{"file", "sha256"}`` entry for a file inside the export folder."""
    return {"file": path.name, "sha256": file_sha256(path)}


# --- validation: every key a runtime reads, named when it is wrong ---

_SHA256 = re.compile(r"[0-9a-f]{64}")
INTERPOLATIONS = ("bicubic", "bilinear", "random")
RESIZE_MODES = ("shortest", "longest", "squash")


def _validate(data: dict[str, Any], where: str) -> None:
    def check(key: str, valid, expected: str, optional: bool = False, nullable: bool = False) -> None:
        """``optional``: the key may be absent; ``nullable``: it may also be null."""
        if not _has(data, key):
            if optional or nullable:
                return
            raise ExportError(f"{where}: missing '{key}' ({expected})")
        value = _lookup(data, key)
        if (value is None and nullable) or valid(value):
            return
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ExportError(f"{where}: '{key}' must be {expected}, got {shown}")

    check("source_model", _is_text, "a non-empty string")
    check("embed_dim", _is_positive_int, "a positive integer")
    check("image", _is_dict, "an object")
    check("image.input", _is_text, "a non-empty string")
    check("image.output", _is_text, "a non-empty string")
    check("image.size", _is_image_size, "a positive integer or a list [height, width] of them")
    check("image.mean", lambda v: _is_numbers(v, 3), "a list of 3 numbers")
    check("image.std", lambda v: _is_numbers(v, 3) and min(v) > 0, "a list of 3 positive numbers")
    check("image.mode", lambda v: v == "RGB", '"RGB"', optional=True)
    check("image.interpolation", lambda v: v in INTERPOLATIONS, f"one of {', '.join(INTERPOLATIONS)}", optional=True)
    check("image.resize_mode", lambda v: v in RESIZE_MODES, f"one of {', '.join(RESIZE_MODES)}", optional=True)
    check("image.fill_color", lambda v: _is_int(v) and 0 <= v <= 255, "an integer 0..255", optional=True)
    check("text", _is_dict, "an object")
    check("text.input", _is_text, "a non-empty string")
    check("text.output", _is_text, "a non-empty string")
    check("text.tokenizer", lambda v: _is_text(v) and re.fullmatch(r"(open_clip:simple|hf:\S+)", v) is not None,
          '"open_clip:simple" or "hf:<tokenizer name>"')
    check("text.context_length", _is_positive_int, "a positive integer")
    check("text.tokenizer_kwargs", _is_dict, "an object", optional=True)
    check("method", _is_text, "a string or null", nullable=True)
    check("weights_sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "a sha256 hex digest or null",
          nullable=True)
    check("opset", _is_positive_int, "a positive integer or null", nullable=True)
    check("variants", lambda v: _is_dict(v) and v, "an object with at least one variant (fp32, fp16, int8)")
    check("tensorrt", _is_dict, "an object", optional=True)
    try:
        inference_of(data, data["embed_dim"], where)  # the space, and the method's own keys
    except ModelLoadError as error:
        raise ExportError(str(error)) from None
    sections = [f"variants.{name}" for name in data["variants"]] + (["tensorrt"] if data.get("tensorrt") else [])
    for section in sections:
        check(section, _is_dict, "an object")
        for encoder in ENCODERS:
            check(f"{section}.{encoder}", _is_dict, 'an object {"file", "sha256"}')
            check(f"{section}.{encoder}.file", _is_text, "a file name inside the export folder")
            _check_file_name(_lookup(data, f"{section}.{encoder}.file"), f"{where}: '{section}.{encoder}.file'")
            check(f"{section}.{encoder}.sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v),
                  "a sha256 hex digest")
        if section != "tensorrt":
            check(f"{section}.session_options", lambda v: _is_dict(v) and all(map(_is_text, v.values())),
                  "an object of onnxruntime option names and values", optional=True)
    _validate_openvino(data, check, where)
    check("speed", _is_dict, "an object", optional=True)
    check("speed.items_per_s", lambda v: _is_dict(v) and all(
        _is_dict(rates) and all(isinstance(rate, (int, float)) and rate > 0 for rate in rates.values())
        for rates in v.values()), 'an object {"runtime/precision": {"image": items/s, "text": items/s}}',
        optional=True)
    if not _has(data, "category_classifier"):
        return
    check("category_classifier", _is_dict, "an object")
    check("category_classifier.input", _is_text, "a non-empty string")
    check("category_classifier.output", _is_text, "a non-empty string")
    check("category_classifier.heads", lambda v: _is_dict(v) and v and set(v) <= {"text", "image"},
          "an object with a 'text' and/or 'image' graph")
    for key in ["category_classifier.settings", *(f"category_classifier.heads.{modality}"
                                                   for modality in data["category_classifier"]["heads"])]:
        check(key, _is_dict, 'an object {"file", "sha256"}')
        check(f"{key}.file", _is_text, "a file name inside the export folder")
        _check_file_name(_lookup(data, f"{key}.file"), f"{where}: '{key}.file'")
        check(f"{key}.sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "a sha256 hex digest")


def _validate_openvino(data: dict[str, Any], check, where: str) -> None:
    if not _has(data, "openvino"):
        return
    check("openvino", _is_dict, "an object")
    check("openvino.variants", _is_dict, "an object of variants (fp32, int8)")
    for name in data["openvino"]["variants"]:
        check(f"openvino.variants.{name}", _is_dict, "an object")
        for encoder in ENCODERS:
            for key in (f"openvino.variants.{name}.{encoder}", f"openvino.variants.{name}.{encoder}.weights"):
                check(key, _is_dict, 'an object {"file", "sha256"}')
                check(f"{key}.file", _is_text, "a file name inside the export folder")
                _check_file_name(_lookup(data, f"{key}.file"), f"{where}: '{key}.file'")
                check(f"{key}.sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v), "a sha256 hex digest")


def _check_file_name(name: str, where: str) -> None:
    """ExportError unless ``name`` is a relative path that stays inside the folder."""
    if any(pure.is_absolute() or pure.anchor for pure in (PurePosixPath(name), PureWindowsPath(name))):
        raise ExportError(f"{where} {name!r} is an absolute path; entries must be names inside the export folder")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ExportError(f"{where} {name!r} leads outside the export folder; entries must be names inside it")


def _has(data: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _is_image_size(value: Any) -> bool:
    if _is_positive_int(value):
        return True
    return isinstance(value, list) and len(value) in (1, 2) and all(map(_is_positive_int, value))
