"""Embedding speed of torch fp32, onnxruntime fp32 and onnxruntime int8, side by side, in one run.

    python benchmarks/bench_embedding.py                        # tiny + ViT-B-32 on CPU; GPU section on CUDA hosts
    python benchmarks/bench_embedding.py --models safeclip-tiny --repeats 5 --json bench/embed.json
    python benchmarks/bench_embedding.py --skip-cpu --gpu-batch-size 256   # GPU host: the GPU section only

CPU section, per model (random weights: nothing is downloaded): the model is saved with
``save_model_dir`` and exported with ``export_onnx(int8=True)`` into a temporary folder (the int8
variant is kept only if it passes the export's cosine parity check; random weights have no
evaluation data, so that check is the only gate). Each backend is loaded with ``Encoder.load`` on
the CPU and timed two ways:

- model only: the runtime behind the Encoder on pre-built inputs (preprocessed pixel arrays and
  token ids), so image decoding, resizing and tokenisation are NOT in the number; batch 1 and 32;
- end to end: ``Encoder.encode_image`` on in-memory PIL images (640x480, so resizing and
  normalisation ARE in the number, file decoding is not) and ``Encoder.encode_text`` on strings,
  batch 32.

Every number is the median of ``--repeats`` runs; the backends alternate within each repeat and
ratios are against torch fp32 in the same run. Parity is the minimum cosine between a backend's
embeddings and torch fp32's on the same batch of 32. torch threads = onnxruntime intra-op threads
= ``--threads`` (default: all cores).

GPU section (only when torch sees a CUDA GPU): images/s of torch fp32, fp16 autocast and
torch.compile + fp16 autocast for ViT-B-32 and ViT-L-14 at 224 px, against the bound that the GPU's
peak dense fp16 tensor FLOP/s sets (FLOP per image counted with torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import describe_machine, format_rate, machine_info, markdown_table, summarize, throughput, write_json

DEFAULT_MODELS = ["safeclip-tiny", "ViT-B-32"]
DEFAULT_GPU_MODELS = ["ViT-B-32", "ViT-L-14"]
BATCH_SIZES = (1, 32)
END_TO_END_BATCH = 32
PHOTO_SIZE = (640, 480)  # a typical photo (COCO-sized) for the end-to-end image path
CPU_BACKENDS = {"torch fp32": ("torch", "fp32"), "onnxruntime fp32": ("onnx", "fp32"),
                "onnxruntime int8": ("onnx", "int8")}
BASELINE = "torch fp32"
INT8_TARGET_SPEEDUP = 2.0  # issue 3: onnxruntime int8 at least 2x torch fp32 at batch 32
# Peak dense (no sparsity) fp16/bf16 tensor-core TFLOP/s from NVIDIA's datasheets, most specific name first.
PEAK_FP16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("A10", 125.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0))
# Published cost of one 224 px image; the script counts its own and shows both.
REFERENCE_GFLOP_PER_IMAGE = {"ViT-B-32": 8.8, "ViT-L-14": 162.0}
_CAPTION_WORDS = ("a photo of the dog cat person car street beach red blue small large two people walking sitting "
                  "near under holding with on in at night snow grass old young").split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="models of the CPU section (open_clip architectures or safeclip configs)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per number; the median is reported (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per backend and case first (default 1)")
    parser.add_argument("--min-calls", type=int, default=2, help="calls per timed run, at least (default 2)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="length of a timed run, at least (default 1 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads and onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: add the GPU section when CUDA is available; cpu: never; cuda: required")
    parser.add_argument("--skip-cpu", action="store_true", help="run only the GPU section")
    parser.add_argument("--gpu-models", nargs="+", default=DEFAULT_GPU_MODELS, help="models of the GPU section")
    parser.add_argument("--gpu-batch-size", type=int, default=256, help="images per call in the GPU section")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the GPU section")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's peak dense fp16 TFLOP/s, for a GPU the built-in table does not know")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    for name in ("repeats", "min_calls", "threads", "gpu_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --- inputs ---------------------------------------------------------------------------------------------

def sample_photos(count: int, seed: int = 0) -> list:
    """Smooth random colour fields at photo size (blown-up 8x6 noise), as in-memory RGB PIL images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(PHOTO_SIZE, Image.BICUBIC)
            for _ in range(count)]


