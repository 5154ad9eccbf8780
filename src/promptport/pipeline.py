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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptport.checkpoint import checkpoint_file
from promptport.config import DEFAULT_CONFIG as DEFAULT_CONFIG
from promptport.config import RunConfig as RunConfig
from promptport.config import load_run_config as load_run_config
from promptport.config import section as section
from promptport.config import stage_configs as stage_configs
from promptport.data import normalize_text
from promptport.errors import BadInput
from promptport.fileio import check_writable_dir, inside, read_json, write_json
from promptport.manifest import is_complete, read_manifest, stage_manifest, write_manifest


def _text_hashes(texts) -> set[str]:
    return {hashlib.sha256(normalize_text(t).encode()).hexdigest() for t in texts}


def shared_texts(a: list[str], b: list[str]) -> int:
    """How many distinct texts of `a` are also in `b`, compared whitespace/case-normalised."""
    return len(_text_hashes(a) & _text_hashes(b))


def check_overlap(private_texts: list[str], public_texts: list[str], allow: bool) -> int:
    """Exact duplicates (whitespace/case-normalised) between private and public data are refused."""
    n = shared_texts(private_texts, public_texts)
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


def run_stage(
    run_dir: Path,
    name: str,
    config: dict,
    inputs: dict,
    fn: Callable[[Path, bool], object],
    side: str,
    *,
    outputs: Callable[[Path], list[Path]],
    extra: Callable[[Path], dict] | None = None,
    log=print,
    describe: str = "",
) -> Path:
    """The one way a pipeline stage runs: reuse RUN/NAME when its manifest is complete for the same
    config and inputs; otherwise run `fn(stage_dir, resume)` (resume: an interrupted attempt with the
    same config and inputs left a checkpoint) and write the manifest (config, inputs, outputs with
    sha256, seconds, side and what `extra` adds). Returns the stage directory."""
    stage_dir = _stage(run_dir, name)
    if is_complete(stage_dir, config, inputs):
        log(f"[{name}] reused")
        return stage_dir
    log(f"[{name}] {describe}" if describe else f"[{name}]")
    t0 = time.perf_counter()
    fn(stage_dir, _attempt(stage_dir, name, config, inputs))
    more = extra(stage_dir) if extra is not None else {}
    write_manifest(
        stage_dir,
        stage=name,
        config=config,
        inputs=inputs,
        outputs=outputs(stage_dir),
        seconds=time.perf_counter() - t0,
        extra={"side": side, **more},
    )
    return stage_dir


def _cost(stage_dir: Path, stage: str, side: str, notes: str, tokens_key: str = "tokens") -> dict:
    metrics = stage_dir / "metrics.json"
    tokens = read_json(metrics).get(tokens_key, "-") if metrics.is_file() else "-"
    seconds = stage_manifest(stage_dir)["seconds"]
    return {"stage": stage, "side": side, "seconds": seconds, "tokens": tokens, "notes": notes}


@dataclasses.dataclass
class _Run:
    """What every stage of one `promptport run` reads: the config, checked stage configs, the task."""

    cfg: RunConfig
    run_dir: Path
    task: Any
    tune_cfg: Any
    transfer_cfg: Any
    distill_cfg: Any
    dp_cfg: Any
    public_id: str
    public_source: str  # cfg.public_data, or the file of texts the teacher wrote for generate:N
    progress: bool
    log: Callable
    costs: list[dict] = dataclasses.field(default_factory=list)


def _check_select_data(cfg: RunConfig, task, transfer_cfg, private_texts: list[str]) -> None:
    """The provider's labelled selection set may share no text with the user's training or evaluation
    split: choosing the kept prompt on the user's own examples would leak them and inflate the test."""
    from promptport.data import load_split
    from promptport.transfer_select import load_select_data

    sel = load_select_data(
        task, transfer_cfg.select_data, transfer_cfg.n_select, transfer_cfg.seed
    )  # the examples the transfer will draw
    sel_texts = [t for v in sel.fields.values() for t in v]
    held = load_split(task, cfg.private_data, cfg.eval_split, require_labels=False)
    private = private_texts + [t for v in held.fields.values() for t in v]
    n = shared_texts(private, sel_texts)
    if n:
        raise BadInput(
            "transfer.select_data",
            f"{n} selection examples are exact duplicates of the user's {cfg.train_split} or "
            f"{cfg.eval_split} examples; use labelled public data that is not the user's",
        )


