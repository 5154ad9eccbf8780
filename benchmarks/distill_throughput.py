"""Distillation throughput: tokens/s of the teacher cache pass and of student training from the cache,
and the FLOP/s they achieve as a fraction of this machine's matmul peak measured in the same run.

Runs `promptport.distill.distill` itself with the default run's recipe (configs/default.yaml: its
first-last student, KD + hidden-cosine on LM blocks and the task-aware terms at answer positions, bf16
autocast, frozen embeddings) on a small corpus and a fixed number of steps; step times come from its
metrics.jsonl (the first step is the warm-up and is dropped).

FLOPs are counted, not measured:
  training  = 6 * N_own * tokens + 4 * N_head * (positions whose LM-head logits are computed)
  cache     = 2 * N_teacher * tokens + 2 * N_head * (positions whose LM-head logits are computed)
N_own: the student's trainable (non-embedding) parameters; N_teacher: the teacher's non-embedding
parameters; N_head = vocabulary x hidden (the tied, frozen head): its forward and its input-gradient
(needed to train the layers below it; no weight gradient) are 4 * N_head per position. Attention's
sequence-length terms are not counted, so the figures are a slight underestimate. `mfu` divides training FLOP/s by the median rate of a large matmul
in the precision training runs in (bf16), timed just before and after; fractions of the float32 peak
are given too.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import default_distill_config, finish, matmul_peak, parser, setup, target


def step_times(metrics_jsonl: Path, tokens_per_step: float) -> list[float]:
    """Per-step seconds from distill's cumulative tokens/s (step k: k * tokens_per_step / rate_k)."""
    recs = [json.loads(ln) for ln in metrics_jsonl.read_text().splitlines() if ln.strip()]
    ends = [r["step"] * tokens_per_step / r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
    return [b - a for a, b in zip([0.0] + ends[:-1], ends)]


def main(argv=None):
    ap = parser(__doc__, model=True)
    ap.add_argument(
        "--steps", type=int, default=None, help="training steps (default: quick 8, full 40)"
    )
    ap.add_argument(
        "--precision", choices=["bf16", "fp32"], default=None, help="default: the recipe's (bf16)"
    )
    args = ap.parse_args(argv)
    setup()
    from promptport.distill import distill
    from promptport.models import load_model

    quick = args.suite == "quick"
    steps = args.steps or (8 if quick else 40)
    cfg = default_distill_config(
        max_tokens=4096 if quick else 32768,
        heldout_blocks=2,
        task_examples=256 if quick else 2000,
        task_heldout=8,
        max_steps=steps,
        eval_every=0,
        save_every=0,
        **({"precision": args.precision} if args.precision else {}),
    )
    lm = load_model(args.model)
    hidden = lm.model.get_input_embeddings().weight.shape[1]
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    n_head = vocab * hidden
    n_teacher = (
        sum(p.numel() for p in lm.model.parameters()) - n_head
    )  # tied head = input embeddings

    peak_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    # the recipe's precision only (and float32): on a CPU without native bf16 (AVX2-only) one bf16
    # 2048^3 product takes minutes, which the default fp32 recipe does not need
    dtypes = tuple(dict.fromkeys((torch.float32, peak_dtype)))
    peaks_before = {d: matmul_peak(d) for d in dtypes}
    with tempfile.TemporaryDirectory(prefix="distill-throughput-") as tmp:
        m = distill(lm, Path(tmp) / "run", cfg)
        times = step_times(Path(tmp) / "run" / "metrics.jsonl", m["tokens_trained"] / m["steps"])
    peaks_after = {d: matmul_peak(d) for d in dtypes}
    peak = {
        str(d).replace("torch.", ""): statistics.median(
            [peaks_before[d]["median_flops"], peaks_after[d]["median_flops"]]
        )
        for d in peaks_before
    }

    # tokens and FLOPs of one training step and of the cache pass
    lm_tok = cfg.batch_size * cfg.block_size
    tok_step = m["tokens_trained"] / m["steps"]
    task_tok_mean = (tok_step - lm_tok) / cfg.task_batch_size if cfg.alpha_task else 0.0
    head_pos_step = lm_tok + (cfg.task_batch_size if cfg.alpha_task else 0)
    n_own = m["parameters"]["own"]
    flops_step = 6 * n_own * tok_step + 4 * n_head * head_pos_step
    step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    lm_cache_tok = m["corpus"]["train_tokens"] if m.get("corpus") else 0
    n_task = (m["task_aware"]["examples"] - cfg.task_heldout) if m.get("task_aware") else 0
    cache_tok = lm_cache_tok + n_task * task_tok_mean
    cache_flops = 2 * n_teacher * cache_tok + 2 * n_head * (lm_cache_tok + n_task)
    train_rate = flops_step / step_s
    cache_rate = cache_flops / m["cache_seconds"]
    key = "bfloat16" if peak_dtype == torch.bfloat16 else "float32"
    mfu = train_rate / peak[key]
    res = {
        "training": {
            "steps": m["steps"],
            "tokens_per_step": round(tok_step, 1),
            "lm_tokens_per_step": lm_tok,
            "task_tokens_per_step": round(tok_step - lm_tok, 1),
            "step_times_s": [round(t, 4) for t in times],
            "median_step_s_after_warmup": round(step_s, 4),
            "tokens_per_s": round(tok_step / step_s, 1),
            "flops_per_step": flops_step,
            "flops_per_s": round(train_rate),
            "mfu_vs_fp32_peak": round(train_rate / peak["float32"], 4),
            "mfu_vs_bf16_peak": round(train_rate / peak["bfloat16"], 4)
            if "bfloat16" in peak
            else None,
        },
        "cache": {
            "seconds": m["cache_seconds"],
            "tokens": round(cache_tok),
            "lm_tokens": lm_cache_tok,
            "task_examples": n_task,
            "tokens_per_s": round(cache_tok / m["cache_seconds"], 1),
            "flops": cache_flops,
            "flops_per_s": round(cache_rate),
            "mfu_vs_fp32_peak": round(cache_rate / peak["float32"], 4),
            "mfu_vs_bf16_peak": round(cache_rate / peak["bfloat16"], 4)
            if "bfloat16" in peak
            else None,
        },
        "parameters": {
            "student_own": n_own,
            "teacher_non_embedding": n_teacher,
            "head": n_head,
            "student_layers": m["layers"],
        },
        "matmul_peak_flops": peak,
        "matmul_before": peaks_before
        and {str(k).replace("torch.", ""): v for k, v in peaks_before.items()},
        "matmul_after": {str(k).replace("torch.", ""): v for k, v in peaks_after.items()},
    }
    print(
        f"distill_throughput cache {res['cache']['tokens_per_s']:.0f} tok/s "
        f"({cache_rate / 1e9:.1f} GFLOP/s, {cache_rate / peak[key]:.2f} of the {key} peak)",
        flush=True,
    )
    print(
        f"distill_throughput train {res['training']['tokens_per_s']:.0f} tok/s ({train_rate / 1e9:.1f} GFLOP/s); "
        f"matmul peak fp32 {peak['float32'] / 1e9:.0f}, bf16 "
        f"{peak['bfloat16'] / 1e9 if 'bfloat16' in peak else float('nan'):.0f} GFLOP/s; "
        f"mfu {mfu:.3f} of the {key} peak (target >= 0.35)",
        flush=True,
    )
    finish(
        "distill_throughput",
        {
            "suite": args.suite,
            "model": lm.info.model_id,
            "precision": cfg.precision,
            "recipe": "configs/default.yaml",
            "config": cfg.to_dict(),
            "flops_formula": "training 6*N_own*tokens + 4*N_head*head_positions (frozen head: forward + input "
            "gradient); cache 2*N_teacher*tokens + 2*N_head*head_positions (attention terms not "
            "counted)",
            **res,
            "mfu_of": f"median {key} matmul rate (2048^3), before and after the run",
            "mfu": round(mfu, 4),
            "mfu_cache": round(cache_rate / peak[key], 4),
            "target": target(mfu, 0.35),
        },
    )


if __name__ == "__main__":
    main()