def sample_captions(count: int, seed: int = 0) -> list[str]:
    words = random.Random(seed)
    return [" ".join(words.choices(_CAPTION_WORDS, k=words.randint(5, 15))) for _ in range(count)]


def min_row_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    return float(((actual * expected).sum(axis=1) / np.maximum(norms, 1e-12)).min())


# --- CPU section ------------------------------------------------------------------------------------------

def export_random_model(model_name: str, folder: Path) -> dict[str, Any]:
    """Save a random-weight ``model_name`` and export it to ONNX fp32 + int8 (int8 kept only if it passes)."""
    import torch

    from safeclip_sdk.errors import ExportError
    from safeclip_sdk.export import export_onnx, load_manifest
    from safeclip_sdk.model.folder import load_model, save_model_dir

    torch.manual_seed(0)
    loaded = load_model(model_name, pretrained=None)
    model_dir = save_model_dir(folder / "model", loaded.model, loaded.model_cfg, loaded.preprocess_cfg)
    export_dir = folder / "onnx"
    started = time.perf_counter()
    int8_error = None
    try:
        export_onnx(model_dir, export_dir, int8=True)
    except ExportError as error:
        if not (export_dir / "manifest.json").is_file():
            raise
        int8_error = str(error)  # the fp32 encoders were kept; only int8 failed its check
    manifest = load_manifest(export_dir)
    info = {"model_dir": model_dir, "export_dir": export_dir, "export_seconds": time.perf_counter() - started,
            "variants": sorted(manifest.variants), "int8_error": int8_error,
            "export_parity": {variant: entry["parity"] for variant, entry in manifest.variants.items()}}
    if "int8" in manifest.variants:
        info["int8_graph_ops"] = onnx_op_counts(export_dir / manifest.variants["int8"]["image_encoder"]["file"])
    return info


def onnx_op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each kind the graph holds: shows what int8 quantisation reached."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def cpu_cases(encoder, pixels: np.ndarray, input_ids: np.ndarray, photos: list,
              captions: list[str]) -> dict[str, tuple[int, Callable[[], object]]]:
    """Timed cases of one backend: name -> (items per call, call)."""
    # Model only: inputs already decoded, resized and tokenised.
    cases: dict[str, tuple[int, Callable[[], object]]] = {}
    for batch in BATCH_SIZES:
        cases[f"image model-only b{batch}"] = (batch, lambda b=batch: encoder.encode_pixels(pixels[:b]))
    for batch in BATCH_SIZES:
        cases[f"text model-only b{batch}"] = (batch, lambda b=batch: encoder.encode_input_ids(input_ids[:b]))
    cases[f"image end-to-end b{END_TO_END_BATCH}"] = (
        END_TO_END_BATCH, lambda: encoder.encode_image(photos, batch_size=END_TO_END_BATCH))
    cases[f"text end-to-end b{END_TO_END_BATCH}"] = (
        END_TO_END_BATCH, lambda: encoder.encode_text(captions, batch_size=END_TO_END_BATCH))
    return cases