def _prepare(cfg: RunConfig, progress: bool, log) -> tuple[_Run, int]:
    """Checked configs, and the private/public overlap check (private data is read here only for it;
    it never goes to a provider-side stage). Returns the run and the number of overlapping texts."""
    from promptport.data import load_split, load_texts
    from promptport.runtime import seed_everything
    from promptport.tasks import get_task

    run_dir = check_writable_dir(cfg.run_dir, "run_dir")
    if run_dir.is_dir():  # temp files of atomic writes cut short by a kill; we hold the lock
        for stale in run_dir.rglob(".*.tmp"):
            if stale.is_file():
                stale.unlink()
    seed_everything(cfg.seed)
    task = get_task(cfg.task)
    tune_cfg, transfer_cfg, distill_cfg, dp_cfg = stage_configs(cfg)
    # the whole split: tune() draws its train_limit subset at random, so any row may be trained on
    private_train: Any  # a GenDataset or a TextDataset: both have .fields
    if task.is_generation:  # the inputs (e.g. E2E MRs) must not be shared with the public data
        from promptport.generation import load_gen_split

        private_train = load_gen_split(task, cfg.private_data, cfg.train_split)
    else:
        private_train = load_split(task, cfg.private_data, cfg.train_split)
    public_src = cfg.public_data
    if public_src.startswith("generate:"):  # the teacher writes the public texts (provider side)
        from promptport.models import load_model
        from promptport.public_gen import generate_public

        log(f"[public] the teacher writes {public_src.split(':', 1)[1]} public texts")
        run_dir.mkdir(parents=True, exist_ok=True)
        teacher = load_model(cfg.teacher, device=cfg.device)
        public_src, _ = generate_public(
            teacher, task, public_src, run_dir / "public", seed=cfg.seed, progress=progress
        )
    public_texts, public_id = load_texts(public_src, text_column=cfg.public_text_column)
    if transfer_cfg.public_chars and not task.is_generation:  # the pieces the transfer will use too
        from promptport.transfer_common import recut_texts

        public_texts += recut_texts(
            public_texts, transfer_cfg.public_chars, transfer_cfg.public_cut
        )
    private_texts = [t for v in private_train.fields.values() for t in v]
    n_overlap = check_overlap(private_texts, public_texts, cfg.allow_overlap)
    if transfer_cfg.select_data is not None and not task.is_generation:
        _check_select_data(cfg, task, transfer_cfg, private_texts)
    del private_train, private_texts
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.model_dump())
    configs = (tune_cfg, transfer_cfg, distill_cfg, dp_cfg)
    run = _Run(cfg, run_dir, task, *configs, public_id, str(public_src), progress, log)
    return run, n_overlap


def _distill_stage(run: _Run) -> str:
    """1. distil (provider): the student folder's path (the configured student, a student of the same
    teacher and recipe from the provider's student store, or a new one, filed in the store)."""
    from promptport.distill import distill

    cfg, distill_cfg = run.cfg, run.distill_cfg
    if cfg.student is not None:
        return cfg.student
    from_store: list[Path] = []  # the store entry this run's student was copied from, if any

    def go(stage_dir: Path, again: bool) -> None:
        store_key = None
        if cfg.reuse_student:
            from promptport import student_store
            from promptport.models import load_model

            info = load_model(cfg.teacher, device=cfg.device).info
            store_key = student_store.recipe_key(info, distill_cfg.to_dict())
            entry = student_store.lookup(store_key[0])
            if entry is not None:
                run.log(f"[distill] reused from the student store: {entry}")
                student_store.fetch(entry, stage_dir)
                from_store.append(entry)
                return
        resume = again and checkpoint_file(stage_dir).is_file()
        distill(
            cfg.teacher,
            stage_dir,
            distill_cfg,
            resume=resume,
            device=cfg.device,
            progress=run.progress,
        )
        if store_key is not None:
            student_store.put(*store_key, stage_dir)

    def outputs(stage_dir: Path) -> list[Path]:
        files = [p for p in (stage_dir / "student").rglob("*") if p.is_file()]
        return files + [stage_dir / "metrics.json"]

    distill_dir = run_stage(
        run.run_dir,
        "distill",
        distill_cfg.to_dict(),
        {"teacher": cfg.teacher},
        go,
        "provider",
        outputs=outputs,
        extra=lambda _: {"student_store": str(from_store[0])} if from_store else {},
        log=run.log,
        describe=f"{cfg.teacher} -> {distill_cfg.layers}-layer student",
    )
    notes = "once per teacher, shared by all users"
    if from_store:
        notes += " (this run: copied from the student store)"
    run.costs.append(_cost(distill_dir, "distill", "provider", notes, tokens_key="tokens_trained"))
    return str(distill_dir / "student")


