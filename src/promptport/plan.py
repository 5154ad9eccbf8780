"""`promptport plan`: parameters and expected peak memory of every stage of a run, before running it.

Works from the models' *configurations* only (config.json, or the embedded teacher's GGUF header):
parameter counts come from building the model on PyTorch's meta device (no weights are allocated or
downloaded), memory from a per-stage model of what is resident at its peak:

* weights: what the stage loads, in the dtype it loads them in. A student is rebuilt from its teacher,
  so loading one briefly holds the teacher as well.
* saved activations of the training step: back-propagating through a transformer block keeps, per
  token, about 9H + 4I (gated MLP) or 9H + 3I floats (H = hidden size, I = MLP width): norm inputs,
  rotary q/k, attention q/k/v/output, every linear layer's input (autograd saves them even when the
  weights are frozen and only a soft prompt trains), MLP activations. Checked against measured peak RSS
  on SmolLM2-135M (tests/test_plan.py). Batches are taken at full length (max_length; a shared prompt
  counted once per batch on a causal LM, per input under DP-SGD or on a masked LM), so the estimate is
  an upper bound for short inputs.
* caches: distillation's teacher cache (top-k logits, hidden states, answer logits) and transfer's
  three full-vocabulary logit tables of the public set.
* optimiser state (AdamW: gradient + two moments per trained parameter) and the process itself (Python,
  torch and transformers loaded: `RUNTIME_BYTES` on the CPU, `CUDA_CONTEXT_BYTES` on a GPU).

On the CPU the number is the process's peak resident memory; on a GPU it is the device memory the
stage needs. `estimate_run(config)` returns it per stage in bytes; the reliability checks use it as a
pre-flight test.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from promptport.errors import BadInput

MiB = 1 << 20
GiB = 1 << 30
# Resident memory of a process that has imported torch, transformers and promptport (measured on Linux
# x86-64, torch 2.13 CPU, transformers 5.24: 305-315 MiB); override with PROMPTPORT_RUNTIME_MIB.
RUNTIME_BYTES = int(float(os.environ.get("PROMPTPORT_RUNTIME_MIB", "310")) * MiB)
CUDA_CONTEXT_BYTES = 600 * MiB  # CUDA context + cuBLAS workspaces, roughly, on current GPUs
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass
class Shape:
    """What memory depends on, read from a model configuration."""

    model_type: str
    masked_lm: bool
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    params: int  # all parameters (tied matrices counted once)
    layer_params: int  # one transformer block
    embedding_params: int  # the input embedding matrix (the largest single tensor)
    gated_mlp: bool

    def with_layers(self, k: int) -> Shape:
        if not 0 < k <= self.layers:
            raise BadInput("layers", f"a student needs 1..{self.layers} layers, got {k}")
        return dataclasses.replace(
            self, layers=k, params=self.params - (self.layers - k) * self.layer_params
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(spec: str):
    """The transformers config of a model spec without loading weights (the embedded teacher: its cached
    config, else the GGUF header; a student folder: its own config, which names the student's depth)."""
    from transformers import AutoConfig

    from promptport.models import EMBEDDED_MODELS, cache_root, resolve_source

    kind, where = resolve_source(spec)
    try:
        if kind == "embedded":
            cached = cache_root() / "models" / where / "config.json"
            if cached.is_file():
                return AutoConfig.from_pretrained(cached.parent, local_files_only=True)
            import importlib.util

            em = EMBEDDED_MODELS[where]
            found = importlib.util.find_spec(em.package)
            if found is None or not found.submodule_search_locations:
                raise BadInput(
                    "model", f"the embedded model '{where}' needs its package: {em.install_hint}"
                )
            gdir = Path(list(found.submodule_search_locations)[0])
            return AutoConfig.from_pretrained(gdir, gguf_file=em.gguf_file)
        return AutoConfig.from_pretrained(where, local_files_only=kind == "local")
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(
            "model", f"cannot read the configuration of '{spec}': {str(e).splitlines()[0]}"
        ) from None


def shape_of(cfg) -> Shape:
    """Parameter counts by building the model on the meta device: exact for any architecture, no memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from promptport.models import is_masked_lm_config

    mlm = is_masked_lm_config(cfg)
    with torch.device("meta"):
        model = (AutoModelForMaskedLM if mlm else AutoModelForCausalLM).from_config(cfg)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
    blocks = _blocks(model)
    layer_params = sum(p.numel() for p in blocks[0].parameters()) if len(blocks) else 0
    emb = model.get_input_embeddings().weight
    gated = any(hasattr(m, "gate_proj") for m in blocks[0].modules()) if len(blocks) else False
    hidden = int(emb.shape[1])
    inter = int(
        getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    )
    return Shape(
        model_type=cfg.model_type,
        masked_lm=mlm,
        layers=len(blocks),
        hidden=hidden,
        intermediate=inter,
        vocab=int(emb.shape[0]),
        params=int(params),
        layer_params=int(layer_params),
        embedding_params=int(emb.numel()),
        gated_mlp=gated,
    )


def _blocks(model):
    """The ModuleList of transformer blocks (the longest ModuleList in the model)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


def model_shape(spec: str) -> Shape:
    return shape_of(load_config(spec))


# ---------------------------------------------------------------- the memory model


def weights_bytes(shape: Shape, dtype_bytes: int = 4) -> int:
    return shape.params * dtype_bytes


def activation_bytes(shape: Shape, tokens: int, dtype_bytes: int = 4) -> int:
    """Saved activations of one backward pass through all blocks, for `tokens` tokens (frozen or not:
    autograd keeps the linear layers' inputs either way)."""
    per_token_layer = 9 * shape.hidden + (4 if shape.gated_mlp else 3) * shape.intermediate
    return tokens * shape.layers * per_token_layer * dtype_bytes


def inference_bytes(shape: Shape, tokens: int, dtype_bytes: int = 4) -> int:
    """Transient working memory of one inference batch (one layer's intermediates at a time)."""
    return tokens * (3 * shape.hidden + 2 * shape.intermediate) * dtype_bytes


def load_peak(teacher: Shape, student: Shape | None, dtype_bytes: int = 4) -> int:
    """Weights while loading: a student is rebuilt from its teacher (both held for a moment); the largest
    tensor (the embedding matrix) briefly exists twice."""
    peak = weights_bytes(teacher, dtype_bytes) + teacher.embedding_params * dtype_bytes
    if student is not None:
        peak += weights_bytes(student, dtype_bytes)
    return peak


@dataclass
class StagePlan:
    stage: str
    peak_bytes: int
    parts: dict  # what the peak is made of (bytes)
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "peak_bytes": int(self.peak_bytes),
            "peak_gib": round(self.peak_bytes / GiB, 3),
            "parts": {k: int(v) for k, v in self.parts.items()},
            "note": self.note,
        }


