"""Every method on the demo world over several seeds: the verdict's figures on the TEST split, medians.

Uses the world and base CLIP of a finished ``safeclip demo`` folder (``--demo``) and fine-tunes
each registered method with the demo's settings once per seed into ``DEMO/seeds/seed-N/METHOD``
(the demo's own seed-0 runs are reused for seed 0; finished runs are reused on a rerun). Each model
is then judged on the test split exactly as ``safeclip train`` judges it on validation data (in
the deployment the SDK recommends, against the same base), and the script prints and writes the
per-seed figures and their medians:

    python benchmarks/method_seeds.py --demo demo-output --seeds 0 1 2 --json seeds.json --markdown seeds.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, write_json  # noqa: E402

from safeclip_sdk.data import load_dataset  # noqa: E402
from safeclip_sdk.demo.settings import DemoSettings, method_config  # noqa: E402
from safeclip_sdk.evaluation.verdict import judge  # noqa: E402
from safeclip_sdk.methods import available_methods, get_method, load_checked_model  # noqa: E402
from safeclip_sdk.training.run import train  # noqa: E402

FIGURES = [("text queries", "unsafe top-1"), ("text queries", "leak"), ("text queries", "safe R@1"),
           ("image queries", "unsafe top-1"), ("image queries", "leak"), ("image queries", "safe R@1")]


def run_dir(demo: Path, method: str, seed: int) -> Path:
    return demo / method if seed == 0 else demo / "seeds" / f"seed-{seed}" / method


def trained_model(demo: Path, method: str, seed: int) -> tuple[Path, float]:
    """The model folder of ``method`` at ``seed``, trained now if it is not there yet (and how long it took)."""
    out = run_dir(demo, method, seed)
    if (out / "model" / "safeclip.json").is_file():
        return out / "model", 0.0
    world = {split: demo / "world" / f"{split}.jsonl" for split in ("train", "val", "test")}
    started = time.perf_counter()
    train(method_config(method, out.parent, demo / "base" / "model", world, DemoSettings(), device="cpu", seed=seed))
    return out / "model", time.perf_counter() - started


def flat(figures: dict[str, Any]) -> dict[str, float]:
    values = {f"{direction} / {name}": figures[direction][name] for direction, name in FIGURES if direction in figures}
    for modality, classifier in figures.get("classifier", {}).items():
        values[f"classifier {modality} AUC"] = classifier["auc"]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("demo-output"), help="a finished safeclip demo folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()

    methods = args.methods or available_methods()
    test = load_dataset(args.demo / "world" / "test.jsonl").items
    base = load_checked_model(str(args.demo / "base" / "model"))
    runs: dict[str, dict[int, dict[str, Any]]] = {method: {} for method in methods}
    base_figures: dict[str, float] = {}
    for method in methods:
        for seed in args.seeds:
            model_dir, seconds = trained_model(args.demo, method, seed)
            verdict = judge(load_checked_model(str(model_dir)), base, test, data="test split")
            base_figures = flat(verdict.base)
            runs[method][seed] = {"safer": verdict.safer, "failures": verdict.failures, "train_seconds": seconds,
                                  "deployment": verdict.deployment, **flat(verdict.model)}
            print(f"{method} seed {seed}: {'safer' if verdict.safer else 'NOT safer'}"
                  f"{'' if verdict.safer else ': ' + '; '.join(verdict.failures)}", flush=True)

    keys = list(base_figures) + sorted({key for method in runs.values() for run in method.values()
                                        for key in run if key.startswith("classifier")})
    medians = {method: {key: statistics.median(run[key] for run in by_seed.values())
                        for key in keys if all(key in run for run in by_seed.values())}
               for method, by_seed in runs.items()}
    header = "| model | " + " | ".join(keys) + " | safer (seeds) |"
    lines = [header, "|" + "---|" * (len(keys) + 2),
             "| base | " + " | ".join(f"{base_figures.get(key, float('nan')):.1f}" if key in base_figures else "-"
                                      for key in keys) + " | - |"]
    for method, values in medians.items():
        cells = ["-" if key not in values else f"{values[key]:.3f}" if key.startswith("classifier")
                 else f"{values[key]:.1f}" for key in keys]
        safer = sum(run["safer"] for run in runs[method].values())
        lines.append(f"| {get_method(method).display_name} | " + " | ".join(cells)
                     + f" | {safer}/{len(runs[method])} |")
    table = "\n".join(lines)
    print(f"\nMedians over seeds {args.seeds} (test split, recommended deployment):\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    if args.json:
        write_json(args.json, {"machine": machine_info(), "seeds": args.seeds, "base": base_figures,
                               "runs": {m: {str(s): r for s, r in by_seed.items()} for m, by_seed in runs.items()},
                               "medians": medians})


if __name__ == "__main__":
    main()