def _tune_stage(run: _Run, name: str, model: str, side: str, describe: str) -> Path:
    """2. tune (user, private data) on `model`; also the optional teacher-tuning reference."""
    from promptport.tune import tune

    cfg, task = run.cfg, run.task
    inputs: dict[str, Any] = {
        "student" if name == "tune" else "teacher": model,
        "task": task.name,
        "private_data": cfg.private_data or "task default",
    }
    if name == "tune":
        inputs["limits"] = [cfg.train_limit, cfg.val_limit]

    def go(stage_dir: Path, resume: bool) -> None:
        tune(
            model,
            task,
            data=cfg.private_data,
            out=stage_dir,
            train_split=cfg.train_split,
            val_split=cfg.val_split,
            train_limit=cfg.train_limit,
            val_limit=cfg.val_limit,
            cfg=run.tune_cfg,
            device=cfg.device,
            progress=run.progress,
            resume=resume,
        )

    def outputs(stage_dir: Path) -> list[Path]:
        files = [stage_dir / "prompt" / "prompt.safetensors", stage_dir / "metrics.json"]
        return (
            files
            if name != "tune"
            else [*files[:1], stage_dir / "prompt" / "prompt.json", files[1]]
        )

    config = dataclasses.asdict(run.tune_cfg)
    return run_stage(
        run.run_dir, name, config, inputs, go, side, outputs=outputs, log=run.log, describe=describe
    )


def _transfer_stage(run: _Run, tune_dir: Path, student_path: str) -> Path:
    """3. transfer (provider, public data only): receives the prompt artifact, never private data."""
    from promptport.transfer import transfer

    cfg, transfer_cfg = run.cfg, run.transfer_cfg
    inputs = {
        "prompt": str(tune_dir / "prompt"),
        "student": student_path,
        "teacher": cfg.teacher,
        "public_data": cfg.public_data,
        "public_source": run.public_source,
        "prompt_sha256": stage_manifest(tune_dir)["outputs"]["prompt/prompt.safetensors"],
    }

    def go(stage_dir: Path, resume: bool) -> None:
        transfer(
            tune_dir / "prompt",
            student_path,
            cfg.teacher,
            public_data=run.public_source,
            out=stage_dir,
            cfg=transfer_cfg,
            public_text_column=cfg.public_text_column,
            device=cfg.device,
            progress=run.progress,
            resume=resume,
        )

    def outputs(stage_dir: Path) -> list[Path]:  # what transfer() itself listed in its manifest
        return [stage_dir / p for p in stage_manifest(stage_dir)["outputs"]]

    describe = f"{transfer_cfg.method}, alpha={transfer_cfg.alpha}, {transfer_cfg.n_public} public examples from {run.public_id}"
    transfer_dir = run_stage(
        run.run_dir,
        "transfer",
        dataclasses.asdict(transfer_cfg),
        inputs,
        go,
        "provider",
        outputs=outputs,
        extra=lambda stage_dir: {"stage_inputs": stage_manifest(stage_dir)["inputs"]},
        log=run.log,
        describe=describe,
    )
    n_public = read_json(transfer_dir / "metrics.json")["n_public"]
    run.costs.append(_cost(transfer_dir, "transfer", "provider", f"{n_public} public examples"))
    return transfer_dir