def _peak(stage: str, base: int, phases: dict[str, dict], note: str = "") -> StagePlan:
    """A stage's peak: the largest of its phases (each a dict of resident parts)."""
    name, parts = max(phases.items(), key=lambda kv: sum(kv[1].values()))
    return StagePlan(
        stage, base + sum(parts.values()), {"runtime": base, **parts}, note or f"peak while {name}"
    )


def estimate_run(
    config,
    *,
    device: str | None = None,
    teacher: str | None = None,
    layers: int | None = None,
    shapes: dict | None = None,
) -> dict:
    """Peak memory per stage of a run config (a RunConfig, a dict of its keys, or a YAML path), in bytes.

    `teacher` / `layers` override the config's teacher and student depth; `device` its device (cpu, cuda,
    auto). `shapes` ({"teacher": Shape, "student": Shape}) skips reading configs (tests, repeated calls).
    Returns {"device", "teacher", "student", "stages": {name: StagePlan dict}, "peak_bytes", ...}.
    """
    from promptport.config import RunConfig, load_run_config, stage_configs

    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = load_run_config(None, config)
    else:
        cfg = load_run_config(config)
    if teacher is not None:
        cfg = cfg.model_copy(update={"teacher": teacher})
    tune_cfg, transfer_cfg, distill_cfg, dp_cfg = stage_configs(cfg)
    dev = _device_kind(device or cfg.device)
    t_shape, s_shape = _run_shapes(cfg, distill_cfg, layers, dict(shapes or {}))
    gpu = dev == "cuda"
    base = CUDA_CONTEXT_BYTES if gpu else RUNTIME_BYTES
    fp = 4  # stages load weights in float32 (load_model's default)
    t_w, s_w = weights_bytes(t_shape, fp), weights_bytes(s_shape, fp)
    # on a GPU the models are loaded on the CPU and moved: no load transient on the device
    s_load = (
        {"student weights": s_w}
        if gpu
        else {"loading student (teacher + student)": load_peak(t_shape, s_shape, fp)}
    )
    stages: dict[str, StagePlan] = {}

    if distill_cfg is not None:
        stages["distill"] = _distill_plan(distill_cfg, t_shape, s_shape, base, gpu, fp)

    stages["tune"] = _tune_plan(tune_cfg, "tune", s_shape, s_load, base)
    if cfg.with_teacher_tuning:
        t_load = (
            {"teacher weights": t_w} if gpu else {"loading teacher": load_peak(t_shape, None, fp)}
        )
        stages["teacher-tuning"] = _tune_plan(tune_cfg, "teacher-tuning", t_shape, t_load, base)

    # transfer: student (rebuilt from the teacher) and teacher resident, three [n_public, V] logit tables,
    # the teacher's prompt-training step
    cache = 3 * transfer_cfg.n_public * t_shape.vocab * 4
    x_train = {
        "teacher weights": t_w,
        "student weights": s_w,
        "logit cache": cache,
        "activations (batch x full length)": activation_bytes(
            t_shape,
            step_tokens(
                t_shape, transfer_cfg.batch_size, transfer_cfg.max_length, tune_cfg.n_tokens
            ),
        )
        + transfer_cfg.batch_size * t_shape.vocab * 4 * 8,
    }
    x_load = {"student load": sum(s_load.values()), "logit cache": 0}
    stages["transfer"] = _peak(
        "transfer", base, {"training the teacher prompt": x_train, "loading": x_load}
    )

    seq = tune_cfg.max_length + tune_cfg.n_tokens
    e = {
        "teacher weights": t_w,
        "student weights": s_w,
        "evaluation batch": inference_bytes(t_shape, cfg.eval_batch_size * seq),
    }
    stages["evaluate"] = _peak(
        "evaluate", base, {"evaluating": e, "loading": {"teacher weights": t_w, **s_load}}
    )

    if cfg.audit is not None:
        note = "shadows train one after another"
        stages["audit"] = _tune_plan(tune_cfg, "audit", s_shape, s_load, base, note)

    out = {
        "device": dev,
        "teacher": cfg.teacher,
        "student": cfg.student or f"{s_shape.layers}-layer extraction",
        "parameters": {
            "teacher": t_shape.params,
            "student_total": s_shape.params,
            "student_own": s_shape.params - s_shape.embedding_params,
            "teacher_layers": t_shape.layers,
            "student_layers": s_shape.layers,
        },
        "shapes": {"teacher": t_shape.to_dict(), "student": s_shape.to_dict()},
        "stages": {k: v.to_dict() for k, v in stages.items()},
        "peak_bytes": max(v.peak_bytes for v in stages.values()),
    }
    out["available_bytes"] = available_bytes(dev)
    out["warnings"] = _warnings(out, t_w, base)
    return out


