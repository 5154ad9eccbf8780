"""Audit of the transferred prompt: the no-DP shadows of `audit_sst2`, each transferred to the teacher
with public IMDB reviews, attacked with the same masks on the teacher's scores (student side vs
teacher side).

    python -m benchmarks.audit_sst2 --work W             # first: the shadows (no DP and DP)
    python -m benchmarks.audit_transferred --work W      # then: transfer them and compare

Transfer is post-processing with public data, so the teacher side should not leak more than the
student side (up to sampling noise). Resumable: transferred shadows are kept. Writes
benchmarks/results/audit_transferred.json (`student_auc`, `teacher_auc`, their intervals and
TPR@1%FPR). Needs ../shared/data/imdb.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import SHARED, finish, parser


def main(argv=None) -> dict:
    ap = parser(__doc__, suite=None)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "promptport-audit-sst2",
    )
    ap.add_argument("--config", default="nodp", help="which audit of audit_sst2 (nodp or dp)")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--shadows", type=int, default=8, help="transfer shadows 0..N-1")
    ap.add_argument("--n-public", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--compare-only",
        action="store_true",
        help="transfer nothing more: compare the shadows already transferred (at least 3)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from promptport.audit_transfer import compare_sides, transfer_shadows
    from promptport.runtime import quiet_libraries
    from promptport.transfer import TransferConfig

    quiet_libraries()
    audit_dir = args.work / f"audit-{args.config}"
    t0 = time.perf_counter()
    cfg = TransferConfig(n_public=args.n_public, steps=args.steps, batch_size=8, max_length=64)
    r = {"transferred": []}
    if not args.compare_only:
        r = transfer_shadows(
            audit_dir,
            args.teacher,
            public_data=str(SHARED / "imdb"),
            cfg=cfg,
            shadow_ids=list(range(args.shadows)),
            progress=True,
        )
    rep = compare_sides(audit_dir, n_boot=args.n_boot)
    print(
        f"student AUC {rep['student_auc']:.3f} {rep['student_auc_ci']} "
        f"(p {rep['student']['membership_p_value']:.3g}), teacher AUC {rep['teacher_auc']:.3f} "
        f"{rep['teacher_auc_ci']} (p {rep['teacher']['membership_p_value']:.3g}) "
        f"({rep['n_shadows']} shadows)",
        flush=True,
    )
    return finish(
        "audit_transferred",
        {
            "audit": str(audit_dir),
            "config": args.config,
            "teacher": args.teacher,
            "public_data": "imdb (train reviews, text only)",
            # every transfer setting the shadows were transferred with (the work folder's spec.json)
            "transfer": (rep.get("transfer") or {}).get("transfer")
            or {"n_public": args.n_public, "steps": args.steps},
            **{k: v for k, v in rep.items() if k not in ("transfer",)},
            "shadows_transferred_this_run": r["transferred"],
            "command": "python -m benchmarks.audit_transferred " + " ".join(argv or sys.argv[1:]),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()
