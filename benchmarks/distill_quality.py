"""Does the distilled student take a soft prompt the way the teacher does? (POST step 1, end to end)

1. Public data only (provider side): IMDB train reviews for LM distillation and, split into sentences
   and formatted with the SST-2 template, for the task-aware term. No SST-2 / Rotten Tomatoes text is
   used; exact (case/space-normalised) overlaps with SST-2 are counted, dropped and reported.
2. `promptport.distill.distill` on the default teacher within a wall-clock budget (default 30 min).
3. The user's step: prompt tuning on SST-2 train on the student (`tune.train_prompt`, <= 10 min).
4. SST-2 dev accuracy: student + prompt, teacher zero-shot, teacher + the student's prompt (direct
   transfer); held-out KL / perplexity / agreement come from the distillation's metrics.json.

    python -m benchmarks.distill_quality                    # full run (~35 min on 2 cores: 20 distil, 10 tune, 3 eval)
    python -m benchmarks.distill_quality --quick            # smoke run (~5 min)
    python -m benchmarks.distill_quality --student DIR      # reuse a distilled student, tune + evaluate

Writes benchmarks/results/distill_quality.json and prints the JSON as its last line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED, finish, setup, target


def norm(t: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", t.lower()).split())


def sst2_texts(sst_dir: Path) -> set[str]:
    """Normalised SST-2 sentences of every split (used only to *check* the provider's data)."""
    out = set()
    for name in ("train.tsv.gz", "dev.tsv", "test_labeled.tsv"):
        p = sst_dir / name
        if not p.exists():
            continue
        opener = gzip.open if name.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            col = header.index("sentence") if "sentence" in header else header.index("content")
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) > col:
                    out.add(norm(parts[col]))
    return out


def public_data(imdb: Path, sst_dir: Path, work: Path, max_words: int = 40) -> dict:
    """IMDB sentences minus exact SST-2 overlaps -> work/imdb_sentences.jsonl (the task-aware term's data)."""
    from promptport.distill import split_sentences

    with gzip.open(imdb, "rt", encoding="utf-8") as f:
        reviews = [json.loads(line)["text"] for line in f]
    sents = list(dict.fromkeys(split_sentences(reviews, max_words=max_words)))
    sst = sst2_texts(sst_dir)
    keep = [s for s in sents if norm(s) not in sst]
    review_overlap = sum(norm(r) in sst for r in reviews)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "imdb_sentences.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for s in keep:
            f.write(json.dumps({"text": s}) + "\n")
    return {
        "task_data": str(path),
        "lm_corpus": str(imdb),
        "imdb_reviews": len(reviews),
        "imdb_sentences": len(sents),
        "sst2_sentences_checked": len(sst),
        "exact_overlap_sentences_dropped": len(sents) - len(keep),
        "exact_overlap_reviews": review_overlap,
        "overlap_after_filtering": sum(norm(s) in sst for s in keep),
    }


