"""The CPU runtimes side by side in one run: torch fp32, onnxruntime fp32/int8, OpenVINO fp32/int8.

    python benchmarks/bench_runtimes.py --json /tmp/bench/runtimes.json --markdown /tmp/bench/runtimes.md
    python benchmarks/bench_runtimes.py --models safeclip-tiny --repeats 3        # quick

Per model (random weights: nothing is downloaded): the model is saved with ``save_model_dir``,
exported with ``export_onnx(int8=True)`` and ``export_openvino(int8=True)`` into a temporary folder,
with the project's generated data (the demo world's generator, ``--world-items`` quadruplets per
split at 64 px) as the OpenVINO int8 calibration sample (train split) and as the recall gate of both
int8 variants (val split): a variant that loses more than 1 R@1 point is not kept, and the table
says so. Each runtime is loaded with ``Encoder.load(..., backend, precision, device="cpu")`` and
timed model-only (``encode_pixels`` / ``encode_input_ids`` on pre-built inputs) at batch 1 and 32,
images and texts; the runtimes alternate within each of ``--repeats`` repeats and every number is
the median (min-max) of the repeats; ratios are to torch fp32's median in the same run. Min cosine:
each runtime's embeddings against torch fp32's on the same batch of 32.

Arithmetic: multiply-accumulates (MAC) per item of each tower, counted with torch's
FlopCounterMode (FLOP / 2), times items/s gives GMAC/s. The CPU's peak is
``cores x GHz x MACs per cycle per core`` for the ISA ``lscpu`` reports (GHz: /proc/cpuinfo's
``cpu MHz``, the nominal clock a VM shows; a turbo clock would raise the peak):

- int8: AMX 1024; AVX-512 VNNI 128 (two 512-bit VPDPBUSD per cycle); AVX-VNNI 64; AVX2 without VNNI
  32 (two 256-bit multiply ports, and each 32 products take two of their micro-ops: VPMADDUBSW
  then VPMADDWD to widen the 16-bit pair sums);
- fp32: 2 FMA units x the vector width in floats (AVX-512 32, AVX2 16).

The Encoder's OpenVINO rows run under the THROUGHPUT hint, each batch split over the plugin's
optimal number of async requests. ``--ov-latency`` adds a row per OpenVINO variant compiled with
the LATENCY hint (one request over every core), the setting it replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_embedding import image_gflop, min_row_cosine, sample_captions
from common import describe_machine, format_rate, machine_info, markdown_table, summarize, throughput, write_json

DEFAULT_MODELS = ["safeclip-tiny", "ViT-B-32"]
BATCH_SIZES = (1, 32)
RUNTIMES = {"torch fp32": ("torch", "fp32"), "onnxruntime fp32": ("onnx", "fp32"), "onnxruntime int8": ("onnx", "int8"),
            "OpenVINO fp32": ("openvino", "fp32"), "OpenVINO int8": ("openvino", "int8")}
BASELINE = "torch fp32"
TARGET_SPEEDUP, TARGET_PEAK_FRACTION = 4.8, 0.70  # issue 18, ViT-B-32 images at batch 32
INT8_MACS_PER_CYCLE = (("amx_int8", 1024, "AMX"), ("avx512_vnni", 128, "AVX-512 VNNI"), ("avx_vnni", 64, "AVX-VNNI"),
                       ("avx2", 32, "AVX2 without VNNI"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="each timed case runs at least this long")
    parser.add_argument("--min-calls", type=int, default=2)
    parser.add_argument("--world-items", type=int, default=200, help="generated quadruplets per split")
    parser.add_argument("--calibration-size", type=int, default=300, help="OpenVINO int8 calibration inputs per tower")
    parser.add_argument("--ov-latency", action="store_true", help="also time OpenVINO's LATENCY hint")
    parser.add_argument("--profile", action="store_true",
                        help="per-operator shares of the int8 image towers at batch 32 (OpenVINO PERF_COUNT)")
    parser.add_argument("--export-only", action="store_true",
                        help="only export into --workdir (a later run with the same --workdir times them)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the exports here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.export_only and args.workdir is None:
        parser.error("--export-only needs --workdir")
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (medians with ranges)")
    return args


# --- the CPU's peak ---------------------------------------------------------------------------------------

def cpu_peak() -> dict[str, Any]:
    """Peak int8 and fp32 GMAC/s from lscpu's flags, the core count and the nominal clock."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    flags = set(next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []))
    mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("cpu MHz")]
    ghz = max(mhz) / 1000 if mhz else float("nan")
    cores = len(os.sched_getaffinity(0))
    int8 = next(((per_cycle, name) for flag, per_cycle, name in INT8_MACS_PER_CYCLE if flag in flags), (16, "SSE"))
    fp32_per_cycle = 32 if "avx512f" in flags else 16 if "fma" in flags else 8
    return {"cores": cores, "ghz": ghz, "isa": int8[1], "int8_macs_per_cycle": int8[0],
            "fp32_macs_per_cycle": fp32_per_cycle, "int8_peak_gmacs": cores * ghz * int8[0],
            "fp32_peak_gmacs": cores * ghz * fp32_per_cycle,
            "flags": sorted(flag for flag in flags if flag.startswith(("avx", "amx", "fma")))}


