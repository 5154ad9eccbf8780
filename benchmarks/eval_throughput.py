"""Evaluation throughput: ours (length-bucketed batches, logits only at the answer position and only for
the label words) vs a Hugging Face loop in two forms, on a 2-layer student and on the teacher:

- naive: padded batches (right padding) in input order, `model(**batch).logits` -- full logits [B, L, V]
  at every position -- read at the last real token (`speedup_vs_hf`);
- fair, the headline: what a careful user writes -- left padding (position ids from the mask, as
  `generate` does) and `logits_to_keep=1`, so the LM head runs on the answer position only
  (`speedup_vs_hf_fair`).

Every side is tokenised before timing (ours: `PromptClassifier.encode`; HF: the tokenizer's padded
batches), so the timed region is the model work and each side's own batching. The three passes are
interleaved round by round (`common.interleaved`, order reversed every other round) and a ratio is the
median over rounds of the per-round ratio (`common.paired_ratio`), so load drifting during the run hits
all sides alike. Predictions of the HF forms are compared with ours, and the fair form's answer logits
with the naive form's.
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    finish,
    interleaved,
    paired_ratio,
    parser,
    sentiment_split,
    setup,
    student_from_teacher,
    target,
)

TARGET = 2.0  # speedup on the 2-layer student


def hf_batches(tok, texts: list[str], batch_size: int, padding_side: str):
    """The HF loop's input, tokenised ahead of timing: padded batches in input order."""
    return [
        tok(texts[i : i + batch_size], return_tensors="pt", padding=True, padding_side=padding_side)
        for i in range(0, len(texts), batch_size)
    ]


@torch.no_grad()
def hf_answer_logits(model, batches) -> torch.Tensor:
    """Naive: full logits at every position of right-padded batches, read at the last real token."""
    out = []
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        last = b["attention_mask"].sum(-1) - 1
        out.append(logits[torch.arange(len(last)), last])
    return torch.cat(out)


@torch.no_grad()
def hf_fair_answer_logits(model, batches) -> torch.Tensor:
    """Fair: left-padded batches, positions from the mask, `logits_to_keep=1` (the last position)."""
    out = []
    for b in batches:
        mask = b["attention_mask"]
        out.append(
            model(
                input_ids=b["input_ids"],
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=1,
            ).logits[:, -1]
        )
    return torch.cat(out)


def bench_model(name, model, tok, task, ds, bs: int, rounds: int) -> dict:
    from promptport.classify import PromptClassifier

    texts = ds.texts(task)
    clf = PromptClassifier(model, tok, task, max_length=128)
    # tokenised outside the timed region, both sides
    enc = clf.encode(ds)
    right = hf_batches(tok, texts, bs, "right")
    left = hf_batches(tok, texts, bs, "left")
    hf_rows = [
        x[m.bool()].tolist() for b in right for x, m in zip(b["input_ids"], b["attention_mask"])
    ]
    same_tokens = hf_rows == enc.input_ids  # no input is cut at max_length: same token ids
    out: dict[str, torch.Tensor] = {}
    t = interleaved(
        {
            "ours": lambda: out.__setitem__("ours", clf.predict_logits(enc, batch_size=bs)),
            "hf": lambda: out.__setitem__("hf", hf_answer_logits(model, right)),
            "hf_fair": lambda: out.__setitem__("hf_fair", hf_fair_answer_logits(model, left)),
        },
        repeats=rounds,
        warmup=1,
    )
    ours_pred = out["ours"].argmax(-1)
    scores = {k: clf.verbalizer.scores_from_vocab(out[k]) for k in ("hf", "hf_fair")}
    n = len(texts)
    naive, fair = paired_ratio(t, "hf", "ours"), paired_ratio(t, "hf_fair", "ours")
    row = {
        "n": n,
        "batch_size": bs,
        "rounds": rounds,
        "timings": t,
        "ours_examples_per_s": round(n / t["ours"]["median_s"], 2),
        "hf_examples_per_s": round(n / t["hf"]["median_s"], 2),
        "hf_fair_examples_per_s": round(n / t["hf_fair"]["median_s"], 2),
        "speedup_vs_hf_fair": round(fair, 3),
        "speedup_vs_hf": round(naive, 3),
        "speedup_vs_hf_naive": round(naive, 3),
        "prediction_agreement": float((scores["hf"].argmax(-1) == ours_pred).float().mean()),
        "prediction_agreement_fair": float(
            (scores["hf_fair"].argmax(-1) == ours_pred).float().mean()
        ),
        "fair_vs_naive_answer_logits_max_abs_diff": float((out["hf_fair"] - out["hf"]).abs().max()),
        "same_tokens_both_sides": same_tokens,
    }
    print(
        f"eval_throughput {name:10s} ours {row['ours_examples_per_s']:7.1f} ex/s  "
        f"hf fair {row['hf_fair_examples_per_s']:7.1f} ex/s  "
        f"naive {row['hf_examples_per_s']:7.1f} ex/s  "
        f"speedup fair {fair:.2f}x, naive {naive:.2f}x  "
        f"agreement {row['prediction_agreement_fair']:.3f}",
        flush=True,
    )
    return row


def main(argv=None):
    ap = parser(__doc__, model=True)
    ap.add_argument(
        "--n", type=int, default=None, help="examples (default: quick 256, full all 872)"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed interleaved rounds (default: quick 3 on the student and 2 on the teacher, full 5 and 3)",
    )
    args = ap.parse_args(argv)
    setup()
    from promptport.models import load_model

    quick = args.suite == "quick"
    task, ds = sentiment_split("validation", args.n or (256 if quick else 872))
    teacher = load_model(args.model)
    tok, bs = teacher.tokenizer, args.batch_size
    rows = {}
    for name, model, rounds in (
        ("student_2l", student_from_teacher(teacher.model, 2), 3 if quick else 5),
        ("teacher", teacher.model, 2 if quick else 3),
    ):
        rows[name] = bench_model(name, model, tok, task, ds, bs, args.rounds or rounds)
    finish(
        "eval_throughput",
        {
            "suite": args.suite,
            "data": ds.source,
            "ratio": "median over interleaved rounds of (HF pass time / our pass time); fair: left "
            "padding and logits_to_keep=1 (the headline), naive: full logits everywhere",
            "results": rows,
            "speedup_vs_hf_fair": rows["student_2l"]["speedup_vs_hf_fair"],
            "speedup_vs_hf_fair_teacher": rows["teacher"]["speedup_vs_hf_fair"],
            "speedup_vs_hf": rows["student_2l"]["speedup_vs_hf"],
            "speedup_vs_hf_teacher": rows["teacher"]["speedup_vs_hf"],
            "target_fair_student": target(rows["student_2l"]["speedup_vs_hf_fair"], TARGET),
            "target_student": target(rows["student_2l"]["speedup_vs_hf"], TARGET),
        },
    )


if __name__ == "__main__":
    main()
