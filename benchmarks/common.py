"""Shared benchmark plumbing: machine facts, warm-up + median timing, peak RSS, result files.

Every benchmark runs in its own process (so peak RSS is its own), prints a table line per measurement
and its JSON as the very last line, and writes benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
_LOAD_AT_START: list[float] | None = None
SHARED = Path(
    os.environ.get(
        "PROMPTPORT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


def parser(
    doc: str | None, suite: str | None = "quick", model: bool = False
) -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from: the docstring as help, `--suite` (unless None) and,
    with `model`, `--model` (the teacher; a tiny model makes a smoke run of the benchmark)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if suite is not None:
        ap.add_argument("--suite", choices=["quick", "full"], default=suite)
    if model:
        ap.add_argument(
            "--model", default="smollm2-135m-instruct", help="the teacher (a model name or folder)"
        )
    return ap


def prompt_parser(doc: str | None) -> argparse.ArgumentParser:
    """`parser(doc, model=True)` plus the prompt-tuning shape every step benchmark shares: the default run's
    batch of 16, 20 prompt tokens, inputs cut at 96 tokens (configs/default.yaml)."""
    ap = parser(doc, model=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=96)
    return ap


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def setup(threads: int | None = None) -> None:
    global _LOAD_AT_START
    _LOAD_AT_START = load_average()
    torch.set_num_threads(threads or min(2, os.cpu_count() or 1))
    from promptport.runtime import quiet_libraries

    quiet_libraries()


def machine() -> dict:
    from promptport.runtime import versions

    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    # the load average (1, 5, 15 min) at the start and the end: other jobs on the machine inflate absolute
    # times, so a figure taken under load is marked as such
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": versions(),
        "load_average_start": _LOAD_AT_START,
        "load_average_end": load_average(),
    }


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Median of `repeats` timed calls after `warmup` untimed ones (first touches fault in memory)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "times_s": [round(t, 5) for t in times],
        "repeats": repeats,
        "warmup": warmup,
    }


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, dict]:
    """Time several functions round-robin, the order reversed every other round, after `warmup` untimed
    rounds: load that drifts during the run (other jobs on the machine) then hits every side alike.
    Returns time_fn's record per function, plus its per-round times for paired ratios."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {
        k: {
            "median_s": statistics.median(v),
            "times_s": [round(t, 5) for t in v],
            "repeats": repeats,
            "warmup": warmup,
        }
        for k, v in times.items()
    }


def paired_ratio(timings: dict[str, dict], num: str, den: str) -> float:
    """Median over rounds of num's time / den's time in the same round (from `interleaved`)."""
    return statistics.median(
        a / b for a, b in zip(timings[num]["times_s"], timings[den]["times_s"])
    )


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> dict:
    """This machine's attainable matmul rate: FLOP/s of an n x n @ n x n product (2 n^3 FLOPs) in `dtype`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t = time_fn(lambda: a @ b, repeats=repeats, warmup=2)
    rates = [2 * n**3 / s for s in t["times_s"]]
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "median_flops": statistics.median(rates),
        "max_flops": max(rates),
        "times_s": t["times_s"],
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def target(value: float | None, goal: float, higher_is_better: bool = True) -> dict:
    if value is None:
        return {"target": goal, "met": None}
    return {"target": goal, "met": bool(value >= goal if higher_is_better else value <= goal)}


def finish(name: str, result: dict) -> dict:
    result = {
        "benchmark": name,
        "machine": machine(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **result,
    }
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

    return (
        extract_student(teacher, select_layers(num_layers(teacher), layers, "first-last"))
        .eval()
        .requires_grad_(False)
    )


def sentiment_split(split: str, limit: int):
    """(task, TextDataset): SST-2 from the shared data when present, else the embedded Rotten Tomatoes
    snippets (same kind of text and template), so every throughput benchmark also runs offline."""
    from promptport.data import load_split
    from promptport.tasks import get_task

    if (SHARED / "sst2").is_dir():
        task = get_task("sst2")
        return task, load_split(task, str(SHARED / "sst2"), split, limit=limit)
    task = get_task("rt_snippets")
    return task, load_split(task, None, split, limit=limit)


def default_distill_config(**overrides):
    """The default run's distillation recipe (the pipeline's own default config), with `overrides`."""
    from promptport.distill import DistillConfig
    from promptport.pipeline import DEFAULT_CONFIG, load_run_config

    return DistillConfig(**{**load_run_config(DEFAULT_CONFIG).distill, **overrides})
