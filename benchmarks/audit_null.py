"""Repeated LiRA / RMIA audits of null data (membership has no effect on the statistic).

The right answers are known: every attack's AUC averages 0.5 and the 95% empirical-epsilon lower bound
is 0 in at least 95% of repetitions. Writes benchmarks/results/audit_null.json:
`repetitions`, `by_n.<N>.attacks.<attack>.mean_auc`, `.auc_sd`, and `.bound_zero_fraction` (for N = 4, 8,
16; the bound is chosen over every attack, so its zero fraction is the same under every attack key and
is also given once as `by_n.<N>.bound_zero_fraction`).

    python -m benchmarks.audit_null                    # 100 repetitions of each N, 1,000 examples
    python -m benchmarks.audit_null --repetitions 20   # what the test suite checks
"""

from __future__ import annotations

import time

from benchmarks.common import finish, parser
from promptport.lira import null_study


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--repetitions", type=int, default=100)
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--shadows", type=int, nargs="+", default=[4, 8, 16])
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    by_n = {}
    for n in args.shadows:
        r = null_study(n, args.examples, args.repetitions)
        zero = r["bound_zero_fraction"]
        by_n[str(n)] = {
            "bound_zero_fraction": zero,
            "max_bound": max(r["bounds"]),
            "attacks": {
                k: {
                    "mean_auc": round(a["mean_auc"], 5),
                    "auc_sd": round(a["auc_sd"], 5),
                    "bound_zero_fraction": zero,
                }
                for k, a in r["attacks"].items()
            },
        }
        worst = max(abs(a["mean_auc"] - 0.5) for a in r["attacks"].values())
        print(f"N={n:>2}: largest |mean AUC - 0.5| {worst:.4f}, bound = 0 in {zero:.0%}")
    result = {
        "repetitions": args.repetitions,
        "n_examples": args.examples,
        "null_model": "statistic = example difficulty N(0,2) + shadow level N(0,1) + noise N(0,1); "
        "membership has no effect",
        "bound_confidence": 0.95,
        "by_n": by_n,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    return finish("audit_null", result)


if __name__ == "__main__":
    main()
