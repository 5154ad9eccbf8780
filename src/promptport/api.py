"""The Python API: every stage is a function, with its settings as a dataclass.

    from promptport.api import distill, tune, transfer, evaluate, audit, run
    from promptport.api import DistillConfig, TuneConfig, DPConfig, TransferConfig, AuditSpec, RunConfig

    d = distill("smollm2-135m-instruct", "runs/distill", DistillConfig(layers=2))
    u = tune(d["student"], "sst2", data="path/to/sst2", out="runs/tune",
             cfg=TuneConfig(dp=DPConfig(epsilon=8)))
    x = transfer("runs/tune/prompt", d["student"], "smollm2-135m-instruct",
                 public_data="embedded:rt_plots", out="runs/transfer")
    r = run("configs/default.yaml")            # the whole pipeline, as `promptport run`

Each function is what the CLI command of the same name calls; each writes its folder (metrics.json,
manifest or prompt artifact) and returns its metrics. The same names are importable from `promptport`
for the configs and `run` (`from promptport import TuneConfig, run`); `promptport.distill`,
`promptport.tune`, ... are the stage modules, whose function has the module's name.
"""

from __future__ import annotations

from pathlib import Path

from promptport.audit import AuditSpec, audit
from promptport.config import RunConfig, load_run_config
from promptport.distill import DistillConfig, distill
from promptport.evaluate import evaluate
from promptport.privacy import DPConfig
from promptport.transfer import TransferConfig, transfer
from promptport.tune import TuneConfig, tune

__all__ = [
    "AuditSpec",
    "DPConfig",
    "DistillConfig",
    "RunConfig",
    "TransferConfig",
    "TuneConfig",
    "audit",
    "distill",
    "evaluate",
    "run",
    "transfer",
    "tune",
]


def run(
    config: RunConfig | dict | str | Path | None = None, *, progress: bool = False, log=print
) -> dict:
    """The whole POST pipeline (`promptport run`): a RunConfig, a dict of its keys, a YAML path, or
    None for the embedded offline default. Returns results.json's content."""
    from promptport.config import DEFAULT_CONFIG
    from promptport.pipeline import run_pipeline

    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = load_run_config(None, config)
    else:
        cfg = load_run_config(config if config is not None else DEFAULT_CONFIG)
    return run_pipeline(cfg, progress=progress, log=log)
