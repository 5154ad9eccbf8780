"""`benchmarks.shift_reference` over a paper record's prompts: every task and seed at once, on the test
split (the `full` profile's 1,000 examples) and on the task's labelled public set, at more scales.

    python -m benchmarks.shift_reference_grid --state runs/paper/cpu-bf16-16k-more \
        --student runs/general-16k-more/student --out benchmarks/results/shift_reference_grid_4l.json

For each task: the teacher's and student's zero-shot accuracy, and per seed the prompted student's,
`x<c>` = the teacher's zero-shot plus c times the change the seed's user prompt (STATE/art/<task>/
<tune-tag><seed>) makes on the student, `prior` (the mean change only) and `x1_nomean` (the change less
its mean). What the transfer's shift term would give if the teacher's prompt reproduced the student's
change on every example; a reference, not a bound (the teacher's own prompt can generalise better).
Test labels only score. Resumable: a task's entry already in --out is kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.shift_reference import shift_reference

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def scores(t0: torch.Tensor, s0: torch.Tensor, sp: torch.Tensor, y: torch.Tensor) -> dict:
    """`shift_reference`'s combinations at `SCALES`, and the change less its mean (`x1_nomean`);
    inputs are [N, C] class log-probabilities."""
    r = shift_reference(t0, s0, sp, y, scales=SCALES)
    sh = sp - s0
    nomean = t0 + sh - sh.mean(0)
    return {
        "student_prompt": r["student_prompt"],
        **{f"x{c:g}": r[f"shift_x{c:g}"] for c in SCALES},
        "prior": r["prior_shift"],
        "x1_nomean": round(float((nomean.argmax(-1) == y).float().mean()), 4),
    }


def main(argv=None) -> dict:
    from benchmarks import paper
    from promptport.fileio import read_json, write_json
    from promptport.runtime import quiet_libraries

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--state", required=True, help="a benchmarks.paper state (data/, art/)")
    ap.add_argument("--student", required=True)
    ap.add_argument("--tune-tag", default="tune-s", help="user prompts: art/<task>/<tag><seed>")
    ap.add_argument("--labelled-public", default="runs/paper/cpu-bf16-16k-more/labelled-public")
    ap.add_argument("--tasks", nargs="+", default=list(paper.TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    quiet_libraries()
    state, out = Path(args.state), Path(args.out)
    res = read_json(out) if out.is_file() else {}
    stages = paper.Stages(args.teacher, paper.PROFILES["full"])
    for task in args.tasks:
        spec = paper.prepare_task(task, state / "data")
        sets = {"test": spec}
        lp = Path(args.labelled_public) / task
        if (lp / "test.jsonl").is_file():  # the labelled public set, scored as a test split
            sets["public"] = dict(spec, data=str(lp))
        for name, sp in sets.items():
            key = f"{task}/{name}"
            if key in res:
                continue
            t1 = time.time()

            def logp(model: str, prompt: str | None, sp=sp) -> tuple[torch.Tensor, torch.Tensor]:
                logits, labels = stages.class_logits(model, prompt, sp)
                return torch.log_softmax(logits.double(), -1), torch.as_tensor(labels)

            (t0, y), (s0, _) = logp(args.teacher, None), logp(args.student, None)
            zs = shift_reference(t0, s0, s0, y, scales=())  # the zero-shot accuracies
            r = {"n": len(y), "teacher_zs": zs["teacher_zero_shot"],
                 "student_zs": zs["student_zero_shot"], "seeds": {}}  # fmt: skip
            for s in args.seeds:
                prompt = str(state / "art" / task / f"{args.tune_tag}{s}" / "prompt")
                r["seeds"][str(s)] = scores(t0, s0, logp(args.student, prompt)[0], y)
            r["seconds"] = round(time.time() - t1)
            res[key] = r
            write_json(out, res)
            print(key, json.dumps(r), flush=True)
    return res


if __name__ == "__main__":
    main()
