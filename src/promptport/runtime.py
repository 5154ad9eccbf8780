"""Process-level set-up shared by every stage: seeds, devices and precision, versions, quiet libraries."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import platform
import random

import numpy as np
import torch

from promptport.errors import BadInput


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def quiet_libraries() -> None:
    """Library progress bars and warnings would drown our own one-line summaries."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is a hard dependency
        pass
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass


def versions() -> dict:
    import importlib.metadata as md

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    for pkg in (
        "promptport",
        "torch",
        "transformers",
        "peft",
        "opacus",
        "safetensors",
        "accelerate",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def resolve_device(device: str = "auto") -> torch.device:
    """cpu, cuda[:i] or auto (CUDA when present); under a multi-process launcher 'cuda' means this process's GPU."""
    from promptport.distributed import local_device

    if device == "auto":
        return torch.device(local_device("cuda") if torch.cuda.is_available() else "cpu")
    if device == "cuda" and torch.cuda.is_available():
        return torch.device(local_device(device))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(
            "device", f"'{device}' requested but CUDA is not available; use --device cpu or auto"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BadInput("device", f"unknown device '{device}' (choose cpu, cuda, auto)")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise BadInput("dtype", f"unknown dtype '{dtype}' (choose {', '.join(sorted(table))})")
    return table[dtype]


# what `precision` settings accept; resolve_precision turns 'auto' into one of the others
PRECISIONS = ("bf16", "fp32", "auto")


def check_precision(precision: str) -> None:
    """The one check every stage's `precision` setting gets (a YAML value is not checked on entry)."""
    if precision not in PRECISIONS:
        raise BadInput("precision", f"choose bf16, fp32 or auto, not '{precision}'")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether this device multiplies bf16 natively, so that bf16 autocast is faster than fp32: a CUDA
    GPU that supports bf16, or a CPU with AVX512-BF16 or AMX (on an AVX2-only CPU a bf16 teacher forward
    ran at 0.17x the speed of fp32, `python -m benchmarks.precision_speed`; on an AVX512-BF16 one the
    default run's distillation took 896 s in bf16 against 1,503 s in fp32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none (not Linux), so callers
    fall back to the safe choice."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """'auto' -> 'bf16' where the device multiplies bf16 natively, else 'fp32'; others unchanged."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def with_resolved_precision(cfg, device: str | torch.device = "cpu"):
    """A stage config (a dataclass with a `precision` field) with 'auto' replaced by what runs on
    `device`, so that its checkpoints, metrics and manifests name what ran."""
    if cfg.precision != "auto":
        return cfg
    return dataclasses.replace(cfg, precision=resolve_precision("auto", device))


def at_precision(model_wrapper, precision: str):
    """`model_wrapper` (a PromptClassifier or PromptGenerator) computing in `precision` ('auto'
    resolved on its device): a shallow copy over the same frozen model when that differs, so the
    caller's wrapper is left as it was."""
    precision = resolve_precision(precision, model_wrapper.device)
    if getattr(model_wrapper, "precision", "fp32") == precision:
        return model_wrapper
    other = copy.copy(model_wrapper)
    other.precision = precision
    return other


def autocast(device: str | torch.device, precision: str):
    """Mixed precision on the device the model lives on: bf16 autocast for `precision == "bf16"`, else off.

    The device type comes from the model's device (never a hard-coded "cpu"), so bf16 takes effect on
    CUDA as it does on CPU."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
