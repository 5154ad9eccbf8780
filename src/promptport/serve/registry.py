"""The served prompts, one folder per tenant and prompt id, verified before anything is served.

    REGISTRY/tenants/<tenant>/<prompt id>/prompt.safetensors + prompt.json

A prompt enters only through `register`: its files are written to REGISTRY/.staging, checked (only
these two files, safetensors and never a pickle, the checksum prompt.json records, the hidden size
and the embedding fingerprint of the served teacher), and then renamed into place in one step. A
crash leaves either the whole prompt or nothing; `open` clears the staging area, so nothing is ever
half-registered, and the registry survives a restart as it was.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from promptport.classify import Verbalizer
from promptport.errors import BadInput
from promptport.modelinfo import ModelInfo
from promptport.prompt import META_FILE, PROMPT_FILE, load_prompt
from promptport.tasks import Task

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALLOWED_FILES = (PROMPT_FILE, META_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class Refused(BadInput):
    """A prompt or request the server will not take; `status` is the HTTP status it answers with."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(field, message)
        self.status = status


@dataclass
class ServedPrompt:
    """A verified prompt, ready for the engine: its embeddings on the model's device and its task."""

    tenant: str
    id: str
    embeddings: torch.Tensor  # [n_tokens, hidden]
    task: Task
    meta: dict
    created: int
    verbalizer: Verbalizer | None = field(default=None, repr=False)
    prefix_kv: list | None = field(default=None, repr=False)  # the engine's cache of the prompt

    @property
    def kind(self) -> str:
        return "generation" if self.task.is_generation else "classification"

    def card(self) -> dict:
        """The /v1/models entry (OpenAI's model object plus what a client needs to format inputs)."""
        t = self.meta.get("task") or {}
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.tenant,
            "kind": self.kind,
            "n_tokens": int(self.embeddings.shape[0]),
            "template": t.get("template"),
            "classes": t.get("classes"),
            "privacy": _privacy_summary(self.meta.get("privacy")),
        }


def _privacy_summary(p: dict | None) -> dict | None:
    if not p:
        return None
    return {k: p[k] for k in ("epsilon", "delta", "accountant") if k in p}


