"""Training throughput and peak memory of each method: the real trainer step on synthetic quadruplets.

    python benchmarks/bench_training.py                                   # tiny + ViT-B-32, every method
    python benchmarks/bench_training.py --models ViT-B-32 --methods hysac --batch-size 64 --json bench/train.json

For each model (random init, nothing is downloaded) and each registered method the script builds
what ``safeclip train`` builds: LoRA rank 16 on both towers (safeclip_sdk.training.lora.apply_lora), the
FrozenReference when the method uses one, the method's objective and hooks (HySAC's head in its
own parameter group, clamped after each step) and the Trainer, and feeds it one in-memory batch
of random quadruplets (pixels at the model's image size, token ids ending in an end-of-text
token; SafeR-CLIP's proximity targets are other items of the batch). The time of one step is
``Trainer.accumulate_gradients`` + ``Trainer.optimizer_step``: no data loading. Throughput is
quadruplets per second, the median of ``--repeats`` runs of ``--steps`` steps after ``--warmup``
steps.

In the same runs it times a forward pass of the model (no grad, eval mode) on the batch's safe
images and safe texts: the cost of embedding B image-text pairs. ``step / forward`` is what
training costs on top of inference.

SafeR-CLIP's proximity-target pass (``nearest_safe_captions`` with the frozen text encoder, no
cache) is timed on ``--target-captions`` synthetic unsafe captions against as many safe ones, in
unsafe captions per second; the matching alone (``running_top1``, no encoder) is also timed
against a pool of ``--target-pool`` random unit vectors, ViSU's size by default.

Each (model, method) runs in a fresh subprocess so peak memory is its own: on CPU, the growth of
the peak resident set (ru_maxrss) over the process's size after imports; on CUDA,
``torch.cuda.max_memory_allocated`` (weights, reference copy, optimizer state and activations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (current_rss_bytes, describe_machine, format_rate, machine_info, markdown_table,
                    peak_rss_bytes, summarize, write_json)

DEFAULT_MODELS = ["safeclip-tiny", "ViT-B-32"]
DEFAULT_METHODS = ["safe-clip", "safer-clip", "hysac"]
TARGETS = "targets"  # the pseudo-method of the SafeR-CLIP target pass
LORA_RANK = 16
# (batch size, timed steps per repeat) on CPU: the tiny model is cheap, anything else is not
CPU_DEFAULTS = {"safeclip-tiny": (32, 20)}
CPU_LARGE_MODEL_DEFAULTS = (8, 3)
GPU_DEFAULTS = (128, 20)  # TrainConfig's default batch size
START_OF_TEXT, END_OF_TEXT = 49406, 49407
CAPTION_TOKENS = 12  # random tokens between start and end of text; the rest is padding


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="open_clip architectures or safeclip configs, built with random weights")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        help="registered methods to time (default: all three)")
    parser.add_argument("--target-captions", type=int, default=None,
                        help="unsafe (and as many safe) captions of the SafeR-CLIP target pass "
                             "(default: 2048 for safeclip-tiny, 256 for other models on CPU; 16384 on CUDA)")
    parser.add_argument("--target-pool", type=int, default=165_000,
                        help="pool rows of the matching-only measurement (default 165000, ViSU's size)")
    parser.add_argument("--skip-targets", action="store_true", help="do not time the SafeR-CLIP target pass")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="quadruplets per step (default on CPU: 32 for safeclip-tiny, 8 for other models; "
                             "on CUDA: 128)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per repeat (default on CPU: 20 for safeclip-tiny, 3 for other models; "
                             "on CUDA: 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--precision", default="auto",
                        help="the trainer's precision: auto (bf16/fp16 autocast on CUDA, fp32 on CPU), "
                             "fp32, bf16 or fp16")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: measure one model
    parser.add_argument("--worker-method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "warmup", "repeats", "threads", "target_captions", "target_pool"):
        value = getattr(args, name)
        minimum = 0 if name == "warmup" else 1
        if value is not None and value < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    return args


def defaults_for(model: str, device_type: str) -> tuple[int, int]:
    if device_type == "cuda":
        return GPU_DEFAULTS
    return CPU_DEFAULTS.get(model, CPU_LARGE_MODEL_DEFAULTS)


# --- the measurement, run in a subprocess per model -------------------------------------------------

def synthetic_batch(batch_size: int, image_size: int, context_length: int, seed: int = 0) -> dict[str, Any]:
    """One collated batch of random quadruplets, shaped like QuadrupletDataset's."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, batch_size, 3, image_size, image_size, generator=generator)
    tokens = torch.zeros(2, batch_size, context_length, dtype=torch.long)
    length = min(CAPTION_TOKENS, context_length - 2)
    tokens[:, :, 0] = START_OF_TEXT
    tokens[:, :, 1:1 + length] = torch.randint(1, START_OF_TEXT, (2, batch_size, length), generator=generator)
    tokens[:, :, 1 + length] = END_OF_TEXT
    # each item's proximity target is the next item's safe pair (SafeR-CLIP reads these two keys)
    return {"safe_image": pixels[0], "unsafe_image": pixels[1], "safe_text": tokens[0], "unsafe_text": tokens[1],
            "target_image": pixels[0].roll(1, 0), "target_text": tokens[0].roll(1, 0)}


