"""Export an open_clip CLIP as two ONNX encoders, each checked against torch before it is kept.

>>> export_onnx("runs/safe-clip/model", "exports/safe-clip")                      # fp32
>>> export_onnx("runs/safe-clip/model", "exports/safe-clip", int8=True,           # adds int8
...             eval_data="data/test.jsonl")

``image_encoder.onnx`` maps ``pixel_values`` float32 [B, 3, H, W] to ``image_embeds`` [B, D] and
``text_encoder.onnx`` maps ``input_ids`` int64 [B, L] to ``text_embeds`` [B, D]; both output
embeddings in the model's space (L2-normalised rows for cosine models; for another space its
``embed`` is part of the graph, e.g. a hyperbolic projection whose outputs are the space
components of points) and the batch axis is dynamic. ``manifest.json`` (see ``manifest.py``) holds
the preprocessing, the tokenizer, the embedding space, file hashes and every check's numbers. A
model folder with a fitted per-category classifier also gets its small graphs (``category_onnx.py``).

Every file is written under a temporary name and renamed only once it passes its checks, run
with onnxruntime on CPU against the torch model in fp32 on generated inputs (random pixels,
tokenized random captions; batch ``parity_batch`` and batch 1):

- fp32 (torch's dynamo exporter): per-embedding cosine >= 0.9999;
- fp16 (onnxruntime's float16 converter, float32 inputs and outputs): cosine >= 0.999;
- int8 (onnxruntime dynamic quantisation of the MatMul/Gemm weights): cosine >= 0.99 and, with
  ``eval_data``, R@1 (T->V, V->T, and T*->V+V* when the data has unsafe images) within 1 point
  of the fp32 ONNX encoders. A failing int8 variant is deleted and ExportError says why.

In a space with an unsafe score (a hyperbolic one: the geodesic distance from the origin) the
cosine of the space components checks each point's direction, and the unsafe score must also
agree: relative error at most ``10 * (1 - min_cosine)`` (1e-3 for fp32).

Exporting into a folder that already holds an export of the same weights keeps its encoders and
adds the requested variants; an export of other weights is replaced as a whole.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._utils.files import staged_folder
from .._utils.version import __version__
from ..errors import ExportError
from ..methods import load_checked_model, model_inference
from ..model.folder import LoadedModel, load_model
from ..model.spaces import EmbeddingSpace
from .category_onnx import export_category_classifier
from .manifest import MANIFEST_NAME, Manifest, file_entry, load_manifest

if TYPE_CHECKING:
    from ..data import Quadruplet
    from ..metrics.retrieval import EmbeddingSet

logger = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99
INT8_MAX_R1_DROP = 1.0  # R@1 points (percent) int8 may lose against the fp32 ONNX encoders
EVAL_BATCH = 64
# onnxruntime's CPU layout optimizer (level ORT_ENABLE_ALL) crashes on the converted fp16 graphs;
# the levels below it run them correctly, and GPU providers do not use that optimizer.
FP16_SESSION_OPTIONS = {"graph_optimization_level": "ORT_ENABLE_EXTENDED"}
_TRACE_BATCH = 2  # torch.export specialises sizes 0 and 1: trace with 2 so the batch axis stays dynamic
_CAPTION_WORDS = ("a photo of the dog cat person car street beach red blue small large two people "
                  "walking sitting near under holding with on in at night snow grass old young").split()


@dataclass(frozen=True)
class Tower:
    """One exported encoder: its manifest section, file stem and tensor names."""

    name: str  # "image" | "text"
    encoder: str  # "image_encoder" | "text_encoder"
    input_name: str
    output_name: str

    def file_name(self, variant: str) -> str:
        return f"{self.encoder}.onnx" if variant == "fp32" else f"{self.encoder}.{variant}.onnx"


IMAGE = Tower("image", "image_encoder", "pixel_values", "image_embeds")
TEXT = Tower("text", "text_encoder", "input_ids", "text_embeds")
TOWERS = (IMAGE, TEXT)


class ImageEncoder(nn.Module):
    """``pixel_values`` [B, 3, H, W] -> image embeddings [B, D] in ``space`` (default: unit rows)."""

    def __init__(self, clip: nn.Module, space: EmbeddingSpace | None = None):
        super().__init__()
        self.clip = clip
        self.space = space

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.space is None or self.space.normalizes:
            return self.clip.encode_image(pixel_values, normalize=True)
        return self.space.embed(self.clip.encode_image(pixel_values), "image")


class TextEncoder(nn.Module):
    """``input_ids`` [B, L] -> text embeddings [B, D] in ``space`` (default: unit rows)."""

    def __init__(self, clip: nn.Module, space: EmbeddingSpace | None = None):
        super().__init__()
        self.clip = clip
        self.space = space

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.space is None or self.space.normalizes:
            return self.clip.encode_text(input_ids, normalize=True)
        return self.space.embed(self.clip.encode_text(input_ids), "text")


@dataclass
class ParityInputs:
    """Generated encoder inputs in batches (``parity_batch``, then 1) and their torch fp32 embeddings."""

    inputs: dict[str, list[np.ndarray]]  # tower name -> batches
    expected: dict[str, list[np.ndarray]]
    space: EmbeddingSpace | None = None

    def example(self, tower: Tower) -> torch.Tensor:
        """A batch of ``_TRACE_BATCH`` inputs to trace the export with."""
        batches = self.inputs[tower.name]
        return torch.from_numpy(np.concatenate(batches)[:_TRACE_BATCH])


# A variant's encoders are written by build(tower, path) and may get extra_check(paths) -> manifest fields.
Builder = Callable[[Tower, Path], None]
ExtraCheck = Callable[[dict[Tower, Path]], dict[str, Any]]
# A tower's encoder in some runtime, as a function: inputs [B, ...] -> embeddings [B, D]
Runner = Callable[[np.ndarray], np.ndarray]


def export_onnx(model: str | os.PathLike | LoadedModel, out_dir: str | os.PathLike, *, fp16: bool = False,
                int8: bool = False, eval_data: str | os.PathLike | None = None,
                image_root: str | os.PathLike | None = None, opset: int | None = None, parity_batch: int = 4,
                int8_min_cosine: float = INT8_MIN_COSINE, int8_max_r1_drop: float = INT8_MAX_R1_DROP) -> Path:
    """Export ``model`` to ``out_dir`` as ONNX encoders (fp32, plus fp16 / int8 on request).

    Args:
        model: a LoadedModel or any source :func:`safeclip_sdk.model.folder.load_model` accepts. A model
            wrapped in peft LoRA adapters is merged (on a copy) first.
        out_dir: the export folder; ``manifest.json`` is (re)written there.
        fp16: add the float16 variant. int8: add the int8 variant (kept only if it passes).
        eval_data: quadruplet file (see ``safeclip_sdk.data.load_dataset``) for the int8
            retrieval check; ``image_root`` as in load_dataset.
        opset: ONNX opset (default: the exporter's).
        parity_batch: batch size of the parity check (batch 1 is checked too).
        int8_min_cosine, int8_max_r1_drop: the int8 acceptance thresholds.

    Returns:
        The path of ``manifest.json``.

    Raises:
        ExportError: an encoder fails to export or fails a check. An export of other weights
        already in ``out_dir`` is replaced only when the new one is complete (it is built beside it);
        on a first export, or when adding variants to an export of the same weights, the variants
        that passed stay in the folder and the manifest and the failing one does not.
        DataError: ``eval_data`` cannot be read (checked before anything is written).
    """
    _require_onnx_packages()
    if parity_batch < 1:
        raise ExportError(f"parity_batch must be at least 1, got {parity_batch}")
    # every input is checked before the first write
    gate_items = eval_items(eval_data, image_root) if int8 and eval_data is not None else None
    loaded = model if isinstance(model, LoadedModel) else load_checked_model(str(model))
    source = loaded.source if isinstance(model, LoadedModel) else str(model)
    out = Path(out_dir)
    variants = {"fp16": fp16, "int8": int8}
    gate = {"min_cosine": int8_min_cosine, "max_r1_drop": int8_max_r1_drop, "data": eval_data, "items": gate_items}

    with exportable_clip(loaded.model) as network:
        parity = parity_inputs(loaded, network, parity_batch)
        weights = weights_sha256(network)
        manifest, previous = _describe(loaded, source, weights, parity), _previous_manifest(out)
        if previous is not None and _same_export(previous, weights, opset):
            manifest.variants, manifest.tensorrt, manifest.opset = previous.variants, previous.tensorrt, previous.opset
            manifest.openvino, manifest.speed = previous.openvino, previous.speed
            logger.info("%s already holds an export of these weights (%s); adding to it", out,
                        ", ".join(manifest.variants))
            manifest.category_classifier = export_category_classifier(loaded, out)  # it may have been refitted
            manifest.save(out)
            return _add_variants(out, manifest, loaded, parity, variants, gate)
        if previous is not None:
            logger.info("%s holds an export of other weights or another opset; building its replacement beside it",
                        out)
        failed: ExportError | None = None
        with staged_folder(out) as stage:
            logger.info("exporting %s to ONNX in %s", source, out)
            manifest.variants["fp32"], manifest.opset = _export_fp32(network, stage, parity, opset)
            manifest.category_classifier = export_category_classifier(loaded, stage)
            manifest.save(stage)
            try:
                _add_variants(stage, manifest, loaded, parity, variants, gate)
            except ExportError as error:
                if previous is not None:
                    raise ExportError(f"{error}; {out} still holds the previous export, unchanged") from error
                failed = error  # a first export keeps the variants that passed
    if failed is not None:
        raise failed
    return out / MANIFEST_NAME


def _same_export(previous: Manifest, weights: str, opset: int | None) -> bool:
    return previous.weights_sha256 == weights and "fp32" in previous.variants and opset in (None, previous.opset)


def _add_variants(out: Path, manifest: Manifest, loaded: LoadedModel, parity: ParityInputs, variants: dict[str, bool],
                  gate: dict[str, Any]) -> Path:
    """Add the requested fp16 / int8 variants to the export in ``out`` (its fp32 encoders exist)."""
    fp32_paths = {tower: out / manifest.variants["fp32"][tower.encoder]["file"] for tower in TOWERS}
    if variants["fp16"]:
        manifest.variants["fp16"] = _stage_variant(
            out, "fp16", lambda tower, path: _convert_fp16(fp32_paths[tower], path), parity, FP16_MIN_COSINE,
            session_options=FP16_SESSION_OPTIONS)
        manifest.save(out)
    if variants["int8"]:
        retrieval_check = (partial(_retrieval_check, loaded, gate["data"], gate["items"], fp32_paths,
                                   gate["max_r1_drop"]) if gate["items"] is not None else None)
        try:
            manifest.variants["int8"] = _stage_variant(
                out, "int8", lambda tower, path: _quantize_int8(fp32_paths[tower], path), parity,
                gate["min_cosine"], extra_check=retrieval_check)
        except ExportError as error:
            _drop_variant(out, manifest, "int8")
            raise ExportError(f"int8 variant not kept: {error} (int8 files removed; the other variants in "
                              f"{out} are unchanged)") from error
        manifest.save(out)
    return out / MANIFEST_NAME


def eval_items(eval_data: str | os.PathLike, image_root: str | os.PathLike | None) -> list[Quadruplet]:
    """The int8 retrieval check's quadruplets, read (and so validated) before anything is written."""
    from ..data import load_dataset

    return load_dataset(eval_data, image_root=image_root).items


@contextmanager
def exportable_clip(model: nn.Module) -> Iterator[nn.Module]:
    """The plain open_clip CLIP to export, on CPU in eval mode; LoRA adapters merged into a copy.

    The caller's model is not changed (its train/eval mode is restored afterwards).
    """
    network = model
    peft = sys.modules.get("peft")  # a model cannot hold peft layers unless peft was imported
    if peft is not None:
        from peft.tuners.lora import LoraLayer

        if isinstance(network, peft.PeftModel):
            network = copy.deepcopy(network).merge_and_unload()
        elif any(isinstance(module, LoraLayer) for module in network.modules()):
            raise ExportError("the model holds LoRA layers outside a peft PeftModel: merge them into the "
                              "base weights before exporting")
    if any(parameter.device.type != "cpu" for parameter in network.parameters()):
        network = (copy.deepcopy(network) if network is model else network).cpu()
    was_training = network.training
    network.eval()
    try:
        yield network
    finally:
        network.train(was_training)


def weights_sha256(network: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and values): identifies exported weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def parity_inputs(loaded: LoadedModel, network: nn.Module, batch_size: int, seed: int = 0) -> ParityInputs:
    """Random pixel batches and tokenized random captions of ``batch_size`` and 1 items, with the
    embeddings the torch model gives them in fp32."""
    generator = torch.Generator().manual_seed(seed)
    words = random.Random(seed)
    height, width = image_size_hw(loaded.preprocess_cfg["size"])
    sizes = (batch_size, 1)
    pixels = [torch.randn(size, 3, height, width, generator=generator) for size in sizes]
    captions = [[" ".join(words.choices(_CAPTION_WORDS, k=words.randint(2, 12))) for _ in range(size)]
                for size in sizes]
    tokens = [loaded.tokenizer(batch).long() for batch in captions]
    return parity_of({IMAGE.name: [batch.numpy() for batch in pixels], TEXT.name: [batch.numpy() for batch in tokens]},
                     loaded, network)


def parity_of(inputs: dict[str, list[np.ndarray]], loaded: LoadedModel, network: nn.Module) -> ParityInputs:
    """ParityInputs of the given encoder input batches (tower name -> batches), with their torch fp32 embeddings."""
    space = model_inference(loaded).space
    encoders = {IMAGE.name: ImageEncoder(network, space), TEXT.name: TextEncoder(network, space)}
    with torch.no_grad():
        expected = {name: [encoders[name](torch.from_numpy(batch)).float().numpy() for batch in batches]
                    for name, batches in inputs.items()}
    return ParityInputs(inputs, expected, space)


def image_size_hw(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """open_clip's preprocess ``size`` (an int or [H, W]) as (height, width)."""
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[-1]))
    return int(size), int(size)


