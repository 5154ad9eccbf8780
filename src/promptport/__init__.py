"""promptport: private soft-prompt transfer (POST) as software.

The Python API mirrors the CLI: every command is a function (`promptport.api`):

    from promptport.api import distill, tune, transfer, evaluate, audit, run

The settings dataclasses and `run` are also importable from here (`from promptport import TuneConfig,
run`); they load on first use, so `import promptport` stays light.
"""

from __future__ import annotations

from typing import Any

from promptport.errors import BadInput, PromptportError

__version__ = "0.1.0"

_API = (
    "AuditSpec",
    "DPConfig",
    "DistillConfig",
    "RunConfig",
    "TransferConfig",
    "TuneConfig",
    "run",
)

__all__ = ["BadInput", "PromptportError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from promptport import api

        return getattr(api, name)
    raise AttributeError(f"module 'promptport' has no attribute {name!r}")
