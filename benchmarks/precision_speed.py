"""Teacher forward throughput in float32 vs bfloat16 autocast on this CPU: which precision should the
distillation's teacher cache (the bulk of `promptport distill`) use here?

    python -m benchmarks.precision_speed --threads 1 --batch 4 --length 64
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import finish, parser, setup


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None, model=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    setup(args.threads)
    from promptport.models import load_model

    lm = load_model(args.model)
    ids = torch.randint(100, 5000, (args.batch, args.length))
    from promptport.runtime import cpu_flags

    flags = cpu_flags()
    rows = {}
    for name, ctx in (
        ("fp32", lambda: torch.autocast("cpu", enabled=False)),
        ("bf16_autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    ):
        with torch.inference_mode(), ctx():
            lm.model(input_ids=ids)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                lm.model(input_ids=ids)
            s = (time.perf_counter() - t0) / args.repeats
        rows[name] = {"seconds": round(s, 3), "tokens_per_s": round(ids.numel() / s, 1)}
        print(name, rows[name], flush=True)
    return finish(
        "precision_speed",
        {
            "batch": [args.batch, args.length],
            "results": rows,
            "bf16_over_fp32_speed": round(
                rows["bf16_autocast"]["tokens_per_s"] / rows["fp32"]["tokens_per_s"], 3
            ),
            "cpu_bf16_flags": [f for f in ("avx512_bf16", "amx_bf16", "avx512f") if f in flags],
        },
    )


if __name__ == "__main__":
    main()
