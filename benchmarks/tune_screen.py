"""Screen prompt-tuning settings on a student with small limits: which settings make the prompt learn?

Loads the model once, encodes a train subset and a validation subset of a task, then trains one prompt
per setting (`--grid` entries `n_tokens:lr:epochs[:init]`) and reports validation accuracy before
(the initial prompt) and after, plus wall time. Selection is on the validation split only.

    python -m benchmarks.tune_screen --model runs/default/distill/student --task rt_snippets \
        --train-limit 1000 --val-limit 300 --grid 20:0.03:3 50:0.03:3 50:0.1:3 100:0.1:3
"""

from __future__ import annotations

import time

from benchmarks.common import finish, parser, setup


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None, model=True)
    ap.add_argument("--task", default="rt_snippets")
    ap.add_argument("--data", default=None)
    ap.add_argument("--train-limit", type=int, default=1000)
    ap.add_argument("--val-limit", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--grid", nargs="+", default=["20:0.03:3", "50:0.03:3", "50:0.1:3"])
    ap.add_argument("--name", default="tune_screen")
    args = ap.parse_args(argv)
    setup()
    from promptport.classify import PromptClassifier
    from promptport.data import load_split
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings
    from promptport.tasks import get_task
    from promptport.tune import TuneConfig, _subset, train_prompt

    task = get_task(args.task)
    lm = load_model(args.model)
    clf = PromptClassifier(lm.model, lm.tokenizer, task, args.max_length)
    train = _subset(clf.encode(load_split(task, args.data, "train")), args.train_limit, 0, "tl")
    val = clf.encode(load_split(task, args.data, "validation", limit=args.val_limit))
    zero = clf.evaluate(val, None, 64)["accuracy"]
    rows = []
    for g in args.grid:
        parts = g.split(":")
        n, lr, ep = int(parts[0]), float(parts[1]), float(parts[2])
        init = parts[3] if len(parts) > 3 else "text"
        cfg = TuneConfig(
            n_tokens=n, lr=lr, epochs=ep, init=init, batch_size=args.batch_size,
            max_length=args.max_length, eval_every=max(1, int(len(train) / args.batch_size)),
        )  # fmt: skip
        init_emb = init_prompt_embeddings(lm.model, lm.tokenizer, n, init, task.description)
        before = clf.evaluate(val, init_emb, 64)["accuracy"]
        t0 = time.perf_counter()
        res = train_prompt(clf, train, val, cfg, init_embeddings=init_emb)
        curve = [round(r["val_accuracy"], 4) for r in res.history if r.get("type") == "eval"]
        row = {
            "setting": g,
            "val_before": round(before, 4),
            "val_best": round(res.best["val_accuracy"], 4),
            "best_step": res.best["step"],
            "curve": curve,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(row, flush=True)
    return finish(
        args.name,
        {
            "model": args.model,
            "task": task.name,
            "train_limit": args.train_limit,
            "val_limit": args.val_limit,
            "val_zero_shot": round(zero, 4),
            "results": rows,
            "command": "python -m benchmarks.tune_screen "
            + " ".join(argv or __import__("sys").argv[1:]),
        },
    )


if __name__ == "__main__":
    main()
