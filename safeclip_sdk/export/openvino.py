"""OpenVINO IR beside the ONNX export: fp32 converted from the ONNX encoders, int8 by NNCF
post-training quantisation calibrated on the user's data, each checked before it is kept.

>>> export_openvino("runs/safe-clip/model", "exports/safe-clip", calibration_data="data/train.jsonl",
...                 eval_data="data/test.jsonl")

The export folder is the ONNX export's (``export_onnx`` writes or keeps its fp32 encoders first), so
the manifest, the preprocessing, the tokenizer, the method's keys and the per-category classifier
are shared; the method's extras that live in the encoder graphs (a hyperbolic projection) are
converted with them. ``image_encoder.xml``/``.bin`` and ``text_encoder.xml``/``.bin`` (fp32, weights
not compressed) and ``*.int8.xml``/``.bin`` are listed under the manifest's ``openvino`` section with
their hashes, checks and the OpenVINO version.

Checks, with OpenVINO on the CPU against the torch model in fp32 on the ONNX export's generated
inputs (``parity_batch`` and 1):

- fp32: per-embedding cosine >= 0.9999;
- int8 (NNCF ``quantize`` with ``model_type=TRANSFORMER`` on ``calibration_size`` encoder inputs
  drawn from ``calibration_data``): cosine >= ``int8_min_cosine`` on the texts and images of the
  first ``PARITY_ITEMS`` quadruplets of ``eval_data`` (of the calibration data without it), since a
  statically quantised encoder is calibrated for real inputs and random pixels lie outside its
  ranges; and, with ``eval_data``, the ONNX int8 variant's retrieval gate (R@1 in every direction
  within ``int8_max_r1_drop`` points of the fp32 OpenVINO encoders). A failing int8 variant is
  deleted and ExportError says why.

Finally every CPU variant of the folder (onnxruntime fp32/int8, OpenVINO fp32/int8) is timed in one
run on this machine and the manifest's ``speed`` section records images/s and texts/s, from which
``Encoder.load(folder, backend="auto")`` picks the fastest.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..methods import load_checked_model
from ..model.folder import LoadedModel
from .manifest import MANIFEST_NAME, Manifest, file_entry, load_manifest
from .onnx import (FP32_MIN_COSINE, INT8_MAX_R1_DROP, INT8_MIN_COSINE, TOWERS, ParityInputs, Runner, Tower,
                   check_outputs, cpu_session, encoder_inputs, eval_items, export_onnx, exportable_clip,
                   parity_inputs, parity_of, quadruplet_columns, retrieval_gate, run_session, weights_sha256)

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SIZE = 300  # encoder inputs per tower (NNCF's default subset size)
PARITY_ITEMS = 16  # quadruplets whose texts and images check int8 against torch
SPEED_BATCH = 32
SPEED_REPEATS = 3
# OpenVINO compile settings of every encoder (export checks, speed, the Encoder): parallel streams,
# each batch split over them; faster than one LATENCY request on every CPU row timed in
# benchmarks/bench_runtimes.py, and steadier under load (no barrier across all cores per operator)
COMPILE_CONFIG = {"PERFORMANCE_HINT": "THROUGHPUT"}
ONNX_SPEED_VARIANTS = ("fp32", "int8")  # fp16 graphs are for GPUs: not timed on the CPU


def ir_file_name(tower: Tower, variant: str) -> str:
    return f"{tower.encoder}.xml" if variant == "fp32" else f"{tower.encoder}.{variant}.xml"


class CompiledEncoder:
    """One encoder compiled for the CPU with the export's settings; a call splits its batch over the
    plugin's optimal number of infer requests, which run at once (one per stream)."""

    def __init__(self, compiled):
        import openvino as ov

        self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._queue = ov.AsyncInferQueue(compiled, self.requests)
        self._queue.set_callback(self._collect)
        self._outputs: list[np.ndarray | None] = []
        self._lock = threading.Lock()  # one batch at a time: the queue's requests belong to the call

    def _collect(self, request, index: int) -> None:
        self._outputs[index] = request.get_output_tensor(0).data.copy()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        with self._lock:
            chunks = np.array_split(inputs, min(self.requests, len(inputs)))
            self._outputs = [None] * len(chunks)
            for index, chunk in enumerate(chunks):
                self._queue.start_async({0: np.ascontiguousarray(chunk)}, index)
            self._queue.wait_all()
            return np.concatenate(self._outputs)