def cpu_session(path: Path, session_options: dict[str, str] | None = None):
    """An onnxruntime CPU session, with a manifest variant's ``session_options`` applied."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    level = (session_options or {}).get("graph_optimization_level")
    if level is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _require_onnx_packages() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs {error.name}: pip install 'safeclip[onnx]'") from error


def _previous_manifest(out: Path) -> Manifest | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        return load_manifest(out, verify_hashes=True)
    except ExportError as error:
        logger.warning("%s; exporting again from scratch", error)
        return None


def _describe(loaded: LoadedModel, source: str, weights: str, parity: ParityInputs) -> Manifest:
    preprocess = loaded.preprocess_cfg
    text_cfg = loaded.model_cfg.get("text_cfg", {})
    image = {
        "input": IMAGE.input_name,
        "output": IMAGE.output_name,
        "size": list(image_size_hw(preprocess["size"])),
        "mode": preprocess.get("mode", "RGB"),
        "mean": list(preprocess["mean"]),
        "std": list(preprocess["std"]),
        "interpolation": preprocess.get("interpolation", "bicubic"),
        "resize_mode": preprocess.get("resize_mode", "shortest"),
        "fill_color": preprocess.get("fill_color", 0),
    }
    hf_tokenizer = text_cfg.get("hf_tokenizer_name")
    text = {
        "input": TEXT.input_name,
        "output": TEXT.output_name,
        "tokenizer": f"hf:{hf_tokenizer}" if hf_tokenizer else "open_clip:simple",
        "context_length": loaded.context_length,
    }
    if hf_tokenizer and text_cfg.get("tokenizer_kwargs"):
        text["tokenizer_kwargs"] = text_cfg["tokenizer_kwargs"]
    inference = model_inference(loaded)
    return Manifest(source_model=source, embed_dim=int(parity.expected[IMAGE.name][0].shape[1]), image=image,
                    text=text, method=inference.method or loaded.metadata.get("method"), weights_sha256=weights,
                    safeclip_version=__version__, embedding_space=inference.space.to_dict(),
                    method_metadata=inference.export_metadata())


def _export_fp32(network: nn.Module, out: Path, parity: ParityInputs, opset: int | None) -> tuple[dict, int]:
    """Export both towers with torch's dynamo exporter; returns (variant entry, opset used)."""
    wrappers = {IMAGE: ImageEncoder(network, parity.space).eval(), TEXT: TextEncoder(network, parity.space).eval()}
    opsets: list[int] = []

    def build(tower: Tower, path: Path) -> None:
        dynamic_shapes = {tower.input_name: {0: torch.export.Dim("batch", min=1)}}
        try:
            with torch.no_grad(), _quiet_exporter_logs():
                program = torch.onnx.export(
                    wrappers[tower], (parity.example(tower),), str(path), dynamo=True, external_data=False,
                    opset_version=opset, input_names=[tower.input_name], output_names=[tower.output_name],
                    dynamic_shapes=dynamic_shapes, verbose=False)
        except Exception as error:  # the exporter raises many types; all mean "this model does not export"
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ExportError(f"{tower.file_name('fp32')}: ONNX export failed ({type(error).__name__}: "
                              f"{first_line})") from error
        opsets.append(int(program.model.opset_imports[""]))

    variant = _stage_variant(out, "fp32", build, parity, FP32_MIN_COSINE)
    return variant, opsets[0]


@contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Hide the INFO messages onnxscript and onnx_ir log for every graph rewrite, unless DEBUG is on."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [exporter_logger.level for exporter_logger in loggers]
    for exporter_logger in loggers:
        if exporter_logger.getEffectiveLevel() > logging.DEBUG:
            exporter_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for exporter_logger, level in zip(loggers, levels):
            exporter_logger.setLevel(level)


def _stage_variant(out: Path, variant: str, build: Builder, parity: ParityInputs, min_cosine: float, *,
                   session_options: dict[str, str] | None = None,
                   extra_check: ExtraCheck | None = None) -> dict[str, Any]:
    """Write both encoders of ``variant`` under temporary names, check them, then rename them.

    On any failure the temporary files are deleted and the error propagates.
    """
    staged = {tower: out / f".{tower.file_name(variant)}.tmp" for tower in TOWERS}
    try:
        checks: dict[str, Any] = {"reference": "torch fp32", "min_cosine_required": min_cosine}
        for tower, path in staged.items():
            logger.info("writing %s", tower.file_name(variant))
            build(tower, path)
            checks[tower.name] = _check_parity(path, tower, variant, parity, min_cosine, session_options)
        extra = extra_check(staged) if extra_check is not None else {}
        entry: dict[str, Any] = {}
        for tower, path in staged.items():
            final = out / tower.file_name(variant)
            os.replace(path, final)
            entry[tower.encoder] = file_entry(final)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    if session_options:
        entry["session_options"] = session_options
    return {**entry, "parity": checks, **extra}


