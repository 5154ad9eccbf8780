"""What would the teacher gain by imitating, example by example, the change a user's prompt makes on the
student? An evaluation-only reference for a transfer, before the expensive transfer runs. Not a bound.

    python -m benchmarks.shift_reference --student DIR --prompt DIR --task sst2 [--state runs/paper/quick]
    python -m benchmarks.shift_reference --run-dir RUN      (a finished `promptport run`: no model runs)

On a paper-table task's test split (the quick profile's files, prepared as benchmarks.paper does) it
scores, from class log-probabilities:
- `shift_x<c>`: the teacher's zero-shot plus c times the change the prompt makes on the student: what
  the shift term would give if the teacher's prompt reproduced the student's change on every test
  example;
- `ensemble`: the teacher's zero-shot plus the prompted student;
- `prior_shift`: the teacher's zero-shot plus the prompt's *mean* change (a class-prior correction).
These use the test labels only to score; nothing is fitted on them except the choice of c, which makes
`best_gain_points` a reference in hindsight, not a method.

Why it is not a bound: the transfer trains the teacher's own prompt on public data; on test examples
the teacher processes that prompt its own way and can do better than the student's per-example change.
Measured on the embedded default (rt_snippets, 600 test snippets, a 50-token user prompt on the 4-layer
student): shift_x1 0.770, best line +1.34 points, and POST reached 0.793 (+3.0 over zero-shot). Use it
to compare user prompts or students, not to rule a transfer out.

`--run-dir` reads the class logits a finished run's evaluate stage saved (RUN/evaluate/*.npz) instead of
running models, and also places the run's POST result beside the reference (`post_transfer`,
`post_minus_shift_x1_points`).
Writes benchmarks/results/shift_reference.json (one entry per task and prompt).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import RESULTS

SCALES = (0.5, 1.0, 2.0)


def shift_reference(
    teacher_zs: torch.Tensor,
    student_zs: torch.Tensor,
    student_p: torch.Tensor,
    labels: torch.Tensor,
    scales: tuple[float, ...] = SCALES,
) -> dict:
    """Accuracies of the reference's combinations; inputs are [N, C] class log-probabilities."""

    def acc(logp: torch.Tensor) -> float:
        return round(float((logp.argmax(-1) == labels).float().mean()), 4)

    shift = student_p - student_zs
    out = {
        "teacher_zero_shot": acc(teacher_zs),
        "student_zero_shot": acc(student_zs),
        "student_prompt": acc(student_p),
        **{f"shift_x{c:g}": acc(teacher_zs + c * shift) for c in scales},
        "ensemble": acc(teacher_zs + student_p),
        "prior_shift": acc(teacher_zs + shift.mean(0)),
    }
    best = max(v for k, v in out.items() if k not in ("student_zero_shot", "student_prompt"))
    out["best_gain_points"] = round(100 * (best - out["teacher_zero_shot"]), 2)
    return out


def from_run(run_dir: str | Path) -> dict:
    """The reference from a finished run's saved evaluation (RUN/evaluate/<method>.npz: labels and class
    logits of the same test examples), with the run's POST accuracy beside it."""
    import numpy as np

    ev = Path(run_dir) / "evaluate"
    need = ("teacher_zero_shot", "student_zero_shot", "student_prompt")
    missing = [m for m in need if not (ev / f"{m}.npz").is_file()]
    if missing:
        raise SystemExit(
            f"{ev}: no saved evaluation for {', '.join(missing)} (run the evaluate stage)"
        )
    loaded = {f.stem: np.load(f) for f in sorted(ev.glob("*.npz"))}
    y = torch.as_tensor(loaded["teacher_zero_shot"]["y_true"])
    for m, d in loaded.items():
        if not np.array_equal(d["y_true"], y.numpy()):
            raise SystemExit(f"{ev / m}.npz: other examples than teacher_zero_shot.npz")

    def logp(m: str) -> torch.Tensor:
        return torch.log_softmax(torch.as_tensor(loaded[m]["logits"]).double(), -1)

    r = shift_reference(
        logp("teacher_zero_shot"), logp("student_zero_shot"), logp("student_prompt"), y
    )
    if "post_transfer" in loaded:
        post = float((logp("post_transfer").argmax(-1) == y).float().mean())
        r["post_transfer"] = round(post, 4)
        r["post_minus_shift_x1_points"] = round(100 * (post - r["shift_x1"]), 2)
    return dict(r, run_dir=str(run_dir), n=len(y))


def main(argv=None) -> dict:
    from benchmarks import paper
    from promptport.runtime import quiet_libraries

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", help="a finished run directory: read RUN/evaluate/*.npz")
    ap.add_argument("--student")
    ap.add_argument("--prompt", help="a prompt artifact tuned on --student")
    ap.add_argument("--task", choices=paper.TASKS)
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument(
        "--state", default="runs/paper/quick", help="where the task's files are prepared"
    )
    args = ap.parse_args(argv)
    if args.run_dir:
        r = from_run(args.run_dir)
        _record(r, ("run_dir", args.run_dir))
        print(json.dumps(r))
        return r
    if not (args.student and args.prompt and args.task):
        ap.error("give --run-dir, or --student, --prompt and --task")
    torch.set_num_threads(2)
    quiet_libraries()
    spec = paper.prepare_task(args.task, Path(args.state) / "data")
    stages = paper.Stages(args.teacher, paper.PROFILES["quick"])

    def logp(model: str, prompt: str | None):
        logits, labels = stages.class_logits(model, prompt, spec)
        return torch.log_softmax(logits, -1), labels

    t0, y = logp(args.teacher, None)
    s0, _ = logp(args.student, None)
    s1, _ = logp(args.student, args.prompt)
    r = dict(
        shift_reference(t0, s0, s1, y),
        task=args.task,
        student=args.student,
        prompt=args.prompt,
        n=len(y),
    )
    _record(r, ("task", args.task), ("prompt", args.prompt))
    print(json.dumps(r))
    return r


def _record(r: dict, *key: tuple[str, str]) -> None:
    """Add `r` to results/shift_reference.json, replacing the entry with the same key fields."""
    from promptport.fileio import read_json, write_json

    f = RESULTS / "shift_reference.json"
    out = read_json(f) if f.is_file() else {"benchmark": "shift_reference", "runs": []}
    out["runs"] = [x for x in out["runs"] if not all(x.get(k) == v for k, v in key)] + [r]
    write_json(f, out)  # atomic


if __name__ == "__main__":
    main()