def tune_and_evaluate(student_dir: str, teacher, sst_dir: Path, args) -> dict:
    from promptport.classify import PromptClassifier
    from promptport.data import load_split
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings
    from promptport.tasks import get_task
    from promptport.tune import TuneConfig, train_prompt

    task = get_task("sst2")
    student = load_model(student_dir)
    s_clf = PromptClassifier(student.model, student.tokenizer, task, max_length=128)
    t_clf = PromptClassifier(teacher.model, teacher.tokenizer, task, max_length=128)
    train_ds = load_split(task, str(sst_dir), "train", limit=args.train_limit)
    dev = s_clf.encode(load_split(task, str(sst_dir), "validation", limit=args.dev_limit))
    enc = s_clf.encode(train_ds)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(enc), generator=g).tolist()
    val, train = enc.subset(perm[: args.val_size]), enc.subset(perm[args.val_size :])

    # size the run to the budget: time a few training-like steps first
    init = init_prompt_embeddings(
        student.model, student.tokenizer, args.tune_tokens, "text", task.description
    )
    p = init.clone().requires_grad_(True)
    ids, mask = s_clf.batch([train.input_ids[i] for i in range(args.tune_batch)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.tune_bf16):
        for _ in range(2):
            s_clf.loss(ids, mask, train.labels[: args.tune_batch], p).backward()
        t0 = time.perf_counter()
        for _ in range(3):
            s_clf.loss(ids, mask, train.labels[: args.tune_batch], p).backward()
    step_s = (time.perf_counter() - t0) / 3
    evals = 4
    eval_s = evals * len(val) / args.tune_batch * step_s / 2.5
    steps = max(10, int((args.tune_budget * 0.85 - eval_s) / step_s))
    cfg = TuneConfig(
        n_tokens=args.tune_tokens,
        lr=args.tune_lr,
        batch_size=args.tune_batch,
        max_steps=steps,
        eval_every=max(1, steps // evals),
        seed=args.seed,
        schedule="linear",
    )
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.tune_bf16):
        res = train_prompt(s_clf, train, val, cfg, init_embeddings=init, progress=args.progress)
    tune_s = time.perf_counter() - t0
    prompt = res.embeddings
    from promptport.prompt import make_metadata, save_prompt

    save_prompt(
        Path(args.work) / f"prompt-{Path(student_dir).parent.name}",
        prompt,
        make_metadata(
            model_info=student.info,
            task=task,
            init="text",
            n_tokens=prompt.shape[0],
            training={"steps": res.steps, "lr": args.tune_lr, "batch_size": args.tune_batch},
        ),
    )
    out = {
        "tune": {
            "steps": res.steps,
            "seconds": round(tune_s, 1),
            "step_seconds_estimate": round(step_s, 3),
            "lr": args.tune_lr,
            "batch_size": args.tune_batch,
            "n_tokens": args.tune_tokens,
            "train_examples": len(train),
            "selection": res.best,
            "bf16": args.tune_bf16,
            "val_curve": [
                [h["step"], h["val_accuracy"]] for h in res.history if h.get("type") == "eval"
            ],
            "final_train_loss": next(
                (h["loss"] for h in reversed(res.history) if "loss" in h), None
            ),
        }
    }
    t0 = time.perf_counter()
    out["student_zero_shot"] = s_clf.evaluate(dev)["accuracy"]
    out["student_prompt"] = s_clf.evaluate(dev, prompt)["accuracy"]
    out["teacher_zero_shot"] = t_clf.evaluate(dev)["accuracy"]
    out["teacher_direct_transfer"] = t_clf.evaluate(dev, prompt)["accuracy"]
    out["teacher_init_prompt"] = t_clf.evaluate(dev, init)["accuracy"]
    out["dev_examples"] = len(dev)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument(
        "--student", default=None, help="reuse this distilled student (skip distillation)"
    )
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--strategy", default="first-last", choices=["first-last", "uniform"])
    ap.add_argument(
        "--distill-budget", type=float, default=1800.0, help="seconds for the whole distill stage"
    )
    ap.add_argument("--lm-tokens", type=int, default=16_000)
    ap.add_argument("--heldout-blocks", type=int, default=8)
    ap.add_argument("--task-examples", type=int, default=16000)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--alpha-ce", type=float, default=1.0)
    ap.add_argument("--alpha-cos", type=float, default=1.0)
    ap.add_argument("--alpha-task", type=float, default=1.0)
    ap.add_argument("--alpha-label", type=float, default=1.0)
    ap.add_argument("--prefix-prob", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--task-batch-size", type=int, default=64)
    ap.add_argument("--tune-budget", type=float, default=600.0, help="seconds for prompt tuning")
    ap.add_argument("--tune-lr", type=float, default=3e-2)
    ap.add_argument("--tune-batch", type=int, default=32)
    ap.add_argument("--tune-tokens", type=int, default=20)
    ap.add_argument("--tune-bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--dev-limit", type=int, default=None)
    ap.add_argument("--work", default="/tmp/promptport_distill_quality")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets")
    ap.add_argument(
        "--suite",
        choices=["quick", "full"],
        default="full",
        help="benchmarks runner: quick = --quick",
    )
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 when the machine is busy)",
    )
    ap.add_argument(
        "--task-max-words",
        type=int,
        default=40,
        help="longest public sentence used for the task term",
    )
    ap.add_argument("--name", default="distill_quality")
    args = ap.parse_args(argv)
    if args.quick or args.suite == "quick":
        args.distill_budget, args.lm_tokens, args.task_examples, args.epochs = 240, 4096, 300, 2
        args.tune_budget, args.train_limit, args.dev_limit, args.val_size = 60, 2000, 200, 100
    import os

    if args.threads is None:  # OpenMP threads spin-wait badly when other processes hold the cores
        args.threads = (
            1 if os.getloadavg()[0] > (os.cpu_count() or 1) else min(2, os.cpu_count() or 1)
        )
    setup(args.threads)
    result_load = {"load_average_at_start": os.getloadavg()}
    sst_dir, imdb = SHARED / "sst2", SHARED / "imdb" / "train.jsonl.gz"
    if not sst_dir.exists() or not imdb.exists():
        return finish(args.name, {"skipped": f"needs {sst_dir} and {imdb}"})
    from promptport.distill import DistillConfig, distill
    from promptport.models import load_model

    work = Path(args.work)
    result: dict = {"args": vars(args), **result_load}
    teacher = load_model(args.teacher)
    student_dir = args.student
    if student_dir is None:
        t0 = time.perf_counter()
        result["public_data"] = public_data(imdb, sst_dir, work, args.task_max_words)
        cfg = DistillConfig(
            layers=args.layers,
            strategy=args.strategy,
            corpus=[str(imdb)],
            max_tokens=args.lm_tokens,
            block_size=128,
            heldout_blocks=args.heldout_blocks,
            alpha_ce=args.alpha_ce,
            alpha_cos=args.alpha_cos,
            alpha_task=args.alpha_task,
            alpha_label=args.alpha_label,
            task_template="sst2",
            task_data=[result["public_data"]["task_data"]],
            task_examples=args.task_examples,
            task_heldout=128,
            prefix_prob=args.prefix_prob,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            task_batch_size=args.task_batch_size,
            precision="bf16",
            save_every=100,
            seed=args.seed,
        )
        out_dir = work / f"distill-{args.layers}{args.strategy}-s{args.seed}"
        # keep ~3% of the budget for the final held-out evaluation and saving the student
        remaining = args.distill_budget * 0.97 - (time.perf_counter() - t0)
        m = distill(
            teacher,
            out_dir,
            cfg,
            progress=args.progress,
            time_budget_s=remaining,
            resume=(out_dir / "checkpoint" / "state.json").is_file(),
        )
        m["wall_seconds_with_data_prep"] = round(time.perf_counter() - t0, 1)
        student_dir = str(out_dir / "student")
        result["distill"] = {
            k: m[k]
            for k in (
                "layers",
                "strategy",
                "parameters",
                "before",
                "after",
                "kl_reduction",
                "answer_kl_reduction",
                "steps",
                "total_steps",
                "stopped_early",
                "tokens_trained",
                "cache_seconds",
                "train_seconds",
                "wall_seconds",
                "wall_seconds_with_data_prep",
                "tokens_per_s",
                "task_aware",
            )
        }
    else:
        mpath = Path(student_dir).parent / "metrics.json"
        if mpath.is_file():
            m = json.loads(mpath.read_text())
            result["distill"] = {
                k: m.get(k)
                for k in (
                    "layers",
                    "parameters",
                    "before",
                    "after",
                    "kl_reduction",
                    "steps",
                    "wall_seconds",
                )
            }
    result["student"] = student_dir
    result.update(tune_and_evaluate(student_dir, teacher, sst_dir, args))
    d = result.get("distill") or {}
    zs = result["teacher_zero_shot"]
    result["targets"] = {
        "student_prompt_accuracy": target(result["student_prompt"], 0.75),
        "direct_transfer_within_5_points": target(result["teacher_direct_transfer"] - zs, -0.05),
        "kl_reduction": target(d.get("kl_reduction"), 0.80),
        "distill_wall_seconds": target(
            d.get("wall_seconds_with_data_prep", d.get("wall_seconds")),
            1800.0,
            higher_is_better=False,
        ),
    }
    return finish(args.name, result)


if __name__ == "__main__":
    main()
