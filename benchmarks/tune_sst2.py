"""SST-2 prompt tuning on the real model: zero-shot vs prompt tuning vs DP prompt tuning (epsilon = 8).

    python -m benchmarks.tune_sst2 [--model smollm2-135m-instruct] [--minutes 10] [--train-limit 20000]

Protocol (one process, the model is loaded once):
  1. the private training set: `--train-limit` examples drawn (seeded) from SST-2 train;
  2. zero-shot accuracy of the same model on the full dev set (872 sentences);
  3. a short probe times the non-DP and the DP step on the same batch (the DP step-time ratio);
  4. non-DP prompt tuning: `--max-steps` steps of `--batch-size` (fewer if `--minutes` of training at the
     probed speed cannot fit them);
  5. DP prompt tuning (Poisson sampling, clipping, noise calibrated to epsilon/delta): `--dp-max-steps` steps of
     expected batch `--dp-batch-size`, the same number of examples;
  6. both final prompts on the full dev set. No validation-based selection: the prompt is the last iterate,
     so the DP prompt's guarantee covers everything it was chosen with and dev is never seen in training.

Prints one line per stage and the result JSON as the last line; writes it to --out.
Needs the shared SST-2 files (../shared/data/sst2 or PROMPTPORT_SHARED_DATA).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, SHARED, parser


def parse(argv=None):
    ap = parser(__doc__, suite=None)
    ap.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model to tune on (teacher or a student dir)",
    )
    ap.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="training compute budget per tuning run (minutes): caps the steps at budget x measured speed",
    )
    ap.add_argument(
        "--train-limit", type=int, default=20000, help="size N of the private training set"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "tune_sst2.json")
    ap.add_argument("--data", type=Path, default=SHARED / "sst2")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: min(2, cores))"
    )
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.03, help="Adam lr, non-DP")
    ap.add_argument("--batch-size", type=int, default=16, help="non-DP batch")
    ap.add_argument("--dp-lr", type=float, default=0.05, help="Adam lr, DP")
    ap.add_argument(
        "--dp-batch-size", type=int, default=64, help="DP expected batch (physical batch 16)"
    )
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--accountant", default="prv", choices=["prv", "rdp"])
    ap.add_argument(
        "--dev-limit", type=int, default=None, help="evaluate on the first N dev sentences only"
    )
    ap.add_argument(
        "--max-steps", type=int, default=100, help="non-DP steps (fewer if the budget runs out)"
    )
    ap.add_argument(
        "--dp-max-steps", type=int, default=25, help="DP steps (fewer if the budget runs out)"
    )
    ap.add_argument("--skip", action="append", default=[], choices=["dp", "nondp"])
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv=None) -> dict:
    a = parse(argv)
    from benchmarks.common import machine, peak_rss_mb, setup

    setup(a.threads)
    from promptport.classify import PromptClassifier
    from promptport.data import load_split
    from promptport.models import load_model
    from promptport.privacy import DPConfig, format_statement
    from promptport.runtime import seed_everything
    from promptport.tasks import get_task
    from promptport.tune import TuneConfig, dp_gradient, mean_gradient, train_prompt

    if not (a.data / "dev.tsv").exists():
        raise SystemExit(f"SST-2 not found at {a.data} (set PROMPTPORT_SHARED_DATA)")
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    seed_everything(a.seed)
    task = get_task("sst2")
    lm = load_model(a.model, dtype=a.dtype)
    clf = PromptClassifier(lm.model, lm.tokenizer, task, max_length=a.max_length)
    train_ds = load_split(task, str(a.data), "train")
    dev_ds = load_split(task, str(a.data), "validation", limit=a.dev_limit)
    pick = np.sort(np.random.default_rng(a.seed).permutation(len(train_ds))[: a.train_limit])
    train = clf.encode(train_ds.select(pick.tolist()))
    dev = clf.encode(dev_ds)
    n = len(train)
    log(
        f"model {lm.info.model_id} ({a.dtype}, {torch.get_num_threads()} threads); train N={n}, dev {len(dev)}; "
        f"load average {load0[0]:.1f}"
    )

    result = {
        "benchmark": "tune_sst2",
        "model": lm.info.model_id,
        "dtype": a.dtype,
        "n_train": n,
        "n_dev": len(dev),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    }

    zs = clf.evaluate(dev, None, 32)
    result["zero_shot"] = {
        "dev_accuracy": zs["accuracy"],
        "dev_macro_f1": zs["macro_f1"],
        "seconds": zs["seconds"],
        "predicted_class_counts": zs["predicted_class_counts"],
    }
    log(f"zero-shot dev accuracy {zs['accuracy']:.4f} ({zs['seconds']:.0f}s)")

    # probe: the same batch through the non-DP and the DP gradient, interleaved; medians after a warm-up
    from promptport.prompt import init_prompt_embeddings

    p0 = init_prompt_embeddings(lm.model, lm.tokenizer, a.n_tokens, "text", task.description)
    probe_idx = np.random.default_rng(a.seed + 1).choice(n, a.batch_size, replace=False).tolist()
    gen = torch.Generator().manual_seed(0)
    t_plain, t_dp = [], []
    for rep in range(4):
        t0 = time.perf_counter()
        mean_gradient(clf, p0, train, probe_idx, a.batch_size)
        t1 = time.perf_counter()
        dp_gradient(
            clf,
            p0,
            train,
            probe_idx,
            a.batch_size,
            max_grad_norm=1.0,
            sigma=1.0,
            expected_batch_size=a.batch_size,
            generator=gen,
        )
        t2 = time.perf_counter()
        if rep:
            t_plain.append(t1 - t0)
            t_dp.append(t2 - t1)
    sec_per_ex = statistics.median(t_plain) / a.batch_size
    ratio = statistics.median(t_dp) / statistics.median(t_plain)
    result["step_probe"] = {
        "batch": a.batch_size,
        "non_dp_s": [round(x, 3) for x in t_plain],
        "dp_s": [round(x, 3) for x in t_dp],
        "examples_per_s": round(1 / sec_per_ex, 2),
        "dp_step_ratio": round(ratio, 3),
    }
    result["dp_overhead"] = round(ratio, 3)
    log(f"probe: {1 / sec_per_ex:.2f} ex/s non-DP, DP/non-DP step time {ratio:.3f}")
    budget_examples = a.minutes * 60 / sec_per_ex

    def run(name: str, cfg: TuneConfig) -> dict:
        t0 = time.perf_counter()
        r = train_prompt(clf, train, None, cfg, progress=sys.stderr.isatty())
        ev = clf.evaluate(dev, r.embeddings, 32)
        losses = [
            h["loss"] for h in r.history if h["type"] == "train" and h.get("loss") is not None
        ]
        k = max(1, len(losses) // 10)
        out = {
            "dev_accuracy": ev["accuracy"],
            "dev_macro_f1": ev["macro_f1"],
            "predicted_class_counts": ev["predicted_class_counts"],
            "steps": r.steps,
            "examples_trained": r.extra["examples"],
            "train_seconds": r.seconds,
            "examples_per_s": r.examples_per_s,
            "eval_seconds": ev["seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "train_loss_first_10pct": float(np.mean(losses[:k])),
            "train_loss_last_10pct": float(np.mean(losses[-k:])),
            "config": cfg.to_dict(),
        }
        if r.privacy is not None:
            out["privacy"] = r.privacy
            log(format_statement(r.privacy))
        log(
            f"{name}: dev accuracy {ev['accuracy']:.4f}; {r.steps} steps, {r.examples_per_s:.2f} ex/s, "
            f"train {r.seconds:.0f}s, run {out['wall_seconds']:.0f}s"
        )
        return out

    common = dict(
        n_tokens=a.n_tokens,
        init="text",
        optimizer="adam",
        schedule="linear",
        max_length=a.max_length,
        seed=a.seed,
        eval_batch_size=32,
    )
    if "nondp" not in a.skip:
        steps = max(1, min(a.max_steps, int(budget_examples // a.batch_size)))
        result["non_dp_steps_capped_by_budget"] = steps < a.max_steps
        result["non_dp"] = run(
            "non-DP", TuneConfig(lr=a.lr, batch_size=a.batch_size, max_steps=steps, **common)
        )
    if "dp" not in a.skip:
        steps = max(1, min(a.dp_max_steps, int(budget_examples // a.dp_batch_size)))
        result["dp_steps_capped_by_budget"] = steps < a.dp_max_steps
        micro = a.batch_size
        accum = max(1, math.ceil(a.dp_batch_size / micro))
        dp = DPConfig(
            epsilon=a.epsilon, delta=a.delta, max_grad_norm=a.max_grad_norm, accountant=a.accountant
        )
        result["dp"] = run(
            f"DP eps={a.epsilon}",
            TuneConfig(
                lr=a.dp_lr, batch_size=micro, grad_accum=accum, max_steps=steps, dp=dp, **common
            ),
        )

    zs_acc = result["zero_shot"]["dev_accuracy"]
    checks = {}
    if "non_dp" in result:
        gain = result["non_dp"]["dev_accuracy"] - zs_acc
        checks["non_dp_gain_over_zero_shot_points"] = round(100 * gain, 2)
        checks["non_dp_beats_zero_shot_by_5_points"] = bool(gain >= 0.05)
    if "non_dp" in result and "dp" in result:
        gap = result["non_dp"]["dev_accuracy"] - result["dp"]["dev_accuracy"]
        checks["dp_gap_to_non_dp_points"] = round(100 * gap, 2)
        checks["dp_within_5_points_of_non_dp"] = bool(gap <= 0.05)
    checks["dp_step_ratio_below_1_15"] = bool(ratio < 1.15)
    result["checks"] = checks
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    result["load_average_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    result["machine"] = machine()
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, a.out)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
