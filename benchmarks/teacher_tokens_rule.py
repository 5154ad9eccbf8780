"""Does the tool's choice of teacher prompt length pick the one that scores best on the test split?

`transfer.n_tokens: auto` trains a teacher prompt of the user's length, 10 and 1 tokens and keeps the
one with the lowest held-out *public* transfer loss (`promptport.transfer.lowest_heldout`). A paper
record's `teacher_tokens` ablation holds the three transfers' test accuracies (cells) and its state
holds the held-out losses each transfer recorded (STATE/art/<task>/post{,-t10,-t1}-s<seed>/
metrics.json). This applies the tool's rule to them, per task, and says whether it kept the best of
the three, against the tool's fixed length and the teacher's zero-shot. Where the record also has the
tool's own `auto` cell (the three trained again and chosen by `transfer`), it is listed beside.

    python -m benchmarks.teacher_tokens_rule --state runs/paper/cpu-fp32-16k \
        --record benchmarks/results/paper/cpu-fp32-16k --seeds 0 1
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.common import finish, parser

VARIANTS = {"tool": "post", "n_tokens=10": "post-t10", "n_tokens=1": "post-t1"}


def rule_on_record(state: Path, record: Path, seed: int = 0) -> dict:
    from promptport.transfer import LENGTH_RULE, lowest_heldout

    user_n = json.loads((record / "tune.json").read_text())["n_tokens"]
    cells = record / "cells" / "ablations" / "teacher_tokens"
    tasks = {}
    for task_dir in sorted(p for p in cells.iterdir() if p.is_dir()) if cells.is_dir() else []:
        cand = {}
        for variant, art in VARIANTS.items():
            cell = task_dir / variant / f"seed{seed}.json"
            metrics = state / "art" / task_dir.name / f"{art}-s{seed}" / "metrics.json"
            if not (cell.is_file() and metrics.is_file()):
                break
            n = user_n if variant == "tool" else int(variant.split("=")[1])
            cand[n] = {
                "heldout_loss": json.loads(metrics.read_text())["best"]["heldout_loss"],
                "accuracy": json.loads(cell.read_text())["accuracy"],
            }
        else:
            chosen = lowest_heldout({n: c["heldout_loss"] for n, c in cand.items()})
            best = max(c["accuracy"] for c in cand.values())
            zs = record / "cells" / task_dir.name / "teacher_zero_shot" / "seed0.json"
            auto = task_dir / "auto" / f"seed{seed}.json"
            tasks[task_dir.name] = {
                "candidates": {str(n): c for n, c in cand.items()},
                "chosen": chosen,
                "chosen_accuracy": cand[chosen]["accuracy"],
                "best_accuracy": best,
                "picked_best": cand[chosen]["accuracy"] == best,
                "tool_accuracy": cand[user_n]["accuracy"],
                "teacher_zero_shot": json.loads(zs.read_text())["accuracy"]
                if zs.is_file()
                else None,
                "auto_cell": json.loads(auto.read_text()) if auto.is_file() else None,
            }
    done = list(tasks.values())
    return {
        "seed": seed,
        "rule": LENGTH_RULE,
        "tasks": tasks,
        "picked_best": sum(t["picked_best"] for t in done),
        "of_tasks": len(done),
        "mean_accuracy_chosen": round(statistics.fmean(t["chosen_accuracy"] for t in done), 4)
        if done
        else None,
        "mean_accuracy_tool": round(statistics.fmean(t["tool_accuracy"] for t in done), 4)
        if done
        else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--state", type=Path, required=True, help="the record's scratch state")
    ap.add_argument("--record", type=Path, required=True, help="benchmarks/results/paper/<name>")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--name", default="teacher_tokens_rule")
    args = ap.parse_args(argv)
    by_seed = {str(s): rule_on_record(args.state, args.record, s) for s in args.seeds}
    for seed, r in by_seed.items():
        for task, t in r["tasks"].items():
            print(
                f"seed {seed} {task}: chosen {t['chosen']} tokens -> {t['chosen_accuracy']:.4f} "
                f"(best of three {t['best_accuracy']:.4f}, tool {t['tool_accuracy']:.4f})",
                flush=True,
            )
    summary = {
        "picked_best": sum(r["picked_best"] for r in by_seed.values()),
        "of_cases": sum(r["of_tasks"] for r in by_seed.values()),
    }
    return finish(
        args.name,
        {"state": str(args.state), "record": str(args.record), **summary, "by_seed": by_seed},
    )


if __name__ == "__main__":
    main()
