"""Screen transfer settings for one user prompt: which settings give the teacher the most?

Loads the student, the teacher and the prompt once, then runs one transfer per setting (`--grid`
entries `space:init:lr:alpha:epochs[:n_tokens]`, e.g. `labels:text:0.01:0.5:2` or, with a 1-token
teacher prompt, `labels:text:0.01:1:1:1`, or the tool's choice between lengths, `...:1:auto`) on the
same public examples
(the unprompted public-data logits are computed once and shared) and scores each transferred prompt on
the task's validation split, beside the teacher's zero-shot and the direct transfer. Selection is on
the validation split only; the test split is for the final run.

    python -m benchmarks.transfer_screen --run-dir runs/default --public-data embedded:rt_reviews \
        --grid vocab:copy:0.001:0.5:1 labels:text:0.01:0.5:2 labels:copy:0.01:0.8:2
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import finish, parser, setup


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run with distill/ and tune/")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="rt_snippets")
    ap.add_argument("--data", default=None)
    ap.add_argument("--public-data", default="embedded:rt_reviews")
    ap.add_argument("--n-public", type=int, default=600)
    ap.add_argument("--val-limit", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--grid", nargs="+", default=["vocab:copy:0.001:0.5:1"])
    ap.add_argument("--name", default="transfer_screen")
    args = ap.parse_args(argv)
    setup()
    from promptport.classify import PromptClassifier
    from promptport.data import load_split
    from promptport.models import load_model
    from promptport.prompt import load_prompt
    from promptport.tasks import get_task
    from promptport.transfer import TransferConfig, transfer

    task = get_task(args.task)
    teacher = load_model(args.teacher)
    student = load_model(str(args.run_dir / "distill" / "student"))
    prompt = args.run_dir / "tune" / "prompt"
    t_clf = PromptClassifier(teacher.model, teacher.tokenizer, task, args.max_length)
    s_clf = PromptClassifier(student.model, student.tokenizer, task, args.max_length)
    val_ds = load_split(task, args.data, "validation", limit=args.val_limit)
    val = t_clf.encode(val_ds)
    p_s = load_prompt(prompt).embeddings

    def acc(clf, p):
        return round(clf.evaluate(val, p, 64)["accuracy"], 4)

    base = {
        "teacher_zero_shot": acc(t_clf, None),
        "direct": acc(t_clf, p_s),
        "student_zero_shot": acc(s_clf, None),
        "student_prompt": acc(s_clf, p_s),
    }
    if (args.run_dir / "transfer" / "prompt").is_dir():  # the run's own transfer, for reference
        base["run_transfer"] = acc(
            t_clf, load_prompt(args.run_dir / "transfer" / "prompt").embeddings
        )
    print(base, flush=True)
    shared: dict = {}
    rows = []
    out = args.run_dir / "transfer-screen"
    for g in args.grid:
        space, init, lr, alpha, epochs, *tokens = g.split(":")
        cfg = TransferConfig(
            space=space, init=init, lr=float(lr), epochs=float(epochs), n_public=args.n_public,
            alpha=alpha if alpha == "auto" else float(alpha), max_length=args.max_length,
            n_tokens=tokens[0] if tokens else None,  # a number, 'auto' or '50,10,1'
        )  # fmt: skip
        t0 = time.perf_counter()
        r = transfer(
            prompt, student, teacher, public_data=args.public_data, out=out / g.replace(":", "_"),
            cfg=cfg, shared=shared,
        )  # fmt: skip
        row = {
            "setting": g,
            "alpha_used": r["alpha"],
            "val_accuracy": acc(
                t_clf, load_prompt(out / g.replace(":", "_") / "prompt").embeddings
            ),
            "best_step": (r["best"] or {}).get("step"),
            "steps": r["steps"],
            "teacher_tokens": r["teacher_tokens"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(row, flush=True)
    return finish(
        args.name,
        {
            "run_dir": str(args.run_dir),
            "task": args.task,
            "public_data": args.public_data,
            "val_limit": args.val_limit,
            "baselines_validation": base,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