def measure_model(model_name: str, method_name: str, *, batch_size: int, steps: int, warmup: int, repeats: int,
                  device_name: str, precision: str, threads: int) -> dict[str, Any]:
    """Throughput of one method's training step and of the model's forward pass, and peak memory."""
    import torch
    from tqdm.auto import tqdm

    from safeclip_sdk.training.config import LoraConfig, TrainConfig
    from safeclip_sdk._utils.devices import resolve_device
    from safeclip_sdk.training.ddp import DistributedContext
    from safeclip_sdk.training.lora import FrozenReference, apply_lora, trainable_parameter_count
    from safeclip_sdk.model.towers import DualEncoder, encode_image, encode_text
    from safeclip_sdk.methods import get_method
    from safeclip_sdk.methods.base import TrainingRun
    from safeclip_sdk.model.folder import load_model
    from safeclip_sdk.model.architectures import open_clip_module
    from safeclip_sdk.training.loop import Trainer

    open_clip_module()  # imported before the baseline, so its import does not count as the model's memory
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    rss_after_imports = current_rss_bytes()

    torch.manual_seed(0)
    base = load_model(model_name, pretrained=None, device=device)
    with tempfile.TemporaryDirectory(prefix="safeclip-bench-") as run_dir:
        config = TrainConfig(method=method_name, base_model=model_name, pretrained=None, output_dir=run_dir,
                             batch_size=batch_size, device=device.type, precision=precision)
        method = get_method(method_name)(config)
        reference = FrozenReference(base.model) if method.uses_frozen_reference else None
        peft_model = apply_lora(base.model, LoraConfig(rank=LORA_RANK, alpha=float(LORA_RANK), towers="both"))
        trainable, total = trainable_parameter_count(peft_model)
        run = TrainingRun(config=config, run_dir=Path(run_dir), device=device, context=DistributedContext(),
                          base=base, train_set=None, val_set=None, with_unsafe_images=True, reference=reference)
        # SafeR-CLIP's preparation is the target pass, timed on its own, and its only hook the
        # curriculum's choice of items, which costs nothing per step
        prepared = method_name != "safer-clip"
        if prepared:
            method.prepare(run)
        batch = synthetic_batch(batch_size, base.image_size, base.context_length)
        # the trainer only needs the dataset's length here: the timed steps take the batch directly
        trainer = Trainer(DualEncoder(peft_model), method.objective(run), [batch] * batch_size, config, run_dir,
                          device=device, hooks=method if prepared else None)
        batch = {key: tensor.to(device) for key, tensor in batch.items()}  # the copy is data loading, not the step
        autocast = dict(device_type=device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None)

        def synchronize() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def training_step() -> float:
            terms = trainer.accumulate_gradients([batch])
            trainer.optimizer_step()
            return terms["loss"]

        @torch.no_grad()
        def forward() -> None:
            peft_model.eval()
            with torch.autocast(**autocast):
                encode_image(peft_model, batch["safe_image"])
                encode_text(peft_model, batch["safe_text"])

        def seconds_per_call(run) -> float:
            synchronize()
            started = time.perf_counter()
            for _ in range(steps):
                run()
            synchronize()
            return (time.perf_counter() - started) / steps

        for _ in range(warmup):
            training_step()
            forward()
        step_seconds, forward_seconds = [], []
        for _ in tqdm(range(repeats), desc=f"{model_name} {method_name} b{batch_size}", unit="repeat", leave=False):
            # alternated within each repeat, so a change of machine load hits both sides of the ratio
            forward_seconds.append(seconds_per_call(forward))
            step_seconds.append(seconds_per_call(training_step))
        last_loss = training_step()

    result = {
        "model": model_name, "method": method_name, "device": str(device), "precision": precision,
        "amp_dtype": str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype else "fp32",
        "batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats, "threads": threads,
        "image_size": base.image_size, "context_length": base.context_length,
        "parameters": total - trainable, "lora_parameters": trainable, "lora_rank": LORA_RANK,
        "extra_parameters": sum(p.numel() for p in trainer.extra_parameters.values()),
        "step_seconds": summarize(step_seconds),
        "forward_seconds": summarize(forward_seconds),
        "samples_per_second": summarize([batch_size / seconds for seconds in step_seconds]),
        "step_over_forward": summarize([s / f for s, f in zip(step_seconds, forward_seconds)]),
        "final_loss": last_loss,
        "rss_after_imports_bytes": rss_after_imports,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    result["peak_rss_growth_bytes"] = result["peak_rss_bytes"] - rss_after_imports
    if device.type == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def synthetic_captions(count: int, seed: int) -> list[str]:
    """``count`` distinct short captions of random words."""
    import random

    words = ("man woman child dog cat car street park beach kitchen table knife gun blood smoke fire red blue "
             "holding running sitting standing near under with a the on in of old young small large").split()
    generator = random.Random(seed)
    return [f"{' '.join(generator.choice(words) for _ in range(8))} #{i}" for i in range(count)]


def measure_targets(model_name: str, *, captions: int, pool: int, repeats: int, device_name: str,
                    threads: int) -> dict[str, Any]:
    """SafeR-CLIP's target pass with the frozen text encoder, and the matching alone on a large pool."""
    import torch

    from safeclip_sdk._utils.devices import resolve_device
    from safeclip_sdk.training.lora import FrozenReference
    from safeclip_sdk.methods.safer_clip.targets import nearest_safe_captions, running_top1
    from safeclip_sdk.model.folder import load_model
    from safeclip_sdk.model.architectures import open_clip_module

    open_clip_module()
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    rss_after_imports = current_rss_bytes()
    torch.manual_seed(0)
    base = load_model(model_name, pretrained=None, device=device)
    reference = FrozenReference(base.model).to(device)
    unsafe, safe = synthetic_captions(captions, seed=1), synthetic_captions(captions, seed=2)

    def embed_texts(texts: list[str]) -> torch.Tensor:
        return reference.encode_text(base.tokenizer(texts).to(device))

    pass_seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        nearest_safe_captions(unsafe, safe, embed_texts, progress=False)
        pass_seconds.append(time.perf_counter() - started)

    dim = int(base.model_cfg["embed_dim"])
    generator = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(pool, dim, generator=generator), dim=1).to(device)
    queries = torch.nn.functional.normalize(torch.randn(256, dim, generator=generator), dim=1).to(device)
    match_seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        running_top1(queries, rows, 16384)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        match_seconds.append(time.perf_counter() - started)
    return {
        "model": model_name, "method": TARGETS, "device": str(device), "captions": captions, "repeats": repeats,
        "threads": threads, "pass_seconds": summarize(pass_seconds),
        "unsafe_captions_per_second": summarize([captions / seconds for seconds in pass_seconds]),
        "match_pool": pool, "match_queries": 256,
        "match_queries_per_second": summarize([256 / seconds for seconds in match_seconds]),
        "peak_rss_growth_bytes": peak_rss_bytes() - rss_after_imports,
    }


