"""Process-level set-up shared by every stage: seeds, threads, versions, quiet libraries."""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch


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
