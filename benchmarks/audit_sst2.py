"""LiRA audit on SST-2: membership leakage of prompt tuning without DP and with DP at epsilon = 8.

    python -m benchmarks.audit_sst2 [--student DIR] [--pool-size 500] [--shadows 16] [--epochs 4]

Protocol (one process; the model is loaded once and shared by both audits):
  1. the model: `--student DIR` (a distilled student from `promptport distill`), else a *plain extracted*
     student of the default teacher (first 2 + last 2 of its 30 layers, no distillation), saved once in
     the work directory so that `promptport audit --resume` can reload it;
  2. the audit pool: `--pool-size` examples drawn (seeded) from SST-2 train; every example is IN for
     exactly half of the `--shadows` shadow prompts;
  3. two audits with identical tuning settings, one without DP and one with DP-SGD at epsilon = 8 (delta
     = 1/(10 N) per shadow): each shadow prompt is trained on its IN half and scores the whole pool;
  4. leave-one-shadow-out LiRA (online, global variance = the headline; equal IN/OUT reference counts
     per example and target), with the other attacks (offline LiRA, global threshold, RMIA), bootstrap
     intervals and the 95% one-sided empirical-epsilon lower bound (attack and threshold chosen on half
     of the shadows, counted on the other half), as `promptport audit` writes them.

Resumable: finished shadows live in `--work` and are kept on a rerun (the audit's own --resume).
Prints one line per audit and the result JSON as the last line; writes benchmarks/results/audit_sst2.json.
Needs the shared SST-2 files (../shared/data/sst2 or PROMPTPORT_SHARED_DATA).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, SHARED, parser


def parse(argv=None):
    ap = parser(__doc__, suite=None)
    ap.add_argument(
        "--student", default=None, help="a distilled student folder (default: plain extraction)"
    )
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--layers", type=int, default=4, help="layers of the plain extracted student")
    ap.add_argument("--pool-size", type=int, default=500)
    ap.add_argument("--shadows", type=int, default=16)
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--configs", default="nodp,dp", help="which audits to run: nodp, dp or both")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop training new shadows after this wall time and report the finished ones (partial)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "promptport-audit-sst2",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "audit_sst2.json")
    return ap.parse_args(argv)


def plain_student(teacher: str, layers: int, where: Path) -> str:
    """A first-last layer cut of the teacher without any training, stored as a promptport student folder."""
    from promptport.distill import (
        extract_student,
        save_student,
        select_layers,
        set_trainable,
        teacher_reference,
    )
    from promptport.models import load_model

    if (where / "student.json").is_file():
        return str(where)
    t = load_model(teacher)
    keep = select_layers(t.info.num_layers, layers, "first-last")
    student = extract_student(t.model, keep)
    own = set_trainable(student, freeze_embeddings=True)
    save_student(
        where,
        student,
        t.tokenizer,
        own,
        {
            "teacher": teacher_reference(teacher, t.info),
            "layers": keep,
            "distilled": False,
            "note": "plain extraction, no training",
        },
    )
    return str(where)


def student_kind(path: str) -> str:
    """What the audited student is, from its own student.json (a plain extraction says so)."""
    f = Path(path) / "student.json"
    info = json.loads(f.read_text()) if f.is_file() else {}
    if info.get("distilled") is False:
        return f"plain extraction of layers {info.get('layers')} (first-last, NOT distilled)"
    return "distilled student" if info else str(path)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from promptport import audit as A
    from promptport.models import load_model
    from promptport.runtime import quiet_libraries, versions

    quiet_libraries()
    data = SHARED / "sst2"
    if not data.is_dir():
        print(f"SST-2 not found at {data} (set PROMPTPORT_SHARED_DATA)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = args.student or plain_student(
        args.teacher, args.layers, args.work / f"student-plain-{args.layers}"
    )
    lm = load_model(model)
    base = {
        "n_tokens": args.n_tokens,
        "init": "text",
        "lr": args.lr,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seed": 0,
    }
    configs = {
        "nodp": dict(base, dp=None),
        "dp": dict(base, dp={"epsilon": args.epsilon, "delta": None}),
    }
    result = {
        "model": model,
        "model_kind": student_kind(model),
        "model_layers": lm.info.num_layers,
        "data": str(data),
        "pool_size": args.pool_size,
        "n_shadows": args.shadows,
        "tuning": base,
        "audits": {},
    }
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    specs = {
        name: A.AuditSpec(
            model=model,
            task="sst2",
            data=str(data),
            split="train",
            pool_size=args.pool_size,
            n_shadows=args.shadows,
            seed=0,
            tune=configs[name],
        )
        for name in names
    }
    trained = {name: 0 for name in names}
    # Shadows of the audits alternate (0 no-DP, 0 DP, 1 no-DP, ...) so that a time budget leaves both
    # audits with the same number of finished shadows.
    stopped = False
    for s_id in range(args.shadows):
        for name in names:
            if args.minutes is not None and time.perf_counter() - t_start > 60 * args.minutes:
                stopped = True
                break
            r = A.audit(
                args.work / f"audit-{name}",
                specs[name],
                shadow_ids=[s_id],
                resume=True,
                report=False,
                lm=lm,
            )
            trained[name] += len(r["trained"])
        if stopped:
            break
    for name in names:
        out = args.work / f"audit-{name}"
        t0 = time.perf_counter()
        s = A.audit_report(out, n_boot=args.n_boot)
        prim = s["attacks"][s["primary"]]
        result["audits"][name] = {
            "dir": str(out),
            "complete": s["n_shadows"] == args.shadows,
            "n_shadows_finished": s["n_shadows"],
            "shadows_trained_this_run": trained[name],
            "shadow_train_seconds_total": s["shadow_train_seconds"],
            "seconds_per_shadow": round(s["shadow_train_seconds"] / s["n_shadows"], 1),
            "report_seconds": round(time.perf_counter() - t0, 1),
            "primary_attack": s["primary"],
            "auc": s["auc"],
            "auc_ci": s["auc_ci"],
            "auc_ci_unit": s["bootstrap"]["unit"],
            "auc_ci_examples_only": s["auc_ci_examples_only"],
            "membership_test": s["membership_test"],
            "tpr_at_1%fpr": s["tpr_at_1%fpr"],
            "tpr_at_1%fpr_ci": prim[A.tpr_key(0.01) + "_ci"],
            "tpr_at_0.1%fpr": s["tpr_at_0.1%fpr"],
            "balanced_accuracy": prim["balanced_accuracy"],
            "theoretical_epsilon": s["theoretical_epsilon"],
            "delta": s["delta"],
            "empirical_epsilon_lower_bound_95": s["empirical_epsilon_lower_bound"],
            "empirical_epsilon_lower_bound_detail": s["empirical_epsilon_lower_bound_detail"],
            "shadow_accuracy_in": s["shadow_accuracy_in"],
            "shadow_accuracy_out": s["shadow_accuracy_out"],
            "all_attacks_auc": {k: round(v["auc"], 4) for k, v in s["attacks"].items()},
            "roc_png": str(out / s["files"]["roc_png"]),
        }
        print(
            f"{name}: {A.format_summary(s)}; shadow acc in/out {s['shadow_accuracy_in']:.3f}/"
            f"{s['shadow_accuracy_out']:.3f}",
            flush=True,
        )
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    result["torch_threads"] = torch.get_num_threads()
    result["versions"] = versions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name("." + args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