# --- orchestration -----------------------------------------------------------------------------------

def run_in_subprocess(model: str, method: str, args: argparse.Namespace, device_type: str) -> dict[str, Any]:
    """Measure ``model`` with ``method`` in a fresh Python process, so its peak memory is its own."""
    default_batch, default_steps = defaults_for(model, device_type)
    with tempfile.TemporaryDirectory(prefix="safeclip-bench-") as scratch:
        output = Path(scratch) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", model, "--worker-method", method,
                   "--worker-output", str(output),
                   "--batch-size", str(args.batch_size or default_batch), "--steps", str(args.steps or default_steps),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--device", args.device,
                   "--precision", args.precision, "--threads", str(args.threads),
                   "--target-pool", str(args.target_pool)]
        if method == TARGETS:
            default_captions = 16384 if device_type == "cuda" else 2048 if model == "safeclip-tiny" else 256
            command += ["--target-captions", str(args.target_captions or default_captions)]
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0 or not output.is_file():
            raise SystemExit(f"measuring {model} / {method} failed (exit status {completed.returncode}); "
                             f"see the error above")
        return json.loads(output.read_text())


def render_markdown(report: dict[str, Any]) -> str:
    mib = 2**20
    results = [result for result in report["results"] if result["method"] != TARGETS]
    targets = [result for result in report["results"] if result["method"] == TARGETS]
    on_cuda = any(result["device"].startswith("cuda") for result in report["results"])
    memory_header = "peak CUDA memory allocated (MiB)" if on_cuda else "peak RSS growth (MiB)"
    rows = []
    for result in results:
        memory = result["cuda_max_allocated_bytes"] if "cuda_max_allocated_bytes" in result \
            else result["peak_rss_growth_bytes"]
        rows.append([
            result["model"], result["method"],
            f"{result['parameters'] / 1e6:.1f}M + {result['lora_parameters'] / 1e6:.2f}M LoRA",
            result["batch_size"], result["amp_dtype"], format_rate(result["samples_per_second"]),
            f"{1000 * result['step_seconds']['median']:.0f}", f"{1000 * result['forward_seconds']['median']:.0f}",
            f"{result['step_over_forward']['median']:.1f}x", f"{memory / mib:.0f}",
        ])
    headers = ["model", "method", "parameters", "batch", "precision", "step: quadruplets/s, median (min-max)",
               "step ms", "forward ms", "step / forward", memory_header]
    lines = ["## Training step of each method", "", describe_machine(report["machine"]), ""]
    if results:
        first = results[0]
        lines += [markdown_table(headers, rows), "",
                  f"Median of {first['repeats']} repeats of the steps per row after {first['warmup']} warm-up steps; "
                  f"LoRA rank {LORA_RANK} on both towers, random weights, synthetic in-memory quadruplets. "
                  "`forward` embeds the batch's safe images and safe texts with the model (no grad); "
                  "`step / forward` is the median of the per-repeat ratios.",
                  "Timed steps per repeat: " + ", ".join(sorted({f"{r['model']}: {r['steps']} steps" for r in results}))
                  + "."]
    if targets:
        target_rows = [[r["model"], r["captions"], format_rate(r["unsafe_captions_per_second"]),
                        f"{r['pass_seconds']['median']:.2f}", r["match_pool"],
                        format_rate(r["match_queries_per_second"]), f"{r['peak_rss_growth_bytes'] / mib:.0f}"]
                       for r in targets]
        lines += ["", "### SafeR-CLIP target pass", "",
                  markdown_table(["model", "unsafe captions (and as many safe)",
                                  "target pass: unsafe captions/s, median (min-max)", "pass s", "matching-only pool",
                                  "matching only: unsafe captions/s", "peak RSS growth (MiB)"], target_rows), "",
                  "The pass embeds both caption lists with the frozen text encoder (batches of 256) and keeps a "
                  "running top-1 over the pool in blocks of 16384 rows; the matching-only column times that "
                  "search for 256 queries against random unit vectors."]
    end_load = ", ".join(f"{value:.2f}" for value in report["load_average_at_end"])
    lines.append(f"Load average when the run ended: {end_load}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        if args.worker_method == TARGETS:
            result = measure_targets(args.worker, captions=args.target_captions, pool=args.target_pool,
                                     repeats=args.repeats, device_name=args.device, threads=args.threads)
        else:
            result = measure_model(args.worker, args.worker_method, batch_size=args.batch_size, steps=args.steps,
                                   warmup=args.warmup, repeats=args.repeats, device_name=args.device,
                                   precision=args.precision, threads=args.threads)
        write_json(args.worker_output, result)
        return

    import torch

    from safeclip_sdk._utils.devices import resolve_device

    torch.set_num_threads(args.threads)
    device_type = resolve_device(args.device).type
    machine = machine_info()
    from safeclip_sdk.methods import get_method

    for method in args.methods:
        get_method(method)  # an unknown name stops here, before any measurement
    jobs = [(model, method) for model in args.models for method in args.methods]
    if "safer-clip" in args.methods and not args.skip_targets:
        jobs += [(model, TARGETS) for model in args.models]
    results = [run_in_subprocess(model, method, args, device_type) for model, method in jobs]
    report = {"benchmark": "training", "machine": machine, "command": " ".join(sys.argv), "results": results,
              "load_average_at_end": [round(value, 2) for value in os.getloadavg()]}
    print(render_markdown(report))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
