"""Stage manifests: what a stage read (with fingerprints), its config, what it wrote (with sha256).

The next stage reads the manifest rather than trusting paths, and `run` reuses a stage whose manifest
says complete with the same config and inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from promptport.errors import PromptportError
from promptport.fileio import read_json, sha256_file, write_json
from promptport.runtime import versions

MANIFEST = "manifest.json"


def config_key(config: dict, inputs: dict) -> str:
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_manifest(
    out: Path,
    *,
    stage: str,
    config: dict,
    inputs: dict,
    outputs: list[Path],
    seconds: float,
    extra: dict | None = None,
) -> dict:
    out = Path(out)
    m = {
        "stage": stage,
        "status": "complete",
        "key": config_key(config, inputs),
        "config": config,
        "inputs": inputs,
        "outputs": {
            str(Path(p).relative_to(out)): sha256_file(p) for p in outputs if Path(p).exists()
        },
        "seconds": round(seconds, 3),
        "versions": versions(),
        **(extra or {}),
    }
    write_json(out / MANIFEST, m)
    return m


def read_manifest(stage_dir: Path) -> dict | None:
    p = Path(stage_dir) / MANIFEST
    return read_json(p) if p.is_file() else None


def stage_manifest(stage_dir: Path) -> dict:
    """The manifest of a stage that has run (an error naming the folder when there is none)."""
    m = read_manifest(stage_dir)
    if m is None:
        raise PromptportError(f"{Path(stage_dir) / MANIFEST} is missing: the stage has not run")
    return m


def verify_outputs(stage_dir: Path, manifest: dict) -> None:
    """A truncated or altered artifact is detected and named."""
    for rel, digest in manifest.get("outputs", {}).items():
        p = Path(stage_dir) / rel
        if not p.is_file():
            raise PromptportError(f"{p} listed in {stage_dir / MANIFEST} is missing")
        if sha256_file(p) != digest:
            raise PromptportError(
                f"{p} does not match its sha256 in {stage_dir / MANIFEST} (altered or truncated)"
            )


def is_complete(stage_dir: Path, config: dict, inputs: dict) -> bool:
    m = read_manifest(stage_dir)
    if not m or m.get("status") != "complete" or m.get("key") != config_key(config, inputs):
        return False
    verify_outputs(stage_dir, m)
    return True
