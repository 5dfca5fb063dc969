"""Reindex speed and memory: throughput, database share of the wall time, peak RSS, batch sizes.

    python benchmarks/bench_reindex.py                          # everything, as recorded in docs/performance.md
    python benchmarks/bench_reindex.py --only throughput --points 10000 --repeats 3
    python benchmarks/bench_reindex.py --only share --share-points 512

Every run builds a fresh collection in qdrant-client's local path mode (the embedded default),
in a folder under /dev/shm when it exists: local mode commits to SQLite once per point, and on a
busy disk that fsync, not safeclip, sets the pace. Payloads are texts (``text_of``), original
vectors random unit vectors; the reindex is side-by-side (the default) with the shift score.

- throughput: points/s of one whole ``reindex()`` (copy, reconciliation pass, verification,
  switch, pass after the switch), with the tiny model (``safeclip-tiny``, random weights);
- share: the same with ViT-B-32 (random weights, nothing downloaded) on 64x64 PNG images: time
  spent inside database calls (a timing wrapper around the store, summed over every call) as a
  share of the wall time, and time spent building points (reading sources + embedding);
- rss: RSS of a fresh process that reindexes N points, for two sizes, sampled every 5 ms while
  the reindex runs. Local mode keeps every point of both collections in the process's memory, so
  the RSS grows with N whatever the reindex does. Reported: the RSS after loading the model
  (start), after building the source collection (before), and the peak during the reindex; the
  store's share of the growth is estimated from what building the source added;
- batch: throughput for several ``batch_size`` values (tiny model).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (current_rss_bytes, describe_machine, machine_info, markdown_table, peak_rss_bytes,  # noqa: E402
                    summarize, write_json)

from safeclip_sdk.integrations.base import Point, VectorSpec, VectorStore  # noqa: E402

BATCH_SIZES = (32, 64, 128, 256)


def text_of(number: int) -> str:
    words = ["cat", "dog", "red", "car", "tree", "beach", "city", "night", "snow", "bird", "boat", "lamp"]
    return f"a photo of a {words[number % 12]} next to a {words[(number * 7 + 3) % 12]}, picture {number}"


def scratch_folder() -> str:
    return tempfile.mkdtemp(prefix="bench-reindex-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def build_collection(store: VectorStore, count: int, dim: int, *, image_root: Path | None = None) -> None:
    rng = np.random.default_rng(0)
    store.create_collection("bench-v0", {"": VectorSpec(dim, "cosine")})
    for start in range(0, count, 512):
        vectors = rng.normal(size=(min(512, count - start), dim)).astype(np.float32)
        points = []
        for offset, vector in enumerate(vectors):
            number = start + offset
            payload = {"text": text_of(number)} if image_root is None else {"path": f"{number % 64}.png"}
            points.append(Point(number, payload, {"": vector / np.linalg.norm(vector)}))
        store.upsert("bench-v0", points)
    store.switch_alias("bench", "bench-v0")


def save_model(name: str, folder: Path) -> Path:
    import torch

    from safeclip_sdk.model.folder import load_model, save_model_dir

    torch.manual_seed(0)
    loaded = load_model(name)
    save_model_dir(folder, loaded.model, loaded.model_cfg, loaded.preprocess_cfg,
                   metadata={"method": "base", "base_model": name})
    return folder


class TimedStore(VectorStore):
    """Forwards every call to ``inner`` and adds up the seconds spent in it."""

    def __init__(self, inner: VectorStore):
        self.inner, self.name, self.seconds, self.calls = inner, inner.name, 0.0, 0

    def __getattribute__(self, attribute):
        if attribute in _FORWARDED:
            inner = object.__getattribute__(self, "inner")
            method = getattr(inner, attribute)

            def timed(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - started
                    self.calls += 1
            return timed
        return object.__getattribute__(self, attribute)


_FORWARDED = frozenset(VectorStore.__abstractmethods__)
for _method in _FORWARDED:  # satisfy the ABC; __getattribute__ does the forwarding
    setattr(TimedStore, _method, lambda self, *a, **k: None)
TimedStore.__abstractmethods__ = frozenset()


class RssSampler(threading.Thread):
    """The highest RSS seen while the reindex runs (sampled every 5 ms)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.done, self.peak = threading.Event(), current_rss_bytes()

    def run(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, current_rss_bytes())


