"""Resource estimates and the pre-flight check: refuse, before anything is written, a run that would not
fit in the machine's memory or disk, instead of failing hours in.

The estimates come from parameter counts (models built on PyTorch's meta device: no weights loaded) times
bytes per value, plus the caches and the largest activations of each stage. They are deliberately simple
upper-ish bounds for the dominant terms, not a profiler; `promptport plan` can reuse `estimate_run`.
Skip the check with PROMPTPORT_SKIP_RESOURCE_CHECK=1 or `check_resources: false` in the run config.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from promptport.errors import BadInput

GIB = 1024 ** 3
SKIP_ENV = "PROMPTPORT_SKIP_RESOURCE_CHECK"


@dataclass
class ModelShape:
    """What the estimates need of a model: counted on the meta device from its config alone."""

    params: int
    layer_params: int  # in one transformer layer (the unit a student keeps or drops)
    hidden: int
    layers: int
    vocab: int


@dataclass
class Estimate:
    memory: dict[str, int] = field(default_factory=dict)  # peak bytes per stage, with its main terms
    disk: dict[str, int] = field(default_factory=dict)  # bytes written per item
    unknown: list[str] = field(default_factory=list)  # models whose size could not be read offline

    @property
    def peak_memory(self) -> tuple[str, int]:
        return max(self.memory.items(), key=lambda kv: kv[1]) if self.memory else ("-", 0)

    @property
    def total_disk(self) -> int:
        return sum(self.disk.values())


def model_shape(spec: str) -> ModelShape | None:
    """Parameter count and sizes of a model from its config only (no weights read); None when the config is
    not available offline (a hub id not in the local cache, an embedded model not yet converted)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from promptport.models import cache_root, resolve_source

    try:
        kind, where = resolve_source(spec)
    except BadInput:
        return None
    if kind == "embedded":
        where = str(cache_root() / "models" / where)
        if not (Path(where) / "config.json").is_file():
            return None
    try:
        cfg = AutoConfig.from_pretrained(where, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception:  # noqa: BLE001 - unknown size: the check skips it rather than guess
        return None
    emb = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    n_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    layer_params = sum(p.numel() for p in stacks[0][0].parameters()) if stacks and n_layers else 0
    return ModelShape(params=params, layer_params=layer_params, hidden=int(emb.shape[1]), layers=n_layers,
                      vocab=int(emb.shape[0]))


def estimate_run(cfg, tcfg=None, xcfg=None, dcfg=None) -> Estimate:
    """Peak memory per stage and disk written by `promptport run` with this RunConfig (stage configs as
    built by `pipeline.stage_configs`). Stages whose manifest in the run directory is complete are free."""
    from promptport.manifest import read_manifest

    if tcfg is None:
        from promptport.pipeline import stage_configs

        tcfg, xcfg, dcfg, _ = stage_configs(cfg)
    est = Estimate()
    teacher = model_shape(cfg.teacher)
    if teacher is None:
        est.unknown.append(cfg.teacher)
        return est
    f32 = 4
    run_dir = Path(cfg.run_dir)

    def done(stage: str) -> bool:
        m = read_manifest(run_dir / stage) if (run_dir / stage).is_dir() else None
        return bool(m and m.get("status") == "complete")

    t_weights = teacher.params * f32
    H, V = teacher.hidden, teacher.vocab
    if dcfg is not None and not done("distill"):
        own = teacher.layer_params * dcfg.layers  # the student's own (trained) layers
        lm_tokens = dcfg.max_tokens if (dcfg.alpha_ce or dcfg.alpha_lm or dcfg.alpha_cos) else 0
        cache = lm_tokens * (dcfg.topk * (2 + 4) + 4 + (2 * H if dcfg.alpha_cos else 0))
        cache += (dcfg.task_examples if dcfg.alpha_task else 0) * (V + H) * 2
        acts = (dcfg.batch_size * dcfg.block_size + dcfg.task_batch_size) * (3 * V + 16 * H * dcfg.layers) * f32
        est.memory["distill"] = t_weights + own * f32 * 4 + cache + acts  # weights, grads, AdamW m and v
        est.disk["distill: teacher cache"] = cache
        est.disk["distill: checkpoints (two during a swap) and student"] = own * f32 * (3 * 2 + 1)
        student_params = teacher.params - teacher.layer_params * (teacher.layers - dcfg.layers)
    else:
        s = model_shape(cfg.student) if cfg.student else None
        student_params = s.params if s is not None else teacher.params
    s_weights = student_params * f32
    tune_acts = tcfg.batch_size * tcfg.max_length * (16 * H * teacher.layers + 3 * V) * f32
    est.memory["tune"] = s_weights + tune_acts
    if cfg.with_teacher_tuning:
        est.memory["teacher-tuning"] = t_weights + tune_acts
    if not done("transfer"):
        est.memory["transfer"] = (t_weights + s_weights + 3 * xcfg.n_public * V * f32
                                  + xcfg.batch_size * xcfg.max_length * (16 * H * teacher.layers + 3 * V) * f32)
    est.memory["evaluate"] = t_weights + s_weights + cfg.eval_batch_size * tcfg.max_length * 16 * H * f32
    est.disk["prompts, metrics, reports"] = 16 * 1024 ** 2
    return est


def available(path: str | Path) -> tuple[int, int]:
    """(available memory, free disk at `path` or its nearest existing parent) in bytes."""
    try:
        import psutil

        mem = int(psutil.virtual_memory().available)
    except ImportError:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        mem = int(info["MemAvailable"].split()[0]) * 1024
    p = Path(path).expanduser().absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return mem, shutil.disk_usage(p).free


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def preflight(cfg, tcfg=None, xcfg=None, dcfg=None) -> Estimate | None:
    """BadInput('resources', ...) when the run's estimated peak memory or disk exceeds what is available."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0") or not getattr(cfg, "check_resources", True):
        return None
    est = estimate_run(cfg, tcfg, xcfg, dcfg)
    mem, disk = available(cfg.run_dir)
    stage, peak = est.peak_memory
    hint = f"; lower the sizes (max_tokens, task_examples, n_public, batch sizes) or set {SKIP_ENV}=1 to run anyway"
    if peak > mem:
        raise BadInput("resources", f"the {stage} stage needs about {_gib(peak)} of memory but {_gib(mem)} is "
                                    f"available{hint}")
    if est.total_disk > disk:
        big = max(est.disk.items(), key=lambda kv: kv[1])
        raise BadInput("resources", f"the run writes about {_gib(est.total_disk)} ({big[0]}: {_gib(big[1])}) but "
                                    f"{Path(cfg.run_dir)} has {_gib(disk)} free{hint}")
    return est