def check_id(value: str, field: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise Refused(
            field, f"{value!r} is not a valid id (letters, digits, '.', '_', '-'; at most 64)"
        )
    return value


class PromptRegistry:
    """Tenants' prompts on disk and in memory. Thread-safe; every change is atomic on disk."""

    def __init__(self, root: str | Path, teacher: ModelInfo, tokenizer, device: torch.device):
        self.root = Path(root)
        self.teacher, self.tokenizer, self.device = teacher, tokenizer, device
        self._prompts: dict[tuple[str, str], ServedPrompt] = {}
        self._lock = threading.Lock()
        self.skipped: list[str] = []

    @classmethod
    def open(cls, root, teacher: ModelInfo, tokenizer, device) -> PromptRegistry:
        """Load every registered prompt (re-verified; a prompt that no longer verifies is skipped and
        named in `skipped`) after clearing what an interrupted registration or deletion left."""
        reg = cls(root, teacher, tokenizer, device)
        for tmp in (".staging", ".trash"):
            shutil.rmtree(reg.root / tmp, ignore_errors=True)
        (reg.root / "tenants").mkdir(parents=True, exist_ok=True)
        for tdir in sorted((reg.root / "tenants").iterdir()):
            for pdir in sorted(p for p in tdir.iterdir() if p.is_dir()):
                try:
                    sp = reg._verify(tdir.name, pdir.name, pdir)
                except BadInput as e:
                    reg.skipped.append(f"{tdir.name}/{pdir.name}: {e}")
                    continue
                reg._prompts[(tdir.name, pdir.name)] = sp
        return reg

    # -- reads
    def get(self, tenant: str, prompt_id: str) -> ServedPrompt | None:
        with self._lock:
            return self._prompts.get((tenant, prompt_id))

    def list(self, tenant: str) -> list[ServedPrompt]:
        with self._lock:
            return [p for (t, _), p in sorted(self._prompts.items()) if t == tenant]

    def __len__(self) -> int:
        return len(self._prompts)

    # -- writes
    def register(self, tenant: str, prompt_id: str, files: dict[str, bytes]) -> ServedPrompt:
        """Verify and add a prompt given as {file name: content}; nothing is kept if a check fails."""
        check_id(tenant, "tenant")
        check_id(prompt_id, "id")
        for name in files:
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise Refused(
                    name, "pickle files are refused: send prompt.safetensors and prompt.json", 415
                )
            if name not in ALLOWED_FILES:
                raise Refused(name, f"unexpected file (send only {' and '.join(ALLOWED_FILES)})")
        for name in ALLOWED_FILES:
            if name not in files:
                raise Refused(
                    name,
                    "missing: a prompt is prompt.safetensors plus the prompt.json made with it",
                )
        stage = self.root / ".staging" / uuid.uuid4().hex
        stage.mkdir(parents=True)
        try:
            for name, data in files.items():
                (stage / name).write_bytes(data)
            sp = self._verify(tenant, prompt_id, stage)
            final = self.root / "tenants" / tenant / prompt_id
            with self._lock:
                if final.exists() or (tenant, prompt_id) in self._prompts:
                    raise Refused("id", f"'{prompt_id}' exists; delete it first", 409)
                final.parent.mkdir(parents=True, exist_ok=True)
                stage.rename(final)  # the one step that makes the prompt exist
                self._prompts[(tenant, prompt_id)] = sp
            return sp
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def register_dir(self, tenant: str, prompt_id: str, directory: str | Path) -> ServedPrompt:
        d = Path(directory)
        return self.register(tenant, prompt_id, {n: (d / n).read_bytes() for n in ALLOWED_FILES})

    def delete(self, tenant: str, prompt_id: str) -> bool:
        with self._lock:
            if self._prompts.pop((tenant, prompt_id), None) is None:
                return False
            trash = self.root / ".trash" / uuid.uuid4().hex
            trash.parent.mkdir(parents=True, exist_ok=True)
            (self.root / "tenants" / tenant / prompt_id).rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- checks
    def _verify(self, tenant: str, prompt_id: str, d: Path) -> ServedPrompt:
        from promptport.transfer import task_from_prompt

        head = (d / PROMPT_FILE).read_bytes()[:2]
        if head[:1] == b"\x80" or head == b"PK":  # a pickle protocol header or a torch.save zip
            raise Refused(PROMPT_FILE, "is a pickle, not safetensors; pickles are refused", 415)
        try:
            art = load_prompt(d)  # safetensors only; the checksum recorded in prompt.json
        except BadInput as e:
            raise Refused(PROMPT_FILE, str(e).split(": ", 1)[-1]) from None
        meta = art.meta
        if not (meta.get("sha256") or {}).get(PROMPT_FILE):
            raise Refused(
                META_FILE, "has no sha256 of prompt.safetensors (not a promptport prompt)"
            )
        model = meta.get("model") or {}
        if art.hidden_size != self.teacher.hidden_size:
            raise Refused(
                "hidden_size",
                f"the prompt has hidden size {art.hidden_size}; the served model "
                f"'{self.teacher.model_id}' has {self.teacher.hidden_size}",
            )
        if model.get("embedding_fingerprint") != self.teacher.embedding_fingerprint:
            raise Refused(
                "embedding_fingerprint",
                f"the prompt was transferred to embeddings {model.get('embedding_fingerprint')} "
                f"({model.get('model_id', 'unknown model')}), not to the served model's "
                f"{self.teacher.embedding_fingerprint}",
            )
        if not bool(torch.isfinite(art.embeddings).all()):
            raise Refused(PROMPT_FILE, "has non-finite values")
        try:
            task = task_from_prompt(art)
        except BadInput as e:
            raise Refused("task", str(e)) from None
        verbalizer = None
        if not task.is_generation:
            try:
                verbalizer = Verbalizer(self.tokenizer, task)
            except BadInput as e:
                raise Refused("verbalizer", str(e)) from None
        return ServedPrompt(
            tenant=tenant,
            id=prompt_id,
            embeddings=art.embeddings.to(self.device),
            task=task,
            meta=meta,
            created=int((d / META_FILE).stat().st_mtime),
            verbalizer=verbalizer,
        )


def files_from_tar(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The prompt files of a (gzipped) tar archive: regular files only, by base name, at most one
    folder deep; links, devices and paths that climb out are refused, not extracted."""
    out: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for m in tf.getmembers():
                if m.isdir():
                    continue
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) > 2 or ".." in parts or Path(m.name).is_absolute():
                    raise Refused("archive", f"member {m.name!r} is not a plain prompt file")
                total += m.size
                if total > max_bytes:
                    raise Refused("archive", f"unpacks to more than {max_bytes} bytes", 413)
                fh = tf.extractfile(m)
                assert fh is not None  # a regular file
                out[parts[-1]] = fh.read()
    except tarfile.TarError as e:
        raise Refused("archive", f"not a tar archive: {e}") from None
    return out
