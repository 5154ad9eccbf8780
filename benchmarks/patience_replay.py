"""Where would `transfer.patience` have stopped the transfers a paper state already ran?

Every transfer writes its held-out public loss at each evaluation (OUT/metrics.jsonl) and the loss
before training (OUT/metrics.json). This replays those curves through the tool's own stopping rule
(`promptport.transfer_common.stalled`), with no computation: for each patience, the step the
transfer would have stopped at, the best step it would have kept, and whether that is the best step of
the full run (then the early-stopped transfer returns the very same prompt, since patience only cuts
the trajectory short). It says what patience saves and what it can lose on real curves.

    python -m benchmarks.patience_replay --state runs/paper/cpu-bf16-16k-more --tag post-ep3x
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import finish, parser


def replay(history: list[dict], patience: int) -> dict:
    """The stop and best step of a held-out curve ([{step, heldout_loss}], step 0 first) under
    `patience`, by the tool's rule; the curve's last step if it never stalls."""
    from promptport.transfer_common import stalled

    seen, best = [history[0]], dict(history[0])
    for rec in history[1:]:
        seen.append(rec)
        if rec["heldout_loss"] < best["heldout_loss"]:
            best = dict(rec)
        if stalled(seen, best, patience):
            break
    return {"stop": seen[-1]["step"], "best_step": best["step"], "best_loss": best["heldout_loss"]}


def curve(run: Path) -> tuple[list[dict], int]:
    """A finished transfer's held-out curve and the steps it ran."""
    m = json.loads((run / "metrics.json").read_text())
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    first = {"step": 0, "heldout_loss": m["initial_heldout_loss"]}
    return [first] + [e for e in evals if "heldout_loss" in e], int(m["steps"])


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--state", type=Path, required=True, help="a benchmarks.paper state")
    ap.add_argument("--tag", default="post-ep3x", help="the transfers' artifact name (before -sN)")
    ap.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--name", default="patience_replay")
    args = ap.parse_args(argv)
    runs = {}
    for run in sorted((args.state / "art").glob(f"*/{args.tag}-s*")):
        if not (run / "metrics.json").is_file():
            continue  # not finished
        hist, steps = curve(run)
        full = replay(hist, 10**9)
        runs[f"{run.parent.name}/{run.name}"] = {
            "steps": steps,
            "best_step": full["best_step"],
            "by_patience": {
                str(p): {
                    **(r := replay(hist, p)),
                    "same_prompt": r["best_step"] == full["best_step"],
                }
                for p in args.patience
            },
        }
    summary = {
        str(p): {
            "same_prompt": sum(r["by_patience"][str(p)]["same_prompt"] for r in runs.values()),
            "steps_saved": round(
                1
                - sum(r["by_patience"][str(p)]["stop"] for r in runs.values())
                / max(1, sum(r["steps"] for r in runs.values())),
                3,
            ),
        }
        for p in args.patience
    }
    for name, r in runs.items():
        stops = ", ".join(
            f"P{p} stop {v['stop']} best {v['best_step']}" for p, v in r["by_patience"].items()
        )
        print(f"{name}: {r['steps']} steps, best {r['best_step']}; {stops}", flush=True)
    return finish(
        args.name,
        {
            "state": str(args.state),
            "tag": args.tag,
            "rule": "stop after `patience` held-out evaluations without a lower loss "
            "(promptport.transfer_common.stalled); the best step is kept",
            "of_runs": len(runs),
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
