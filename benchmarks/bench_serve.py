"""Requests/s and p50/p99 latency of `safeclip serve`, with and without dynamic batching, against
the in-process Encoder, in one run.

    python benchmarks/bench_serve.py                                  # tiny model, ONNX CPU, texts and images
    python benchmarks/bench_serve.py --concurrency 1 4 16 64 --repeats 3 --json /tmp/bench/serve.json
    python benchmarks/bench_serve.py --backend torch --modalities text --requests 128   # a quick run
    python benchmarks/bench_serve.py --modalities text --concurrency 16 --workers 2 --ray 2   # scale-out
    python benchmarks/bench_serve.py --architecture ViT-B-32 --concurrency 16 --servers default --requests 96

A random-weight `safeclip-tiny` (or ``--architecture``, e.g. ViT-B-32) is saved and exported to
ONNX fp32 in a temporary folder (nothing is downloaded). Servers are started as `safeclip serve`
processes on loopback ports: batching with a 5 ms wait, batching without a wait (the defaults) and
one answering each request with its own model call (``--max-batch-size 1``); ``--servers`` picks
some of them. The client (this process, plain HTTP/1.1 on
asyncio streams, one keep-alive connection per concurrent request) keeps ``concurrency``
requests of one input each in flight until ``--requests`` are answered;
requests/s is answered requests over wall time, latencies are per request. Texts are short
captions; images are 64x64 PNGs sent as base64 data URLs (the server decodes and preprocesses
them). The in-process rows are ``Encoder.encode_text`` / ``encode_image`` on the same inputs in
batches of 32 and of 1, in this process, same backend; "vs in-process" is a server's requests/s
over the in-process batch-32 items/s (the most the model gives on this machine), medians.

``--workers N`` adds a server of N uvicorn processes, ``--ray N`` one of N Ray Serve replicas on
a local Ray started by the server (one CPU each), both with the default batching; the table then
also gives each server's ratio to the single-process default server. "inputs per call" is
``safeclip_batch_size`` sum over count read from ``/metrics`` after the run (for several processes:
of the process that answered that request).

Each figure is the median of ``--repeats`` runs; in each repeat both servers are measured at
every concurrency one after the other, and the ratio to the unbatched server's requests/s is
taken within the repeat, then its median reported. Client and servers share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from common import describe_machine, machine_info, markdown_table, summarize, throughput, write_json

MODEL_NAME = "tiny"
UNBATCHED = "unbatched"
DEFAULT = "batched, wait 0 (default)"
SERVERS = {"batched, wait 5 ms": ["--max-batch-size", "32", "--max-wait-ms", "5"],
           DEFAULT: ["--max-batch-size", "32", "--max-wait-ms", "0"],
           UNBATCHED: ["--max-batch-size", "1"]}
SERVER_CHOICES = {"wait5": "batched, wait 5 ms", "default": DEFAULT, "unbatched": UNBATCHED}


def build_model(folder: Path, backend: str, architecture: str = "safeclip-tiny") -> Path:
    import torch

    from safeclip_sdk.model.folder import load_model, save_model_dir

    torch.manual_seed(0)
    loaded = load_model(architecture)
    save_model_dir(folder / "model", loaded.model, loaded.model_cfg, loaded.preprocess_cfg,
                   metadata={"method": "base", "base_model": architecture})
    if backend == "torch":
        return folder / "model"
    from safeclip_sdk.export import export_onnx

    export_onnx(folder / "model", folder / "onnx")
    return folder / "onnx"


def inputs(modality: str, count: int) -> list[str]:
    if modality == "text":
        return [f"a photo of a small boat number {i} on a quiet lake" for i in range(count)]
    rng = np.random.default_rng(0)
    urls = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def start_server(model: Path, backend: str, port: int, options: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "safeclip_sdk", "serve", str(model), "--backend", backend, "--device", "cpu",
               "--port", str(port), "--model-name", MODEL_NAME, "--log-level", "warning", "--max-queue", "1024",
               *options]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # Ray and several workers start slowly on a small machine
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} did not start: {' '.join(command)}")
        time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def load(port: int, modality: str, items: list[str], concurrency: int, requests: int) -> dict[str, float]:
    """Keep ``concurrency`` single-input requests in flight until ``requests`` are answered, each
    worker on its own keep-alive connection (plain HTTP/1.1 on asyncio streams: a Python HTTP
    client library costs more CPU per request than the server on this machine)."""
    bodies = [json.dumps({"model": MODEL_NAME, "input": item, "modality": modality}).encode() for item in items]
    latencies: list[float] = []
    next_request = 0

    async def worker():
        nonlocal next_request
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_request < requests:
                body = bodies[next_request % len(bodies)]
                next_request += 1
                started = time.perf_counter()
                writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                await reader.readexactly(length)
                if status != 200:
                    raise RuntimeError(f"the server answered {status}")
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"requests_per_s": requests / elapsed, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99))}


def inputs_per_call(port: int, modality: str) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    sample = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("safeclip_batch_size_")}
    count = sample.get(f'safeclip_batch_size_count{{modality="{modality}"}}', 0)
    return sample.get(f'safeclip_batch_size_sum{{modality="{modality}"}}', 0) / count if count else float("nan")


def ratio_to(measured: list[dict], baseline: list[dict]) -> float:
    """The median over repeats of requests/s over the baseline's in the same repeat."""
    return statistics.median(m["requests_per_s"] / b["requests_per_s"] for m, b in zip(measured, baseline))


