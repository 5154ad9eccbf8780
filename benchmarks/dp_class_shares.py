"""Which classes the teacher answers with each POST-with-DP prompt of a paper record's state: per
prompt, the prediction counts and per-class recall on the task's test split, beside the unprompted
teacher's. Evaluation only (no training): it says whether a DP gap is a prompt that learned only the
majority class, which an accuracy or macro-F1 alone does not show.

    python -m benchmarks.dp_class_shares --state runs/paper/cpu-bf16-l8 --task tweet_eval \
        --table-public phrases --table-transfer epochs=3,select=public \
        --out benchmarks/results/dp_class_shares_l8_tweet_eval.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from promptport.fileio import write_json


def class_shares(logits, labels) -> dict:
    """Accuracy, prediction counts, label counts and per-class recall from [N, C] scores (read off
    the tool's own classification metrics: its confusion matrix and predicted class counts)."""
    import numpy as np

    from promptport.classify import classification_metrics

    m = classification_metrics(np.asarray(labels), logits.argmax(-1).numpy(), logits.shape[1])
    cm = m["confusion_matrix"]  # rows: true class, columns: predicted class
    return {
        "accuracy": round(m["accuracy"], 4),
        "pred_counts": m["predicted_class_counts"],
        "label_counts": [sum(row) for row in cm],
        "recall": [round(row[k] / sum(row), 3) if sum(row) else None for k, row in enumerate(cm)],
    }


def main(argv=None) -> dict:
    import torch

    from benchmarks.paper.cli import parser as paper_parser
    from benchmarks.paper.cli import table_stages
    from benchmarks.paper.recipes import PROFILES
    from benchmarks.paper.tasks import prepare_task
    from promptport.tasks import get_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", required=True, help="the paper record's --state folder")
    ap.add_argument("--task", required=True)
    ap.add_argument("--table-public", default="given")
    ap.add_argument("--table-transfer", default="tool")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    state = Path(args.state)
    pa = paper_parser().parse_args(
        ["--table-public", args.table_public, "--table-transfer", args.table_transfer]
    )
    st = table_stages(pa, PROFILES["full"])
    spec = prepare_task(args.task, state / "data")
    prompts: dict[str, str | None] = {"teacher_zero_shot": None}
    # the table's POST-with-DP prompts and each DP recipe variant's
    for d in sorted((state / "art" / args.task).glob("post-dp8*")):
        prompts[d.name] = str(d / "prompt")
    classes = list(get_task(args.task).classes)
    out = {"task": args.task, "state": str(state), "classes": classes, "prompts": {}}
    for name, prompt in prompts.items():
        out["prompts"][name] = class_shares(*st.class_logits(st.teacher, prompt, spec))
        print(name, out["prompts"][name], flush=True)
    write_json(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()
