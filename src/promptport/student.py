"""The student: which teacher layers it keeps, how it is cut out, and its on-disk artifact.

The student keeps the teacher's width, heads, vocabulary and tokenizer and only some of its layers, so
a soft prompt trained on the student lives in the teacher's embedding space. Embeddings and LM head
stay shared with the teacher (frozen by default): a student folder stores only its own layers plus
a fingerprinted reference to the teacher, and is rebuilt from the teacher when loaded
(`promptport.models.load_model` does this for any folder with a student.json).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptport.errors import BadInput, PromptportError
from promptport.fileio import atomic_path, read_json, sha256_file, write_json
from promptport.modelinfo import LoadedModel, ModelInfo, describe, freeze
from promptport.runtime import resolve_device, resolve_dtype

STUDENT_FORMAT = "promptport.student/1"
STUDENT_META = "student.json"
STUDENT_WEIGHTS = "student.safetensors"
STRATEGIES = ("first-last", "uniform")
# model_type -> dotted path of the ModuleList of decoder layers (library modelling code, never forked)
LAYER_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "granite": "model.layers",
    "smollm3": "model.layers",
    "gpt2": "transformer.h",
    # masked LMs: the answer is read at the template's mask token (promptport.classify)
    "roberta": "roberta.encoder.layer",
    "xlm-roberta": "roberta.encoder.layer",
    "camembert": "roberta.encoder.layer",
    "bert": "bert.encoder.layer",
}


def select_layers(n_teacher: int, n_student: int, strategy: str = "first-last") -> list[int]:
    """Teacher layer indices the student keeps.

    first-last: the first ceil(k/2) and last floor(k/2) layers (GPT2-XL, k=4 -> 0,1,46,47).
    uniform: k layers evenly spread from the first to the last (every m-th, as DistilGPT2 does).
    """
    if n_student <= 0:
        raise BadInput("layers", f"a student needs at least one layer, got {n_student}")
    if n_student > n_teacher:
        raise BadInput(
            "layers", f"{n_student} layers requested but the teacher has only {n_teacher}"
        )
    if strategy == "first-last":
        head = (n_student + 1) // 2
        return list(range(head)) + list(range(n_teacher - (n_student - head), n_teacher))
    if strategy == "uniform":
        if n_student == 1:
            return [0]
        return sorted({int(round(x)) for x in np.linspace(0, n_teacher - 1, n_student)})
    raise BadInput("strategy", f"unknown strategy '{strategy}' (choose {', '.join(STRATEGIES)})")


def layer_path(model) -> str:
    mt = getattr(model.config, "model_type", None)
    if mt not in LAYER_PATHS:
        raise BadInput(
            "teacher",
            f"cannot cut layers out of architecture '{mt}' "
            f"(supported: {', '.join(sorted(LAYER_PATHS))})",
        )
    return LAYER_PATHS[mt]


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def student_config(teacher_config, layers: list[int]):
    cfg = copy.deepcopy(teacher_config)
    cfg.num_hidden_layers = len(layers)
    if (
        getattr(cfg, "layer_types", None) is not None
    ):  # Gemma-like: keep each kept layer's attention kind
        cfg.layer_types = [teacher_config.layer_types[i] for i in layers]
    for attr in ("quantization_config",):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    return cfg


def extract_student(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A fresh model of the teacher's class with `layers` copied in order, plus embeddings, final norm, head."""
    path = layer_path(teacher)
    n = num_layers(teacher)
    if not layers or any(i < 0 or i >= n for i in layers) or len(set(layers)) != len(layers):
        raise BadInput(
            "layers", f"layer indices {layers} are not distinct indices of a {n}-layer teacher"
        )
    cfg = student_config(teacher.config, layers)
    student: Any = type(teacher)(cfg)  # a transformers PreTrainedModel
    prefix = path + "."
    sd = {}
    new_index = {old: new for new, old in enumerate(layers)}
    for k, v in teacher.state_dict().items():
        if k.startswith(prefix):
            i, rest = k[len(prefix) :].split(".", 1)
            if int(i) in new_index:
                sd[f"{prefix}{new_index[int(i)]}.{rest}"] = v.detach().clone()
        else:
            sd[k] = v.detach().clone()
    missing, unexpected = student.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not _is_tied_head(student, m)]
    if missing or unexpected:
        raise PromptportError(
            f"student extraction mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if getattr(cfg, "tie_word_embeddings", False):
        student.tie_weights()
    return student.to(next(teacher.parameters()).dtype).eval()


def _is_tied_head(model, name: str) -> bool:
    return name.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False)


def shared_parameter_names(model) -> set[str]:
    """Parameters shared with the teacher: input embeddings and LM head (tied or not)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    shared_ids = {id(emb)} | ({id(head.weight)} if head is not None else set())
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in shared_ids}


def set_trainable(student, freeze_embeddings: bool = True) -> list[str]:
    """Make the student's own parameters trainable; returns their names (what a checkpoint stores)."""
    shared = shared_parameter_names(student) if freeze_embeddings else set()
    own = []
    for n, p in student.named_parameters():
        p.requires_grad_(n not in shared)
        if n not in shared:
            own.append(n)
    return own