def in_process(model: Path, backend: str, modality: str, items: list[str], min_seconds: float) -> dict[str, float]:
    from safeclip_sdk.runtime.encoder import Encoder

    encoder = Encoder.load(model, backend=backend, device="cpu")
    if modality == "text":
        encode = encoder.encode_text
        batch = items[:32]
    else:
        encode = encoder.encode_image
        batch = [base64.b64decode(url.partition(",")[2]) for url in items[:32]]
    return {"batch_32": throughput(lambda: encode(batch), len(batch), min_calls=3, min_seconds=min_seconds),
            "batch_1": throughput(lambda: encode(batch[:1]), 1, min_calls=10, min_seconds=min_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--architecture", default="safeclip-tiny",
                        help="open_clip architecture, random weights (e.g. ViT-B-32).")
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVER_CHOICES), default=sorted(SERVER_CHOICES),
                        help="Which single-process servers to measure.")
    parser.add_argument("--modalities", nargs="+", choices=["text", "image"], default=["text", "image"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=256, help="Requests per measurement.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="Least time per in-process measurement.")
    parser.add_argument("--workers", type=int, default=None, help="Also a server of this many uvicorn processes.")
    parser.add_argument("--ray", type=int, default=None, metavar="REPLICAS",
                        help="Also a Ray Serve server with this many replicas (a local Ray).")
    parser.add_argument("--json", dest="json_path", help="Write every raw number here.")
    args = parser.parse_args()
    servers = {name: options for name, options in SERVERS.items()
               if name in {SERVER_CHOICES[choice] for choice in args.servers}}
    if args.workers:
        servers[f"{args.workers} uvicorn workers"] = ["--workers", str(args.workers)]
    if args.ray:
        servers[f"Ray Serve, {args.ray} replicas"] = ["--ray", "--replicas", str(args.ray)]
    machine = machine_info()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        model = build_model(Path(scratch), args.backend, args.architecture)
        data = {modality: inputs(modality, 64) for modality in args.modalities}
        baseline = {modality: [in_process(model, args.backend, modality, data[modality], args.min_seconds)
                               for _ in range(args.repeats)] for modality in args.modalities}
        ports = {name: free_port() for name in servers}
        processes = {name: start_server(model, args.backend, ports[name], options)
                     for name, options in servers.items()}
        runs: dict[tuple, list[dict[str, float]]] = {}
        try:
            for _ in range(args.repeats):
                for modality in args.modalities:
                    for concurrency in args.concurrency:
                        for name in servers:
                            port = ports[name]
                            asyncio.run(load(port, modality, data[modality], concurrency, min(32, args.requests)))
                            measured = asyncio.run(load(port, modality, data[modality], concurrency, args.requests))
                            runs.setdefault((modality, concurrency, name), []).append(measured)
            per_call = {(modality, name): inputs_per_call(ports[name], modality)
                        for modality in args.modalities for name in servers}
        finally:
            for process in processes.values():
                process.terminate()
                process.wait(60)

    print(describe_machine(machine))
    print(f"\nsafeclip serve, {args.architecture} (random weights), {args.backend} on the CPU, {args.requests} requests "
          f"of one input per measurement, median of {args.repeats} runs\n")
    rows = []
    bases = [base for base in (UNBATCHED, DEFAULT) if base in servers] if len(servers) > 1 else []
    bases = bases if args.workers or args.ray else bases[:1]
    for modality in args.modalities:
        for concurrency in args.concurrency:
            for name in servers:
                measured = runs[(modality, concurrency, name)]
                ratios = [f"{ratio_to(measured, runs[(modality, concurrency, base)]):.2f}x" for base in bases]
                peak = summarize([b["batch_32"] for b in baseline[modality]])["median"]
                served = summarize([m["requests_per_s"] for m in measured])["median"]
                rows.append([modality, concurrency, name, f"{served:.0f}",
                             f"{summarize([m['p50_ms'] for m in measured])['median']:.1f}",
                             f"{summarize([m['p99_ms'] for m in measured])['median']:.1f}", *ratios,
                             f"{served / peak:.0%}",
                             f"{per_call[(modality, name)]:.1f}"])
    print(markdown_table(["inputs", "concurrency", "server", "requests/s", "p50 ms", "p99 ms",
                          *[f"vs {'unbatched' if base == UNBATCHED else 'default'}" for base in bases],
                          "vs in-process", "inputs per call"], rows))
    print("\nin-process Encoder, same backend (items/s, median):\n")
    print(markdown_table(["inputs", "batch 32", "batch 1"],
                         [[modality, f"{summarize([b['batch_32'] for b in baseline[modality]])['median']:.0f}",
                           f"{summarize([b['batch_1'] for b in baseline[modality]])['median']:.0f}"]
                          for modality in args.modalities]))
    if args.json_path:
        write_json(args.json_path, {"machine": machine, "args": vars(args), "baseline": baseline,
                                    "inputs_per_call": [{"modality": m, "server": s, "value": v}
                                                        for (m, s), v in per_call.items()],
                                    "runs": [{"modality": m, "concurrency": c, "server": s, "measurements": v}
                                             for (m, c, s), v in runs.items()]})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
