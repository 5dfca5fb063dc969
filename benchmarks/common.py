"""What both benchmark scripts share: the machine's description, repeat statistics, Markdown, JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """The machine a run measured: CPU, cores, load, library versions, GPU."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": properties.name, "count": torch.cuda.device_count(),
                       "memory_gib": round(properties.total_memory / 2**30, 1),
                       "capability": f"{properties.major}.{properties.minor}", "cuda": torch.version.cuda}
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One Markdown paragraph naming the machine of ``machine_info()``."""
    gpu = info.get("gpu")
    gpu_text = (f"GPU: {gpu['name']} x{gpu['count']} ({gpu['memory_gib']} GiB, CUDA {gpu['cuda']})" if gpu
                else "GPU: none")
    load = ", ".join(f"{value:.2f}" for value in info["load_average_1_5_15"])
    return (f"Machine: {info['cpu']}, {info['usable_cores']} cores usable ({info['logical_cores']} logical); "
            f"{gpu_text}; Python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
            f"onnxruntime {info.get('onnxruntime') or 'not installed'}; load average {load} (1/5/15 min) "
            f"when the run started.")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the spread ``(max - min) / median`` in percent of repeated measurements."""
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values), "runs": len(values),
            "spread_pct": 100.0 * (max(values) - min(values)) / median if median else 0.0}


def throughput(run: Callable[[], object], items_per_call: int, *, min_calls: int, min_seconds: float,
               synchronize: Callable[[], None] = lambda: None) -> float:
    """Items per second of ``run``, called at least ``min_calls`` times and for at least ``min_seconds``."""
    synchronize()
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        run()
        calls += 1
    synchronize()
    return calls * items_per_call / (time.perf_counter() - started)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The highest resident set size this process has had (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_rate(summary: dict[str, float]) -> str:
    """``median (min-max)`` with a precision that suits the magnitude."""
    def number(value: float) -> str:
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"

    return f"{number(summary['median'])} ({number(summary['min'])}-{number(summary['max'])})"


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
