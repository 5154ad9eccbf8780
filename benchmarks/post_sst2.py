"""POST on SST-2 with the embedded SmolLM2 teacher: every baseline in one JSON.

Runs `promptport run` with configs/sst2-smollm2.yaml (optionally with an existing student and other
overrides) and collects teacher zero-shot, student zero-shot, student + prompt, direct transfer, POST
transfer (and teacher tuning with --with-teacher-tuning), each with its bootstrap interval and the
wall time of every stage. Needs the workplace's ../shared/data (SST-2 and IMDB).
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import SHARED, finish, setup


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suite", choices=["quick", "full"], default="full")
    ap.add_argument("--config", default="configs/sst2-smollm2.yaml")
    ap.add_argument("--run-dir", default="runs/bench-post-sst2")
    ap.add_argument(
        "--student", default=None, help="an existing student folder (skips distillation)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a config key, e.g. --set 'transfer={\"epochs\": 2}'",
    )
    ap.add_argument("--with-teacher-tuning", action="store_true")
    args = ap.parse_args(argv)
    setup()
    if not (SHARED / "sst2").is_dir():
        raise SystemExit(f"needs SST-2 at {SHARED / 'sst2'}")
    from promptport.pipeline import load_run_config, run_pipeline

    overrides = {
        "run_dir": args.run_dir,
        "private_data": str(SHARED / "sst2"),
        "public_data": str(SHARED / "imdb"),
        "student": args.student,
        "with_teacher_tuning": args.with_teacher_tuning or None,
    }
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v)
    cfg = load_run_config(args.config, overrides)
    t0 = time.perf_counter()
    r = run_pipeline(cfg, progress=False)
    base = r["baselines"]
    acc = {k: round(v["accuracy"], 4) for k, v in base.items()}
    print("post_sst2 " + "  ".join(f"{k}={v}" for k, v in acc.items()))
    finish(
        "post_sst2",
        {
            "config": cfg.model_dump(),
            "accuracy": acc,
            "baselines": base,
            "costs": r["costs"],
            "post_above_zero_shot": acc["post_transfer"] > acc["teacher_zero_shot"],
            "post_above_direct": acc["post_transfer"] > acc["direct_transfer"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
