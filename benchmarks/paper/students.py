"""The shared student: given, from the student store, or distilled here."""

from __future__ import annotations

from pathlib import Path

from promptport.fileio import read_json


def student_recipe(args):
    """The shared student's recipe: --student's own (its run's metrics.json), else --distill-config's:
    a run config's distill section or a `promptport distill --config` file (GENERAL_STUDENT)."""
    from promptport.config import section
    from promptport.distill import DistillConfig
    from promptport.fileio import read_yaml_mapping
    from promptport.pipeline import load_run_config

    run = Path(args.student).parent / "metrics.json" if args.student else None
    if run is not None and run.is_file():
        return DistillConfig(**read_json(run)["config"])
    data = read_yaml_mapping(args.distill_config)
    if "distill" in data:
        rc = load_run_config(args.distill_config)
        return DistillConfig(**{"seed": rc.seed, **rc.distill})
    flat = {str(k).replace("-", "_"): v for k, v in data.items()}
    seed = flat.pop("seed", 0)
    flat.pop("teacher", None)  # --teacher names it
    return DistillConfig(**section(DistillConfig, flat, "distill"), seed=seed)


def shared_student(args, state: Path, log, layers: int | None = None) -> str:
    """--student, else the recipe from the student store, else distilled here and filed in the store
    (one student shared by every task, method and seed). `layers`: the same recipe at another depth
    (the depth ablation)."""
    if args.student and layers is None:
        return args.student
    import dataclasses

    from promptport import student_store
    from promptport.distill import distill
    from promptport.models import load_model

    cfg = student_recipe(args).resolved(
        "cpu"
    )  # the key `promptport run` files the same student under
    if layers is not None:
        cfg = dataclasses.replace(cfg, layers=layers)
    key, basis = student_store.recipe_key(load_model(args.teacher).info, cfg.to_dict())
    entry = student_store.lookup(key)
    if entry is not None:
        log(f"[student] from the student store: {entry}")
        return str(entry / "student")
    d = state / ("student" if layers is None else f"student-L{layers}")
    log(f"[student] distilling {cfg.layers} layers into {d}")
    distill(
        args.teacher,
        d,
        cfg,
        resume=(d / "checkpoint" / "state.json").is_file(),
        device=getattr(args, "device", "cpu"),
    )
    return str(student_store.put(key, basis, d) / "student")


def depth_student_of(args, state: Path):
    """layers -> the depth ablation's student: a `--depth-students` folder (checked to have that
    many layers), else the shared recipe at that depth (`_student`, distilled on demand)."""
    from promptport.student import read_student_meta

    given = {}
    for item in args.depth_students:
        k, sep, folder = item.partition("=")
        if not sep or not k.isdigit():
            raise SystemExit(f"--depth-students: expected LAYERS=FOLDER, got {item!r}")
        layers = read_student_meta(folder).get("layers") or []
        if len(layers) != int(k):
            raise SystemExit(f"--depth-students: {folder} has {len(layers)} layers, not {k}")
        given[int(k)] = folder

    def student(k: int) -> str:
        return given[k] if k in given else shared_student(args, state, print, layers=k)

    return student


# What a reader needs to tell two students' recipes apart (the checksum decides identity).
RECIPE_KEYS = (
    "task_template", "alpha_task", "alpha_label", "corpus", "task_data", "task_examples",
    "max_tokens", "epochs", "lr", "precision",
)  # fmt: skip


def student_identity(student: str) -> dict:
    """What makes two students the same for the table: the checksum of the weights (checked against
    student.json), the kept layers, whether it was distilled, and the recipe where its run left one."""
    from promptport.student import read_student_meta

    meta = read_student_meta(student)
    sha = next(iter((meta.get("sha256") or {}).values()), "")
    ident = {
        "path": str(student),
        "sha256": sha[:16],
        "layers": meta.get("layers"),
        "distilled": meta.get("distilled", True),
    }
    if meta.get("continued_from"):  # distilled in several runs: the earlier ones, newest first
        ident["continued_from"] = meta["continued_from"]
    run = Path(student).parent / "metrics.json"
    if run.is_file():
        cfg = read_json(run).get("config") or {}
        ident["recipe"] = {
            k: cfg[k] for k in RECIPE_KEYS if k in cfg
        }  # fmt: skip
    return ident