def cpu_benchmark(model_name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Every CPU backend of ``model_name``, all cases, ``args.repeats`` times; rates in items/s."""
    from tqdm.auto import tqdm

    from safeclip_sdk.runtime.encoder import Encoder
    from safeclip_sdk.data.images import preprocess_image

    export = export_random_model(model_name, scratch / model_name)
    encoders = {}
    for label, (backend, precision) in CPU_BACKENDS.items():
        if backend == "onnx" and precision not in export["variants"]:
            continue
        source = export["model_dir"] if backend == "torch" else export["export_dir"]
        encoders[label] = Encoder.load(source, backend, device="cpu", precision=precision,
                                       num_threads=args.threads, batch_size=END_TO_END_BATCH)
    torch_encoder = encoders[BASELINE]
    photos = sample_photos(END_TO_END_BATCH)
    captions = sample_captions(END_TO_END_BATCH)
    pixels = np.stack([preprocess_image(photo, torch_encoder.image_cfg) for photo in photos])
    input_ids = np.asarray(torch_encoder.tokenizer(captions, context_length=torch_encoder.context_length),
                           dtype=np.int64)

    expected_images = torch_encoder.encode_pixels(pixels)
    expected_texts = torch_encoder.encode_input_ids(input_ids)
    parity = {label: {"image": min_row_cosine(encoder.encode_pixels(pixels), expected_images),
                      "text": min_row_cosine(encoder.encode_input_ids(input_ids), expected_texts)}
              for label, encoder in encoders.items()}

    cases = {label: cpu_cases(encoder, pixels, input_ids, photos, captions) for label, encoder in encoders.items()}
    for backend_cases in cases.values():
        for _, run in backend_cases.values():
            for _ in range(args.warmup):
                run()
    rates: dict[str, dict[str, list[float]]] = {label: {case: [] for case in cases[label]} for label in cases}
    for _ in tqdm(range(args.repeats), desc=f"{model_name} (CPU)", unit="repeat", leave=False):
        # backend by backend within a repeat: a change of machine load spreads over all of them
        for label, backend_cases in cases.items():
            for case, (items, run) in backend_cases.items():
                rates[label][case].append(throughput(run, items, min_calls=args.min_calls,
                                                     min_seconds=args.min_seconds))
    summaries = {label: {case: summarize(values) for case, values in by_case.items()}
                 for label, by_case in rates.items()}
    ratios = {label: {case: summary["median"] / summaries[BASELINE][case]["median"]
                      for case, summary in by_case.items()} for label, by_case in summaries.items()}
    export_summary = {key: value for key, value in export.items() if key not in ("model_dir", "export_dir")}
    return {"model": model_name, "threads": args.threads, "export": export_summary, "parity_min_cosine": parity,
            "items_per_second": summaries, "ratio_vs_torch_fp32": ratios}


# --- GPU section ------------------------------------------------------------------------------------------

def peak_fp16_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """(peak dense fp16 TFLOP/s, where the number comes from) for a CUDA device name."""
    if override is not None:
        return override, "--peak-tflops"
    for key, tflops in PEAK_FP16_TFLOPS:
        if key in device_name:
            return tflops, f"datasheet ({key})"
    return None, "unknown (pass --peak-tflops)"


def image_gflop(model, height: int, width: int, device) -> float:
    """GFLOP of one image through the image tower (a multiply-add counts 2).

    Counted with autograd on and the math attention kernel: the inference fast path of
    nn.MultiheadAttention and the fused attention kernels are invisible to FlopCounterMode.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.randn(1, 3, height, width, device=device, requires_grad=True)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_image(image)
    return counter.get_total_flops() / 1e9


def gpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """images/s of torch fp32, fp16 autocast and torch.compile fp16 on the GPU, vs the FLOP bound."""
    import torch
    from tqdm.auto import tqdm

    from safeclip_sdk.export.onnx import image_size_hw
    from safeclip_sdk.model.folder import load_model

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak_tflops, peak_source = peak_fp16_tflops(name, args.peak_tflops)
    synchronize = lambda: torch.cuda.synchronize(device)  # noqa: E731
    results = []
    for model_name in args.gpu_models:
        torch.manual_seed(0)
        loaded = load_model(model_name, pretrained=None, device=device)
        model = loaded.model.eval()
        height, width = image_size_hw(loaded.preprocess_cfg["size"])
        gflop = image_gflop(model, height, width, device)
        pixels = torch.randn(args.gpu_batch_size, 3, height, width, device=device)

        def fp32(images):
            return model.encode_image(images, normalize=True)

        def fp16(images):
            with torch.autocast("cuda", dtype=torch.float16):
                return model.encode_image(images, normalize=True)

        variants = {"torch fp32": fp32, "torch fp16 autocast": fp16}
        if not args.no_compile:
            variants["torch.compile fp16 autocast"] = torch.compile(fp16, mode=args.compile_mode)
        with torch.no_grad():
            expected = fp32(pixels).float()
            warmup_seconds, parity = {}, {}
            for label, encode in variants.items():
                started = time.perf_counter()
                for _ in range(max(1, args.warmup) + 2):  # the first torch.compile call compiles
                    output = encode(pixels)
                synchronize()
                warmup_seconds[label] = time.perf_counter() - started
                parity[label] = min_row_cosine(output.float().cpu().numpy(), expected.cpu().numpy())
            rates: dict[str, list[float]] = {label: [] for label in variants}
            for _ in tqdm(range(args.repeats), desc=f"{model_name} (GPU)", unit="repeat", leave=False):
                for label, encode in variants.items():
                    rates[label].append(throughput(lambda: encode(pixels), args.gpu_batch_size,
                                                   min_calls=args.min_calls, min_seconds=args.min_seconds,
                                                   synchronize=synchronize))
        bound = peak_tflops * 1e3 / gflop if peak_tflops else None
        variant_results = {}
        for label, values in rates.items():
            summary = summarize(values)
            variant_results[label] = {
                "images_per_second": summary, "parity_min_cosine": parity[label],
                "warmup_seconds": warmup_seconds[label],
                "achieved_tflops": summary["median"] * gflop / 1e3,
                "fraction_of_fp16_bound": summary["median"] / bound if bound else None,
            }
        results.append({"model": model_name, "image_size": [height, width], "gflop_per_image": gflop,
                        "reference_gflop_per_image": REFERENCE_GFLOP_PER_IMAGE.get(model_name),
                        "fp16_bound_images_per_second": bound, "variants": variant_results})
        del model, loaded, pixels, expected, variants
        torch.cuda.empty_cache()
    return {"device": name, "batch_size": args.gpu_batch_size, "peak_fp16_tflops": peak_tflops,
            "peak_source": peak_source, "compile_mode": None if args.no_compile else args.compile_mode,
            "tf32": torch.backends.cuda.matmul.allow_tf32, "models": results}


# --- report -----------------------------------------------------------------------------------------------

def render_cpu(section: list[dict[str, Any]], repeats: int) -> list[str]:
    lines = ["## Embedding speed on CPU", ""]
    for tower, unit in (("image", "images/s"), ("text", "texts/s")):
        headers = ["model", "backend"]
        for batch in BATCH_SIZES:
            headers += [f"{unit} b{batch}, model only", f"vs torch b{batch}"]
        headers += [f"{unit} b{END_TO_END_BATCH}, end to end", "vs torch e2e", "min cosine vs torch"]
        rows = []
        for result in section:
            for label, cases in result["items_per_second"].items():
                row = [result["model"], label]
                case_names = [f"{tower} model-only b{batch}" for batch in BATCH_SIZES]
                case_names.append(f"{tower} end-to-end b{END_TO_END_BATCH}")
                for case in case_names:
                    row += [format_rate(cases[case]), f"{result['ratio_vs_torch_fp32'][label][case]:.2f}x"]
                row.append(f"{result['parity_min_cosine'][label][tower]:.5f}")
                rows.append(row)
        lines += [f"### {tower.capitalize()} tower", "", markdown_table(headers, rows), ""]
    lines.append(f"Median (min-max) of {repeats} repeats; ratios are medians over torch fp32's median in the same "
                 f"run. Model only: pre-built pixel arrays / token ids (no decoding, resizing or tokenisation). "
                 f"End to end: Encoder.encode_image on {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} in-memory PIL images "
                 f"(resize, crop and normalise included; no file decoding) and Encoder.encode_text on strings.")
    for result in section:
        export = result["export"]
        cases = result["ratio_vs_torch_fp32"]
        int8 = cases.get("onnxruntime int8")
        verdicts = []
        if int8 is not None:
            speedup = int8[f"image model-only b{END_TO_END_BATCH}"]
            verdicts.append(f"int8 images b32 {speedup:.2f}x torch (target >= {INT8_TARGET_SPEEDUP:.0f}x: "
                            f"{'met' if speedup >= INT8_TARGET_SPEEDUP else 'NOT met'})")
            text_speedup = int8[f"text model-only b{END_TO_END_BATCH}"]
            verdicts.append(f"int8 texts b32 {text_speedup:.2f}x "
                            f"({'met' if text_speedup >= INT8_TARGET_SPEEDUP else 'NOT met'})")
        else:
            verdicts.append(f"int8 not kept by the export: {export['int8_error']}")
        fp32 = cases["onnxruntime fp32"]
        for tower in ("image", "text"):
            ratio = fp32[f"{tower} model-only b1"]
            verdicts.append(f"onnxruntime fp32 {tower} b1 {ratio:.2f}x torch (target >= 1x: "
                            f"{'met' if ratio >= 1.0 else 'NOT met'})")
        lines.append(f"- {result['model']} (export {export['export_seconds']:.0f} s, variants "
                     f"{', '.join(export['variants'])}): " + "; ".join(verdicts) + ".")
    return lines


def render_gpu(section: dict[str, Any], repeats: int) -> list[str]:
    peak = f"{section['peak_fp16_tflops']:.0f} TFLOP/s" if section["peak_fp16_tflops"] else "unknown"
    lines = ["## Image embedding speed on GPU", "",
             f"{section['device']}, batch {section['batch_size']}, peak dense fp16 {peak} "
             f"({section['peak_source']}); TF32 matmuls {'on' if section['tf32'] else 'off'} for fp32.", ""]
    headers = ["model", "GFLOP/image (counted, published)", "variant", "images/s, median (min-max)",
               "vs fp32", "TFLOP/s achieved", "fp16 bound images/s", "fraction of bound", "min cosine vs fp32"]
    rows = []
    for result in section["models"]:
        baseline = result["variants"]["torch fp32"]["images_per_second"]["median"]
        bound = result["fp16_bound_images_per_second"]
        for label, variant in result["variants"].items():
            fraction = variant["fraction_of_fp16_bound"]
            published = result["reference_gflop_per_image"]
            rows.append([result["model"], f"{result['gflop_per_image']:.1f}, {published or 'n/a'}",
                         label, format_rate(variant["images_per_second"]),
                         f"{variant['images_per_second']['median'] / baseline:.2f}x",
                         f"{variant['achieved_tflops']:.1f}", f"{bound:.0f}" if bound else "unknown",
                         f"{100 * fraction:.0f}%" if fraction is not None else "unknown",
                         f"{variant['parity_min_cosine']:.5f}"])
    lines += [markdown_table(headers, rows), "",
              f"Median of {repeats} repeats on pre-built GPU tensors (model only); bound = peak FLOP/s / FLOP "
              f"per image."]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    lines = [describe_machine(report["machine"]), ""]
    if report.get("cpu"):
        lines += render_cpu(report["cpu"], report["repeats"]) + [""]
    if report.get("gpu"):
        lines += render_gpu(report["gpu"], report["repeats"]) + [""]
    else:
        lines += ["No CUDA GPU in this run: the GPU section was not measured.", ""]
    end_load = ", ".join(f"{value:.2f}" for value in report["load_average_at_end"])
    lines.append(f"Load average when the run ended: {end_load}. torch and onnxruntime intra-op threads: "
                 f"{report['threads']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    has_gpu = torch.cuda.is_available()
    if (args.device == "cuda" or args.skip_cpu) and not has_gpu:
        raise SystemExit("the GPU section needs a CUDA GPU and torch sees none")
    if args.skip_cpu and args.device == "cpu":
        raise SystemExit("--skip-cpu with --device cpu leaves nothing to measure")
    report: dict[str, Any] = {"benchmark": "embedding", "machine": machine_info(), "command": " ".join(sys.argv),
                              "repeats": args.repeats, "threads": args.threads, "cpu": [], "gpu": None}
    if not args.skip_cpu:
        with tempfile.TemporaryDirectory(prefix="safeclip-bench-") as scratch:
            report["cpu"] = [cpu_benchmark(model, args, Path(scratch)) for model in args.models]
    if has_gpu and args.device != "cpu":
        report["gpu"] = gpu_benchmark(args)
    report["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    print(render_markdown(report))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
