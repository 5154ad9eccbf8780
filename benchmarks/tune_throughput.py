"""Prompt-tuning step: ours vs Hugging Face PEFT prompt tuning on the same model, batch, sequence length,
prompt and loss, on a 2-layer student (plain first-last extraction) and on the default teacher.

Ours is `promptport.tune.mean_gradient` + an Adam step: the transformer runs once, the last hidden state
is taken at the answer position only, and only the label words' LM-head rows are projected. PEFT
(`PromptTuningConfig`) is the usual way: full logits [B, n + L, V] at every position, the verbalizer
loss read at the answer position, `loss.backward()`, Adam. Both are float32 with a frozen model; the
two sides' steps are interleaved so load from other jobs hits both alike. Before timing, the two losses
at the same prompt are compared (they must agree: same computation, different cost).
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
    from benchmarks.baselines import peft_prompt_model, prompt_parameters, verbalizer_loss
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

    with torch.no_grad():
        ours_loss = float(clf.loss(ids, mask, y, init))
        peft_loss = float(verbalizer_loss(pm, clf.verbalizer, ids, mask, y, n_tokens))
    t = interleaved({"ours": ours_step, "peft": peft_step}, repeats=repeats, warmup=1)
    speedup = paired_ratio(t, "peft", "ours")
    tokens = int(mask.sum()) + n_tokens * batch_size
    row = {
        "batch_size": batch_size,
        "prompt_tokens": n_tokens,
        "seq_len": int(ids.shape[1]),
        "tokens_per_step": tokens,
        "ours": t["ours"],
        "peft": t["peft"],
        "ours_tokens_per_s": round(tokens / t["ours"]["median_s"], 1),
        "peft_tokens_per_s": round(tokens / t["peft"]["median_s"], 1),
        "loss_ours": ours_loss,
        "loss_peft": peft_loss,
        "loss_abs_diff": abs(ours_loss - peft_loss),
        "speedup_vs_peft": round(speedup, 3),
        "speedup_of_medians": round(t["peft"]["median_s"] / t["ours"]["median_s"], 3),
        "target": target(speedup, TARGETS[name]),
    }
    print(
        f"tune_throughput {name:10s} ours {t['ours']['median_s']:.3f}s  peft {t['peft']['median_s']:.3f}s  "
        f"speedup {speedup:.2f}x (target >= {TARGETS[name]})  loss diff {abs(ours_loss - peft_loss):.1e}",
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
            "ratio": "median over interleaved rounds of (PEFT step time / our step time)",
            "results": rows,
            "speedup_vs_peft": rows["student_2l"]["speedup_vs_peft"],
            "speedup_vs_peft_teacher": rows["teacher"]["speedup_vs_peft"],
            "target_student": rows["student_2l"]["target"],
            "target_teacher": rows["teacher"]["target"],
        },
    )


if __name__ == "__main__":
    main()
