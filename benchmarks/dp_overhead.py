"""What DP-SGD costs: our DP step vs our non-DP step at the same batch, and Opacus vs our DP step.

Ours (`promptport.tune`): the non-DP step is `mean_gradient` + Adam; the DP step is `dp_gradient` + Adam:
every example gets its own copy of the prompt ([B, n, H]), one backward pass gives all per-example
gradients, which are clipped to C, summed, noised with N(0, (sigma C)^2) and divided by the batch size.
Opacus is `PrivacyEngine.make_private` (hooks mode: per-sample gradients from forward/backward hooks)
on the Hugging Face PEFT prompt-tuning model: the way a user would add DP to PEFT prompt tuning. The PEFT
and Opacus baselines come in two forms (benchmarks/baselines.py): naive, the verbalizer loss read from
full logits [B, n + L, V] at every position (`speedup_vs_opacus`), and fair, the headline, what a careful
user writes -- left padding and `logits_to_keep=1`, the LM head on the answer position only
(`speedup_vs_opacus_fair`). Same model, batch, prompt, clipping norm C = 1 and noise multiplier
sigma = 1 on every side; fixed batches (no Poisson sampling, which is the same cheap draw on every side).
PEFT's own non-DP steps are timed too, so Opacus's overhead over PEFT is visible separately.

Before timing, our per-example gradients are compared with Opacus's (`grad_sample`, both forms) on the
same batch.
Stock PEFT computes the prompt once and repeats it over the batch, so Opacus sees one "example" per batch
and its clipping is not per example (no DP guarantee, no error); the baseline therefore looks the prompt
up per example (`baselines.per_example_prompt_lookup`), and the JSON records what stock PEFT gives
(`stock_peft_opacus_grad_sample_batch`).
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

NOISE, CLIP = 1.0, 1.0


def bench_model(name, model, tok, task, ds, batch_size, n_tokens, max_length, repeats) -> dict:
    from benchmarks.baselines import (
        fair_verbalizer_loss,
        left_pad,
        opacus_private,
        peft_prompt_model,
        prompt_parameters,
        verbalizer_loss,
    )
    from promptport.classify import PromptClassifier
    from promptport.prompt import init_prompt_embeddings
    from promptport.tune import dp_gradient, mean_gradient, per_example_gradients

    clf = PromptClassifier(model, tok, task, max_length=max_length)
    enc = clf.encode(ds)
    idx = list(range(batch_size))
    init = init_prompt_embeddings(model, tok, n_tokens, "text", task.description)
    noise_rng = torch.Generator().manual_seed(0)

    def adam_step(fn):
        p = torch.nn.Parameter(init.clone())
        opt = torch.optim.Adam([p], lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            p.grad = fn(p)
            opt.step()

        return step

    ours = adam_step(lambda p: mean_gradient(clf, p, enc, idx, batch_size)[0])
    ours_dp = adam_step(
        lambda p: dp_gradient(
            clf,
            p,
            enc,
            idx,
            batch_size,
            max_grad_norm=CLIP,
            sigma=NOISE,
            expected_batch_size=batch_size,
            generator=noise_rng,
        )[0]
    )

    ids, mask = clf.batch([enc.input_ids[i] for i in idx])
    y = enc.labels[idx]
    pm = peft_prompt_model(model, init)
    peft_opt = torch.optim.Adam(prompt_parameters(pm), lr=1e-3)

    def peft():
        peft_opt.zero_grad(set_to_none=True)
        verbalizer_loss(pm, clf.verbalizer, ids, mask, y, n_tokens).backward()
        peft_opt.step()

    # Opacus wraps a second PEFT model of the same frozen base (its hooks must not touch the plain one)
    pm_dp = peft_prompt_model(model, init)
    dataset = torch.utils.data.TensorDataset(ids, mask, y)
    dp_module, dp_opt = opacus_private(
        pm_dp, torch.optim.Adam(prompt_parameters(pm_dp), lr=1e-3), dataset, batch_size, NOISE, CLIP
    )

    def opacus():
        dp_opt.zero_grad(set_to_none=True)
        verbalizer_loss(dp_module, clf.verbalizer, ids, mask, y, n_tokens).backward()
        dp_opt.step()

    # the careful user's forms: left padding, logits_to_keep=1 (own PEFT models, own Adam states)
    ids_left, mask_left = left_pad(ids, mask, tok.pad_token_id)
    pm_fair = peft_prompt_model(model, init)
    fair_opt = torch.optim.Adam(prompt_parameters(pm_fair), lr=1e-3)

    def peft_fair():
        fair_opt.zero_grad(set_to_none=True)
        fair_verbalizer_loss(pm_fair, clf.verbalizer, ids_left, mask_left, y).backward()
        fair_opt.step()

    pm_dp_fair = peft_prompt_model(model, init)
    fair_module, fair_dp_opt = opacus_private(
        pm_dp_fair,
        torch.optim.Adam(prompt_parameters(pm_dp_fair), lr=1e-3),
        torch.utils.data.TensorDataset(ids_left, mask_left, y),
        batch_size,
        NOISE,
        CLIP,
    )

    def opacus_fair():
        # the forward goes through PEFT's prompt encoder, where Opacus's hooks sit (fair_module wraps
        # pm_dp_fair; fair_answer_logits calls its submodules, which is all the hooks need)
        fair_dp_opt.zero_grad(set_to_none=True)
        fair_verbalizer_loss(pm_dp_fair, clf.verbalizer, ids_left, mask_left, y).backward()
        fair_dp_opt.step()

    # same per-example gradients? (Opacus undoes the batch mean: grad_sample is each example's own gradient)
    g_ours, _ = per_example_gradients(clf, init, enc, idx)
    verbalizer_loss(dp_module, clf.verbalizer, ids, mask, y, n_tokens).backward()
    g_opacus = prompt_parameters(pm_dp)[0].grad_sample
    grad_diff = float((g_ours - g_opacus).abs().max() / g_ours.abs().max())
    dp_opt.zero_grad(set_to_none=True)
    fair_verbalizer_loss(pm_dp_fair, clf.verbalizer, ids_left, mask_left, y).backward()
    g_fair = prompt_parameters(pm_dp_fair)[0].grad_sample
    grad_diff_fair = float((g_ours - g_fair).abs().max() / g_ours.abs().max())
    fair_dp_opt.zero_grad(set_to_none=True)
    # and without baselines.per_example_prompt_lookup: how many "examples" Opacus sees in stock PEFT
    pm_stock = peft_prompt_model(model, init)
    stock_module, stock_opt = opacus_private(
        pm_stock,
        torch.optim.Adam(prompt_parameters(pm_stock), lr=1e-3),
        dataset,
        batch_size,
        NOISE,
        CLIP,
        fix_peft=False,
    )
    verbalizer_loss(stock_module, clf.verbalizer, ids, mask, y, n_tokens).backward()
    stock_batch = int(prompt_parameters(pm_stock)[0].grad_sample.shape[0])
    stock_opt.zero_grad(set_to_none=True)

    t = interleaved(
        {
            "ours": ours,
            "ours_dp": ours_dp,
            "peft": peft,
            "opacus": opacus,
            "peft_fair": peft_fair,
            "opacus_fair": opacus_fair,
        },
        repeats=repeats,
        warmup=1,
    )
    overhead = paired_ratio(t, "ours_dp", "ours")
    vs_opacus = paired_ratio(t, "opacus", "ours_dp")
    vs_opacus_fair = paired_ratio(t, "opacus_fair", "ours_dp")
    row = {
        "batch_size": batch_size,
        "prompt_tokens": n_tokens,
        "seq_len": int(ids.shape[1]),
        "timings": t,
        "dp_overhead": round(overhead, 4),
        "speedup_vs_opacus_fair": round(vs_opacus_fair, 3),
        "speedup_vs_opacus": round(vs_opacus, 3),
        "speedup_vs_opacus_naive": round(vs_opacus, 3),
        "speedup_vs_peft_fair": round(paired_ratio(t, "peft_fair", "ours"), 3),
        "opacus_overhead_vs_peft": round(paired_ratio(t, "opacus", "peft"), 4),
        "opacus_fair_overhead_vs_peft_fair": round(paired_ratio(t, "opacus_fair", "peft_fair"), 4),
        "per_example_grad_rel_max_diff": grad_diff,
        "per_example_grad_rel_max_diff_fair": grad_diff_fair,
        "stock_peft_opacus_grad_sample_batch": stock_batch,
        "target_dp_overhead": target(overhead, 1.15, higher_is_better=False),
        "target_speedup_vs_opacus_fair": target(vs_opacus_fair, 2.0),
        "target_speedup_vs_opacus": target(vs_opacus, 2.0),
    }
    print(
        f"dp_overhead {name:10s} ours {t['ours']['median_s']:.3f}s  ours DP {t['ours_dp']['median_s']:.3f}s  "
        f"PEFT fair {t['peft_fair']['median_s']:.3f}s  Opacus fair {t['opacus_fair']['median_s']:.3f}s  "
        f"PEFT naive {t['peft']['median_s']:.3f}s  Opacus naive {t['opacus']['median_s']:.3f}s  "
        f"dp_overhead {overhead:.3f} (target <= 1.15)  speedup_vs_opacus fair {vs_opacus_fair:.2f}x, "
        f"naive {vs_opacus:.2f}x (target >= 2)  grad diff {max(grad_diff, grad_diff_fair):.1e}",
        flush=True,
    )
    return row


def main(argv=None):
    args = prompt_parser(__doc__).parse_args(
        argv
    )  # --batch-size: the physical DP batch (tune_sst2 uses 16)
    setup()
    from promptport.models import load_model

    quick = args.suite == "quick"
    task, ds = sentiment_split("train", args.batch_size)
    lm = load_model(args.model)
    models = [("student_2l", student_from_teacher(lm.model, 2), 5 if quick else 15)]
    if not quick:  # the teacher's four steps cost ~10 s a round on 2 cores
        models.append(("teacher", lm.model, 5))
    rows = {
        name: bench_model(
            name, m, lm.tokenizer, task, ds, args.batch_size, args.n_tokens, args.max_length, reps
        )
        for name, m, reps in models
    }
    s = rows["student_2l"]
    finish(
        "dp_overhead",
        {
            "suite": args.suite,
            "data": ds.source,
            "model": lm.info.model_id,
            "dtype": "float32",
            "noise_multiplier": NOISE,
            "max_grad_norm": CLIP,
            "ratio": "median over interleaved rounds of the two step times; fair: PEFT/Opacus with left "
            "padding and logits_to_keep=1 (the headline), naive: full logits everywhere",
            "results": rows,
            "dp_overhead": s["dp_overhead"],
            "speedup_vs_opacus_fair": s["speedup_vs_opacus_fair"],
            "speedup_vs_opacus": s["speedup_vs_opacus"],
            "speedup_vs_opacus_naive": s["speedup_vs_opacus"],
            "target_dp_overhead": s["target_dp_overhead"],
            "target_speedup_vs_opacus_fair": s["target_speedup_vs_opacus_fair"],
            "target_speedup_vs_opacus": s["target_speedup_vs_opacus"],
        },
    )


if __name__ == "__main__":
    main()