def _check_parity(path: Path, tower: Tower, variant: str, parity: ParityInputs, min_cosine: float,
                  session_options: dict[str, str] | None) -> dict[str, Any]:
    """Run the ONNX encoder on the parity inputs; ExportError if any embedding strays from torch."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as KernelNotImplemented

    name = tower.file_name(variant)
    try:
        session = cpu_session(path, session_options)
        outputs = [session.run([tower.output_name], {tower.input_name: batch})[0]
                   for batch in parity.inputs[tower.name]]
    except KernelNotImplemented as error:
        if variant != "fp16":
            raise ExportError(f"{name}: onnxruntime cannot run it ({str(error).splitlines()[0]})") from error
        # Older onnxruntime CPU builds lack float16 kernels; GPU runtimes still run the file.
        reason = (f"not checked on this host: onnxruntime {onnxruntime.__version__} CPU has no float16 kernel "
                  f"for an operator ({str(error).splitlines()[0]})")
        return {"checked": False, "reason": reason}
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ExportError(f"{name}: onnxruntime cannot run it ({str(error).splitlines()[0]})") from error
    return check_outputs(name, tower, outputs, parity, min_cosine)


def check_outputs(name: str, tower: Tower, outputs: Sequence[np.ndarray], parity: ParityInputs,
                  min_cosine: float) -> dict[str, Any]:
    """Compare a runtime's ``outputs`` on the parity inputs with torch fp32; ExportError naming
    ``name`` if any embedding (or, in a space with one, its unsafe score) strays too far."""
    cosines, max_abs_diff = [], 0.0
    for batch, actual, expected in zip(parity.inputs[tower.name], outputs, parity.expected[tower.name]):
        if actual.shape != expected.shape:
            raise ExportError(f"{name}: output shape {actual.shape} for a batch of {len(batch)}, expected "
                              f"{expected.shape}")
        cosines.append(_row_cosines(actual, expected))
        max_abs_diff = max(max_abs_diff, float(np.abs(actual.astype(np.float64) - expected).max()))
    result = {"min_cosine": float(np.min(np.concatenate(cosines))), "max_abs_diff": max_abs_diff,
              "batch_sizes": [len(batch) for batch in parity.inputs[tower.name]]}
    if not result["min_cosine"] >= min_cosine:  # also catches NaN
        raise ExportError(f"{name}: parity check failed: an embedding has cosine {result['min_cosine']:.6f} with "
                          f"torch fp32, below the required {min_cosine}")
    space = parity.space
    if space is not None and space.has_unsafe_score:
        allowed = round(10.0 * (1.0 - min_cosine), 9)
        errors = [np.abs(space.unsafe_score(actual) - space.unsafe_score(expected))
                  / np.maximum(space.unsafe_score(expected), 1e-6)
                  for actual, expected in zip(outputs, parity.expected[tower.name])]
        result["max_origin_distance_rel_error"] = float(np.max(np.concatenate(errors)))
        result["max_origin_distance_rel_error_allowed"] = allowed
        if not result["max_origin_distance_rel_error"] <= allowed:
            raise ExportError(f"{name}: parity check failed: a point's distance from the origin differs from torch "
                              f"fp32 by {result['max_origin_distance_rel_error']:.2e} (relative), above the allowed "
                              f"{allowed:.0e}")
    logger.info("%s: min cosine %.6f, max abs diff %.2e vs torch fp32", name, result["min_cosine"], max_abs_diff)
    return result


def _row_cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    return (actual * expected).sum(axis=1) / np.maximum(norms, 1e-12)


def _convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """float16 weights and activations, float32 inputs and outputs."""
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    # The converter appends the input Casts after the nodes that read them; runtimes need topological order.
    ir_model = onnx_ir.from_proto(converted)
    ir_model.graph.sort()
    onnx.save(onnx_ir.to_proto(ir_model), str(out_path))


def _quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantisation of the weight matrices (per output channel).

    Only MatMul/Gemm with a constant weight are quantised: attention's activation-by-activation
    MatMuls (MatMulConstBOnly) and the patch-embedding Conv stay float. Weights use 7 bits
    (``reduce_range``): on x86 CPUs without VNNI (AVX2 only) onnxruntime's uint8 x int8 kernel adds
    products in saturating 16-bit pairs, and full-range per-channel weights overflow them (measured
    on a Zen 3 CPU: text embeddings at cosine 0.971 to fp32). The file must run on any CPU, not only
    on the one that exported it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    quiet = _QuantizerChatterFilter()
    root.addFilter(quiet)
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, op_types_to_quantize=["MatMul", "Gemm"], extra_options={"MatMulConstBOnly": True})
    finally:
        root.removeFilter(quiet)


class _QuantizerChatterFilter(logging.Filter):
    """onnxruntime's quantizer logs per-tensor notes and pre-processing advice (which does not apply
    to dynamo-exported graphs) on the root logger; keep only its errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"onnxruntime{os.sep}quantization" not in record.pathname