def _run_shapes(cfg, distill_cfg, layers: int | None, shapes: dict) -> tuple[Shape, Shape]:
    """(teacher, student) shapes: given, read from the configs, or the teacher cut to `layers`."""
    t_shape = shapes.get("teacher") or model_shape(cfg.teacher)
    if "student" in shapes:
        return t_shape, shapes["student"]
    if cfg.student is not None and layers is None:
        return t_shape, model_shape(cfg.student)
    k = layers if layers is not None else (distill_cfg.layers if distill_cfg is not None else None)
    if k is None:
        raise BadInput("layers", "give --layers (the config names an existing student)")
    return t_shape, t_shape.with_layers(int(k))


def _distill_plan(
    distill_cfg, t_shape: Shape, s_shape: Shape, base: int, gpu: bool, fp: int
) -> StagePlan:
    t_w, s_w = weights_bytes(t_shape, fp), weights_bytes(s_shape, fp)
    own = s_shape.params - s_shape.embedding_params  # embeddings and head stay frozen and shared
    block = distill_cfg.block_size
    lm_tokens = distill_cfg.max_tokens if distill_cfg.uses_lm else 0
    # per LM position: top-k float32 log-probabilities and int32 ids, bf16 hidden state for the cos term
    cache = lm_tokens * (
        distill_cfg.topk * (4 + 4) + (2 * t_shape.hidden if distill_cfg.alpha_cos else 0)
    )
    if distill_cfg.alpha_task:
        cache += distill_cfg.task_examples * (2 * t_shape.vocab + 2 * t_shape.hidden)
    act_b = 2 if distill_cfg.precision == "bf16" else 4
    lm_tok = (distill_cfg.batch_size * block) if distill_cfg.uses_lm else 0
    task_tok = (
        distill_cfg.task_batch_size * distill_cfg.task_max_length if distill_cfg.alpha_task else 0
    )
    logits = lm_tok * t_shape.vocab * 4 * 4  # student logits, log-softmax, their gradients (fp32)
    train = {
        "teacher weights": t_w,
        "student weights": s_w,
        "optimizer (grad + AdamW)": own * 4 * 3,
        "teacher cache": cache,
        "activations": activation_bytes(s_shape, lm_tok + task_tok, act_b) + logits,
    }
    cache_phase = {
        "teacher weights": t_w,
        "student weights": s_w,
        "teacher cache": cache,
        "teacher forward": 8 * block * t_shape.vocab * 4 * 2
        + inference_bytes(t_shape, 8 * block, act_b),
    }
    phases = {"training the student": train, "caching the teacher": cache_phase}
    if not gpu:
        phases["loading the teacher"] = {"teacher weights": load_peak(t_shape, None, fp)}
    return _peak("distill", base, phases)


