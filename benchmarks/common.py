"""Shared benchmark plumbing: machine facts, warm-up + median timing, peak RSS, result files.

Every benchmark runs in its own process (so peak RSS is its own), prints a table line per measurement
and its JSON as the very last line, and writes benchmarks/results/NAME.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"
SHARED = Path(os.environ.get("PROMPTPORT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def setup(threads: int | None = None) -> None:
    torch.set_num_threads(threads or min(2, os.cpu_count() or 1))
    from promptport.runtime import quiet_libraries

    quiet_libraries()


def machine() -> dict:
    from promptport.runtime import versions

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": versions()}


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Median of `repeats` timed calls after `warmup` untimed ones (first touches fault in memory)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": [round(t, 5) for t in times], "repeats": repeats,
            "warmup": warmup}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def target(value: float | None, goal: float, higher_is_better: bool = True) -> dict:
    if value is None:
        return {"target": goal, "met": None}
    return {"target": goal, "met": bool(value >= goal if higher_is_better else value <= goal)}


def finish(name: str, result: dict) -> dict:
    result = {"benchmark": name, "machine": machine(), "peak_rss_mb": round(peak_rss_mb(), 1), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".{name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS / f"{name}.json")
    print(json.dumps(result))
    sys.stdout.flush()
    return result


def student_from_teacher(teacher, layers: int = 2):
    """A plain first-last extraction (no training): throughput does not depend on distillation quality."""
    from promptport.distill import extract_student, num_layers, select_layers

    return extract_student(teacher, select_layers(num_layers(teacher), layers, "first-last")).eval().requires_grad_(False)
