"""What `promptport run` with no arguments gives: the embedded default end to end.

Runs `promptport run` (the embedded default config, or `--config`) as a subprocess in a fresh run
directory, samples the machine's load average while it runs, then reads the run's results.json and
stage manifests and writes benchmarks/results/default_run.json:

    accuracy.<method>        accuracy, 95% bootstrap interval, macro-F1 per baseline of report.md
                             (teacher_zero_shot, student_zero_shot, student_prompt, direct_transfer,
                             post_transfer, and teacher_tuned when the run has it)
    wall_seconds.total       the whole `promptport run` process, start to exit
    wall_seconds.<stage>     each stage's own time from its manifest (distill, tune, transfer, evaluate)
    machine                  cores, load average (start, end, and sampled during the run)
    targets                  POST >= teacher zero-shot + 0.03, whole run <= 1800 s (issue 14)

    python -m benchmarks.default_run                   # the embedded default (about 15-30 min)
    python -m benchmarks.default_run --run-dir runs/bench-default --keep
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import finish, load_average, parser, setup

STAGES = ("distill", "tune", "transfer", "teacher-tuning", "evaluate")


def _sample_load(stop: threading.Event, out: list, every: float) -> None:
    while not stop.wait(every):
        la = load_average()
        if la:
            out.append(la[0])


def summarise(
    run_dir: Path, total_s: float, load_samples: list[float], started: float | None = None
) -> dict:
    """default_run.json's body from a finished run directory (also used by the test on a tiny run)."""
    from promptport.fileio import read_json
    from promptport.manifest import read_manifest

    res = read_json(run_dir / "results.json")
    accuracy = {}
    for name, m in res["baselines"].items():
        accuracy[name] = {
            "accuracy": m["accuracy"],
            "ci95": m.get("accuracy_ci"),
            "macro_f1": m.get("macro_f1"),
        }
    wall: dict = {"total": round(total_s, 1)}
    reused = []
    for stage in STAGES:
        m = read_manifest(run_dir / stage) if (run_dir / stage).is_dir() else None
        if m and m.get("seconds") is not None:
            wall[stage] = round(float(m["seconds"]), 1)
            if (
                started is not None
                and (run_dir / stage / "manifest.json").stat().st_mtime < started
            ):
                reused.append(stage)  # done by an earlier invocation (--keep): not in "total"
    if reused:
        wall["reused_from_earlier_invocation"] = reused
        wall["total_with_reused_stages"] = round(total_s + sum(wall[s] for s in reused), 1)
    end_to_end = wall.get("total_with_reused_stages", total_s)
    zs = accuracy["teacher_zero_shot"]["accuracy"]
    post = accuracy["post_transfer"]["accuracy"]
    curve = []
    jsonl = run_dir / "tune" / "metrics.jsonl"
    if jsonl.is_file():
        import json

        for line in jsonl.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "eval":
                curve.append({"step": rec["step"], "val_accuracy": rec["val_accuracy"]})
    return {
        "config": read_json(run_dir / "config.json"),
        "eval_split": res["eval_split"],
        "n_eval": read_json(run_dir / "evaluate" / "metrics.json").get("n"),
        "accuracy": accuracy,
        "post_minus_teacher_zero_shot": round(post - zs, 4),
        "student_prompt_minus_student_zero_shot": round(
            accuracy["student_prompt"]["accuracy"] - accuracy["student_zero_shot"]["accuracy"], 4
        ),
        "user_validation_curve": curve,
        "wall_seconds": wall,
        "load_during_run": {
            "samples": len(load_samples),
            "mean_1min": round(sum(load_samples) / len(load_samples), 2) if load_samples else None,
            "max_1min": max(load_samples) if load_samples else None,
        },
        "targets": {
            "post_at_least_3_points_above_teacher_zero_shot": {
                "value": round(post - zs, 4),
                "target": 0.03,
                "met": post - zs >= 0.03,
            },
            "end_to_end_within_1800_s": {
                "value": round(end_to_end, 1),
                "target": 1800,
                "met": end_to_end <= 1800,
            },
        },
        "summary": res.get("summary"),
    }


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--config", default=None, help="a run YAML (default: the embedded default)")
    ap.add_argument("--run-dir", default="runs/bench-default-run")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run directory's stages")
    ap.add_argument("--name", default="default_run")
    args = ap.parse_args(argv)
    setup()
    run_dir = Path(args.run_dir)
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "promptport.cli", "run", "--run-dir", str(run_dir)]
    if args.config:
        cmd += ["--config", args.config]
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_load, args=(stop, samples, 15.0), daemon=True)
    sampler.start()
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    total = time.perf_counter() - t0
    stop.set()
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")
    body = summarise(run_dir, total, samples, started)
    body["command"] = " ".join(["promptport"] + cmd[3:])
    return finish(args.name, body)


if __name__ == "__main__":
    main()
