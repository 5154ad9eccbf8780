"""Prompt-tuning step: ours vs Hugging Face PEFT prompt tuning on the same model, batch, sequence length,
prompt and loss, on a 2-layer student (plain first-last extraction) and on the default teacher.

Ours is `promptport.tune.mean_gradient` + an Adam step: the transformer runs once, the last hidden state
is taken at the answer position only, and only the label words' LM-head rows are projected. PEFT
(`PromptTuningConfig`) is timed in two forms (benchmarks/baselines.py), each `loss.backward()` + Adam:
- naive: full logits [B, n + L, V] at every position of a right-padded batch, the verbalizer loss read
  at the answer position (`speedup_vs_peft`);
- fair, the headline: what a careful user writes -- a left-padded batch and `logits_to_keep=1`, so the
  LM head runs on the answer position only, all V rows of it (`speedup_vs_peft_fair`).
All are float32 with a frozen model; the steps are interleaved round by round so load from other jobs
hits every side alike. Before timing, the losses at the same prompt are compared (they must agree: same
computation, different cost).
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    finish,
    interleaved,
    paired_ratio,
    prompt_parser,
    sentiment_split,
    setup,
    student_from_teacher,
    target,
)

TARGETS = {"student_2l": 1.5, "teacher": 1.1}


def bench_model(name, model, tok, task, ds, batch_size, n_tokens, max_length, repeats) -> dict:
    from benchmarks.baselines import (
        fair_verbalizer_loss,
        left_pad,
        peft_prompt_model,
        prompt_parameters,
        verbalizer_loss,
    )
    from promptport.classify import PromptClassifier
    from promptport.prompt import init_prompt_embeddings
    from promptport.tune import mean_gradient

    clf = PromptClassifier(model, tok, task, max_length=max_length)
    enc = clf.encode(ds)
    idx = list(range(batch_size))
    init = init_prompt_embeddings(model, tok, n_tokens, "text", task.description)
    ours_p = torch.nn.Parameter(init.clone())
    ours_opt = torch.optim.Adam([ours_p], lr=1e-3)

    def ours_step():  # what tune._Run.train_step does for a non-DP step
        ours_opt.zero_grad(set_to_none=True)
        grad, _ = mean_gradient(clf, ours_p, enc, idx, batch_size)
        ours_p.grad = grad
        ours_opt.step()

    pm = peft_prompt_model(model, init)
    peft_opt = torch.optim.Adam(prompt_parameters(pm), lr=1e-3)
    ids, mask = clf.batch([enc.input_ids[i] for i in idx])
    y = enc.labels[idx]

    def peft_step():
        peft_opt.zero_grad(set_to_none=True)
        verbalizer_loss(pm, clf.verbalizer, ids, mask, y, n_tokens).backward()
        peft_opt.step()

    # the careful user's PEFT: its own prompt model (own Adam state), left padding, logits_to_keep=1
    pm_fair = peft_prompt_model(model, init)
    fair_opt = torch.optim.Adam(prompt_parameters(pm_fair), lr=1e-3)
    ids_left, mask_left = left_pad(ids, mask, tok.pad_token_id)

    def peft_fair_step():
        fair_opt.zero_grad(set_to_none=True)
        fair_verbalizer_loss(pm_fair, clf.verbalizer, ids_left, mask_left, y).backward()
        fair_opt.step()

    with torch.no_grad():
        ours_loss = float(clf.loss(ids, mask, y, init))
        peft_loss = float(verbalizer_loss(pm, clf.verbalizer, ids, mask, y, n_tokens))
        fair_loss = float(fair_verbalizer_loss(pm_fair, clf.verbalizer, ids_left, mask_left, y))
    t = interleaved(
        {"ours": ours_step, "peft": peft_step, "peft_fair": peft_fair_step},
        repeats=repeats,
        warmup=1,
    )
    speedup = paired_ratio(t, "peft", "ours")
    fair = paired_ratio(t, "peft_fair", "ours")
    tokens = int(mask.sum()) + n_tokens * batch_size
    row = {
        "batch_size": batch_size,
        "prompt_tokens": n_tokens,
        "seq_len": int(ids.shape[1]),
        "tokens_per_step": tokens,
        "ours": t["ours"],
        "peft": t["peft"],
        "peft_fair": t["peft_fair"],
        "ours_tokens_per_s": round(tokens / t["ours"]["median_s"], 1),
        "peft_tokens_per_s": round(tokens / t["peft"]["median_s"], 1),
        "peft_fair_tokens_per_s": round(tokens / t["peft_fair"]["median_s"], 1),
        "loss_ours": ours_loss,
        "loss_peft": peft_loss,
        "loss_peft_fair": fair_loss,
        "loss_abs_diff": abs(ours_loss - peft_loss),
        "loss_abs_diff_fair": abs(ours_loss - fair_loss),
        "speedup_vs_peft_fair": round(fair, 3),
        "speedup_vs_peft": round(speedup, 3),
        "speedup_vs_peft_naive": round(speedup, 3),
        "speedup_of_medians": round(t["peft"]["median_s"] / t["ours"]["median_s"], 3),
        "speedup_of_medians_fair": round(t["peft_fair"]["median_s"] / t["ours"]["median_s"], 3),
        "target_fair": target(fair, TARGETS[name]),
        "target": target(speedup, TARGETS[name]),
    }
    print(
        f"tune_throughput {name:10s} ours {t['ours']['median_s']:.3f}s  "
        f"peft fair {t['peft_fair']['median_s']:.3f}s  naive {t['peft']['median_s']:.3f}s  "
        f"speedup fair {fair:.2f}x, naive {speedup:.2f}x (target >= {TARGETS[name]})  "
        f"loss diff {max(abs(ours_loss - peft_loss), abs(ours_loss - fair_loss)):.1e}",
        flush=True,
    )
    return row


def main(argv=None):
    args = prompt_parser(__doc__).parse_args(argv)
    setup()
    from promptport.models import load_model

    quick = args.suite == "quick"
    task, ds = sentiment_split("train", args.batch_size)
    lm = load_model(args.model)
    rows = {}
    for name, model, repeats in (
        ("student_2l", student_from_teacher(lm.model, 2), 5 if quick else 15),
        ("teacher", lm.model, 3 if quick else 9),
    ):
        rows[name] = bench_model(
            name,
            model,
            lm.tokenizer,
            task,
            ds,
            args.batch_size,
            args.n_tokens,
            args.max_length,
            repeats,
        )
    finish(
        "tune_throughput",
        {
            "suite": args.suite,
            "data": ds.source,
            "model": lm.info.model_id,
            "dtype": "float32",
            "ratio": "median over interleaved rounds of (PEFT step time / our step time); fair: PEFT "
            "with left padding and logits_to_keep=1 (the headline), naive: full logits everywhere",
            "results": rows,
            "speedup_vs_peft_fair": rows["student_2l"]["speedup_vs_peft_fair"],
            "speedup_vs_peft_fair_teacher": rows["teacher"]["speedup_vs_peft_fair"],
            "speedup_vs_peft": rows["student_2l"]["speedup_vs_peft"],
            "speedup_vs_peft_teacher": rows["teacher"]["speedup_vs_peft"],
            "speedup_vs_peft_naive": rows["student_2l"]["speedup_vs_peft"],
            "target_fair_student": rows["student_2l"]["target_fair"],
            "target_fair_teacher": rows["teacher"]["target_fair"],
            "target_student": rows["student_2l"]["target"],
            "target_teacher": rows["teacher"]["target"],
        },
    )


if __name__ == "__main__":
    main()