def _retrieval_check(loaded: LoadedModel, eval_data: str | os.PathLike, items: Sequence[Quadruplet],
                     fp32_paths: dict[Tower, Path], max_r1_drop: float,
                     int8_paths: dict[Tower, Path]) -> dict[str, Any]:
    """The retrieval gate of the int8 ONNX encoders against the fp32 ONNX encoders (onnxruntime CPU)."""
    runners = {variant: {tower: partial(run_session, cpu_session(path), tower) for tower, path in paths.items()}
               for variant, paths in {"fp32": fp32_paths, "int8": int8_paths}.items()}
    return retrieval_gate(loaded, eval_data, items, runners["fp32"], runners["int8"], max_r1_drop, "ONNX")


def run_session(session, tower: Tower, inputs: np.ndarray) -> np.ndarray:
    """Run an onnxruntime session of ``tower`` on ``inputs``."""
    return session.run([tower.output_name], {tower.input_name: inputs})[0]


def retrieval_gate(loaded: LoadedModel, eval_data: str | os.PathLike, items: Sequence[Quadruplet],
                   fp32: dict[Tower, Runner], int8: dict[Tower, Runner], max_r1_drop: float,
                   runtime: str) -> dict[str, Any]:
    """``{"retrieval": ...}``: R@1 of the ``int8`` encoders vs the ``fp32`` encoders of one runtime
    (named ``runtime`` in messages) on ``items`` (read from ``eval_data``); ExportError if it drops by
    more than ``max_r1_drop`` points in any direction."""
    from ..metrics.retrieval import IMAGE_TO_TEXT, TEXT_TO_IMAGE, UNSAFE_TEXT_TO_ALL_IMAGES, retrieval_metrics

    embeddings = _embed_quadruplets(loaded, items, {"fp32": fp32, "int8": int8})
    directions = [TEXT_TO_IMAGE, IMAGE_TO_TEXT]
    if embeddings["fp32"].unsafe_image is not None:
        directions.append(UNSAFE_TEXT_TO_ALL_IMAGES)
    similarity = model_inference(loaded).space.similarity
    r1 = {variant: {direction: metrics["R@1"]
                    for direction, metrics in retrieval_metrics(emb, ks=(1,), similarity=similarity).items()
                    if direction in directions}
          for variant, emb in embeddings.items()}
    for direction in directions:
        before, after = r1["fp32"][direction], r1["int8"][direction]
        if before - after > max_r1_drop:
            raise ExportError(f"retrieval check failed on {eval_data}: {direction} R@1 fell from {before:.2f} "
                              f"(fp32 {runtime}) to {after:.2f} (int8), more than the allowed {max_r1_drop} points")
    logger.info("int8 %s retrieval on %s: %s", runtime, eval_data,
                ", ".join(f"{d} R@1 {r1['fp32'][d]:.2f} -> {r1['int8'][d]:.2f}" for d in directions))
    return {"retrieval": {"data": str(eval_data), "quadruplets": len(items), "max_r1_drop": max_r1_drop, **r1}}


