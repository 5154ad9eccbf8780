"""Where a step's time goes: torch.profiler on one step of each hot path, the top operators by self CPU
time written to benchmarks/results/profile_steps.json (what benchmarks/README.md summarises).

  tune      our prompt-tuning step on the 2-layer student and on the teacher (tune.mean_gradient + Adam)
  dp        our DP-SGD step on the 2-layer student (tune.dp_gradient + Adam)
  transfer  a POST transfer step on the teacher (vocab_logits at the answer position + transfer_loss)
  distill   a distillation step of the default recipe's student (configs/default.yaml) from cached targets
            (distill.StudentForward + distill_loss + backward + AdamW), bf16 autocast

Each stage runs one warm-up step, then one profiled step. Shares are of the profiled step's total self
CPU time; under load from other jobs the absolute times stretch but the shares hold.
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    default_distill_config,
    finish,
    prompt_parser,
    sentiment_split,
    setup,
    student_from_teacher,
)


def profile(fn, top: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "total_self_cpu_ms": round(total / 1e3, 2),
        "top": [
            {
                "op": e.key,
                "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
                "share": round(e.self_cpu_time_total / total, 4),
                "calls": e.count,
            }
            for e in events[:top]
        ],
    }


def main(argv=None):
    ap = prompt_parser(__doc__)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument(
        "--stage",
        action="append",
        choices=["tune", "dp", "transfer", "distill"],
        help="profile only this stage (repeatable; default all)",
    )
    args = ap.parse_args(argv)
    setup()
    from promptport.classify import PromptClassifier
    from promptport.data import load_embedded_text
    from promptport.distill import (
        StudentForward,
        distill_loss,
        extract_student,
        num_layers,
        select_layers,
        set_trainable,
    )
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings
    from promptport.runtime import autocast
    from promptport.transfer import public_dataset, transfer_loss
    from promptport.tune import dp_gradient, mean_gradient

    stages = args.stage or ["tune", "dp", "transfer", "distill"]
    lm = load_model(args.model)
    task, ds = sentiment_split("train", args.batch_size)
    student = student_from_teacher(lm.model, 2)
    idx = list(range(args.batch_size))
    out = {}

    def prompt_step(model, dp: bool):
        clf = PromptClassifier(model, lm.tokenizer, task, max_length=args.max_length)
        enc = clf.encode(ds)
        p = torch.nn.Parameter(
            init_prompt_embeddings(model, lm.tokenizer, args.n_tokens, "text", task.description)
        )
        opt = torch.optim.Adam([p], lr=1e-3)
        gen = torch.Generator().manual_seed(0)

        def step():
            opt.zero_grad(set_to_none=True)
            if dp:
                p.grad = dp_gradient(
                    clf,
                    p,
                    enc,
                    idx,
                    args.batch_size,
                    max_grad_norm=1.0,
                    sigma=1.0,
                    expected_batch_size=args.batch_size,
                    generator=gen,
                )[0]
            else:
                p.grad = mean_gradient(clf, p, enc, idx, args.batch_size)[0]
            opt.step()

        return step

    if "tune" in stages:
        out["tune_student_2l"] = profile(prompt_step(student, False), args.top)
        out["tune_teacher"] = profile(prompt_step(lm.model, False), args.top)
    if "dp" in stages:
        out["dp_student_2l"] = profile(prompt_step(student, True), args.top)
    if "transfer" in stages:
        clf = PromptClassifier(lm.model, lm.tokenizer, task, max_length=args.max_length)
        enc = clf.encode(public_dataset(task, load_embedded_text("rt_plots"), args.batch_size, 0))
        ids, mask = clf.batch(enc.input_ids)
        p = torch.nn.Parameter(
            init_prompt_embeddings(lm.model, lm.tokenizer, args.n_tokens, "text", task.description)
        )
        opt = torch.optim.Adam([p], lr=1e-3)
        v = lm.model.get_output_embeddings().weight.shape[0]
        s, s_p, t = (
            torch.randn(len(idx), v) for _ in range(3)
        )  # cached targets: values do not affect cost

        def transfer_step():
            opt.zero_grad(set_to_none=True)
            transfer_loss(clf.vocab_logits(ids, mask, p), s_p, s, t, 0.5, 2.0).backward()
            opt.step()

        out["transfer_teacher"] = profile(transfer_step, args.top)
    if "distill" in stages:
        cfg = default_distill_config(task_template=task.name)
        smodel = extract_student(
            lm.model, select_layers(num_layers(lm.model), cfg.layers, cfg.strategy)
        ).float()
        set_trainable(smodel, cfg.freeze_embeddings)
        fwd = StudentForward(smodel).train()
        opt = torch.optim.AdamW([q for q in smodel.parameters() if q.requires_grad], lr=cfg.lr)
        g = torch.Generator().manual_seed(0)
        v, h = (
            lm.model.get_output_embeddings().weight.shape[0],
            lm.model.get_input_embeddings().weight.shape[1],
        )
        lm_ids = torch.randint(0, v, (cfg.batch_size, cfg.block_size), generator=g)
        clf = PromptClassifier(smodel, lm.tokenizer, task, max_length=cfg.task_max_length)
        enc = clf.encode(sentiment_split("train", cfg.task_batch_size)[1])
        task_ids, task_mask = clf.batch(enc.input_ids)
        b, n = lm_ids.shape
        cache = {
            "t_top_logp": torch.randn(b, n, cfg.topk).log_softmax(-1) - 0.1,
            "t_topi": torch.randint(0, v, (b, n, cfg.topk), generator=g).to(torch.int32),
            "t_hidden": torch.randn(b, n, h).to(torch.bfloat16),
            "t_answer": torch.randn(len(task_ids), v).to(torch.bfloat16),
            "t_answer_h": torch.randn(len(task_ids), h).to(torch.bfloat16),
        }

        def distill_step():  # what distill()'s loop does per step (one process, no accumulation)
            with autocast(lm_ids.device, cfg.precision):
                (sh, sl), (ah, al) = fwd(
                    lm_ids=lm_ids,
                    lm_mask=torch.ones_like(lm_ids),
                    task_ids=task_ids,
                    task_mask=task_mask,
                )
            terms = distill_loss(
                cfg,
                s_logits=sl,
                input_ids=lm_ids,
                mask=torch.ones_like(lm_ids),
                s_hidden=sh,
                s_answer=al,
                s_answer_h=ah,
                **cache,
            )
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(
                [q for q in smodel.parameters() if q.requires_grad], cfg.max_grad_norm
            )
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[f"distill_student_{cfg.layers}l"] = profile(distill_step, args.top)
    for name, r in out.items():
        head = ", ".join(f"{e['op']} {e['share']:.0%}" for e in r["top"][:4])
        print(
            f"profile_steps {name:18s} {r['total_self_cpu_ms']:9.1f} ms self CPU: {head}",
            flush=True,
        )
    finish(
        "profile_steps",
        {
            "suite": args.suite,
            "model": lm.info.model_id,
            "batch_size": args.batch_size,
            "prompt_tokens": args.n_tokens,
            "distill_layers": cfg.layers if "distill" in stages else None,
            "stages": out,
        },
    )


if __name__ == "__main__":
    main()