def compile_encoder(core, path: Path, num_threads: int | None = None) -> CompiledEncoder:
    """The IR at ``path`` compiled for the CPU with the export's settings."""
    config: dict[str, Any] = dict(COMPILE_CONFIG)
    if num_threads:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    return CompiledEncoder(core.compile_model(core.read_model(str(path)), "CPU", config))


def export_openvino(model: str | os.PathLike | LoadedModel, out_dir: str | os.PathLike, *, int8: bool = True,
                    calibration_data: str | os.PathLike | None = None, eval_data: str | os.PathLike | None = None,
                    image_root: str | os.PathLike | None = None, calibration_size: int = DEFAULT_CALIBRATION_SIZE,
                    parity_batch: int = 4, int8_min_cosine: float = INT8_MIN_COSINE,
                    int8_max_r1_drop: float = INT8_MAX_R1_DROP, speed_batch: int = SPEED_BATCH,
                    speed_repeats: int = SPEED_REPEATS) -> Path:
    """Add OpenVINO IR (fp32, and int8 unless ``int8=False``) to the export folder ``out_dir``.

    Args:
        model: a LoadedModel or model source (its fp32 ONNX export is written to ``out_dir`` first,
            or kept when the folder already holds these weights), or an ONNX export folder (copied
            to ``out_dir`` when it is another folder; its ``source_model`` must still load with the
            exported weights, since every check is against torch).
        calibration_data: quadruplet file whose texts and images calibrate int8 (default: ``eval_data``);
            ``image_root`` as in load_dataset. calibration_size: encoder inputs per tower, drawn at random.
        eval_data: quadruplet file for the int8 retrieval gate (as for the ONNX int8 variant).
        parity_batch, int8_min_cosine, int8_max_r1_drop: as for ``export_onnx``.
        speed_batch, speed_repeats: how every variant is timed at the end (median of the repeats).

    Returns:
        The path of ``manifest.json``.

    Raises:
        ExportError: OpenVINO or NNCF missing, no calibration data for int8, a failed conversion or
        check (a failing int8 variant is removed; fp32 stays). DataError: a data file cannot be read
        (checked before anything is written).
    """
    ov = _require_openvino(int8)
    if calibration_size < 1 or speed_batch < 1 or speed_repeats < 1:
        raise ExportError(f"calibration_size, speed_batch and speed_repeats must be at least 1, got "
                          f"{calibration_size}, {speed_batch}, {speed_repeats}")
    calibration_data = calibration_data if calibration_data is not None else eval_data
    if int8 and calibration_data is None:
        raise ExportError("the int8 OpenVINO variant is calibrated on your data: pass calibration_data (a quadruplet "
                          "file; eval_data is used when it is not given), or int8=False")
    calibration = eval_items(calibration_data, image_root) if int8 else None
    gate_items = eval_items(eval_data, image_root) if int8 and eval_data is not None else None
    out = Path(out_dir)
    loaded = _source_model(model, out)
    export_onnx(loaded, out, parity_batch=parity_batch)
    manifest = load_manifest(out)
    core = ov.Core()
    with exportable_clip(loaded.model) as network:
        parity = parity_inputs(loaded, network, parity_batch)
        data_parity = _data_parity(loaded, network, gate_items or calibration) if int8 else None
    section = manifest.openvino or {"variants": {}}
    section["openvino_version"] = ov.__version__
    manifest.openvino = section
    onnx_fp32 = {tower: out / manifest.variants["fp32"][tower.encoder]["file"] for tower in TOWERS}
    logger.info("converting %s's ONNX encoders to OpenVINO IR", out)
    section["variants"]["fp32"] = _stage_variant(
        ov, core, out, "fp32", lambda tower: ov.convert_model(str(onnx_fp32[tower])), parity, FP32_MIN_COSINE)
    manifest.save(out)
    if int8:
        _add_int8(ov, core, out, manifest, loaded, data_parity, calibration, calibration_size, calibration_data,
                  {"min_cosine": int8_min_cosine, "max_r1_drop": int8_max_r1_drop, "data": eval_data,
                   "items": gate_items})
    manifest.speed = measure_speeds(out, manifest, parity, batch=speed_batch, repeats=speed_repeats)
    manifest.save(out)
    return out / MANIFEST_NAME


def _require_openvino(int8: bool):
    try:
        import openvino as ov

        if int8:
            import nncf  # noqa: F401
    except ImportError as error:
        raise ExportError(f"OpenVINO export needs {error.name}: pip install 'safeclip[openvino]'") from error
    return ov