def step_tokens(
    model: Shape, batch: int, max_length: int, n_tokens: int, per_example: bool = False
) -> int:
    """Tokens a prompt-training step runs through the blocks: a shared prompt once per batch on a
    causal LM (classify.shares_prefix), in front of every input where it cannot be shared (masked LMs)
    or where every example has its own copy (DP-SGD's per-example gradients)."""
    if per_example or model.masked_lm:
        return batch * (max_length + n_tokens)
    return batch * max_length + n_tokens


def _tune_plan(
    tune_cfg, name: str, model: Shape, loading: dict, base: int, note: str = "", fp: int = 4
) -> StagePlan:
    seq = tune_cfg.max_length + tune_cfg.n_tokens
    train = {
        "weights": weights_bytes(model, fp),
        "activations (batch x full length)": activation_bytes(
            model,
            step_tokens(
                model,
                tune_cfg.batch_size,
                tune_cfg.max_length,
                tune_cfg.n_tokens,
                per_example=tune_cfg.dp is not None,
            ),
        ),
        "evaluation batch": inference_bytes(model, tune_cfg.eval_batch_size * seq),
    }
    return _peak(name, base, {"training the prompt": train, "loading": loading}, note)


def _device_kind(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return "cuda"
    if device != "cpu":
        raise BadInput("device", f"unknown device '{device}' (choose cpu, cuda, auto)")
    return "cpu"


def available_bytes(device: str) -> int | None:
    """Memory the stages may use here: free GPU memory, or the machine's available RAM (None if unknown)."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return int(free)
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with accelerate
        return None


def _warnings(plan: dict, teacher_weights: int, base: int) -> list[str]:
    avail = plan["available_bytes"]
    if avail is None:
        return []
    where = "GPU" if plan["device"] == "cuda" else "RAM"
    out = []
    if base + teacher_weights > avail:
        out.append(
            f"the teacher alone ({teacher_weights / GiB:.1f} GiB in float32) does not fit the "
            f"{avail / GiB:.1f} GiB of free {where}"
        )
    for name, st in plan["stages"].items():
        if st["peak_bytes"] > avail:
            out.append(
                f"{name}: needs about {st['peak_bytes'] / GiB:.1f} GiB, {avail / GiB:.1f} GiB of {where} free"
            )
    return out


def format_plan(plan: dict) -> str:
    p = plan["parameters"]
    lines = [
        f"plan on {plan['device']}: teacher {plan['teacher']} ({p['teacher'] / 1e6:.1f}M parameters, "
        f"{p['teacher_layers']} layers); student {p['student_layers']} layers "
        f"({p['student_own'] / 1e6:.1f}M own, {p['student_total'] / 1e6:.1f}M with shared embeddings)"
    ]
    for name, st in plan["stages"].items():
        parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in st["parts"].items() if v)
        lines.append(
            f"  {name:15s} peak {st['peak_bytes'] / GiB:7.2f} GiB  ({st['note']}; MiB: {parts})"
        )
    if plan["available_bytes"] is not None:
        lines.append(f"  available: {plan['available_bytes'] / GiB:.1f} GiB")
    lines += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)


def plan_json(plan: dict) -> str:
    return json.dumps(plan, indent=2)
