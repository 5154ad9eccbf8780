"""What POST saves the user: prompt tuning on the 2-layer student vs on the teacher, and the whole POST
path (tune on the student + the provider's transfer) vs tuning on the teacher, for a private set of
10,000 examples.

1. `user_speedup`: `promptport.tune.train_prompt` runs of the same steps on the same data (batch 16,
   20 prompt tokens, the default run's settings), on the student and on the teacher, interleaved;
   the ratio of their wall times.
2. `post_speedup`: too long to run here in full, so it is extrapolated from step times measured in the
   same run (the formula is in the JSON):
       T_teacher = S_tune * t_teacher_step
       T_post    = S_tune * t_student_step                                  (user: tune on the student)
                 + n_public * c_cache                                       (provider: s, s_p, t caches)
                 + S_transfer * t_transfer_step + n_evals * n_heldout * c_teacher   (transfer + held-out)
   with S_tune = ceil(epochs * 10,000 / batch), the transfer settings of configs/default.yaml
   (600 public examples, 10% held out, 1 epoch of batch 16, held-out loss every half epoch), c_cache
   the measured seconds per public example of `transfer.build_cache` (two student passes, one teacher
   pass) and c_teacher its teacher part. Distillation is the provider's one-off cost, shared by all
   users, and is not counted (distill_throughput measures it).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

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
    time_fn,
)

N_PRIVATE = 10_000


def main(argv=None):
    ap = prompt_parser(__doc__)
    ap.add_argument(
        "--steps", type=int, default=None, help="tuning steps per run (default: quick 3, full 10)"
    )
    ap.add_argument(
        "--n-probe", type=int, default=32, help="public examples to time the transfer cache on"
    )
    args = ap.parse_args(argv)
    setup()
    from promptport.classify import PromptClassifier
    from promptport.data import load_embedded_text
    from promptport.models import load_model
    from promptport.transfer import TransferConfig, build_cache, public_dataset, transfer_loss
    from promptport.tune import TuneConfig, train_prompt

    quick = args.suite == "quick"
    steps = args.steps or (3 if quick else 10)
    rounds = 2 if quick else 4
    task, ds = sentiment_split("train", steps * args.batch_size)
    lm = load_model(args.model)
    student = student_from_teacher(lm.model, 2)
    clf = {
        "student": PromptClassifier(student, lm.tokenizer, task, args.max_length),
        "teacher": PromptClassifier(lm.model, lm.tokenizer, task, args.max_length),
    }
    enc = clf["teacher"].encode(ds)
    cfg = TuneConfig(
        n_tokens=args.n_tokens,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=steps,
    )

    # 1. the user's tuning run, same data and steps on each model
    t = interleaved(
        {k: (lambda c=c: train_prompt(c, enc, None, cfg)) for k, c in clf.items()},
        repeats=rounds,
        warmup=1,
    )
    user_speedup = paired_ratio(t, "teacher", "student")
    step_s = {k: t[k]["median_s"] / steps for k in t}
    print(
        f"user_vs_teacher tune {steps} steps: student {t['student']['median_s']:.2f}s  teacher "
        f"{t['teacher']['median_s']:.2f}s  user_speedup {user_speedup:.2f}x (target >= 8)",
        flush=True,
    )

    # 2. the provider's transfer: cache pass and transfer step, at the default run's settings
    xcfg = TransferConfig(n_public=600, epochs=1, batch_size=16, max_length=96)
    pub = public_dataset(task, load_embedded_text("rt_plots"), args.n_probe, 0)
    xs = PromptClassifier(student, lm.tokenizer, task, xcfg.max_length)
    xt = PromptClassifier(lm.model, lm.tokenizer, task, xcfg.max_length)
    s_enc, t_enc = xs.encode(pub), xt.encode(pub)
    p_s = torch.nn.Parameter(train_prompt(clf["student"], enc, None, cfg).embeddings.clone())
    build_cache(xs, xt, p_s.detach(), s_enc.subset(range(2)), t_enc.subset(range(2)))  # warm-up
    caches = [build_cache(xs, xt, p_s.detach(), s_enc, t_enc) for _ in range(1 if quick else 3)]
    cache, cache_t = (
        caches[-1],
        {
            "median_s": statistics.median(c.seconds for c in caches),
            "times_s": [round(c.seconds, 5) for c in caches],
            "repeats": len(caches),
        },
    )
    teacher_pass = time_fn(
        lambda: xt.predict_logits(t_enc, vocab=True), repeats=1 if quick else 3, warmup=0
    )
    c_cache = cache_t["median_s"] / len(pub)
    c_teacher = teacher_pass["median_s"] / len(pub)
    idx = list(range(min(xcfg.batch_size, len(pub))))
    ids, mask = xt.batch([t_enc.input_ids[i] for i in idx])
    p_t = torch.nn.Parameter(p_s.detach().clone())
    opt = torch.optim.Adam([p_t], lr=xcfg.lr)

    def transfer_step():  # what transfer.train_transfer does per step
        loss = transfer_loss(
            xt.vocab_logits(ids, mask, p_t),
            cache.s_p[idx],
            cache.s[idx],
            cache.t[idx],
            0.5,
            xcfg.temperature,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_x = time_fn(transfer_step, repeats=2 if quick else 5, warmup=1)
    print(
        f"user_vs_teacher transfer: cache {c_cache:.3f}s/example (teacher pass {c_teacher:.3f}s/example), "
        f"step {t_x['median_s']:.2f}s",
        flush=True,
    )

    # 3. extrapolation to N = 10,000 private examples
    s_tune = math.ceil(1 * N_PRIVATE / args.batch_size)  # configs/default.yaml: 1 epoch of batch 16
    n_held = max(1, int(round(xcfg.n_public * xcfg.heldout_fraction)))
    per_epoch = math.ceil((xcfg.n_public - n_held) / xcfg.batch_size)
    s_transfer = max(1, int(round(xcfg.epochs * per_epoch)))
    eval_every = max(1, per_epoch // 2)
    n_evals = 1 + len(
        {s for s in range(1, s_transfer + 1) if s % eval_every == 0 or s == s_transfer}
    )
    t_teacher = s_tune * step_s["teacher"]
    parts = {
        "user_tune_on_student_s": s_tune * step_s["student"],
        "transfer_cache_s": xcfg.n_public * c_cache,
        "transfer_steps_s": s_transfer * t_x["median_s"],
        "transfer_heldout_s": n_evals * n_held * c_teacher,
    }
    t_post = sum(parts.values())
    post_speedup = t_teacher / t_post
    print(
        f"user_vs_teacher N={N_PRIVATE}: teacher tuning {t_teacher / 60:.1f} min, POST {t_post / 60:.1f} min "
        f"(user {parts['user_tune_on_student_s'] / 60:.1f} + provider "
        f"{(t_post - parts['user_tune_on_student_s']) / 60:.1f}), post_speedup {post_speedup:.2f}x",
        flush=True,
    )
    finish(
        "user_vs_teacher",
        {
            "suite": args.suite,
            "data": ds.source,
            "model": lm.info.model_id,
            "student": "2-layer first-last extraction",
            "tune": {
                "steps": steps,
                "batch_size": args.batch_size,
                "prompt_tokens": args.n_tokens,
                "max_length": args.max_length,
                "runs": t,
                "step_s": step_s,
            },
            "user_speedup": round(user_speedup, 3),
            "target_user_speedup": target(user_speedup, 8.0),
            "transfer": {
                "config": dataclasses.asdict(xcfg),
                "probe_public_examples": len(pub),
                "cache_pass": cache_t,
                "teacher_pass": teacher_pass,
                "cache_s_per_example": c_cache,
                "teacher_s_per_example": c_teacher,
                "step": t_x,
            },
            "extrapolation": {
                "n_private": N_PRIVATE,
                "tune_epochs": 1,
                "tune_steps": s_tune,
                "transfer_steps": s_transfer,
                "heldout_examples": n_held,
                "heldout_evaluations": n_evals,
                "formula": "T_teacher = S_tune * t_teacher_step; T_post = S_tune * t_student_step + n_public * c_cache "
                "+ S_transfer * t_transfer_step + n_evals * n_heldout * c_teacher; post_speedup = "
                "T_teacher / T_post (distillation, the provider's one-off cost, not counted)",
                "teacher_tuning_s": round(t_teacher, 1),
                "post_s": round(t_post, 1),
                "post_parts_s": {k: round(v, 1) for k, v in parts.items()},
            },
            "post_speedup": round(post_speedup, 3),
            "post_speedup_paper_anchor": 6.0,
        },
    )


if __name__ == "__main__":
    main()
