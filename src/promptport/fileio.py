"""Atomic, verifiable file writes: a crash never leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one line; a crash can at worst lose this line, never corrupt earlier ones."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_writable_dir(path: str | os.PathLike, field: str = "out") -> Path:
    """Fail before any work if `path` cannot become a writable directory (nothing is created here)."""
    from promptport.errors import BadInput

    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(field, f"'{path}' cannot be created: '{probe}' is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(field, f"'{path}' is not writable")
    return p


def inside(root: str | os.PathLike, path: str | os.PathLike, field: str) -> Path:
    """`path` (relative to `root`) resolved with symlinks followed; refused unless it stays inside `root`, so
    neither a `..`, an absolute path nor a planted symlink can make a command write elsewhere."""
    from promptport.errors import BadInput

    base = Path(root).expanduser().resolve()
    target = (base / Path(path).expanduser()).resolve()
    if target != base and base not in target.parents:
        raise BadInput(
            field,
            f"'{path}' resolves to {target}, outside the run directory {base}; "
            "everything a run writes stays inside its run directory",
        )
    return target


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """One writer per directory: a second command refuses at once, naming the owner's pid."""
    from filelock import FileLock, Timeout

    from promptport.errors import PromptportError

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d / ".promptport.lock"))
    owner = d / ".promptport.lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        pid = owner.read_text().strip() if owner.exists() else "unknown"
        raise PromptportError(
            f"{what} {d} is in use by another promptport process (pid {pid}); "
            "wait for it to finish or use another directory"
        ) from None
    try:
        owner.write_text(str(os.getpid()))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def read_yaml_mapping(path: str | os.PathLike, field: str = "config") -> dict:
    """A YAML file that must hold a mapping, read with safe loading (no Python tags)."""
    import yaml

    from promptport.errors import BadInput

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BadInput(field, f"cannot read '{path}': {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BadInput(field, f"'{path}' must be a mapping of keys to values")
    return data
