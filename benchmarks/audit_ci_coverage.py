"""Do the audit's AUC intervals cover 0.5 on null data 95% of the time?

`lira.bootstrap_intervals` offers two units: *examples* (columns resampled, shadows held fixed) and
*two_way* (shadows and examples resampled independently). Examples-only is exact only if nothing
shadow-specific moves the AUC. Real no-DP SST-2 audits with 4 and 6 shadows read 0.447 [0.401, 0.502]
and 0.439 [0.380, 0.494] with examples-only intervals; their shadow prompts had collapsed to one class
each. Two kinds of null data, where membership has no effect:

* simulated (`plain`, `shadow_class_bias`, `shadow_modes`: each shadow favours one class strongly);
* `--real AUDIT_DIR ...`: the finished shadows of real audits with *fresh* masks from the audit's own
  design. Their outputs do not depend on a fresh mask, so membership has no effect by construction,
  while every shadow-level structure of the real runs is kept.

    python -m benchmarks.audit_ci_coverage [--shadows 6 8] [--repetitions 60] [--real DIR ...]

Writes benchmarks/results/audit_ci_coverage.json: per N and null model (and per real audit),
`examples_only` and `two_way` with `coverage` and `mean_width`, and the AUC's standard deviation.
The audit prints the two-way interval since this benchmark.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import finish, parser


def coverage(draws, n_boot: int) -> dict:
    """draws: (scores [N, P], masks [N, P], seed) of null audits -> coverage and width per unit."""
    from promptport.lira import bootstrap_intervals, roc_metrics

    out: dict = {"examples_only": [], "two_way": [], "auc": []}
    for scores, masks, r in draws:
        out["auc"].append(roc_metrics(scores, masks, fast=True)["auc"])
        for key, unit in (("examples_only", "examples"), ("two_way", "two_way")):
            lo, hi = bootstrap_intervals(scores, masks, n_boot, seed=r, unit=unit)["auc"]
            out[key].append((lo <= 0.5 <= hi, hi - lo))
    res = {"mean_auc": float(np.mean(out["auc"])), "auc_sd": float(np.std(out["auc"]))}
    for key in ("examples_only", "two_way"):
        a = np.array(out[key], dtype=float)
        res[key] = {"coverage": float(a[:, 0].mean()), "mean_width": float(a[:, 1].mean())}
    return res


def real_null(audit_dir: str, reps: int):
    """Fresh masks over the finished shadows of a real audit: null data with its real structure."""
    from promptport.audit import fresh_mask, load_shadows
    from promptport.lira import leave_one_out, logit_confidence

    sh = load_shadows(audit_dir)
    stat = logit_confidence(sh.logits, sh.labels[None, :])
    for r in range(reps):
        m = fresh_mask(sh, 100_000 + r)
        yield leave_one_out(stat, m, "online", "global", seed=r), m, r


def simulated_null(n_shadows: int, model: str, reps: int, n_examples: int):
    from promptport.lira import leave_one_out, make_masks

    for r in range(reps):
        rng = np.random.default_rng([n_shadows, r])
        masks = make_masks(n_shadows, n_examples, seed=r)
        y = rng.integers(0, 2, n_examples)
        bias = {
            "plain": 0.0,
            "shadow_class_bias": rng.normal(0, 1.0, (n_shadows, 1)),
            # real no-DP prompts on a weak student collapse to one class, each its own: bimodal
            "shadow_modes": 3.0 * rng.choice([-1.0, 1.0], (n_shadows, 1)),
        }[model]
        stat = (
            rng.normal(0, 2, n_examples)
            + bias * (2 * y - 1)
            + rng.normal(0, 1, (n_shadows, n_examples))
        )
        yield leave_one_out(stat, masks, "online", "global", seed=r), masks, r


def show(name: str, r: dict) -> None:
    print(
        f"{name:28s} sd {r['auc_sd']:.3f}  examples-only coverage "
        f"{r['examples_only']['coverage']:.2f} (width {r['examples_only']['mean_width']:.3f})"
        f"  two-way {r['two_way']['coverage']:.2f} (width {r['two_way']['mean_width']:.3f})",
        flush=True,
    )


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--shadows", type=int, nargs="+", default=[6, 8])
    ap.add_argument("--repetitions", type=int, default=60)
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--real", nargs="*", default=[], help="finished audit directories")
    ap.add_argument("--models", nargs="+", default=["plain", "shadow_class_bias", "shadow_modes"])
    args = ap.parse_args(argv)
    by_n = {}
    for n in args.shadows:
        by_n[str(n)] = {}
        for model in args.models:
            null = simulated_null(n, model, args.repetitions, args.examples)
            by_n[str(n)][model] = r = coverage(null, args.n_boot)
            show(f"N={n} {model}", r)
    real = {}
    for d in args.real:
        real[d] = r = coverage(real_null(d, args.repetitions), args.n_boot)
        show(d[-28:], r)
    return finish(
        "audit_ci_coverage",
        {
            "attack": "online/global",
            "repetitions": args.repetitions,
            "examples": args.examples,
            "n_boot": args.n_boot,
            "level": 0.95,
            "by_n": by_n,
            "real_shadows_fresh_masks": real,
        },
    )


if __name__ == "__main__":
    main()
