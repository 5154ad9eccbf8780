"""The run configuration: the keys of a run YAML, loading it, and building every stage's config from it.

`promptport run` (`promptport.pipeline`), the planner (`promptport.plan`) and the resource check
(`promptport.resources`) all read a run through this module, so none of them imports another to get it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from promptport.errors import BadInput, unknown_key
from promptport.fileio import read_yaml_mapping
from promptport.models import DEFAULT_MODEL

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


class RunConfig(BaseModel):
    """Keys of a run YAML. Sections (distill, tune, dp, transfer, audit) take the options of their stage."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str = "runs/default"
    seed: int = 0
    device: str = "cpu"
    teacher: str = DEFAULT_MODEL
    student: str | None = None  # an existing student; skips distillation
    task: str = "rt_snippets"
    private_data: str | None = None  # default: the task's own source (embedded for rt_snippets)
    train_split: str = "train"
    val_split: str = "validation"
    eval_split: str = "test"
    train_limit: int | None = None
    val_limit: int | None = None
    eval_limit: int | None = None
    public_data: str = "embedded:rt_plots"
    public_text_column: str | None = None
    allow_overlap: bool = False
    distill: dict[str, Any] = {}
    tune: dict[str, Any] = {}
    dp: dict[str, Any] | None = None
    transfer: dict[str, Any] = {}
    with_teacher_tuning: bool = False
    audit: dict[str, Any] | None = None
    eval_batch_size: int = 32
    check_resources: bool = (
        True  # refuse a run that would not fit in memory or on disk (promptport.resources)
    )
    reuse_student: bool = False  # take a student distilled earlier (same teacher, recipe, code)


def load_run_config(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """A validated run config from YAML plus overrides. `path=None` reads no file (RunConfig's defaults plus
    the overrides); the embedded offline default that `promptport run` uses is `load_run_config(DEFAULT_CONFIG)`."""
    data = read_yaml_mapping(path) if path is not None else {}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = [k for k in data if k not in RunConfig.model_fields]
    if unknown:
        raise unknown_key(unknown[0], RunConfig.model_fields, "run config")
    try:
        cfg = RunConfig(**data)
    except ValidationError as e:
        err = e.errors()[0]
        raise BadInput(".".join(str(x) for x in err["loc"]), err["msg"]) from None
    return cfg


def section(cls_or_fn, values: dict, name: str, drop: tuple[str, ...] = ()) -> dict:
    """Check a config section's keys against a stage's dataclass fields or function parameters."""
    if dataclasses.is_dataclass(cls_or_fn):
        valid = [f.name for f in dataclasses.fields(cls_or_fn)]
    else:
        import inspect

        valid = [p for p in inspect.signature(cls_or_fn).parameters]
    valid = [v for v in valid if v not in drop]
    for k in values:
        if k not in valid:
            raise unknown_key(f"{name}.{k}", valid)
    if dataclasses.is_dataclass(cls_or_fn):
        hints = typing.get_type_hints(cls_or_fn)
        for k, v in values.items():
            if k in hints and not _has_type(v, hints[k]):
                raise BadInput(f"{name}.{k}", f"must be {_type_name(hints[k])}, got {v!r}")
    return dict(values)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a settings field's annotation (int for float is fine, bool is not a
    number); annotations this does not know are accepted and left to the stage's own checks."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_has_type(x, args[0]) for x in value)
    return True


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return {
        type(None): "empty",
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "text",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def stage_configs(cfg: RunConfig):
    """Build and validate every stage's config before any work, so a typo fails in a second."""
    from promptport.transfer import TransferConfig
    from promptport.tune import TuneConfig

    tune_opts = section(TuneConfig, cfg.tune, "tune", drop=("dp",))
    transfer_opts = section(TransferConfig, cfg.transfer, "transfer")
    dp_cfg = None
    if cfg.dp is not None:
        from promptport.privacy import DPConfig, dp_from_settings

        dp_cfg = dp_from_settings(True, section(DPConfig, cfg.dp, "dp"), prefix="dp.")
    tune_cfg = TuneConfig(**{"seed": cfg.seed, **tune_opts}, dp=dp_cfg)
    transfer_cfg = TransferConfig(**{"seed": cfg.seed, **transfer_opts})
    transfer_cfg.validate()
    if cfg.audit is not None:
        from promptport.audit import AuditSpec

        audit_opts = {k: v for k, v in cfg.audit.items() if k != "transferred"}
        if not isinstance(cfg.audit.get("transferred", False), bool):
            raise BadInput("audit.transferred", "must be true or false")
        AuditSpec(
            model="-",
            task=cfg.task,
            **section(
                AuditSpec,
                audit_opts,
                "audit",
                drop=("model", "task", "data", "split", "seed", "tune"),
            ),
        ).validate()
    distill_cfg = None
    if cfg.student is None:
        from promptport.distill import DistillConfig

        distill_cfg = DistillConfig(
            **{"seed": cfg.seed, **section(DistillConfig, cfg.distill, "distill")}
        )
        distill_cfg.check()
    # 'auto' precision becomes what runs here, so stage configs, reuse checks and store keys say it
    from promptport.runtime import resolve_device, with_resolved_precision

    device = resolve_device(cfg.device)
    tune_cfg, transfer_cfg = (with_resolved_precision(c, device) for c in (tune_cfg, transfer_cfg))
    if distill_cfg is not None:
        distill_cfg = distill_cfg.resolved(device)
    return tune_cfg, transfer_cfg, distill_cfg, dp_cfg