def _source_model(model: str | os.PathLike | LoadedModel, out: Path) -> LoadedModel:
    """The torch model to export and check against; an ONNX export folder is first copied to ``out``."""
    if isinstance(model, LoadedModel) or not (Path(model) / MANIFEST_NAME).is_file():
        return model if isinstance(model, LoadedModel) else load_checked_model(str(model))
    folder = Path(model)
    manifest = load_manifest(folder)
    try:
        loaded = load_checked_model(manifest.source_model)
    except Exception as error:  # loading raises many types; all mean "the reference is gone"
        raise ExportError(f"{folder / MANIFEST_NAME}: its source model {manifest.source_model} cannot be loaded "
                          f"({error}); OpenVINO variants are checked against it") from error
    with exportable_clip(loaded.model) as network:
        if weights_sha256(network) != manifest.weights_sha256:
            raise ExportError(f"{folder / MANIFEST_NAME}: its source model {manifest.source_model} no longer has the "
                              f"exported weights; export it again")
    if folder.resolve() != out.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in [*manifest.files(), MANIFEST_NAME]:
            shutil.copy2(folder / name, out / name)
    return loaded


def _add_int8(ov, core, out: Path, manifest: Manifest, loaded: LoadedModel, parity: ParityInputs, calibration,
              calibration_size: int, calibration_data, gate: dict[str, Any]) -> None:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    section = manifest.openvino
    fp32_paths = {tower: out / section["variants"]["fp32"][tower.encoder]["file"] for tower in TOWERS}
    samples = _calibration_inputs(loaded, calibration, calibration_size)

    def quantize(tower: Tower):
        logger.info("quantising %s to int8 with NNCF on %d inputs", tower.encoder, len(samples[tower]))
        # 7-bit weights everywhere (overflow fix): on x86 CPUs without VNNI the int8 kernels add
        # products in saturating 16-bit pairs, and 8-bit weights overflow them (measured on Zen 3 with
        # the tiny model: text cosine 0.963 with 8 bits, 0.997 with 7), so the file holds on any CPU.
        return nncf.quantize(core.read_model(str(fp32_paths[tower])), nncf.Dataset(samples[tower]),
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples[tower]),
                             advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))

    def retrieval_check(int8_models: dict[Tower, Any]) -> dict[str, Any]:
        fp32 = {tower: compile_encoder(core, path) for tower, path in fp32_paths.items()}
        return retrieval_gate(loaded, gate["data"], gate["items"], fp32, int8_models, gate["max_r1_drop"], "OpenVINO")

    try:
        entry = _stage_variant(ov, core, out, "int8", quantize, parity, gate["min_cosine"],
                               extra_check=retrieval_check if gate["items"] is not None else None)
    except ExportError as error:
        section["variants"].pop("int8", None)
        for tower in TOWERS:
            xml = out / ir_file_name(tower, "int8")
            for path in (xml, xml.with_suffix(".bin")):
                path.unlink(missing_ok=True)
        manifest.save(out)
        raise ExportError(f"int8 OpenVINO variant not kept: {error} (its files removed; the other variants in "
                          f"{out} are unchanged)") from error
    entry["calibration"] = {"data": str(calibration_data), "inputs_per_tower": {tower.name: len(samples[tower])
                                                                               for tower in TOWERS},
                            "method": "nncf.quantize", "model_type": "transformer", "overflow_fix": "enable",
                            "nncf_version": nncf.__version__}
    section["variants"]["int8"] = entry
    manifest.save(out)


def _data_parity(loaded: LoadedModel, network, items) -> ParityInputs:
    """The texts and images of the first ``PARITY_ITEMS`` quadruplets (all columns, as one batch and
    as a batch of 1) with their torch fp32 embeddings."""
    items = items[:PARITY_ITEMS]
    inputs: dict[str, list[np.ndarray]] = {tower.name: [] for tower in TOWERS}
    for column, tower in quadruplet_columns(items).items():
        inputs[tower.name].append(encoder_inputs(loaded, items, column))
    batches = {name: np.concatenate(columns) for name, columns in inputs.items()}
    return parity_of({name: [batch, batch[:1]] for name, batch in batches.items()}, loaded, network)


