"""POST on E2E NLG (generation) with the embedded SmolLM2 teacher: every baseline in one JSON.

Prepares the MR-disjoint E2E files (scripts/prepare_e2e.py), runs `promptport run` with
configs/e2e-smollm2.yaml (teacher tuning included) and writes benchmarks/results/post_e2e.json:
`metrics.<method>.bleu` / `.rougeL` (0-100, sacrebleu / rouge-score against all references of each
test MR) with `_ci` bootstrap intervals for teacher_zero_shot, student_zero_shot, student_prompt,
direct_transfer, post_transfer and teacher_tuned, the wall time of every stage, and the differences the
issue asks about. Needs ../shared/data/e2e.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import SHARED, finish, setup


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/e2e-smollm2.yaml")
    ap.add_argument("--run-dir", default=None, help="default: the config's run_dir")
    ap.add_argument("--data-dir", default="runs/e2e-data")
    ap.add_argument("--student", default=None, help="an existing student (skips distillation)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON", help="override a config key"
    )
    ap.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing: collect the baselines and stage times already in the run directory "
        "(the JSON says which baselines are missing)",
    )
    args = ap.parse_args(argv)
    if args.collect_only:
        return collect(args)
    setup()
    if not (SHARED / "e2e" / "devset.csv").is_file():
        raise SystemExit(f"needs E2E at {SHARED / 'e2e'}")
    from promptport.generation import prepare_e2e
    from promptport.pipeline import load_run_config, run_pipeline

    split_info = prepare_e2e(SHARED / "e2e", args.data_dir, n_test_mrs=100, seed=0)
    overrides = {
        "run_dir": args.run_dir,
        "private_data": args.data_dir,
        "public_data": f"{args.data_dir}/public.csv",
        "student": args.student,
    }
    sets = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = load_run_config(args.config, overrides | sets)
    # load_run_config reads None as "not given"; a --set KEY=null means "clear the config's value"
    cleared = {k: None for k, v in sets.items() if v is None}
    if cleared:
        cfg = cfg.model_validate(cfg.model_dump() | cleared)
    if cfg.student is None:
        cfg.distill = {**cfg.distill, "corpus": [f"{args.data_dir}/public_corpus.jsonl"]}
    t0 = time.perf_counter()
    r = run_pipeline(cfg, progress=False)
    base = r["baselines"]
    return write_result(cfg, split_info, base, r["costs"], time.perf_counter() - t0)


METHODS = (
    "teacher_zero_shot",
    "student_zero_shot",
    "student_prompt",
    "direct_transfer",
    "post_transfer",
    "teacher_tuned",
)


def collect(args):
    """Baselines and stage times from a run directory (finished or not), without running anything."""
    from pathlib import Path

    from promptport.config import RunConfig
    from promptport.fileio import read_json
    from promptport.manifest import read_manifest
    from promptport.pipeline import load_run_config

    cfg = load_run_config(args.config, {"run_dir": args.run_dir})
    run = Path(cfg.run_dir)
    if (run / "config.json").is_file():  # the settings the run itself recorded, not today's YAML
        cfg = RunConfig(**read_json(run / "config.json"))
    base = {}
    for k in METHODS:
        f = run / "evaluate" / f"{k}.metrics.json"
        if f.is_file():
            base[k] = read_json(f)["metrics"]
    costs = []
    for stage in ("distill", "tune", "transfer", "teacher-tuning"):
        m = read_manifest(run / stage)
        if m and m.get("status") == "complete":
            costs.append({"stage": stage, "seconds": round(m["seconds"], 1)})
    return write_result(cfg, None, base, costs, None)


def supplied_student(cfg) -> dict | None:
    """With `--student`, the config's distill section did not run: record the student's own
    distillation (its stage's metrics.json beside the student folder, when there) instead."""
    if cfg.student is None:
        return None
    from pathlib import Path

    from promptport.fileio import read_json

    folder = Path(cfg.student)
    out: dict = {"path": str(folder)}
    meta = folder / "student.json"
    if meta.is_file():
        out["layers"] = read_json(meta).get("layers")
    stage = folder.parent / "metrics.json"
    if stage.is_file():
        m = read_json(stage)
        if m.get("stage") == "distill":
            out |= {
                k: m.get(k)
                for k in (
                    "config",
                    "kl_reduction",
                    "tokens_trained",
                    "cache_seconds",
                    "wall_seconds",
                )
            }
    return out


def write_result(cfg, split_info, base, costs, wall):
    keys = ("bleu", "rougeL", "chrf")
    metrics = {
        name: {k: round(b[k], 2) for k in keys if k in b}
        | {f"{k}_ci": [round(x, 2) for x in b[f"{k}_ci"]] for k in keys if k in b}
        | {
            "n": b["n"],
            "mean_output_words": round(b["mean_output_words"], 1),
            "generate_seconds": b.get("seconds"),
        }
        for name, b in base.items()
    }

    def diff(a, b, k):
        return round(base[a][k] - base[b][k], 2) if a in base and b in base else None

    print(
        "post_e2e "
        + "  ".join(f"{k}: ROUGE-L {v['rougeL']} BLEU {v['bleu']}" for k, v in metrics.items())
    )
    return finish(
        "post_e2e",
        {
            "config": cfg.model_dump(),
            "student": supplied_student(cfg),
            "split": split_info,
            "scale": "0-100",
            "complete": all(k in base for k in METHODS),
            "missing": [k for k in METHODS if k not in base],
            "metrics": metrics,
            "stage_seconds": {c["stage"]: c["seconds"] for c in costs}
            | {f"generate {k}": b.get("seconds") for k, b in base.items()},
            "differences": {
                "teacher_tuned_minus_zero_shot_rougeL": diff(
                    "teacher_tuned", "teacher_zero_shot", "rougeL"
                ),
                "post_minus_zero_shot_rougeL": diff("post_transfer", "teacher_zero_shot", "rougeL"),
                "post_minus_zero_shot_bleu": diff("post_transfer", "teacher_zero_shot", "bleu"),
                "post_minus_direct_rougeL": diff("post_transfer", "direct_transfer", "rougeL"),
                "post_minus_direct_bleu": diff("post_transfer", "direct_transfer", "bleu"),
            },
            "wall_seconds": None if wall is None else round(wall, 1),
        },
    )


if __name__ == "__main__":
    main()
