"""Do the audit's AUC intervals cover 0.5 on null data 95% of the time? (a check, not a fix)

The audit's intervals resample *examples* and keep the shadows fixed (`lira.bootstrap_intervals`).
With few shadows that is exact only if nothing shadow-specific moves the AUC. On real SST-2 audits
with 4 and 6 shadows, no-DP prompts that learned little (train accuracy 0.56) gave online AUCs of 0.447
[0.401, 0.502] and 0.439 [0.380, 0.494]: intervals that (nearly) exclude 0.5 from below, which no
membership effect can cause. One mechanism that fits: each shadow prompt favours a class of its own,
whatever its IN set. This benchmark simulates null audits (no membership effect) with and without
that shadow-level class bias, and measures how often the examples-only interval and a two-way
(shadows and examples resampled independently) interval contain 0.5.

    python -m benchmarks.audit_ci_coverage [--shadows 6 8] [--repetitions 60]

Writes benchmarks/results/audit_ci_coverage.json: per N and null model, `examples_only` and
`two_way` with `coverage` and `mean_width`, and the AUC's standard deviation over repetitions.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import finish, parser


def interval(scores, masks, rng, two_way: bool, n_boot: int) -> tuple[float, float]:
    from promptport.lira import roc_metrics

    draws = []
    s_n, p_n = scores.shape
    for _ in range(n_boot):
        cols = rng.integers(0, p_n, p_n)
        rows = rng.integers(0, s_n, s_n) if two_way else np.arange(s_n)
        m = masks[rows][:, cols]
        if m.all() or not m.any():
            continue
        draws.append(roc_metrics(scores[rows][:, cols], m, fast=True)["auc"])
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def study(n_shadows: int, model: str, reps: int, n_examples: int, n_boot: int) -> dict:
    from promptport.lira import all_attack_scores, make_masks, roc_metrics

    out: dict = {"examples_only": [], "two_way": [], "auc": []}
    for r in range(reps):
        rng = np.random.default_rng([n_shadows, r])
        masks = make_masks(n_shadows, n_examples, seed=r)
        y = rng.integers(0, 2, n_examples)
        bias = rng.normal(0, 1.0, (n_shadows, 1)) if model == "shadow_class_bias" else 0.0
        stat = (
            rng.normal(0, 2, n_examples)
            + bias * (2 * y - 1)
            + rng.normal(0, 1, (n_shadows, n_examples))
        )
        scores = all_attack_scores(stat, masks, seed=r)["online/global"]
        out["auc"].append(roc_metrics(scores, masks, fast=True)["auc"])
        for key, tw in (("examples_only", False), ("two_way", True)):
            lo, hi = interval(scores, masks, rng, tw, n_boot)
            out[key].append((lo <= 0.5 <= hi, hi - lo))
    res = {"mean_auc": float(np.mean(out["auc"])), "auc_sd": float(np.std(out["auc"]))}
    for key in ("examples_only", "two_way"):
        a = np.array(out[key], dtype=float)
        res[key] = {"coverage": float(a[:, 0].mean()), "mean_width": float(a[:, 1].mean())}
    return res


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--shadows", type=int, nargs="+", default=[6, 8])
    ap.add_argument("--repetitions", type=int, default=60)
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args(argv)
    by_n = {}
    for n in args.shadows:
        by_n[str(n)] = {}
        for model in ("plain", "shadow_class_bias"):
            r = study(n, model, args.repetitions, args.examples, args.n_boot)
            by_n[str(n)][model] = r
            print(
                f"N={n} {model:18s} sd {r['auc_sd']:.3f}  examples-only coverage "
                f"{r['examples_only']['coverage']:.2f} (width {r['examples_only']['mean_width']:.3f})"
                f"  two-way {r['two_way']['coverage']:.2f} (width {r['two_way']['mean_width']:.3f})",
                flush=True,
            )
    return finish(
        "audit_ci_coverage",
        {
            "attack": "online/global",
            "repetitions": args.repetitions,
            "examples": args.examples,
            "n_boot": args.n_boot,
            "level": 0.95,
            "by_n": by_n,
        },
    )


if __name__ == "__main__":
    main()