def _evaluate_stage(run: _Run, prompts: dict[str, tuple[str, Path | None]], student_path: str):
    """4. every baseline on the private task's evaluation split (user side; never used for selection)."""
    from promptport.evaluate import evaluate_baselines

    cfg, task = run.cfg, run.task
    inputs = {
        k: (m, None if p is None else read_json(Path(p) / "prompt.json").get("sha256"))
        for k, (m, p) in prompts.items()
    }
    if task.is_generation:  # generation: the evaluation generates; it keeps its own manifest
        from promptport.generation import evaluate_stage

        gen_dir = _stage(run.run_dir, "evaluate")
        evaluate_stage(
            gen_dir,
            task=task,
            prompts=prompts,
            inputs=inputs,
            models={"teacher": cfg.teacher, "student": student_path},
            data=cfg.private_data,
            split=cfg.eval_split,
            limit=cfg.eval_limit,
            max_length=run.tune_cfg.max_length,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            progress=run.progress,
            log=run.log,
        )
        return read_json(gen_dir / "metrics.json")["baselines"]
    config = {"split": cfg.eval_split, "limit": cfg.eval_limit, "task": task.name}

    def go(stage_dir: Path, resume: bool) -> None:
        evaluate_baselines(
            {"teacher": cfg.teacher, "student": student_path},
            task,
            prompts,
            stage_dir,
            data=cfg.private_data,
            split=cfg.eval_split,
            limit=cfg.eval_limit,
            max_length=run.tune_cfg.max_length,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            device=cfg.device,
            progress=run.progress,
            log=run.log,
        )

    def outputs(stage_dir: Path) -> list[Path]:
        return [stage_dir / "metrics.json"] + [stage_dir / f"{k}.npz" for k in prompts]

    describe = f"{len(prompts)} baselines on {task.name}/{cfg.eval_split}"
    evaluate_dir = run_stage(
        run.run_dir,
        "evaluate",
        config,
        inputs,
        go,
        "user",
        outputs=outputs,
        log=run.log,
        describe=describe,
    )
    return read_json(evaluate_dir / "metrics.json")["baselines"]


def _audit_stage(run: _Run, student_path: str) -> dict | None:
    """The user's own leakage audit of their tuning configuration (user side, private data)."""
    from promptport.audit import SPEC_FILE, AuditSpec, audit, format_summary

    cfg = run.cfg
    assert cfg.audit is not None
    a_dir = inside(run.run_dir, "audit", "run_dir/audit")
    opts = dict(cfg.audit)
    transferred = opts.pop("transferred", False)
    spec = AuditSpec(
        model=student_path,
        task=run.task.name,
        data=cfg.private_data,
        split=cfg.train_split,
        seed=cfg.seed,
        tune=dataclasses.asdict(run.tune_cfg),
        **opts,
    )
    spec.validate()
    run.log(f"[audit] LiRA with {spec.n_shadows} shadow prompts on a pool of {spec.pool_size}")
    t0 = time.perf_counter()
    resume = (a_dir / SPEC_FILE).exists()
    r = audit(a_dir, spec, resume=resume, device=cfg.device, progress=run.progress)
    if r["summary"]:
        run.log("  " + format_summary(r["summary"]))
    run.costs.append(
        {
            "stage": "audit (LiRA shadows)",
            "side": "user",
            "seconds": round(time.perf_counter() - t0, 1),
            "notes": f"{spec.n_shadows} shadows",
        }
    )
    summary = r["summary"]
    if transferred and summary:
        summary = dict(summary, transferred=_audit_transferred(run, a_dir, student_path))
    return summary


def _audit_transferred(run: _Run, a_dir: Path, student_path: str) -> dict:
    """Every shadow prompt transferred to the teacher with the run's public data and transfer
    settings; the same attacks on the teacher side (promptport.audit_transfer)."""
    from promptport.audit_transfer import compare_sides, transfer_shadows

    if run.task.is_generation:
        raise BadInput("audit.transferred", "the transferred-prompt audit is for classification")
    run.log("[audit] transferring every shadow prompt to the teacher (public data only)")
    t0 = time.perf_counter()
    transfer_shadows(
        a_dir,
        run.cfg.teacher,
        public_data=run.cfg.public_data,
        cfg=run.transfer_cfg,
        student=student_path,
        public_text_column=run.cfg.public_text_column,
        device=run.cfg.device,
        progress=run.progress,
    )
    rep = compare_sides(a_dir)
    run.log(
        f"  transferred prompts: teacher-side AUC {rep['teacher_auc']:.4f} "
        f"{rep['teacher_auc_ci']} vs student-side {rep['student_auc']:.4f} {rep['student_auc_ci']}"
    )
    run.costs.append(
        {
            "stage": "audit (transferred shadows)",
            "side": "user",
            "seconds": round(time.perf_counter() - t0, 1),
            "notes": "each shadow prompt transferred to the teacher with public data",
        }
    )
    return rep