def _calibration_inputs(loaded: LoadedModel, items, size: int) -> dict[Tower, list[np.ndarray]]:
    """Up to ``size`` single-item encoder inputs per tower, drawn at random (seeded) from every
    text and image column of ``items`` (safe and unsafe alike: the encoders see both)."""
    pool: dict[Tower, list[tuple[int, str]]] = {tower: [] for tower in TOWERS}
    for column, tower in quadruplet_columns(items).items():
        pool[tower] += [(index, column) for index in range(len(items))]
    chosen: dict[Tower, list[np.ndarray]] = {}
    for tower, entries in pool.items():
        picked = sorted(random.Random(0).sample(entries, min(size, len(entries))), key=lambda entry: entry[1])
        rows = []
        for column in dict.fromkeys(column for _, column in picked):
            subset = [items[index] for index, name in picked if name == column]
            rows += list(encoder_inputs(loaded, subset, column)[:, None])
        chosen[tower] = rows
    return chosen


def _stage_variant(ov, core, out: Path, variant: str, build: Callable[[Tower], Any], parity: ParityInputs,
                   min_cosine: float, extra_check: Callable[[dict[Tower, Any]], dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """Write both towers of ``variant`` into a staging folder, check them, then move them into ``out``."""
    stage = out / f".openvino-{variant}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        checks: dict[str, Any] = {"reference": "torch fp32", "min_cosine_required": min_cosine}
        compiled = {}
        for tower in TOWERS:
            name = ir_file_name(tower, variant)
            try:
                ov.save_model(build(tower), str(stage / name), compress_to_fp16=False)
                compiled[tower] = compile_encoder(core, stage / name)
                outputs = [compiled[tower](batch) for batch in parity.inputs[tower.name]]
            except ExportError:
                raise
            except Exception as error:  # OpenVINO and NNCF raise many types; all mean "this does not convert"
                first_line = (str(error).strip().splitlines() or [""])[0]
                raise ExportError(f"{name}: OpenVINO could not build or run it ({type(error).__name__}: "
                                  f"{first_line})") from error
            checks[tower.name] = check_outputs(name, tower, outputs, parity, min_cosine)
        extra = extra_check(compiled) if extra_check is not None else {}
        entry: dict[str, Any] = {}
        for tower in TOWERS:
            xml = out / ir_file_name(tower, variant)
            weights = xml.with_suffix(".bin")
            os.replace(stage / weights.name, weights)
            os.replace(stage / xml.name, xml)
            entry[tower.encoder] = {**file_entry(xml), "weights": file_entry(weights)}
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**entry, "parity": checks, **extra}


def measure_speeds(out: Path, manifest: Manifest, parity: ParityInputs, *, batch: int = SPEED_BATCH,
                   repeats: int = SPEED_REPEATS) -> dict[str, Any]:
    """Images/s and texts/s of every CPU variant in ``out`` (onnxruntime and OpenVINO), timed in one run:
    ``repeats`` rounds over the variants in turn, one call of ``batch`` items per tower each, the median kept."""
    inputs = {tower: np.resize(parity.inputs[tower.name][0], (batch, *parity.inputs[tower.name][0].shape[1:]))
              for tower in TOWERS}
    runners: dict[str, dict[Tower, Runner]] = {}
    for variant in ONNX_SPEED_VARIANTS:
        if variant in manifest.variants:
            options = manifest.variants[variant].get("session_options")
            runners[f"onnx/{variant}"] = {
                tower: partial(run_session, cpu_session(out / manifest.variants[variant][tower.encoder]["file"],
                                                        options), tower) for tower in TOWERS}
    if manifest.openvino:
        import openvino as ov

        core = ov.Core()
        for variant, entry in manifest.openvino["variants"].items():
            runners[f"openvino/{variant}"] = {tower: compile_encoder(core, out / entry[tower.encoder]["file"])
                                              for tower in TOWERS}
    times: dict[str, dict[Tower, list[float]]] = {key: {tower: [] for tower in TOWERS} for key in runners}
    for round_index in range(repeats + 1):  # the first round warms up
        for key, towers in runners.items():
            for tower, run in towers.items():
                started = time.perf_counter()
                run(inputs[tower])
                if round_index:
                    times[key][tower].append(time.perf_counter() - started)
    rates = {key: {tower.name: round(batch / statistics.median(values), 3) for tower, values in by_tower.items()}
             for key, by_tower in times.items()}
    logger.info("speed at batch %d (items/s, image / text): %s", batch,
                ", ".join(f"{key} {rate['image']:.1f} / {rate['text']:.1f}" for key, rate in rates.items()))
    return {"cpu": _cpu_name(), "threads": os.cpu_count(), "batch": batch, "repeats": repeats,
            "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "items_per_s": rates}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
