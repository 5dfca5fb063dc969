"""Reindex points/s of the Ray engine with 1 and 2 workers, against the local engine, in one run.

    python benchmarks/bench_reindex_ray.py --points 2000 --repeats 3 --json /tmp/bench/reindex-ray.json

One local Ray (``ray.init(num_cpus=2)``) serves every run. Each run builds a fresh collection in
qdrant-client's local path mode (under /dev/shm when it exists) whose payloads name 64x64 PNG
images (``bench_reindex.build_collection``), then times one whole side-by-side ``reindex()``
(copy, reconciliation pass, verification, switch, pass after the switch) with the tiny model. The
engines take turns within each repeat, so a busy machine slows them alike. Local mode admits one
client, so with ``engine="ray"`` the driver reads and writes and the actors only embed.
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

ENGINES = (("local", 1), ("ray", 1), ("ray", 2))


def one_run(model_dir: Path, images: Path, count: int, batch_size: int, engine: str, workers: int) -> dict[str, Any]:
    from safeclip_sdk.encoder import Encoder
    from safeclip_sdk.integrations import open_store
    from safeclip_sdk.reindex import reindex

    folder = Path(scratch_folder())
    try:
        encoder = Encoder.load(model_dir, "auto")
        store = open_store(folder / "db")
        build_collection(store, count, encoder.space.stored_dim, image_root=images)
        started = time.perf_counter()
        report = reindex(store, "bench", model_dir, image_field="path", image_root=images, batch_size=batch_size,
                         progress=False, engine=engine, workers=workers)
        seconds = time.perf_counter() - started
        store.close()
        assert report.embedded == count
        return {"engine": engine, "workers": workers, "points": count, "seconds": seconds,
                "points_per_s": count / seconds}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import ray
    from PIL import Image

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = save_model("safeclip-tiny", Path(scratch) / "tiny")
        images = Path(scratch) / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for number in range(64):
            Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(images / f"{number}.png")
        runs = []
        for repeat in range(args.repeats):
            for engine, workers in ENGINES:
                run = one_run(model_dir, images, args.points, args.batch_size, engine, workers)
                run["repeat"] = repeat
                print(f"repeat {repeat}: {engine} x{workers}: {run['points_per_s']:.0f} points/s "
                      f"({run['seconds']:.1f} s)", flush=True)
                runs.append(run)
    ray.shutdown()
    results = {"machine": machine_info(), "runs": runs, "summary": {}}
    for engine, workers in ENGINES:
        rates = [run["points_per_s"] for run in runs if run["engine"] == engine and run["workers"] == workers]
        results["summary"][f"{engine} x{workers}"] = summarize(rates)
    one, two = results["summary"]["ray x1"]["median"], results["summary"]["ray x2"]["median"]
    results["summary"]["ray 2 workers / 1 worker"] = two / one
    print(describe_machine(results["machine"]))
    print(markdown_table(["engine", "median points/s", "min-max"],
                         [[name, f"{value['median']:.0f}", f"{value['min']:.0f}-{value['max']:.0f}"]
                          for name, value in results["summary"].items() if isinstance(value, dict)]))
    print(f"2 workers / 1 worker: {two / one:.2f}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