def quadruplet_columns(items: Sequence[Quadruplet]) -> dict[str, Tower]:
    """The columns of ``items`` to embed and the tower of each (unsafe images only when all have one)."""
    columns = {"safe_text": TEXT, "unsafe_text": TEXT, "safe_image": IMAGE}
    if all(item.unsafe_image is not None for item in items):
        columns["unsafe_image"] = IMAGE
    return columns


def encoder_inputs(loaded: LoadedModel, items: Sequence[Quadruplet], column: str) -> np.ndarray:
    """The encoder inputs of one column of ``items``: token ids for texts, preprocessed pixels for images."""
    from ..data.torch_dataset import load_image_tensor

    if column.endswith("_text"):
        return loaded.tokenizer([getattr(item, column) for item in items]).long().numpy()
    return torch.stack([load_image_tensor(getattr(item, column), loaded.preprocess, item.source)
                        for item in items]).numpy()


def _embed_quadruplets(loaded: LoadedModel, items: Sequence[Quadruplet],
                       variants: dict[str, dict[Tower, Runner]]) -> dict[str, EmbeddingSet]:
    """EmbeddingSet of ``items`` under each variant's encoders."""
    from ..metrics.retrieval import EmbeddingSet

    columns = quadruplet_columns(items)
    chunks: dict[str, dict[str, list[np.ndarray]]] = {variant: {column: [] for column in columns}
                                                      for variant in variants}
    for start in tqdm(range(0, len(items), EVAL_BATCH), desc="int8 retrieval check", unit="batch", disable=None):
        batch = items[start:start + EVAL_BATCH]
        for column, tower in columns.items():
            inputs = encoder_inputs(loaded, batch, column)
            for variant, towers in variants.items():
                chunks[variant][column].append(towers[tower](inputs))
    return {variant: EmbeddingSet(**{column: np.concatenate(parts) for column, parts in by_column.items()})
            for variant, by_column in chunks.items()}


def _drop_variant(out: Path, manifest: Manifest, variant: str) -> None:
    """Delete a variant's files (listed or just written) and remove it from the manifest."""
    manifest.variants.pop(variant, None)
    for tower in TOWERS:
        (out / tower.file_name(variant)).unlink(missing_ok=True)
    manifest.save(out)
