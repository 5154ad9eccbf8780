"""`promptport run`: the whole POST pipeline from one YAML file, one sub-directory per stage.

    distill (provider) -> tune [DP] (user) -> transfer (provider, public data only) -> evaluate -> report

Each stage writes a manifest (config, inputs with fingerprints, outputs with sha256, timings); a stage
whose manifest is complete for the same config and inputs is reused, not recomputed. The provider-side
stages receive paths to the student, the teacher, the prompt artifact and the public source only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np

from promptport.config import (
    DEFAULT_CONFIG as DEFAULT_CONFIG,
)
from promptport.config import (
    RunConfig as RunConfig,
)
from promptport.config import (
    load_run_config as load_run_config,
)
from promptport.config import (
    section as section,
)
from promptport.config import (
    stage_configs as stage_configs,
)
from promptport.errors import BadInput
from promptport.fileio import check_writable_dir, inside, read_json, write_json
from promptport.manifest import is_complete, read_manifest, write_manifest


def _text_hashes(texts) -> set[str]:
    return {hashlib.sha256(" ".join(t.split()).lower().encode()).hexdigest() for t in texts}


def check_overlap(private_texts: list[str], public_texts: list[str], allow: bool) -> int:
    """Exact duplicates (whitespace/case-normalised) between private and public data are refused."""
    n = len(_text_hashes(private_texts) & _text_hashes(public_texts))
    if n and not allow:
        raise BadInput(
            "public_data",
            f"{n} public examples are exact duplicates of private training examples; "
            "use another public source or set allow_overlap: true",
        )
    return n


STAGE_DIRS = ("distill", "tune", "transfer", "teacher-tuning", "evaluate", "audit", "sweep-alpha")


def _stage(run_dir: Path, name: str) -> Path:
    d = inside(run_dir, name, f"run_dir/{name}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _attempt(stage_dir: Path, stage: str, config: dict, inputs: dict) -> bool:
    """Whether this stage resumes: True when an interrupted attempt with the same config and inputs left it
    (a 'running' manifest); otherwise checkpoints left by another configuration are removed, so a changed
    config starts afresh instead of failing on a foreign checkpoint."""
    import shutil

    from promptport.manifest import MANIFEST, config_key

    key = config_key(config, inputs)
    m = read_manifest(stage_dir)
    if m and m.get("status") == "running" and m.get("key") == key:
        return True
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        shutil.rmtree(stage_dir / name, ignore_errors=True)
    write_json(stage_dir / MANIFEST, {"stage": stage, "status": "running", "key": key})
    return False


def check_stage_dirs(run_dir: str | Path) -> None:
    """Before any work: every stage sub-directory that already exists must resolve inside the run directory
    (a symlink planted in a shared run directory must not redirect a stage's writes)."""
    for name in STAGE_DIRS:
        if (Path(run_dir) / name).exists() or (Path(run_dir) / name).is_symlink():
            inside(run_dir, name, f"run_dir/{name}")


def run_pipeline(cfg: RunConfig, *, progress: bool = True, log=print) -> dict:
    """Run (or resume) every stage; returns results.json's content. One process per run directory."""
    check_writable_dir(cfg.run_dir, "run_dir")
    stage_configs(cfg)  # fail on a bad config before creating anything
    check_stage_dirs(cfg.run_dir)
    from promptport.resources import preflight

    preflight(cfg)
    from promptport.fileio import dir_lock

    existed = Path(cfg.run_dir).exists()
    try:
        with dir_lock(cfg.run_dir):
            return _run_pipeline(cfg, progress=progress, log=log)
    except BadInput:
        # Bad input found before any stage wrote: leave no half-made run directory behind.
        d = Path(cfg.run_dir)
        if (
            not existed
            and d.is_dir()
            and all(p.name.startswith(".promptport.lock") for p in d.iterdir())
        ):
            import shutil

            shutil.rmtree(d)
        raise


def _run_pipeline(cfg: RunConfig, *, progress: bool = True, log=print) -> dict:
    from promptport.classify import PromptClassifier
    from promptport.data import load_split, load_texts
    from promptport.models import load_model
    from promptport.prompt import load_prompt
    from promptport.report import bootstrap_ci, build_report
    from promptport.runtime import seed_everything, versions
    from promptport.tasks import get_task
    from promptport.transfer import transfer
    from promptport.tune import tune

    t_run = time.perf_counter()
    run_dir = check_writable_dir(cfg.run_dir, "run_dir")
    if (
        run_dir.is_dir()
    ):  # temp files of atomic writes cut short by a kill; we hold the lock, no one else writes
        for stale in run_dir.rglob(".*.tmp"):
            if stale.is_file():
                stale.unlink()
    seed_everything(cfg.seed)
    task = get_task(cfg.task)
    tcfg, xcfg, dcfg, dp_cfg = stage_configs(cfg)

    # Private data is read here only to check it against the public source; it never goes to transfer.
    # the whole split: tune() draws its train_limit subset at random, so any row may be trained on
    if task.is_generation:  # the inputs (e.g. E2E MRs) must not be shared with the public data
        from promptport.generation import load_gen_split

        private_train = load_gen_split(task, cfg.private_data, cfg.train_split)
    else:
        private_train = load_split(task, cfg.private_data, cfg.train_split)
    public_src = cfg.public_data
    if public_src.startswith("generate:"):  # the teacher writes the public texts (provider side)
        from promptport.public_gen import generate_public

        log(f"[public] the teacher writes {public_src.split(':', 1)[1]} public texts")
        run_dir.mkdir(parents=True, exist_ok=True)
        public_src, _ = generate_public(
            load_model(cfg.teacher, device=cfg.device),
            task,
            public_src,
            run_dir / "public",
            seed=cfg.seed,
            progress=progress,
        )
    public_texts, public_id = load_texts(public_src, text_column=cfg.public_text_column)
    n_overlap = check_overlap(
        [t for v in private_train.fields.values() for t in v], public_texts, cfg.allow_overlap
    )
    del private_train
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.model_dump())
    costs: list[dict] = []

    # 1. distil (provider)
    if cfg.student is not None:
        student_path = cfg.student
    else:
        from promptport.distill import distill

        d_dir = _stage(run_dir, "distill")
        inputs = {"teacher": cfg.teacher}
        key_cfg = dcfg.to_dict()
        entry = store_key = None
        if cfg.reuse_student and not is_complete(d_dir, key_cfg, inputs):
            from promptport import student_store

            t_info = load_model(cfg.teacher, device=cfg.device).info
            store_key = student_store.recipe_key(t_info, key_cfg)
            entry = student_store.lookup(store_key[0])
        if entry is not None:
            log(f"[distill] reused from the student store: {entry}")
            t0 = time.perf_counter()
            student_store.fetch(entry, d_dir)
            write_manifest(
                d_dir,
                stage="distill",
                config=key_cfg,
                inputs=inputs,
                outputs=[p for p in (d_dir / "student").rglob("*") if p.is_file()]
                + [d_dir / "metrics.json"],
                seconds=time.perf_counter() - t0,
                extra={"side": "provider", "student_store": str(entry)},
            )
        elif not is_complete(d_dir, key_cfg, inputs):
            log(f"[distill] {cfg.teacher} -> {dcfg.layers}-layer student")
            t0 = time.perf_counter()
            again = _attempt(d_dir, "distill", key_cfg, inputs)
            has_ckpt = any(
                (d_dir / c / "state.json").is_file() for c in ("checkpoint", "checkpoint.old")
            )
            distill(
                cfg.teacher,
                d_dir,
                dcfg,
                resume=again and has_ckpt,
                device=cfg.device,
                progress=progress,
            )
            write_manifest(
                d_dir,
                stage="distill",
                config=key_cfg,
                inputs=inputs,
                outputs=[p for p in (d_dir / "student").rglob("*") if p.is_file()]
                + [d_dir / "metrics.json"],
                seconds=time.perf_counter() - t0,
                extra={"side": "provider"},
            )
            if store_key is not None:
                student_store.put(*store_key, d_dir)
        else:
            log("[distill] reused")
        student_path = str(d_dir / "student")
        dm = read_json(d_dir / "metrics.json") if (d_dir / "metrics.json").is_file() else {}
        costs.append(
            {
                "stage": "distill",
                "side": "provider",
                "seconds": read_manifest(d_dir)["seconds"],
                "tokens": dm.get("tokens_trained", "-"),
                "notes": "once per teacher, shared by all users"
                + (" (this run: copied from the student store)" if entry is not None else ""),
            }
        )

    # 2. tune (user, private data)
    u_dir = _stage(run_dir, "tune")
    inputs = {
        "student": student_path,
        "task": task.name,
        "private_data": cfg.private_data or "task default",
        "limits": [cfg.train_limit, cfg.val_limit],
    }
    key_cfg = dataclasses.asdict(tcfg)
    if not is_complete(u_dir, key_cfg, inputs):
        log(f"[tune] prompt on the student with private data{' (DP-SGD)' if dp_cfg else ''}")
        t0 = time.perf_counter()
        tune(
            student_path,
            task,
            data=cfg.private_data,
            out=u_dir,
            train_split=cfg.train_split,
            val_split=cfg.val_split,
            train_limit=cfg.train_limit,
            val_limit=cfg.val_limit,
            cfg=tcfg,
            device=cfg.device,
            progress=progress,
            resume=_attempt(u_dir, "tune", key_cfg, inputs),
        )
        write_manifest(
            u_dir,
            stage="tune",
            config=key_cfg,
            inputs=inputs,
            outputs=[
                u_dir / "prompt" / "prompt.safetensors",
                u_dir / "prompt" / "prompt.json",
                u_dir / "metrics.json",
            ],
            seconds=time.perf_counter() - t0,
            extra={"side": "user"},
        )
    else:
        log("[tune] reused")
    um = read_json(u_dir / "metrics.json")
    costs.append(
        {
            "stage": "tune (student)",
            "side": "user",
            "seconds": read_manifest(u_dir)["seconds"],
            "tokens": um.get("tokens", "-"),
            "notes": "private data stays here",
        }
    )

    # 3. transfer (provider, public data only): receives the prompt artifact, never the private data
    x_dir = _stage(run_dir, "transfer")
    inputs = {
        "prompt": str(u_dir / "prompt"),
        "student": student_path,
        "teacher": cfg.teacher,
        "public_data": cfg.public_data,
        "public_source": public_src,
        "prompt_sha256": read_manifest(u_dir)["outputs"]["prompt/prompt.safetensors"],
    }
    key_cfg = dataclasses.asdict(xcfg)
    if not is_complete(x_dir, key_cfg, inputs):
        log(
            f"[transfer] {xcfg.method}, alpha={xcfg.alpha}, {xcfg.n_public} public examples from {public_id}"
        )
        t0 = time.perf_counter()
        transfer(
            u_dir / "prompt",
            student_path,
            cfg.teacher,
            public_data=public_src,
            out=x_dir,
            cfg=xcfg,
            public_text_column=cfg.public_text_column,
            device=cfg.device,
            progress=progress,
            resume=_attempt(x_dir, "transfer", key_cfg, inputs),
        )
        m = read_manifest(x_dir)
        write_manifest(
            x_dir,
            stage="transfer",
            config=key_cfg,
            inputs=inputs,
            outputs=[x_dir / p for p in m["outputs"]],
            seconds=time.perf_counter() - t0,
            extra={"side": "provider", "stage_inputs": m["inputs"]},
        )
    else:
        log("[transfer] reused")
    xm = read_json(x_dir / "metrics.json")
    costs.append(
        {
            "stage": "transfer",
            "side": "provider",
            "seconds": read_manifest(x_dir)["seconds"],
            "tokens": xm.get("tokens", "-"),
            "notes": f"{xm['n_public']} public examples",
        }
    )

    # 3b. optional reference: prompt tuning directly on the teacher with private data (what POST avoids)
    tt_dir = None
    if cfg.with_teacher_tuning:
        tt_dir = _stage(run_dir, "teacher-tuning")
        inputs = {
            "teacher": cfg.teacher,
            "task": task.name,
            "private_data": cfg.private_data or "task default",
        }
        key_cfg = dataclasses.asdict(tcfg)
        if not is_complete(tt_dir, key_cfg, inputs):
            log("[teacher-tuning] non-private reference: prompt tuning on the teacher itself")
            t0 = time.perf_counter()
            tune(
                cfg.teacher,
                task,
                data=cfg.private_data,
                out=tt_dir,
                train_split=cfg.train_split,
                val_split=cfg.val_split,
                train_limit=cfg.train_limit,
                val_limit=cfg.val_limit,
                cfg=tcfg,
                device=cfg.device,
                progress=progress,
                resume=_attempt(tt_dir, "teacher-tuning", key_cfg, inputs),
            )
            write_manifest(
                tt_dir,
                stage="teacher-tuning",
                config=key_cfg,
                inputs=inputs,
                outputs=[tt_dir / "prompt" / "prompt.safetensors", tt_dir / "metrics.json"],
                seconds=time.perf_counter() - t0,
                extra={"side": "user+provider"},
            )
        costs.append(
            {
                "stage": "tune (teacher, reference)",
                "side": "reference",
                "seconds": read_manifest(tt_dir)["seconds"],
                "tokens": read_json(tt_dir / "metrics.json").get("tokens", "-"),
                "notes": "needs private data on the teacher",
            }
        )

    # 4. evaluate every baseline on the private task's evaluation split (user side; never used for selection)
    e_dir = _stage(run_dir, "evaluate")
    prompts = {
        "student_prompt": ("student", u_dir / "prompt"),
        "direct_transfer": ("teacher", u_dir / "prompt"),
        "post_transfer": ("teacher", x_dir / "prompt"),
        "teacher_zero_shot": ("teacher", None),
        "student_zero_shot": ("student", None),
    }
    if tt_dir is not None:
        prompts["teacher_tuned"] = ("teacher", tt_dir / "prompt")
    inputs = {
        k: (m, None if p is None else read_json(Path(p) / "prompt.json").get("sha256"))
        for k, (m, p) in prompts.items()
    }
    key_cfg = {"split": cfg.eval_split, "limit": cfg.eval_limit, "task": task.name}
    if task.is_generation:
        from promptport.generation import evaluate_stage

        evaluate_stage(
            e_dir,
            task=task,
            prompts=prompts,
            inputs=inputs,
            models={"teacher": cfg.teacher, "student": student_path},
            data=cfg.private_data,
            split=cfg.eval_split,
            limit=cfg.eval_limit,
            max_length=tcfg.max_length,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            progress=progress,
            log=log,
        )
    elif not is_complete(e_dir, key_cfg, inputs):
        log(f"[evaluate] {len(prompts)} baselines on {task.name}/{cfg.eval_split}")
        t0 = time.perf_counter()
        ds = load_split(task, cfg.private_data, cfg.eval_split, limit=cfg.eval_limit)
        models = {
            "teacher": load_model(cfg.teacher, device=cfg.device),
            "student": load_model(student_path, device=cfg.device),
        }
        max_len = tcfg.max_length
        clfs = {k: PromptClassifier(m.model, m.tokenizer, task, max_len) for k, m in models.items()}
        encs = {k: c.encode(ds) for k, c in clfs.items()}
        base = {}
        for name, (which, p) in prompts.items():
            emb = None if p is None else load_prompt(p).embeddings
            logits = clfs[which].predict_logits(
                encs[which], emb, cfg.eval_batch_size, progress, desc=name
            )
            y_pred = logits.argmax(-1).numpy()
            y = encs[which].labels.numpy()
            from promptport.classify import classification_metrics

            m = classification_metrics(y, y_pred, len(task.classes))
            m.update(bootstrap_ci(y, y_pred, len(task.classes), seed=cfg.seed))
            np.savez(e_dir / f"{name}.npz", y_true=y, y_pred=y_pred, logits=logits.numpy())
            base[name] = m
            log(f"  {name:18s} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
        write_json(
            e_dir / "metrics.json", {"split": cfg.eval_split, "n": len(ds), "baselines": base}
        )
        write_manifest(
            e_dir,
            stage="evaluate",
            config=key_cfg,
            inputs=inputs,
            outputs=[e_dir / "metrics.json"] + [e_dir / f"{k}.npz" for k in prompts],
            seconds=time.perf_counter() - t0,
            extra={"side": "user"},
        )
    else:
        log("[evaluate] reused")
    base = read_json(e_dir / "metrics.json")["baselines"]

    audit_summary = None
    if cfg.audit is not None:
        # The user's own leakage audit of their tuning configuration (user side, private data).
        from promptport.audit import SPEC_FILE, AuditSpec, audit, format_summary

        a_dir = inside(run_dir, "audit", "run_dir/audit")
        spec = AuditSpec(
            model=student_path,
            task=task.name,
            data=cfg.private_data,
            split=cfg.train_split,
            seed=cfg.seed,
            tune=dataclasses.asdict(tcfg),
            **cfg.audit,
        )
        spec.validate()
        log(f"[audit] LiRA with {spec.n_shadows} shadow prompts on a pool of {spec.pool_size}")
        t0 = time.perf_counter()
        r = audit(
            a_dir, spec, resume=(a_dir / SPEC_FILE).exists(), device=cfg.device, progress=progress
        )
        audit_summary = r["summary"]
        if audit_summary:
            log("  " + format_summary(audit_summary))
        costs.append(
            {
                "stage": "audit (LiRA shadows)",
                "side": "user",
                "seconds": round(time.perf_counter() - t0, 1),
                "notes": f"{spec.n_shadows} shadows",
            }
        )

    privacy = read_json(u_dir / "prompt" / "prompt.json").get("privacy")
    post, direct, zs = base["post_transfer"], base["direct_transfer"], base["teacher_zero_shot"]
    if task.is_generation:
        from promptport.generation import summary_line

        summary = summary_line(task, base, cfg.eval_split, privacy)
    else:
        summary = (
            f"POST transfer: {post['accuracy']:.4f} accuracy on {task.name}/{cfg.eval_split} "
            f"(teacher zero-shot {zs['accuracy']:.4f}, direct transfer {direct['accuracy']:.4f}, "
            f"student + prompt {base['student_prompt']['accuracy']:.4f})"
            + (f"; prompt privacy epsilon={privacy.get('epsilon'):.3g}" if privacy else "; no DP")
        )
    results = {
        "summary": summary,
        "eval_split": cfg.eval_split,
        "baselines": base,
        "privacy": privacy,
        "costs": costs,
        "audit": audit_summary,
        "info": {
            "task": task.name,
            "teacher": cfg.teacher,
            "student": student_path,
            "public_data": public_id,
            "public_overlap_with_private": n_overlap,
            "seed": cfg.seed,
            "run_seconds": round(time.perf_counter() - t_run, 1),
            **{k: v for k, v in versions().items() if k in ("promptport", "torch", "transformers")},
        },
    }
    write_json(run_dir / "results.json", results)
    build_report(run_dir)
    return results


def sweep_alpha(
    run_dir: str | Path, alphas: list[float], *, progress: bool = True, log=print
) -> dict:
    """Transfer the run's user prompt once per alpha and evaluate each teacher prompt (reported, never used
    to pick alpha: choosing alpha on the private test split would be test-set selection)."""
    from promptport.classify import PromptClassifier, classification_metrics
    from promptport.data import load_split
    from promptport.models import load_model
    from promptport.prompt import load_prompt
    from promptport.tasks import get_task
    from promptport.transfer import TransferConfig, transfer

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "tune" / "prompt").is_dir():
        raise BadInput(
            "run_dir", f"{run_dir} is not a run with a tuned prompt (run `promptport run` first)"
        )
    for a in alphas:
        if not 0.0 <= a <= 1.0:
            raise BadInput("alphas", f"every alpha must be in [0, 1], got {a}")
    cfg = RunConfig(**read_json(run_dir / "config.json"))
    task = get_task(cfg.task)
    if task.is_generation:
        raise BadInput("task", "sweep-alpha supports classification tasks only")
    student_path = cfg.student or str(run_dir / "distill" / "student")
    teacher, student = (
        load_model(cfg.teacher, device=cfg.device),
        load_model(student_path, device=cfg.device),
    )
    ds = load_split(task, cfg.private_data, cfg.eval_split, limit=cfg.eval_limit)
    clf = PromptClassifier(
        teacher.model, teacher.tokenizer, task, cfg.transfer.get("max_length", 128)
    )
    enc = clf.encode(ds)
    out_dir = inside(run_dir, "sweep-alpha", "run_dir/sweep-alpha")
    public_src = cfg.public_data
    if public_src.startswith("generate:") and (run_dir / "public" / "texts.jsonl").is_file():
        public_src = str(run_dir / "public" / "texts.jsonl")  # the texts the run's transfer used
    rows = []
    for a in alphas:
        xcfg = TransferConfig(**{"seed": cfg.seed, **cfg.transfer, "alpha": a, "method": "post"})
        r = transfer(
            run_dir / "tune" / "prompt",
            student,
            teacher,
            public_data=public_src,
            out=out_dir / f"alpha-{a:g}",
            cfg=xcfg,
            public_text_column=cfg.public_text_column,
            progress=progress,
        )
        logits = clf.predict_logits(
            enc,
            load_prompt(out_dir / f"alpha-{a:g}" / "prompt").embeddings,
            cfg.eval_batch_size,
            progress,
        )
        m = classification_metrics(enc.labels.numpy(), logits.argmax(-1).numpy(), len(task.classes))
        rows.append(
            {
                "alpha": a,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "heldout_loss": (r["best"] or {}).get("heldout_loss"),
            }
        )
        log(f"  alpha {a:g}: accuracy {m['accuracy']:.4f}")
    result = {"split": cfg.eval_split, "results": rows}
    write_json(out_dir / "results.json", result)
    if (run_dir / "results.json").is_file():
        from promptport.report import build_report

        build_report(run_dir)
    return result