def one_reindex(model_dir: Path, count: int, batch_size: int, *, images: bool = False) -> dict[str, Any]:
    """Build a collection, reindex it once; seconds, database seconds, build seconds."""
    from safeclip_sdk.runtime.encoder import Encoder
    from safeclip_sdk.integrations import open_store
    from safeclip_sdk.index.reindex import reindex, pipeline

    folder = Path(scratch_folder())
    try:
        encoder = Encoder.load(model_dir)
        image_root = None
        if images:
            from PIL import Image

            image_root = folder / "images"
            image_root.mkdir()
            rng = np.random.default_rng(1)
            for number in range(64):
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image_root / f"{number}.png")
        inner = open_store(folder / "db")
        gc.collect()
        rss_start = current_rss_bytes()
        build_collection(inner, count, encoder.space.stored_dim, image_root=image_root)
        store = TimedStore(inner)
        build_seconds = [0.0]
        build = pipeline.PointBuilder.build

        def timed_build(self, points):
            started = time.perf_counter()
            try:
                return build(self, points)
            finally:
                build_seconds[0] += time.perf_counter() - started

        pipeline.PointBuilder.build = timed_build
        gc.collect()
        rss_before = current_rss_bytes()
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        options = {"image_field": "path", "image_root": image_root} if images else {"text_field": "text"}
        report = reindex(store, "bench", encoder=encoder, batch_size=batch_size, progress=False, **options)
        seconds = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        pipeline.PointBuilder.build = build
        gc.collect()
        result = {"points": count, "batch_size": batch_size, "seconds": seconds, "points_per_s": count / seconds,
                  "db_seconds": store.seconds, "db_calls": store.calls, "build_seconds": build_seconds[0],
                  "embedded": report.embedded, "rss_start_mib": rss_start / 2**20, "rss_before_mib": rss_before / 2**20,
                  "rss_after_mib": current_rss_bytes() / 2**20, "peak_rss_during_mib": sampler.peak / 2**20,
                  "peak_rss_process_mib": peak_rss_bytes() / 2**20}
        inner.close()
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def in_subprocess(model_dir: Path, count: int, batch_size: int, images: bool = False) -> dict[str, Any]:
    """``one_reindex`` in a fresh process, so its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", str(model_dir), str(count), str(batch_size), str(int(images))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["throughput", "share", "rss", "batch"], action="append")
    parser.add_argument("--points", type=int, default=100_000, help="points for the throughput run")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--share-points", type=int, default=512)
    parser.add_argument("--rss-points", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--batch-points", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the package's DEFAULT_BATCH_SIZE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from safeclip_sdk.index.reindex import DEFAULT_BATCH_SIZE

    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    parts = args.only or ["throughput", "share", "rss", "batch"]
    info = machine_info()
    print(describe_machine(info))
    results: dict[str, Any] = {"machine": info, "date": time.strftime("%Y-%m-%d"), "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as models:
        tiny = save_model("safeclip-tiny", Path(models) / "tiny")
        if "throughput" in parts:
            runs = [in_subprocess(tiny, args.points, batch_size) for _ in range(args.repeats)]
            results["throughput"] = {"runs": runs, "points_per_s": summarize([r["points_per_s"] for r in runs])}
            print(f"throughput {args.points} points: {results['throughput']['points_per_s']}")
        if "share" in parts:
            vit = save_model("ViT-B-32", Path(models) / "vit")
            runs = [in_subprocess(vit, args.share_points, batch_size, images=True) for _ in range(args.repeats)]
            shares = [100 * r["db_seconds"] / r["seconds"] for r in runs]
            results["share"] = {"runs": runs, "db_share_pct": summarize(shares),
                                "build_share_pct": summarize([100 * r["build_seconds"] / r["seconds"] for r in runs])}
            print(f"ViT-B-32 database share of wall time: {results['share']['db_share_pct']}")
        if "rss" in parts:
            results["rss"] = {str(n): in_subprocess(tiny, n, batch_size) for n in args.rss_points}
            for n, run in results["rss"].items():
                print(f"rss {n}: peak during {run['peak_rss_during_mib']:.0f} MiB, after {run['rss_after_mib']:.0f} "
                      f"MiB, before {run['rss_before_mib']:.0f} MiB, process peak {run['peak_rss_process_mib']:.0f} MiB")
        if "batch" in parts:
            results["batch"] = {}
            for size in BATCH_SIZES:
                runs = [in_subprocess(tiny, args.batch_points, size) for _ in range(args.repeats)]
                results["batch"][str(size)] = summarize([r["points_per_s"] for r in runs])
                print(f"batch {size}: {results['batch'][str(size)]}")
    print(render(results))
    if args.json:
        write_json(args.json, results)


def render(results: dict[str, Any]) -> str:
    rows = []
    if "throughput" in results:
        summary = results["throughput"]["points_per_s"]
        run = results["throughput"]["runs"][0]
        rows.append([f"throughput, tiny model, {run['points']} points", f"{summary['median']:.0f} points/s "
                     f"({summary['runs']} run(s), {run['seconds']:.0f} s; database {run['db_seconds']:.0f} s)"])
    if "share" in results:
        share, run = results["share"], results["share"]["runs"][0]
        rows.append([f"database share of wall time, ViT-B-32, {run['points']} images",
                     f"{share['db_share_pct']['median']:.1f}% (building points {share['build_share_pct']['median']:.0f}%,"
                     f" {run['points_per_s']:.1f} points/s)"])
    for n, run in results.get("rss", {}).items():
        source = run['rss_before_mib'] - run['rss_start_mib']
        growth = run['peak_rss_during_mib'] - run['rss_before_mib']
        rows.append([f"RSS, {n} points", f"peak during the reindex {run['peak_rss_during_mib']:.0f} MiB; growth during "
                     f"the reindex {growth:.0f} MiB, of which the store's copy of the new collection is about "
                     f"{2 * source:.0f} (twice what building the source added: it has two vectors)"])
    for size, summary in results.get("batch", {}).items():
        rows.append([f"batch size {size}", f"{summary['median']:.0f} points/s"])
    return markdown_table(["measurement", "result"], rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model_dir, count, batch_size, images = sys.argv[2:6]
        print(json.dumps(one_reindex(Path(model_dir), int(count), int(batch_size), images=bool(int(images)))))
    else:
        main()
