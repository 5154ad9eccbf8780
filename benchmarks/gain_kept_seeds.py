"""The gain kept of each transfer_budget variant over the same seeds, so that variants run to
different seeds compare (a paper record's `mean_gain_kept_by_transfer` takes each variant's own).

Reads a record's tables (zero-shot and teacher-tuned means) and its transfer_budget cells, keeps the
cells of `--seeds` and computes what `benchmarks.paper` does (`_gain_kept_by_transfer`): per task the
mean accuracy over those seeds in POST's place, (mean - zero-shot) / (tuned - zero-shot), then the
mean over tasks; a variant lacking a seed of a task is left out for that task.

    python -m benchmarks.gain_kept_seeds --tables benchmarks/results/paper_tables_cpu_bf16_16k_more.json \
        --record benchmarks/results/paper/cpu-bf16-16k-more --seeds 0 1
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import finish, parser


def by_seeds(tables: dict, record: Path, seeds: list[str]) -> dict:
    """{variant: {value, per_task, post, seeds}} over exactly `seeds`."""
    from benchmarks.paper.aggregate import _gain_kept_by_transfer, collect

    # the record's cells as benchmarks.paper collects them for its own figure
    cells = collect(record)["ablations"].get("transfer_budget", {})
    full = {
        t: {v: {s: c[s] for s in seeds} for v, c in vs.items() if set(seeds) <= set(c)}
        for t, vs in cells.items()
    }
    out = _gain_kept_by_transfer(tables["tasks"], full)
    return out.get("mean_gain_kept_by_transfer", {}).get("variants", {})


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--tables", type=Path, required=True, help="a paper record's tables JSON")
    ap.add_argument("--record", type=Path, required=True, help="the record's cells folder")
    ap.add_argument("--seeds", nargs="+", required=True)
    ap.add_argument("--name", default="gain_kept_seeds")
    args = ap.parse_args(argv)
    variants = by_seeds(json.loads(args.tables.read_text()), args.record, args.seeds)
    return finish(args.name, {"seeds": args.seeds, "variants": variants})


if __name__ == "__main__":
    main()
