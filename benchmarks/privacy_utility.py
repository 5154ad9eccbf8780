"""The privacy-utility curve through the whole pipeline on SST-2, for epsilon in {1, 2, 4, 8, inf}.

For each epsilon: DP prompt tuning on the student (no model selection on validation data, so the
guarantee covers the whole prompt), POST transfer to the teacher with public IMDB reviews, the
teacher's accuracy with the transferred prompt on SST-2 dev, and a LiRA audit of the same tuning
configuration on the student (online LiRA with a global variance, the audit's primary attack).

    python -m benchmarks.privacy_utility [--student DIR] [--epsilons 1,2,4,8,inf] [--work DIR]

Resumable stage by stage (tune, transfer, evaluate, audit per epsilon; each stage's output files are
its completion marker), so the curve can be filled over several sittings. Writes
benchmarks/results/privacy_utility.json (`points`: one object per epsilon with `epsilon` (null for no
DP), `post_accuracy`, `audit_auc` and more) and benchmarks/results/privacy_utility.png.
Needs ../shared/data (sst2, imdb).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, SHARED, finish, parser


def parse(argv=None):
    ap = parser(__doc__, suite=None)
    ap.add_argument("--student", default=None, help="a student folder (default: plain extraction)")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--epsilons", default="1,2,4,8,inf")
    ap.add_argument("--train-limit", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--n-public", type=int, default=128)
    ap.add_argument("--transfer-steps", type=int, default=20)
    ap.add_argument("--eval-limit", type=int, default=300)
    ap.add_argument("--pool-size", type=int, default=100)
    ap.add_argument("--shadows", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "promptport-privacy-utility",
    )
    return ap.parse_args(argv)


def _eps_key(e: float | None) -> str:
    return "inf" if e is None else f"{e:g}"


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.audit_sst2 import plain_student, student_kind
    from promptport import audit as A
    from promptport.evaluate import evaluate
    from promptport.models import load_model
    from promptport.privacy import DPConfig
    from promptport.runtime import quiet_libraries
    from promptport.transfer import TransferConfig, transfer
    from promptport.tune import TuneConfig, tune

    quiet_libraries()
    sst, imdb = SHARED / "sst2", SHARED / "imdb"
    if not (sst.is_dir() and imdb.is_dir()):
        raise SystemExit(f"needs {sst} and {imdb} (set PROMPTPORT_SHARED_DATA)")
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    student_path = args.student or plain_student(
        args.teacher, args.layers, args.work / f"student-plain-{args.layers}"
    )
    student, teacher = load_model(student_path), load_model(args.teacher)
    epsilons = [None if e.strip() == "inf" else float(e) for e in args.epsilons.split(",")]
    base = dict(
        n_tokens=args.n_tokens,
        init="text",
        lr=args.lr,
        epochs=args.epochs,
        batch_size=16,
        max_length=64,
        seed=0,
    )
    zs_dir = args.work / "teacher-zero-shot"
    if not (zs_dir / "metrics.json").is_file():
        evaluate(
            teacher,
            "sst2",
            data=str(sst),
            split="validation",
            limit=args.eval_limit,
            out=zs_dir,
            max_length=64,
        )
    zero_shot = json.loads((zs_dir / "metrics.json").read_text())["accuracy"]
    points = []
    for eps in epsilons:
        key = _eps_key(eps)
        d = args.work / f"eps-{key}"
        dp = None if eps is None else DPConfig(epsilon=eps, delta=None, accountant="prv")
        timings = {}
        if not (d / "tune" / "metrics.json").is_file():
            t0 = time.perf_counter()
            tune(
                student,
                "sst2",
                data=str(sst),
                out=d / "tune",
                val_split=None,
                train_limit=args.train_limit,
                cfg=TuneConfig(**base, dp=dp),
            )
            timings["tune"] = round(time.perf_counter() - t0, 1)
        tuned = json.loads((d / "tune" / "metrics.json").read_text())
        if not (d / "transfer" / "metrics.json").is_file():
            t0 = time.perf_counter()
            transfer(
                d / "tune" / "prompt",
                student,
                teacher,
                public_data=str(imdb),
                out=d / "transfer",
                cfg=TransferConfig(
                    n_public=args.n_public,
                    steps=args.transfer_steps,
                    batch_size=8,
                    max_length=64,
                    seed=0,
                ),
            )
            timings["transfer"] = round(time.perf_counter() - t0, 1)
        if not (d / "evaluate" / "metrics.json").is_file():
            t0 = time.perf_counter()
            evaluate(
                teacher,
                "sst2",
                data=str(sst),
                split="validation",
                prompt=str(d / "transfer" / "prompt"),
                limit=args.eval_limit,
                out=d / "evaluate",
                max_length=64,
            )
            timings["evaluate"] = round(time.perf_counter() - t0, 1)
        post = json.loads((d / "evaluate" / "metrics.json").read_text())
        spec = A.AuditSpec(
            model=student_path,
            task="sst2",
            data=str(sst),
            split="train",
            pool_size=args.pool_size,
            n_shadows=args.shadows,
            seed=0,
            tune=dict(base, dp=None if dp is None else {"epsilon": eps, "delta": None}),
        )
        t0 = time.perf_counter()
        r = A.audit(d / "audit", spec, resume=True, n_boot=500, lm=student)
        s = r["summary"] or A.audit_report(d / "audit", n_boot=500)
        timings["audit"] = round(time.perf_counter() - t0, 1)
        points.append(
            {
                "epsilon": eps,
                "post_accuracy": post["accuracy"],
                "post_accuracy_ci": post.get("accuracy_ci"),
                "student_prompt_train_accuracy": tuned["train_accuracy"],
                "accountant_epsilon": (tuned.get("privacy") or {}).get("epsilon"),
                "delta": (tuned.get("privacy") or {}).get("delta"),
                "audit_auc": s["auc"],
                "audit_auc_ci": s["auc_ci"],
                "audit_auc_ci_unit": s["bootstrap"]["unit"],
                "audit_membership_p_value": s["membership_test"]["p_value"],
                "audit_chance_auc_95": s["membership_test"]["null_auc_95"],
                "audit_tpr_at_1%fpr": s["tpr_at_1%fpr"],
                "empirical_epsilon_lower_bound_95": s["empirical_epsilon_lower_bound"],
                "seconds_this_run": timings,
            }
        )
        print(
            f"eps={key}: POST {post['accuracy']:.3f} (zero-shot {zero_shot:.3f}), audit AUC "
            f"{s['auc']:.3f} [{s['auc_ci'][0]:.3f}, {s['auc_ci'][1]:.3f}], p "
            f"{s['membership_test']['p_value']:.3g}",
            flush=True,
        )
    _plot(points, zero_shot, RESULTS / "privacy_utility.png")
    return finish(
        "privacy_utility",
        {
            "task": "sst2",
            "student": student_path,
            "student_kind": student_kind(student_path),
            "teacher": args.teacher,
            "teacher_zero_shot_accuracy": zero_shot,
            "settings": {k: v for k, v in vars(args).items() if k not in ("work",)}
            | {"tuning": base},
            "points": points,
            "plot": "benchmarks/results/privacy_utility.png",
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        },
    )


def _plot(points: list[dict], zero_shot: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["epsilon"] if p["epsilon"] is not None else 32.0 for p in points]
    labels = ["inf" if p["epsilon"] is None else f"{p['epsilon']:g}" for p in points]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(xs, [p["post_accuracy"] for p in points], "o-", label="teacher + transferred prompt")
    ax[0].axhline(zero_shot, color="gray", ls="--", label="teacher zero-shot")
    ax[0].set(xscale="log", xlabel="epsilon (DP-SGD on the student)", ylabel="SST-2 dev accuracy")
    ax[0].legend(fontsize=8)
    lo = [p["audit_auc"] - p["audit_auc_ci"][0] for p in points]
    hi = [p["audit_auc_ci"][1] - p["audit_auc"] for p in points]
    ax[1].errorbar(xs, [p["audit_auc"] for p in points], yerr=[lo, hi], fmt="o-", capsize=3)
    ax[1].axhline(0.5, color="gray", ls="--", label="chance")
    ax[1].set(xscale="log", xlabel="epsilon", ylabel="LiRA AUC (95% CI)")
    ax[1].legend(fontsize=8)
    for a in ax:
        a.set_xticks(xs)
        a.set_xticklabels(labels)
        a.minorticks_off()
    fig.suptitle("Privacy-utility through POST (SST-2)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
