"""The provider's student store: one distilled student per (teacher, recipe), reused across runs.

POST distils once per teacher and hands the same student to every user; `promptport run` therefore looks
a student up here before distilling and files each new one here after. The key is the teacher's
embedding and tokenizer fingerprints (the weights, not the name) plus the distillation recipe (every
DistillConfig field) and the identity of its text sources (local files by size and modification time;
embedded sources by name and this module's DATA_VERSION). Layout, under PROMPTPORT_CACHE
(default ~/.cache/promptport):

    students/<key>/student/        the student artifact (student.json, student.safetensors, config)
    students/<key>/metrics.json    the distillation's metrics
    students/<key>/recipe.json     what the key was computed from

Entries are written to a temporary folder and renamed into place, so a kill never leaves half a student;
every file is checked against the sha256 in student.json when it is used (load_student does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

# Bump when what an embedded text source returns changes (e.g. embedded:rt_reviews' movie split).
DATA_VERSION = 2


def store_root() -> Path:
    """PROMPTPORT_STUDENT_STORE, else the cache's students/ folder."""
    import os

    from promptport.models import cache_root

    env = os.environ.get("PROMPTPORT_STUDENT_STORE")
    return Path(env).expanduser() if env else cache_root() / "students"


def _source_identity(src: str) -> object:
    if src.startswith("embedded:"):
        return [src, DATA_VERSION]
    p = Path(src).expanduser()
    if p.is_file():
        st = p.stat()
        return [str(p.resolve()), st.st_size, int(st.st_mtime)]
    if p.is_dir():
        return [
            str(p.resolve()),
            sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir()),
        ]
    return [src]  # a hub id


def _code_fingerprint() -> str:
    """sha256 of the distillation code: a student made by other code is never taken for this one's."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("distill.py", "student.py", "corpus.py", "losses.py", "mixture.py", "data.py"):
        if (here / name).is_file():
            h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def recipe_key(teacher_info, recipe: dict) -> tuple[str, dict]:
    """(key, what it hashes) for a teacher (ModelInfo) and a distillation recipe (DistillConfig.to_dict())."""
    sources = {
        k: [_source_identity(s) for s in (recipe.get(k) or [])]
        for k in ("corpus", "task_data")
        if isinstance(recipe.get(k), (list, tuple))
    }
    basis = {
        "teacher": {
            "embedding_fingerprint": teacher_info.embedding_fingerprint,
            "tokenizer_fingerprint": teacher_info.tokenizer_fingerprint,
            "architecture": teacher_info.architecture,
            "num_layers": teacher_info.num_layers,
        },
        "recipe": recipe,
        "sources": sources,
        "code": _code_fingerprint(),
    }
    blob = json.dumps(basis, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20], basis


def lookup(key: str) -> Path | None:
    """The stored entry's folder, or None."""
    d = store_root() / key
    return d if (d / "student" / "student.json").is_file() else None


def put(key: str, basis: dict, distill_dir: Path) -> Path:
    """File distill_dir/student (and its metrics.json) under `key`; an existing entry is kept."""
    root = store_root()
    final = root / key
    if lookup(key) is not None:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(Path(distill_dir) / "student", tmp / "student")
    if (Path(distill_dir) / "metrics.json").is_file():
        shutil.copy2(Path(distill_dir) / "metrics.json", tmp / "metrics.json")
    (tmp / "recipe.json").write_text(json.dumps(basis, indent=1, default=str) + "\n")
    try:
        os.replace(tmp, final)
    except OSError:  # another process filed the same key first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch(entry: Path, distill_dir: Path) -> None:
    """Copy a stored student (and metrics) into a run's distill folder."""
    distill_dir = Path(distill_dir)
    shutil.rmtree(distill_dir / "student", ignore_errors=True)
    shutil.copytree(entry / "student", distill_dir / "student")
    if (entry / "metrics.json").is_file():
        shutil.copy2(entry / "metrics.json", distill_dir / "metrics.json")