def parameter_counts(student, teacher_params: int, own: list[str]) -> dict:
    params = dict(student.named_parameters())
    n_own = sum(params[n].numel() for n in own)
    n_total = sum(p.numel() for p in student.parameters())
    return {
        "own": n_own,
        "total": n_total,
        "teacher_total": teacher_params,
        "own_ratio_to_teacher": round(n_own / teacher_params, 4),
        "total_ratio_to_teacher": round(n_total / teacher_params, 4),
    }


# ---------------------------------------------------------------- the student artifact


def teacher_reference(spec: str, info: ModelInfo) -> dict:
    p = Path(spec).expanduser()
    where = str(p.resolve()) if p.exists() else spec
    return {
        "spec": where,
        "model_id": info.model_id,
        "architecture": info.architecture,
        "num_layers": info.num_layers,
        "hidden_size": info.hidden_size,
        "vocab_size": info.vocab_size,
        "embedding_fingerprint": info.embedding_fingerprint,
        "tokenizer_fingerprint": info.tokenizer_fingerprint,
    }


def save_student(out_dir: str | Path, student, tokenizer, own: list[str], meta: dict) -> Path:
    """student.safetensors (own weights only), student.json (teacher reference, layers), config, tokenizer."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(student.named_parameters())
    tensors = {n: params[n].detach().to("cpu", torch.float32).contiguous() for n in own}
    with atomic_path(out / STUDENT_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": STUDENT_FORMAT})
    student.config.save_pretrained(
        out
    )  # makes the folder a model folder; weights come via student.json
    tokenizer.save_pretrained(out)
    meta = dict(
        meta,
        format=STUDENT_FORMAT,
        own_parameters=own,
        sha256={STUDENT_WEIGHTS: sha256_file(out / STUDENT_WEIGHTS)},
    )
    write_json(out / STUDENT_META, meta)
    return out


def is_student_dir(path: str | Path) -> bool:
    return (Path(path) / STUDENT_META).is_file()


def read_student_meta(path: str | Path) -> dict:
    """student.json of a student folder, after checking its format and the checksum of its weights."""
    p = Path(path)
    meta = read_json(p / STUDENT_META)
    if meta.get("format") != STUDENT_FORMAT:
        raise BadInput(
            "model", f"{p / STUDENT_META}: not a promptport student (format {meta.get('format')!r})"
        )
    want = (meta.get("sha256") or {}).get(STUDENT_WEIGHTS)
    if not (p / STUDENT_WEIGHTS).is_file() or (want and sha256_file(p / STUDENT_WEIGHTS) != want):
        raise BadInput("model", f"{p / STUDENT_WEIGHTS} is missing or does not match its checksum")
    return meta


def teacher_spec(path: str | Path) -> str:
    """The model spec of the teacher a student folder was cut from (what to load before rebuilding)."""
    return str(read_student_meta(path)["teacher"]["spec"])


def load_student(
    path: str | Path,
    *,
    teacher: LoadedModel,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    padding_side: str = "right",
) -> LoadedModel:
    """Rebuild a student from its (loaded) teacher plus its own weights; frozen and in eval mode like
    any model. `promptport.models.load_model` loads the teacher named in student.json and calls this."""
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_student_meta(p)
    ref = meta["teacher"]
    t = teacher
    check_same_teacher(
        ref, t.info, field="teacher", need_embeddings=not meta.get("trained_embeddings", False)
    )
    student = extract_student(t.model, meta["layers"])
    own = load_file(str(p / STUDENT_WEIGHTS))
    params = dict(student.named_parameters())
    bad = [n for n in own if n not in params or params[n].shape != own[n].shape]
    if bad:
        raise BadInput(
            "model", f"{p / STUDENT_WEIGHTS}: tensors {bad[:3]} do not fit the rebuilt student"
        )
    with torch.no_grad():
        for n, v in own.items():
            params[n].copy_(v)
    student = student.to(resolve_device(device), resolve_dtype(dtype)).eval()
    freeze(student)
    tok = t.tokenizer
    if padding_side not in ("left", "right"):
        raise BadInput("padding_side", f"must be left or right, got '{padding_side}'")
    tok.padding_side = padding_side
    info = describe(student, tok, str(path))
    return LoadedModel(model=student, tokenizer=tok, info=info)


def check_same_teacher(
    ref: dict, info: ModelInfo, field: str = "teacher", need_embeddings: bool = True
) -> None:
    if ref.get("tokenizer_fingerprint") != info.tokenizer_fingerprint:
        raise BadInput(
            field,
            f"'{info.model_id}' uses a different tokenizer than the student's teacher "
            f"'{ref.get('model_id')}'; teacher and student must share one tokenizer",
        )
    if need_embeddings and ref.get("embedding_fingerprint") != info.embedding_fingerprint:
        raise BadInput(
            field,
            f"'{info.model_id}' is not the student's teacher '{ref.get('model_id')}' "
            f"(embedding fingerprint {info.embedding_fingerprint} != "
            f"{ref.get('embedding_fingerprint')})",
        )
