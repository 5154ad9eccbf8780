"""The pre-flight check: refuse, before anything is written, a run that would not fit in the machine's
memory or disk, instead of failing hours in.

Memory comes from `promptport plan` (`plan.estimate_run`: per-stage peaks from parameter counts on the meta
device, caches, activations, optimiser); this module adds what the run writes to disk (the distillation
teacher cache and checkpoints dominate) and compares both with what is available. Stages whose manifest in
the run directory is already complete cost nothing. Skip the check with PROMPTPORT_SKIP_RESOURCE_CHECK=1 or
`check_resources: false` in the run config.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from promptport.errors import BadInput

GIB = 1024**3
SKIP_ENV = "PROMPTPORT_SKIP_RESOURCE_CHECK"


@dataclass
class Estimate:
    memory: dict[str, int] = field(default_factory=dict)  # peak bytes per stage still to run
    disk: dict[str, int] = field(default_factory=dict)  # bytes written per item
    available_memory: int | None = None  # as `plan` sees the run's device (free GPU memory or RAM)
    unknown: str | None = (
        None  # why nothing could be estimated (a model's config not readable offline)
    )

    @property
    def peak_memory(self) -> tuple[str, int]:
        return max(self.memory.items(), key=lambda kv: kv[1]) if self.memory else ("-", 0)

    @property
    def total_disk(self) -> int:
        return sum(self.disk.values())


def estimate_resources(cfg) -> Estimate:
    """Peak memory per stage (from `plan.estimate_run`) and disk written by `promptport run` with this
    RunConfig, leaving out stages that are already complete in its run directory."""
    from promptport import plan
    from promptport.config import stage_configs
    from promptport.manifest import read_manifest

    _, _, distill_cfg, _ = stage_configs(cfg)
    est = Estimate()
    try:
        p = plan.estimate_run(cfg)
    except BadInput as e:  # e.g. a hub model not in the local cache: unknown, so not refused
        est.unknown = str(e)
        return est
    run_dir = Path(cfg.run_dir)

    def done(stage: str) -> bool:
        m = read_manifest(run_dir / stage) if (run_dir / stage).is_dir() else None
        return bool(m and m.get("status") == "complete")

    est.memory = {k: int(v["peak_bytes"]) for k, v in p["stages"].items() if not done(k)}
    est.available_memory = p.get("available_bytes")
    if distill_cfg is not None and not done("distill"):
        t = plan.model_shape(cfg.teacher)
        own = (
            t.with_layers(distill_cfg.layers).params - t.embedding_params
        )  # the student's trained weights
        cache = (distill_cfg.max_tokens if distill_cfg.uses_lm else 0) * (
            distill_cfg.topk * (2 + 4) + 4 + (2 * t.hidden if distill_cfg.alpha_cos else 0)
        )
        cache += (
            (distill_cfg.task_examples if distill_cfg.alpha_task else 0) * (t.vocab + t.hidden) * 2
        )
        est.disk["distill: teacher cache"] = cache
        est.disk["distill: checkpoints (two during a swap) and student"] = own * 4 * (3 * 2 + 1)
    est.disk["prompts, metrics, reports"] = 16 * 1024**2
    return est


def available(path: str | Path) -> tuple[int, int]:
    """(available memory, free disk at `path` or its nearest existing parent) in bytes."""
    try:
        import psutil

        mem = int(psutil.virtual_memory().available)
    except ImportError:
        info = dict(
            line.split(":", 1)
            for line in Path("/proc/meminfo").read_text().splitlines()
            if ":" in line
        )
        mem = int(info["MemAvailable"].split()[0]) * 1024
    p = Path(path).expanduser().absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return mem, shutil.disk_usage(p).free


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def preflight(cfg) -> Estimate | None:
    """BadInput('resources', ...) when the run's estimated peak memory or disk exceeds what is available."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0") or not getattr(
        cfg, "check_resources", True
    ):
        return None
    est = estimate_resources(cfg)
    mem, disk = available(cfg.run_dir)
    if est.available_memory is not None and not str(cfg.device).startswith("cpu"):
        mem = est.available_memory  # the GPU's free memory
    stage, peak = est.peak_memory
    hint = f"; lower the sizes (max_tokens, task_examples, n_public, batch sizes) or set {SKIP_ENV}=1 to run anyway"
    if peak > mem:
        raise BadInput(
            "resources",
            f"the {stage} stage needs about {_gib(peak)} of memory but {_gib(mem)} is "
            f"available{hint}",
        )
    if est.total_disk > disk:
        big = max(est.disk.items(), key=lambda kv: kv[1])
        raise BadInput(
            "resources",
            f"the run writes about {_gib(est.total_disk)} ({big[0]}: {_gib(big[1])}) but "
            f"{Path(cfg.run_dir)} has {_gib(disk)} free{hint}",
        )
    return est
