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
    """Accuracy, prediction counts, label counts and per-class recall from [N, C] scores."""
    import numpy as np

    pred, y = logits.argmax(-1).numpy(), np.asarray(labels)
    c = logits.shape[1]
    recall = [
        round(float((pred[y == k] == k).mean()), 3) if (y == k).any() else None for k in range(c)
    ]
    return {
        "accuracy": round(float((pred == y).mean()), 4),
        "pred_counts": np.bincount(pred, minlength=c).tolist(),
        "label_counts": np.bincount(y, minlength=c).tolist(),
        "recall": recall,
    }


def main(argv=None) -> dict:
    import torch

    from benchmarks.paper.cli import parser as paper_parser
    from benchmarks.paper.recipes import PROFILES, dp_recipe, recipe_changes, transfer_recipe
    from benchmarks.paper.stages import Stages
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
    sizes = PROFILES["full"]
    st = Stages(
        pa.teacher, sizes, device=pa.device, recipe={**transfer_recipe(), **recipe_changes(pa.transfer_set)},
        public=pa.table_public, dp=dp_recipe(sizes, pa.dp_set), table_transfer=pa.table_transfer,
    )  # fmt: skip
    spec = prepare_task(args.task, state / "data")
    prompts: dict[str, str | None] = {"teacher_zero_shot": None}
    for d in sorted(
        (state / "art" / args.task).glob("post-dp8*")
    ):  # the table's and each variant's
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
