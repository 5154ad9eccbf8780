"""Training state on disk, one scheme for every trainer (tune, transfer, distill).

* `Checkpoint`: one file holding a run's whole training state plus the identity of the run that made
  it (settings, data and model fingerprints). It is written atomically (temp file + rename), so a kill
  at any point leaves the previous checkpoint or the new one, never a torn file; it is read with
  `torch.load(weights_only=True)` (tensors, numbers, strings, lists and dicts only: no pickle code runs).
  Resuming refuses a checkpoint made by another run, naming the first setting that differs.
* `MetricsLog`: metrics.jsonl, appended by the main process. A checkpoint records the log's size; a
  resumed run cuts the log back to it, so the steps replayed after the checkpoint are not logged twice.
* `progress_bar`: the one progress-bar set-up (tqdm, on the main process only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from promptport.errors import BadInput
from promptport.fileio import append_jsonl, atomic_path

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_file(out_dir: str | Path) -> Path:
    """Where a stage writing to `out_dir` keeps its checkpoint: OUT/checkpoint/checkpoint.pt."""
    return Path(out_dir) / "checkpoint" / CHECKPOINT_FILE


class MetricsLog:
    """A JSONL metrics file (or nothing, with `path=None`: another process writes it)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    def reset(self) -> None:
        """Start an empty log (a fresh run)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def append(self, record: dict) -> None:
        if self.path is not None:
            append_jsonl(self.path, record)

    def offset(self) -> int:
        """The log's size in bytes: where a checkpoint taken now ends."""
        return self.path.stat().st_size if self.path is not None and self.path.exists() else 0

    def cut_back(self, offset: int) -> None:
        """Forget the lines written after the checkpoint that recorded `offset`."""
        if self.path is not None and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(int(offset))


def first_difference(a: Any, b: Any, path: str = "") -> str:
    """The first key path where two nested dicts differ, as 'path: checkpoint A, now B'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'value'}: checkpoint {a!r}, now {b!r}"


class Checkpoint:
    """The checkpoint file of one run: `save(state)` and `load()` (which checks format and identity).

    `kind` names the trainer ("tune", "transfer", "distill"); `identity` is a JSON-serialisable dict that
    must be equal for a checkpoint to be resumed."""

    def __init__(self, path: str | Path, kind: str, identity: dict):
        self.path = Path(path)
        self.kind = kind
        self.format = f"promptport.{kind}-checkpoint/1"
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict, metrics: MetricsLog | None = None) -> None:
        payload = dict(
            state,
            format=self.format,
            identity=json.dumps(self.identity, sort_keys=True),
            metrics_offset=metrics.offset() if metrics is not None else 0,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)

    def load(self, metrics: MetricsLog | None = None) -> dict:
        """The saved state, after checking it is this run's; cuts `metrics` back to the checkpoint."""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BadInput("resume", f"cannot read {self.path}: {str(e).splitlines()[0]}") from None
        if not isinstance(state, dict) or state.get("format") != self.format:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise BadInput(
                "resume", f"not a promptport {self.kind} checkpoint (format {got!r}): {self.path}"
            )
        theirs = json.loads(state["identity"])
        if theirs != self.identity:
            raise BadInput(
                "resume",
                f"the checkpoint was made by a different run ({first_difference(theirs, self.identity)}); "
                "resume with the same command, data and model, or start a fresh run in another "
                "output directory",
            )
        if metrics is not None:
            metrics.cut_back(int(state["metrics_offset"]))
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "step", initial: int = 0):
    """A tqdm bar, or None when disabled (callers test `if bar is not None`). Token counts scale."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "tok",
        initial=initial,
        dynamic_ncols=True,
        leave=False,
    )