def _summary(run: _Run, base: dict, privacy: dict | None) -> str:
    task, split = run.task, run.cfg.eval_split
    if task.is_generation:
        from promptport.generation import summary_line

        return summary_line(task, base, split, privacy)
    post, direct, zs = base["post_transfer"], base["direct_transfer"], base["teacher_zero_shot"]
    return (
        f"POST transfer: {post['accuracy']:.4f} accuracy on {task.name}/{split} "
        f"(teacher zero-shot {zs['accuracy']:.4f}, direct transfer {direct['accuracy']:.4f}, "
        f"student + prompt {base['student_prompt']['accuracy']:.4f})"
        + (f"; prompt privacy epsilon={privacy.get('epsilon'):.3g}" if privacy else "; no DP")
    )


def _run_pipeline(cfg: RunConfig, *, progress: bool = True, log=print) -> dict:
    from promptport.report import build_report
    from promptport.runtime import versions

    t_run = time.perf_counter()
    run, n_overlap = _prepare(cfg, progress, log)
    student_path = _distill_stage(run)
    dp_note = " (DP-SGD)" if run.dp_cfg else ""
    tune_dir = _tune_stage(
        run, "tune", student_path, "user", f"prompt on the student with private data{dp_note}"
    )
    run.costs.append(_cost(tune_dir, "tune (student)", "user", "private data stays here"))
    transfer_dir = _transfer_stage(run, tune_dir, student_path)
    prompts: dict[str, tuple[str, Path | None]] = {
        "student_prompt": ("student", tune_dir / "prompt"),
        "direct_transfer": ("teacher", tune_dir / "prompt"),
        "post_transfer": ("teacher", transfer_dir / "prompt"),
        "teacher_zero_shot": ("teacher", None),
        "student_zero_shot": ("student", None),
    }
    if cfg.with_teacher_tuning:  # the non-private reference POST avoids: tuning on the teacher
        describe = "non-private reference: prompt tuning on the teacher itself"
        teacher_tuning_dir = _tune_stage(
            run, "teacher-tuning", cfg.teacher, "user+provider", describe
        )
        notes = "needs private data on the teacher"
        run.costs.append(_cost(teacher_tuning_dir, "tune (teacher, reference)", "reference", notes))
        prompts["teacher_tuned"] = ("teacher", teacher_tuning_dir / "prompt")
    base = _evaluate_stage(run, prompts, student_path)
    audit_summary = _audit_stage(run, student_path) if cfg.audit is not None else None

    privacy = read_json(tune_dir / "prompt" / "prompt.json").get("privacy")
    summary = _summary(run, base, privacy)
    results = {
        "summary": summary,
        "eval_split": cfg.eval_split,
        "baselines": base,
        "privacy": privacy,
        "costs": run.costs,
        "audit": audit_summary,
        "info": {
            "task": run.task.name,
            "teacher": cfg.teacher,
            "student": student_path,
            "public_data": run.public_id,
            "public_overlap_with_private": n_overlap,
            "seed": cfg.seed,
            "run_seconds": round(time.perf_counter() - t_run, 1),
            **{k: v for k, v in versions().items() if k in ("promptport", "torch", "transformers")},
        },
    }
    write_json(run.run_dir / "results.json", results)
    build_report(run.run_dir)
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
        transfer_cfg = TransferConfig(
            **{"seed": cfg.seed, **cfg.transfer, "alpha": a, "method": "post"}
        )
        r = transfer(
            run_dir / "tune" / "prompt",
            student,
            teacher,
            public_data=public_src,
            out=out_dir / f"alpha-{a:g}",
            cfg=transfer_cfg,
            public_text_column=cfg.public_text_column,
            progress=progress,
        )
        logits = clf.predict_logits(
            enc,
            load_prompt(out_dir / f"alpha-{a:g}" / "prompt").embeddings,
            cfg.eval_batch_size,
            progress,
        )
        assert enc.labels is not None  # the validation split has labels
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
