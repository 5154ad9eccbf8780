"""`python -m benchmarks --suite quick|full [--only NAME]`: run each benchmark in its own process,
print a table, and keep each one's JSON in benchmarks/results/NAME.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from benchmarks.common import load_average, parser

# name -> (module, suites it belongs to, whether it takes --suite). Each module is runnable on its own
# (`python -m benchmarks.NAME`) and prints its JSON as the last line. The quality benchmarks (distill,
# tune, transfer, audit on SST-2) take tens of minutes each and need ../shared/data: full suite only.
BENCHMARKS = {
    "eval_throughput": ("benchmarks.eval_throughput", ("quick", "full"), True),
    "transfer_step": ("benchmarks.transfer_step", ("quick", "full"), True),
    "tune_throughput": ("benchmarks.tune_throughput", ("quick", "full"), True),
    "dp_overhead": ("benchmarks.dp_overhead", ("quick", "full"), True),
    "user_vs_teacher": ("benchmarks.user_vs_teacher", ("quick", "full"), True),
    "distill_throughput": ("benchmarks.distill_throughput", ("quick", "full"), True),
    "profile_steps": ("benchmarks.profile_steps", ("full",), True),
    "distill_quality": ("benchmarks.distill_quality", ("full",), True),
    "tune_sst2": ("benchmarks.tune_sst2", ("full",), False),
    "post_sst2": ("benchmarks.post_sst2", ("full",), True),
    "audit_sst2": ("benchmarks.audit_sst2", ("full",), False),
    "audit_null": ("benchmarks.audit_null", ("full",), False),
    "audit_transferred": ("benchmarks.audit_transferred", ("full",), False),
    "privacy_utility": ("benchmarks.privacy_utility", ("full",), False),
    "serve_load": ("benchmarks.serve_load", ("full",), False),
}
# the fair baselines (left padding, logits_to_keep=1) are the headline; the naive ones (full logits at
# every position) follow them
RATIO_FIELDS = [
    "speedup_vs_hf_fair",
    "speedup_vs_hf",
    "transfer_overhead",
    "speedup_vs_peft_fair",
    "speedup_vs_peft",
    "dp_overhead",
    "speedup_vs_opacus_fair",
    "speedup_vs_opacus",
    "user_speedup",
    "post_speedup",
    "mfu",
    "kl_reduction",
    "auc",
]


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    args = ap.parse_args(argv)
    names = args.only or [n for n, (_, suites, _) in BENCHMARKS.items() if args.suite in suites]
    rows, failed = [], 0
    for name in names:
        t0 = time.perf_counter()
        module, _, takes_suite = BENCHMARKS[name]
        cmd = [sys.executable, "-m", module] + (["--suite", args.suite] if takes_suite else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        for ln in lines[:-1]:
            print(ln)
        try:
            res = json.loads(lines[-1]) if p.returncode == 0 and lines else None
        except json.JSONDecodeError:
            res = None
        if res is None:
            failed += 1
            print(f"{name}: FAILED (exit {p.returncode})\n{p.stderr[-2000:]}", file=sys.stderr)
            rows.append((name, "FAILED", secs, "", ""))
            continue
        ratios = ", ".join(f"{k}={res[k]}" for k in RATIO_FIELDS if k in res)
        load = res.get("machine", {}).get("load_average_end") or load_average() or ["?"]
        rows.append((name, ratios, secs, f"{res.get('peak_rss_mb', '?')} MB", f"{load[0]}"))
    print(f"\n{'benchmark':18s} {'seconds':>8s} {'peak RSS':>10s} {'load':>5s}  ratios")
    for name, ratios, secs, rss, load in rows:
        print(f"{name:18s} {secs:8.1f} {rss:>10s} {load:>5s}  {ratios}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