def tower_gmacs(loaded) -> dict[str, float]:
    """GMAC of one image and one text (context length tokens) through each tower."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from safeclip_sdk.export.onnx import image_size_hw

    height, width = image_size_hw(loaded.preprocess_cfg["size"])
    tokens = loaded.tokenizer(["a photo of a dog"])
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loaded.model.encode_text(tokens)
    return {"image": image_gflop(loaded.model, height, width, "cpu") / 2, "text": counter.get_total_flops() / 2e9}


# --- export -----------------------------------------------------------------------------------------------

def export_model(model_name: str, folder: Path, world: dict[str, Path], calibration_size: int) -> dict[str, Any]:
    import torch

    from safeclip_sdk.export import load_manifest
    from safeclip_sdk.model.folder import load_model, save_model_dir

    model_dir, export_dir = folder / "model", folder / "export"
    record = folder / "export.json"
    if record.is_file():  # --workdir of a previous run
        loaded = load_model(str(model_dir))
        info: dict[str, Any] = {**json.loads(record.read_text()), "reused_export": True}
    else:
        torch.manual_seed(0)
        loaded = load_model(model_name, pretrained=None)
        save_model_dir(model_dir, loaded.model, loaded.model_cfg, loaded.preprocess_cfg)
        info = {"reused_export": False, **_export(model_dir, export_dir, world, calibration_size)}
        record.write_text(json.dumps(info))
    info.update({"model_dir": model_dir, "export_dir": export_dir, "gmacs_per_item": tower_gmacs(loaded)})
    manifest = load_manifest(export_dir)
    info["onnx_variants"] = sorted(manifest.variants)
    info["openvino_variants"] = sorted(manifest.openvino["variants"])
    info["retrieval"] = {"onnx int8": manifest.variants.get("int8", {}).get("retrieval"),
                         "openvino int8": manifest.openvino["variants"].get("int8", {}).get("retrieval")}
    info["export_speed"] = manifest.speed
    return info


def _export(model_dir: Path, export_dir: Path, world: dict[str, Path], calibration_size: int) -> dict[str, Any]:
    from safeclip_sdk.errors import ExportError
    from safeclip_sdk.export import export_onnx
    from safeclip_sdk.export.openvino import export_openvino

    info: dict[str, Any] = {}
    for name, export in (("onnx", lambda: export_onnx(model_dir, export_dir, int8=True, eval_data=world["val"])),
                         ("openvino", lambda: export_openvino(model_dir, export_dir, calibration_data=world["train"],
                                                              eval_data=world["val"],
                                                              calibration_size=calibration_size))):
        started = time.perf_counter()
        try:
            export()
            info[f"{name}_int8_error"] = None
        except ExportError as error:
            info[f"{name}_int8_error"] = str(error)  # fp32 stays; the int8 variant failed a check
            if name == "openvino" and "int8" in str(error):  # speeds are measured after int8: measure without it
                export_openvino(model_dir, export_dir, int8=False)
        info[f"{name}_export_seconds"] = time.perf_counter() - started
    return info


# --- timing -----------------------------------------------------------------------------------------------

class LatencyRunner:
    """An OpenVINO variant under the LATENCY hint: one infer request using every core."""

    def __init__(self, path: Path):
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(inputs)[0])


def load_runtimes(export: dict[str, Any], args) -> dict[str, tuple[Any, Any]]:
    """label -> (image function, text function) on pre-built inputs."""
    from safeclip_sdk.export.manifest import load_manifest
    from safeclip_sdk.runtime.encoder import Encoder

    runtimes = {}
    for label, (backend, precision) in RUNTIMES.items():
        present = {"onnx": export["onnx_variants"], "openvino": export["openvino_variants"]}.get(backend, ["fp32"])
        if precision not in present:
            continue
        source = export["model_dir"] if backend == "torch" else export["export_dir"]
        encoder = Encoder.load(source, backend, device="cpu", precision=precision)
        runtimes[label] = (encoder.encode_pixels, encoder.encode_input_ids)
    if args.ov_latency:
        section = load_manifest(export["export_dir"], verify_hashes=False).openvino["variants"]
        for precision, entry in section.items():
            image, text = (LatencyRunner(export["export_dir"] / entry[encoder]["file"])
                           for encoder in ("image_encoder", "text_encoder"))
            runtimes[f"OpenVINO {precision} LATENCY"] = (image, text)
    return runtimes


def benchmark_model(model_name: str, args, scratch: Path, world: dict[str, Path]) -> dict:
    import torch
    from tqdm.auto import tqdm

    from safeclip_sdk.export.onnx import image_size_hw
    from safeclip_sdk.model.folder import load_model

    export = export_model(model_name, scratch / model_name, world, args.calibration_size)
    runtimes = load_runtimes(export, args)
    loaded = load_model(str(export["model_dir"]))
    height, width = image_size_hw(loaded.preprocess_cfg["size"])
    pixels = np.random.default_rng(0).standard_normal((max(BATCH_SIZES), 3, height, width)).astype(np.float32)
    input_ids = loaded.tokenizer(sample_captions(max(BATCH_SIZES))).numpy().astype(np.int64)
    inputs = {"image": pixels, "text": input_ids}
    expected = {tower: runtimes[BASELINE][index](inputs[tower]) for index, tower in enumerate(("image", "text"))}
    parity = {label: {tower: min_row_cosine(functions[index](inputs[tower]), expected[tower])
                      for index, tower in enumerate(("image", "text"))} for label, functions in runtimes.items()}
    cases = [(tower, batch) for tower in ("image", "text") for batch in BATCH_SIZES]
    rates: dict[str, dict[str, list[float]]] = {label: {f"{t} b{b}": [] for t, b in cases} for label in runtimes}
    loads = [os.getloadavg()[0]]
    for _ in tqdm(range(args.repeats), desc=f"{model_name} repeats", unit="repeat"):
        for label, functions in runtimes.items():
            for tower, batch in cases:
                function = functions[0 if tower == "image" else 1]
                rates[label][f"{tower} b{batch}"].append(throughput(
                    lambda f=function, x=inputs[tower][:batch]: f(x), batch, min_calls=args.min_calls,
                    min_seconds=args.min_seconds))
        loads.append(os.getloadavg()[0])
    summaries = {label: {case: summarize(values) for case, values in by_case.items()} for label, by_case in rates.items()}
    result = {"model": model_name, "torch_threads": torch.get_num_threads(), "export": export, "parity": parity,
              "rates": summaries, "load_1min_per_repeat": loads}
    if args.profile:
        result["profile"] = {label: profile_openvino(export["export_dir"], precision, pixels)
                             for label, precision in (("OpenVINO int8", "int8"), ("OpenVINO fp32", "fp32"))
                             if precision in export["openvino_variants"]}
        if "int8" in export["onnx_variants"]:
            result["profile"]["onnxruntime int8"] = profile_onnxruntime(export["export_dir"], pixels)
    return result


def profile_openvino(export_dir: Path, precision: str, pixels: np.ndarray, calls: int = 3) -> dict[str, Any]:
    """Share of the image tower's time per executed operator type and kernel (OpenVINO PERF_COUNT)."""
    import openvino as ov

    from safeclip_sdk.export.manifest import load_manifest

    entry = load_manifest(export_dir, verify_hashes=False).openvino["variants"][precision]["image_encoder"]
    compiled = ov.Core().compile_model(str(export_dir / entry["file"]), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({0: pixels})
    totals: dict[str, float] = {}
    for _ in range(calls):
        request.infer({0: pixels})
        for info in request.profiling_info:
            key = f"{info.node_type} [{info.exec_type}]"
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds()
    return _shares(totals, calls)


def profile_onnxruntime(export_dir: Path, pixels: np.ndarray, calls: int = 3) -> dict[str, Any]:
    """Share of the int8 image tower's kernel time per operator type (onnxruntime's profiler)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(export_dir / "ort-profile")
    session = ort.InferenceSession(str(export_dir / "image_encoder.int8.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, {"pixel_values": pixels})
    for _ in range(calls):
        session.run(None, {"pixel_values": pixels})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    runs = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs += 1
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            key = event["args"]["op_name"]
            totals[key] = totals.get(key, 0.0) + event["dur"] / 1e6
    # the first run is the warm-up: scale to the timed calls
    return _shares({key: value * calls / max(runs, 1) for key, value in totals.items()}, calls)


def _shares(totals: dict[str, float], calls: int) -> dict[str, Any]:
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return {"ms_per_call": 1000 * total / calls,
            "share_pct": {key: round(100 * value / total, 1) for key, value in ranked[:12]}}


# --- report -----------------------------------------------------------------------------------------------

def render(report: dict[str, Any]) -> str:
    peak = report["peak"]
    lines = [describe_machine(report["machine"]), "",
             f"Peak: {peak['cores']} cores x {peak['ghz']:.3f} GHz x {peak['int8_macs_per_cycle']} int8 MAC/cycle "
             f"({peak['isa']}) = **{peak['int8_peak_gmacs']:.0f} GMAC/s int8**; fp32: x {peak['fp32_macs_per_cycle']} "
             f"= {peak['fp32_peak_gmacs']:.0f} GMAC/s. Load average (1 min) per repeat: "
             + "; ".join(f"{r['model']} " + ", ".join(f"{value:.2f}" for value in r["load_1min_per_repeat"])
                         for r in report["results"]), ""]
    headers = ["model", "runtime", "images/s b1", "x torch", "images/s b32", "x torch", "texts/s b1", "x torch",
               "texts/s b32", "x torch", "GMAC/s images b32", "% int8 peak", "min cos img / txt"]
    rows = []
    for result in report["results"]:
        base = result["rates"][BASELINE]
        gmacs = result["export"]["gmacs_per_item"]
        for label, by_case in result["rates"].items():
            row = [result["model"], label]
            for case in ("image b1", "image b32", "text b1", "text b32"):
                row += [format_rate(by_case[case]), f"{by_case[case]['median'] / base[case]['median']:.2f}x"]
            achieved = by_case["image b32"]["median"] * gmacs["image"]
            row += [f"{achieved:.1f}", f"{100 * achieved / peak['int8_peak_gmacs']:.0f} %",
                    f"{result['parity'][label]['image']:.5f} / {result['parity'][label]['text']:.5f}"]
            rows.append(row)
    lines.append(markdown_table(headers, rows))
    for result in report["results"]:
        export = result["export"]
        lines += ["", f"{result['model']}: {export['gmacs_per_item']['image']:.3f} GMAC per image, "
                      f"{export['gmacs_per_item']['text']:.3f} per text; export {export['onnx_export_seconds']:.0f} s "
                      f"(ONNX) + {export['openvino_export_seconds']:.0f} s (OpenVINO); int8 gate: ONNX "
                      f"{_gate_text(export['retrieval']['onnx int8'], export['onnx_int8_error'])}, OpenVINO "
                      f"{_gate_text(export['retrieval']['openvino int8'], export['openvino_int8_error'])}."]
        for label, profile in result.get("profile", {}).items():
            shares = ", ".join(f"{key} {share} %" for key, share in profile["share_pct"].items())
            lines.append(f"- profile {label}, images b32 ({profile['ms_per_call']:.0f} ms per call): {shares}")
    return "\n".join(lines) + "\n"


def _gate_text(retrieval: dict | None, error: str | None) -> str:
    if error:
        return f"refused ({error})"
    return "kept (R@1 " + ", ".join(f"{direction} {retrieval['fp32'][direction]:.1f} -> {retrieval['int8'][direction]:.1f}"
                                    for direction in retrieval["fp32"]) + ")"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from safeclip_sdk.demo.world import build_demo_world

    report: dict[str, Any] = {"machine": machine_info(), "peak": cpu_peak(), "args": vars(args), "results": []}
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as temporary:
        scratch = args.workdir or Path(temporary)
        world = build_demo_world(scratch / "world", n_train=args.world_items, n_val=args.world_items, n_test=1)
        for model_name in args.models:
            if args.export_only:
                export_model(model_name, scratch / model_name, world, args.calibration_size)
                continue
            report["results"].append(benchmark_model(model_name, args, scratch, world))
            if args.json:
                write_json(args.json, report)
    if args.export_only:
        return 0
    text = render(report)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
