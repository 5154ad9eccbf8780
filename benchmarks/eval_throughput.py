"""Evaluation throughput: ours (length-bucketed batches, logits only at the answer position and only for
the label words) vs a plain Hugging Face loop (padded batches, full logits everywhere)."""

from __future__ import annotations

import time

import torch

from benchmarks.common import finish, parser, sentiment_split, setup, student_from_teacher, target


def hf_loop(model, tok, texts, verbalizer, batch_size):
    preds = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            b = tok(texts[i : i + batch_size], return_tensors="pt", padding=True)
            logits = model(**b).logits  # [B, L, V]
            last = b["attention_mask"].sum(-1) - 1
            preds.append(
                verbalizer.scores_from_vocab(logits[torch.arange(len(last)), last]).argmax(-1)
            )
    return torch.cat(preds)


def main(argv=None):
    ap = parser(__doc__, model=True)
    ap.add_argument(
        "--n", type=int, default=None, help="examples (default: quick 256, full all 872)"
    )
    args = ap.parse_args(argv)
    setup()
    from promptport.classify import PromptClassifier
    from promptport.models import load_model

    task, ds = sentiment_split("validation", args.n or (256 if args.suite == "quick" else 872))
    teacher = load_model(args.model)
    tok = teacher.tokenizer
    rows = {}
    for name, model in (
        ("student_2l", student_from_teacher(teacher.model, 2)),
        ("teacher", teacher.model),
    ):
        clf = PromptClassifier(model, tok, task, max_length=128)
        enc = clf.encode(ds)
        texts = ds.texts(task)
        ours_pred = clf.predict_logits(enc, batch_size=32).argmax(
            -1
        )  # warm-up + correctness reference
        t0 = time.perf_counter()
        ours_pred = clf.predict_logits(enc, batch_size=32).argmax(-1)
        ours = time.perf_counter() - t0
        hf_pred = hf_loop(model, tok, texts[:32], clf.verbalizer, 32)  # warm-up
        t0 = time.perf_counter()
        hf_pred = hf_loop(model, tok, texts, clf.verbalizer, 32)
        hf = time.perf_counter() - t0
        agree = float((hf_pred == ours_pred).float().mean())
        rows[name] = {
            "ours_examples_per_s": round(len(texts) / ours, 2),
            "hf_examples_per_s": round(len(texts) / hf, 2),
            "speedup_vs_hf": round(hf / ours, 3),
            "prediction_agreement": agree,
            "n": len(texts),
        }
        print(
            f"eval_throughput {name:10s} ours {len(texts) / ours:7.1f} ex/s  hf {len(texts) / hf:7.1f} ex/s  "
            f"speedup {hf / ours:.2f}x  agreement {agree:.3f}"
        )
    finish(
        "eval_throughput",
        {
            "suite": args.suite,
            "data": ds.source,
            "results": rows,
            "speedup_vs_hf": rows["student_2l"]["speedup_vs_hf"],
            "speedup_vs_hf_teacher": rows["teacher"]["speedup_vs_hf"],
            "target_student": target(rows["student_2l"]["speedup_vs_hf"], 2.0),
        },
    )


if __name__ == "__main__":
    main()
