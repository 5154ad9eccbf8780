"""Where does the teacher's prompt start? The teacher's accuracy with untrained 20-token prompts.

    python -m benchmarks.prompt_inits [--task rt_snippets] [--limit 300] [--n-tokens 20]

POST trains a prompt *on the teacher* from some start (`transfer.init`: a copy of the user's prompt, or
the task description's embeddings). A start that already costs the teacher accuracy is damage the
transfer's few steps must first undo. This scores the teacher on the task's validation split with no
prompt and with each candidate start, untrained: accuracy, agreement with the unprompted teacher, and
the mean and spread of the change in the first two classes' score difference (the log-odds of a binary task).
Evaluation only; writes benchmarks/results/prompt_inits.json.
"""

from __future__ import annotations

import torch

from benchmarks.common import finish, parser, setup


def starts(lm, task, n: int) -> dict[str, torch.Tensor]:
    """Candidate first prompts: the tool's inits and a few 'neutral-looking' ones."""
    from promptport.prompt import init_prompt_embeddings, label_text

    emb = lm.model.get_input_embeddings().weight.detach().float()
    tok = lm.tokenizer

    def text(t: str) -> torch.Tensor:
        return init_prompt_embeddings(lm.model, tok, n, "text", t)

    first = emb[tok(task.template.split("{")[0] or " ", add_special_tokens=False)["input_ids"][0]]
    return {
        "text (description, the run default)": text(task.description),
        "labels": text(label_text(task)),
        "zeros": torch.zeros(n, emb.shape[1]),
        "newline": text("\n"),
        "space": text(" "),
        "mean embedding": emb.mean(0, keepdim=True).repeat(n, 1),
        "random, 0.1x embedding scale": 0.1
        * init_prompt_embeddings(
            lm.model, tok, n, "random", generator=torch.Generator().manual_seed(0)
        ),
        "template's first token, then zeros": torch.cat(
            [first[None], torch.zeros(n - 1, emb.shape[1])]
        ),
        "template's first token, repeated": first[None].repeat(n, 1),
    }


def main() -> None:
    ap = parser(__doc__, suite=None)
    ap.add_argument("--task", default="rt_snippets")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    setup(args.threads)
    from promptport.classify import PromptClassifier
    from promptport.data import load_split
    from promptport.models import load_model
    from promptport.tasks import get_task

    task = get_task(args.task)
    lm = load_model(args.teacher, device="cpu")
    clf = PromptClassifier(lm.model, lm.tokenizer, task, 96)
    enc = clf.encode(load_split(task, None, "validation", limit=args.limit))
    y = enc.labels
    base = clf.predict_logits(enc, None)

    def score(lg: torch.Tensor) -> dict:
        shift = (lg[:, 1] - lg[:, 0]) - (base[:, 1] - base[:, 0])
        return {
            "accuracy": round(float((lg.argmax(-1) == y).float().mean()), 4),
            "agreement_with_no_prompt": round(
                float((lg.argmax(-1) == base.argmax(-1)).float().mean()), 4
            ),
            "logodds_shift_mean": round(float(shift.mean()), 3),
            "logodds_shift_std": round(float(shift.std()), 3),
        }

    rows = {"no prompt": score(base)}
    for name, p in starts(lm, task, args.n_tokens).items():
        rows[name] = score(clf.predict_logits(enc, p))
        print(name, rows[name], flush=True)
    finish(
        "prompt_inits",
        {
            "task": args.task,
            "split": "validation",
            "n": len(enc),
            "n_tokens": args.n_tokens,
            "teacher": args.teacher,
            "starts": rows,
            "command": f"python -m benchmarks.prompt_inits --task {args.task} --limit {args.limit}",
        },
    )


if __name__ == "__main__":
    main()
