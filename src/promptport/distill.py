"""Distillation (POST step 1): the provider cuts a shallow student out of its teacher and trains it.

The student keeps the teacher's width, heads, vocabulary and tokenizer and only some of its layers, so
a soft prompt trained on the student lives in the teacher's embedding space. Embeddings and LM head
stay shared with the teacher (frozen by default): a student folder stores only its own layers plus
a fingerprinted reference to the teacher, and is rebuilt from the teacher when loaded.

The teacher's forward dominates a distillation step, so we run it once over the corpus and cache
what the losses need (top-k LM logits and last hidden states per position; full-vocabulary logits
at the answer position of task-formatted public examples), then train the student for several
epochs from the cache. Training runs under `accelerate` so the same code scales to DDP.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptport.classify import collate
from promptport.errors import BadInput, PromptportError
from promptport.fileio import append_jsonl, atomic_path, read_json, sha256_file, write_json
from promptport.models import LoadedModel, ModelInfo, describe, freeze

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
EMBEDDED_TEXTS = ("rt_plots", "headlines", "speeches")
DEFAULT_CORPUS = ("embedded:rt_plots", "embedded:headlines", "embedded:speeches")


# ---------------------------------------------------------------- student extraction


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
    student = type(teacher)(cfg)
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


def load_student(
    path: str | Path,
    *,
    teacher: str | LoadedModel | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    padding_side: str = "right",
) -> LoadedModel:
    """Rebuild a student from its teacher plus its own weights; frozen and in eval mode like any model."""
    from safetensors.torch import load_file

    from promptport.models import load_model, resolve_device, resolve_dtype

    p = Path(path)
    meta = read_json(p / STUDENT_META)
    if meta.get("format") != STUDENT_FORMAT:
        raise BadInput(
            "model", f"{p / STUDENT_META}: not a promptport student (format {meta.get('format')!r})"
        )
    want = (meta.get("sha256") or {}).get(STUDENT_WEIGHTS)
    if not (p / STUDENT_WEIGHTS).is_file() or (want and sha256_file(p / STUDENT_WEIGHTS) != want):
        raise BadInput("model", f"{p / STUDENT_WEIGHTS} is missing or does not match its checksum")
    ref = meta["teacher"]
    t = (
        teacher
        if isinstance(teacher, LoadedModel)
        else load_model(teacher or ref["spec"], dtype="float32")
    )
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


# ---------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Fixed-length token blocks for LM distillation, split into train and held-out blocks."""

    train: torch.Tensor  # [N, block] long
    heldout: torch.Tensor  # [M, block] long
    meta: dict


def read_corpus_texts(
    sources: list[str], max_texts: int | None = None, max_chars: int | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """(source, text) pairs from `embedded:NAME`, local text/JSONL/CSV files or folders, or hub data sets;
    each source is read (streaming) until `max_chars` characters at most."""
    from promptport.data import load_texts

    pairs, used = [], []
    for s in sources:
        if s.startswith("embedded:") and s.split(":", 1)[1] not in EMBEDDED_TEXTS:
            raise BadInput(
                "corpus",
                f"unknown embedded text '{s}' (known: "
                f"{', '.join('embedded:' + n for n in EMBEDDED_TEXTS)})",
            )
        try:
            texts, src = load_texts(s, limit=max_texts, max_chars=max_chars)
        except BadInput as e:
            raise BadInput("corpus", str(e)) from None
        texts = [clean_text(t) for t in texts]
        pairs += [(src, t) for t in texts if t]
        used.append(src)
    return pairs, used


def clean_text(t: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<br\s*/?>", " ", t)).strip()


def pack_blocks(
    token_lists: list[list[int]], block_size: int, sep_id: int | None, max_tokens: int | None
) -> torch.Tensor:
    """Concatenate documents (separated by EOS) and cut into full blocks; the incomplete tail is dropped."""
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        if sep_id is not None:
            flat.append(sep_id)
        if max_tokens is not None and len(flat) >= max_tokens:
            break
    if max_tokens is not None:
        flat = flat[:max_tokens]
    n = len(flat) // block_size
    return torch.tensor(flat[: n * block_size], dtype=torch.long).view(n, block_size)


CORPUS_READ_CHARS = 1 << 28  # characters read per corpus source at least (~256 MB of text)


def corpus_char_budget(need_tokens: int) -> int:
    """Characters to read per source: 64 per needed token (BPE tokens average 3-5), at least 256M."""
    return max(64 * need_tokens, CORPUS_READ_CHARS)


def build_corpus(
    tokenizer,
    sources: list[str],
    *,
    block_size: int = 128,
    max_tokens: int = 100_000,
    heldout_blocks: int = 16,
    seed: int = 0,
    extra_texts: list[tuple[str, str]] | None = None,
) -> Corpus:
    """Shuffle the documents of all sources (seeded), tokenise until `max_tokens`, pack, hold out blocks."""
    if block_size < 2:
        raise BadInput("block_size", f"must be at least 2 tokens, got {block_size}")
    need = max_tokens + heldout_blocks * block_size
    # big corpora are streamed and cut: a source is read until it alone could give `need` tokens many times
    # over (shuffling then mixes documents from well beyond the first few), never loaded whole
    pairs, used = (
        read_corpus_texts(sources, max_chars=corpus_char_budget(need)) if sources else ([], [])
    )
    pairs += extra_texts or []
    if not pairs:
        raise BadInput("corpus", f"the corpus is empty ({', '.join(sources) or 'no sources'})")
    order = np.random.default_rng(seed).permutation(len(pairs))
    token_lists, counts, n_tok = [], {}, 0
    for start in range(0, len(order), 512):  # tokenise lazily: big corpora are cut at max_tokens
        chunk = [pairs[i] for i in order[start : start + 512]]
        enc = tokenizer([t for _, t in chunk], add_special_tokens=False)["input_ids"]
        for (src, _), ids in zip(chunk, enc):
            token_lists.append(ids)
            counts[src] = counts.get(src, 0) + 1
            n_tok += len(ids) + 1
        if n_tok >= need:
            break
    blocks = pack_blocks(token_lists, block_size, tokenizer.eos_token_id, need)
    if len(blocks) < heldout_blocks + 1:
        raise BadInput(
            "corpus",
            f"the corpus gives {len(blocks)} block(s) of {block_size} tokens; need at least "
            f"{heldout_blocks + 1} ({heldout_blocks} held out); add text or lower --block-size",
        )
    meta = {
        "sources": used + sorted({s for s, _ in (extra_texts or [])}),
        "documents_used": counts,
        "block_size": block_size,
        "train_blocks": len(blocks) - heldout_blocks,
        "heldout_blocks": heldout_blocks,
        "train_tokens": (len(blocks) - heldout_blocks) * block_size,
        "heldout_tokens": heldout_blocks * block_size,
    }
    return Corpus(blocks[heldout_blocks:], blocks[:heldout_blocks], meta)


@torch.inference_mode()
def sample_from_teacher(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    length: int,
    seed: int,
    batch_size: int = 16,
    top_p: float = 0.95,
) -> list[tuple[str, str]]:
    """Sequence-level distillation data: continuations the teacher samples from short public prefixes."""
    out = []
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(prompts), (n,), generator=g).tolist()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, n, batch_size):
            heads = [" ".join(prompts[i].split()[:6]) for i in pick[start : start + batch_size]]
            enc = tokenizer(heads, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(seed + start)
            gen = model.generate(
                **enc,
                do_sample=True,
                top_p=top_p,
                max_new_tokens=length,
                pad_token_id=tokenizer.pad_token_id,
            )
            out += [
                ("teacher-samples", t)
                for t in tokenizer.batch_decode(gen, skip_special_tokens=True)
            ]
    finally:
        tokenizer.padding_side = side
    return out


# ---------------------------------------------------------------- task-aware examples

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(texts: list[str], min_words: int = 3, max_words: int = 60) -> list[str]:
    out = []
    for t in texts:
        for s in _SENT_SPLIT.split(clean_text(t)):
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
    return out


def task_prefixes(task, public_texts: list[str], n_snippets: int, seed: int) -> list[str]:
    """Prompt-like prefixes: task descriptions from the registry and short public snippets.

    A tuned soft prompt sits in front of the template; training the student on hard prefixes in that
    place teaches it to let text in front steer the answer the way the teacher does.
    """
    from promptport.tasks import builtin_tasks

    descs = sorted({t.description for t in builtin_tasks().values()} | {task.description})
    rng = random.Random(seed)
    snippets = []
    for _ in range(n_snippets if public_texts else 0):
        words = rng.choice(public_texts).split()
        k = rng.randint(3, 12)
        i = rng.randint(0, max(0, len(words) - k))
        snippets.append(" ".join(words[i : i + k]))
    return descs + snippets


def build_task_examples(
    tokenizer,
    task,
    texts: list[str],
    *,
    n: int,
    max_length: int = 96,
    seed: int = 0,
    sentences: bool = True,
    prefix_prob: float = 0.5,
) -> tuple[list[list[int]], dict, list[str]]:
    """Public examples formatted with the task template (labels never read), some with a prefix.

    Returns (token ids, metadata, the raw texts chosen) -- the texts let a caller audit overlap."""
    from promptport.classify import encode
    from promptport.data import TextDataset

    if len(task.template_fields) != 1:
        raise BadInput(
            "task_template",
            f"task-aware distillation needs a one-field template; "
            f"'{task.name}' has {task.template_fields}",
        )
    pool = split_sentences(texts) if sentences else [clean_text(t) for t in texts if clean_text(t)]
    pool = list(dict.fromkeys(pool))  # exact duplicates would only over-weight themselves
    if not pool:
        raise BadInput("task_data", "no usable public examples for the task-aware term")
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in rng.permutation(len(pool))[:n]]
    prefixes = task_prefixes(task, pool, 200, seed) if prefix_prob > 0 else []
    pre_rng = random.Random(seed + 1)
    field_name = task.template_fields[0]
    ds = TextDataset({field_name: chosen}, None, "public", "train")
    enc = encode(tokenizer, task, ds, max_length)
    ids = enc.input_ids
    n_prefixed = 0
    if prefixes:
        pre_ids = tokenizer([p + "\n" for p in prefixes], add_special_tokens=False)["input_ids"]
        for i in range(len(ids)):
            if pre_rng.random() < prefix_prob:
                ids[i] = (pre_ids[pre_rng.randrange(len(pre_ids))] + ids[i])[-max_length:]
                n_prefixed += 1
    meta = {
        "task": task.name,
        "template": task.template,
        "examples": len(ids),
        "pool": len(pool),
        "unit": "sentences" if sentences else "texts",
        "max_length": max_length,
        "prefixed": n_prefixed,
        "prefix_prob": prefix_prob,
        "n_prefixes": len(prefixes),
        "truncated": enc.n_truncated,
    }
    return ids, meta, chosen


# ---------------------------------------------------------------- losses


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    teacher_idx: torch.Tensor | None = None,
    teacher_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position T^2 * KL(softmax(t/T) || softmax(s/T)) over the last dim (the full vocabulary).

    With `teacher_idx` the teacher comes from the cache as its top-k logits plus the log-sum-exp of all
    its logits at temperature T: the top-k probabilities are then exact, and the remaining mass forms one
    "rest" bucket for both models (exact in the top k, a tight lower bound of the full KL).
    """
    s_logp = F.log_softmax(student_logits.float() / T, dim=-1)
    if teacher_idx is None:
        t_logp = F.log_softmax(teacher_logits.float() / T, dim=-1)
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1) * T * T
    s_top = s_logp.gather(-1, teacher_idx.long())
    t_top = teacher_logits.float() / T - teacher_lse.float().unsqueeze(-1)
    t_top = t_top.clamp(max=0.0)
    kl = (t_top.exp() * (t_top - s_top)).sum(-1)
    t_rest = (1 - t_top.exp().sum(-1)).clamp(min=1e-8)
    s_rest = (1 - s_top.exp().sum(-1)).clamp(min=1e-8)
    return (kl + t_rest * (t_rest.log() - s_rest.log())) * T * T


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def distill_loss(
    cfg: DistillConfig,
    *,
    s_logits=None,
    t_topv=None,
    t_topi=None,
    t_lse=None,
    input_ids=None,
    mask=None,
    s_hidden=None,
    t_hidden=None,
    s_answer=None,
    t_answer=None,
    s_answer_h=None,
    t_answer_h=None,
    class_scores=None,
) -> dict[str, torch.Tensor]:
    """The weighted terms: alpha_ce*KL + alpha_lm*CE + alpha_cos*(1-cos) on LM blocks, alpha_task*KL at answers,
    alpha_label*KL between the class distributions the task's label words give at answers.

    `class_scores` maps [B, V] vocabulary logits to [B, C] class scores (the task's
    `Verbalizer.scores_from_vocab`); the label term is what a classifier built on the student reads, which
    the full-vocabulary KL weighs as a few tokens of 49k.

    Padding (mask == 0) is excluded from every term; the LM term predicts token t+1 from position t.
    """
    terms: dict[str, torch.Tensor] = {}
    if s_logits is not None:
        if cfg.alpha_ce:
            terms["ce"] = cfg.alpha_ce * masked_mean(
                kd_kl(s_logits, t_topv, cfg.temperature, t_topi, t_lse), mask
            )
        if cfg.alpha_lm:
            tgt = (
                input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                if mask is not None
                else input_ids[:, 1:]
            )
            terms["lm"] = cfg.alpha_lm * F.cross_entropy(
                s_logits[:, :-1].float().flatten(0, 1), tgt.flatten(), ignore_index=-100
            )
        if cfg.alpha_cos and s_hidden is not None:
            cos = F.cosine_similarity(s_hidden.float(), t_hidden.float(), dim=-1)
            terms["cos"] = cfg.alpha_cos * masked_mean(1 - cos, mask)
    if s_answer is not None and cfg.alpha_task:
        terms["task"] = cfg.alpha_task * kd_kl(s_answer, t_answer, cfg.temperature).mean()
        if cfg.alpha_cos and s_answer_h is not None:
            cos = F.cosine_similarity(s_answer_h.float(), t_answer_h.float(), dim=-1)
            terms["task_cos"] = cfg.alpha_cos * (1 - cos).mean()
    if s_answer is not None and cfg.alpha_label and class_scores is not None:
        s_cls, t_cls = class_scores(s_answer.float()), class_scores(t_answer.float())
        terms["label"] = cfg.alpha_label * kd_kl(s_cls, t_cls, 1.0).mean()
    terms["total"] = sum(terms.values()) if terms else torch.zeros(())
    return terms


# ---------------------------------------------------------------- configuration


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (recorded in metrics.json and checked on resume)."""

    layers: int = 4
    strategy: str = "first-last"
    corpus: list[str] = field(default_factory=lambda: list(DEFAULT_CORPUS))
    max_tokens: int = 100_000
    block_size: int = 128
    heldout_blocks: int = 16
    teacher_samples: int = 0
    temperature: float = 2.0
    alpha_ce: float = 1.0
    alpha_lm: float = 0.0
    alpha_cos: float = 1.0
    alpha_task: float = 0.0
    alpha_label: float = 0.0
    task_template: str | None = None
    task_data: list[str] = field(default_factory=list)
    task_examples: int = 4000
    task_heldout: int = 128
    task_max_length: int = 96
    task_sentences: bool = True
    prefix_prob: float = 0.5
    topk: int = 64
    epochs: float = 2.0
    max_steps: int | None = None
    batch_size: int = 8
    task_batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.05
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    precision: str = "bf16"
    freeze_embeddings: bool = True
    eval_every: int = 0
    save_every: int = 50
    seed: int = 0

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise BadInput(
                "strategy", f"unknown strategy '{self.strategy}' (choose {', '.join(STRATEGIES)})"
            )
        if self.precision not in ("bf16", "fp32"):
            raise BadInput("precision", f"choose bf16 or fp32, not '{self.precision}'")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise BadInput("schedule", f"choose cosine, linear or constant, not '{self.schedule}'")
        for name in ("temperature", "lr"):
            if getattr(self, name) <= 0:
                raise BadInput(name, f"must be positive, got {getattr(self, name)}")
        for name in (
            "alpha_ce",
            "alpha_lm",
            "alpha_cos",
            "alpha_task",
            "alpha_label",
            "weight_decay",
            "max_grad_norm",
        ):
            if getattr(self, name) < 0:
                raise BadInput(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "task_batch_size", "grad_accum", "topk", "max_tokens"):
            if getattr(self, name) <= 0:
                raise BadInput(name, f"must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise BadInput("warmup", f"is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.uses_task and not self.task_template:
            raise BadInput(
                "task_template", "alpha_task/alpha_label > 0 needs a task template (e.g. sst2)"
            )
        if self.uses_task and not self.task_data:
            raise BadInput(
                "task_data",
                "alpha_task/alpha_label > 0 needs public task data (a file, folder, hub id "
                "or embedded:NAME)",
            )
        if not (self.alpha_ce or self.alpha_lm or self.alpha_cos or self.uses_task):
            raise BadInput("alpha_ce", "all loss weights are zero; nothing to train")
        if self.max_steps is not None and self.max_steps <= 0:
            raise BadInput("max_steps", f"must be positive, got {self.max_steps}")
        if self.epochs <= 0:
            raise BadInput("epochs", f"must be positive, got {self.epochs}")

    @property
    def uses_task(self) -> bool:
        return bool(self.alpha_task or self.alpha_label)

    @property
    def uses_lm(self) -> bool:
        return bool(self.alpha_ce or self.alpha_lm or self.alpha_cos)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- teacher cache


@torch.inference_mode()
def _base_forward(model, input_ids, attention_mask):
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.inference_mode()
def cache_lm(
    teacher,
    blocks: torch.Tensor,
    topk: int,
    keep_hidden: bool,
    precision: str,
    temperature: float,
    batch_size: int = 8,
    bar=None,
) -> dict[str, torch.Tensor]:
    """Teacher top-k logits, log-sum-exp at temperature T (and last hidden states) at every position."""
    from promptport.classify import project

    vals, idx, hid, lse = [], [], [], []
    dev = next(teacher.parameters()).device
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(dev)
        with _autocast(precision):
            h = _base_forward(teacher, ids, torch.ones_like(ids))
            logits = project(teacher, h)
        v, i = logits.float().topk(min(topk, logits.shape[-1]), dim=-1)
        lse.append(torch.logsumexp(logits.float() / temperature, -1).cpu())
        vals.append(v.to(torch.bfloat16).cpu())
        idx.append(i.to(torch.int32).cpu())
        if keep_hidden:
            hid.append(h.to(torch.bfloat16).cpu())
        if bar is not None:
            bar.update(ids.numel())
    out = {"lm_topv": torch.cat(vals), "lm_topi": torch.cat(idx), "lm_lse": torch.cat(lse)}
    if keep_hidden:
        out["lm_hidden"] = torch.cat(hid)
    return out


@torch.inference_mode()
def cache_answers(
    teacher, ids: list[list[int]], pad_id: int, precision: str, batch_size: int = 32, bar=None
) -> dict[str, torch.Tensor]:
    """Teacher full-vocabulary logits and last hidden state at the answer position of each example."""
    from promptport.classify import answer_hidden, project

    order = np.argsort([len(x) for x in ids], kind="stable")
    dev = next(teacher.parameters()).device
    logits_all = torch.empty(
        len(ids), teacher.get_output_embeddings().weight.shape[0], dtype=torch.bfloat16
    )
    hid_all = torch.empty(
        len(ids), teacher.get_input_embeddings().weight.shape[1], dtype=torch.bfloat16
    )
    for start in range(0, len(ids), batch_size):
        sel = order[start : start + batch_size]
        input_ids, mask = collate([ids[i] for i in sel], pad_id, "right")
        with _autocast(precision):
            h = answer_hidden(teacher, input_ids.to(dev), mask.to(dev))
            lg = project(teacher, h)
        logits_all[torch.as_tensor(sel)] = lg.to(torch.bfloat16).cpu()
        hid_all[torch.as_tensor(sel)] = h.to(torch.bfloat16).cpu()
        if bar is not None:
            bar.update(int(mask.sum()))
    return {"task_logits": logits_all, "task_hidden": hid_all}


def _cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- training


class StudentForward(torch.nn.Module):
    """The student's differentiable computation in one forward(), so DDP sees (and syncs) all of it."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, lm_ids=None, lm_mask=None, task_ids=None, task_mask=None):
        """(LM hidden, LM logits) at every block position and (hidden, logits) at each task answer."""
        from promptport.classify import answer_hidden, project

        lm = task = (None, None)
        if lm_ids is not None:
            out = self.student.base_model(input_ids=lm_ids, attention_mask=lm_mask)
            h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            lm = (h, project(self.student, h))
        if task_ids is not None:
            h = answer_hidden(self.student, task_ids, task_mask)
            task = (h, project(self.student, h))
        return lm, task


def stream_indices(n: int, batch: int, step: int, seed: int, stream: int) -> np.ndarray:
    """Indices of the `step`-th global batch of a stream that reshuffles each epoch: a pure function of
    (seed, step), so resuming and multi-process splits see exactly the data an uninterrupted run sees."""
    first, last = step * batch, (step + 1) * batch
    out, pos = [], first
    while pos < last:
        epoch, off = divmod(pos, n)
        take = min(last - pos, n - off)
        perm = np.random.default_rng([seed, stream, epoch]).permutation(n)
        out.append(perm[off : off + take])
        pos += take
    return np.concatenate(out)


def make_scheduler(optimizer, cfg: DistillConfig, total_steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warm = int(round(cfg.warmup * total_steps))
    if cfg.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warm)
    fn = (
        get_cosine_schedule_with_warmup
        if cfg.schedule == "cosine"
        else get_linear_schedule_with_warmup
    )
    return fn(optimizer, warm, total_steps)


@torch.inference_mode()
def evaluate_student(
    student,
    teacher,
    heldout: torch.Tensor | None,
    task_ids: list[list[int]] | None,
    pad_id: int,
    precision: str = "fp32",
    batch_size: int = 8,
    class_scores=None,
) -> dict:
    """Held-out text: perplexities, KL(teacher||student) per token (T=1, full vocabulary), top-1 agreement;
    at the answer position of held-out task examples: KL, top-1 agreement and (with `class_scores`, the task's
    verbalizer) how often the student picks the teacher's class -- the closest label-free proxy of
    whether a classifier on the student behaves like one on the teacher."""
    from promptport.classify import answer_hidden, project

    dev = next(student.parameters()).device
    out: dict = {}
    nll_s = nll_t = kl = agree = n = 0.0
    for start in range(0, 0 if heldout is None else len(heldout), batch_size):
        ids = heldout[start : start + batch_size].to(dev)
        mask = torch.ones_like(ids)
        with _autocast(precision):
            s = project(student, _base_forward(student, ids, mask)).float()
            t = project(teacher, _base_forward(teacher, ids, mask)).float()
        s_lp, t_lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        tgt = ids[:, 1:].unsqueeze(-1)
        nll_s += -s_lp[:, :-1].gather(-1, tgt).sum().item()
        nll_t += -t_lp[:, :-1].gather(-1, tgt).sum().item()
        n += tgt.numel()
        kl += (t_lp.exp() * (t_lp - s_lp)).sum().item()
        agree += (s.argmax(-1) == t.argmax(-1)).sum().item()
    if n:
        n_pos = heldout.numel()
        out = {
            "student_ppl": _safe_exp(nll_s / n),
            "teacher_ppl": _safe_exp(nll_t / n),
            "kl_per_token": kl / n_pos,
            "top1_agreement": agree / n_pos,
            "heldout_tokens": int(n_pos),
        }
    if task_ids:
        kl_a = agree_a = agree_c = 0.0
        for start in range(0, len(task_ids), 32):
            input_ids, mask = collate(task_ids[start : start + 32], pad_id, "right")
            input_ids, mask = input_ids.to(dev), mask.to(dev)
            with _autocast(precision):
                s = project(student, answer_hidden(student, input_ids, mask)).float()
                t = project(teacher, answer_hidden(teacher, input_ids, mask)).float()
            s_lp, t_lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
            kl_a += (t_lp.exp() * (t_lp - s_lp)).sum().item()
            agree_a += (s.argmax(-1) == t.argmax(-1)).sum().item()
            if class_scores is not None:
                agree_c += (class_scores(s).argmax(-1) == class_scores(t).argmax(-1)).sum().item()
        out.update(
            answer_kl=kl_a / len(task_ids),
            answer_top1_agreement=agree_a / len(task_ids),
            answer_examples=len(task_ids),
        )
        if class_scores is not None:
            out["answer_class_agreement"] = agree_c / len(task_ids)
    return out


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def distill(
    teacher: str | LoadedModel = "smollm2-135m-instruct",
    out: str | Path = "runs/distill",
    cfg: DistillConfig | None = None,
    *,
    student: str | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = False,
    time_budget_s: float | None = None,
) -> dict:
    """Distil `teacher` into a `cfg.layers`-layer student; writes OUT/student (a model folder that
    `load_model` accepts), OUT/metrics.json and OUT/metrics.jsonl. Returns the metrics.

    `student`: continue from an existing student folder instead of a fresh extraction.
    `resume`: continue an interrupted run from OUT/checkpoint (bit-exact on CPU).
    `time_budget_s`: stop early (and save) when the budget is spent; the schedule is unchanged.
    """
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file

    from promptport.fileio import check_writable_dir
    from promptport.models import load_model
    from promptport.runtime import seed_everything, versions
    from promptport.tasks import get_task

    t_start = time.perf_counter()
    cfg = cfg or DistillConfig()
    cfg.check()
    out = check_writable_dir(out)
    acc = Accelerator(cpu=device == "cpu")
    world, rank = acc.num_processes, acc.process_index
    for name, b in (("batch_size", cfg.batch_size), ("task_batch_size", cfg.task_batch_size)):
        if b % (world * cfg.grad_accum):
            raise BadInput(
                name, f"{b} is not divisible by processes x grad_accum = {world * cfg.grad_accum}"
            )
    seed_everything(cfg.seed)

    t = teacher if isinstance(teacher, LoadedModel) else load_model(teacher, device=device)
    teacher_spec = t.info.model_id if isinstance(teacher, LoadedModel) else teacher
    tmodel, tok = t.model, t.tokenizer
    n_teacher = num_layers(tmodel)
    from promptport.classify import Verbalizer, is_masked_lm, template_for

    if cfg.alpha_lm and is_masked_lm(tmodel):
        raise BadInput(
            "alpha_lm",
            "the LM term is next-token cross-entropy; a masked-LM teacher distils with "
            "alpha_ce, alpha_cos and the task terms",
        )
    ckpt_dir = out / "checkpoint"
    state = None
    if resume:
        if not ckpt_dir.exists() and (out / "checkpoint.old" / "state.json").is_file():
            with contextlib.suppress(
                FileNotFoundError
            ):  # another rank of the same launch may have done it
                os.replace(
                    out / "checkpoint.old", ckpt_dir
                )  # killed between the two renames of a swap
        if not (ckpt_dir / "state.json").is_file():
            raise BadInput("resume", f"no checkpoint in {ckpt_dir}")
        state = read_json(ckpt_dir / "state.json")
        check_same_teacher(state["teacher"], t.info, field="resume")
        if state["config"] != cfg.to_dict():
            diff = sorted(k for k in cfg.to_dict() if state["config"].get(k) != cfg.to_dict()[k])
            raise BadInput(
                "resume", f"the checkpoint was made with other settings ({', '.join(diff)})"
            )

    # the student: a fresh cut of the teacher, or an existing student of the same teacher
    if student is not None:
        from promptport.models import resolve_source

        if resolve_source(student)[0] != "local" or not is_student_dir(student):
            raise BadInput("student", f"'{student}' is not a student folder (no {STUDENT_META})")
        smeta = read_json(Path(student) / STUDENT_META)
        check_same_teacher(smeta["teacher"], t.info, field="student")
        layers = smeta["layers"]
        smodel = load_student(student, teacher=t, device=device).model
    else:
        layers = select_layers(n_teacher, cfg.layers, cfg.strategy)
        smodel = extract_student(tmodel, layers)
    smodel.to(next(tmodel.parameters()).device).float()
    own = set_trainable(smodel, cfg.freeze_embeddings)
    counts = parameter_counts(smodel, sum(p.numel() for p in tmodel.parameters()), own)

    # data
    corpus = None
    extra = []
    if cfg.uses_lm:
        if cfg.teacher_samples:
            heads, _ = read_corpus_texts(cfg.corpus, max_texts=2000) if cfg.corpus else ([], [])
            heads = [x for _, x in heads] or ["The"]
            extra = sample_from_teacher(
                tmodel, tok, heads, cfg.teacher_samples, cfg.block_size, cfg.seed
            )
        corpus = build_corpus(
            tok,
            cfg.corpus,
            block_size=cfg.block_size,
            max_tokens=cfg.max_tokens,
            heldout_blocks=cfg.heldout_blocks,
            seed=cfg.seed,
            extra_texts=extra,
        )
    task = task_train = task_held = None
    task_meta = None
    class_scores = None
    if cfg.uses_task:
        task = template_for(
            get_task(cfg.task_template), tok, is_masked_lm(tmodel)
        )  # MLM: mask-token slot
        pairs, used = read_corpus_texts(cfg.task_data)
        ids, task_meta, _ = build_task_examples(
            tok,
            task,
            [x for _, x in pairs],
            n=cfg.task_examples + cfg.task_heldout,
            max_length=cfg.task_max_length,
            seed=cfg.seed,
            sentences=cfg.task_sentences,
            prefix_prob=cfg.prefix_prob,
        )
        if len(ids) <= cfg.task_heldout:
            raise BadInput(
                "task_data",
                f"only {len(ids)} public examples; need more than {cfg.task_heldout} (held out)",
            )
        task_held, task_train = ids[: cfg.task_heldout], ids[cfg.task_heldout :]
        task_meta["sources"] = used
        class_scores = Verbalizer(tok, task).scores_from_vocab
    elif corpus is None:
        raise BadInput(
            "alpha_task", "with alpha_ce = alpha_lm = alpha_cos = 0 the task term is the only one"
        )

    # the teacher cache: computed once (split across processes), reused by resumed runs
    key = _cache_key(
        {
            "teacher": t.info.embedding_fingerprint,
            "corpus": cfg.corpus,
            "max_tokens": cfg.max_tokens,
            "block": cfg.block_size,
            "held": cfg.heldout_blocks,
            "samples": cfg.teacher_samples,
            "topk": cfg.topk,
            "T": cfg.temperature,
            "precision": cfg.precision,
            "task": cfg.task_template,
            "task_data": cfg.task_data,
            "task_n": cfg.task_examples,
            "task_held": cfg.task_heldout,
            "task_len": cfg.task_max_length,
            "sent": cfg.task_sentences,
            "prefix": cfg.prefix_prob,
            "cos": bool(cfg.alpha_cos),
            "seed": cfg.seed,
            "world": world,
        }
    )
    cache_file = out / f"teacher_cache.{key}.rank{rank}.safetensors"
    t0 = time.perf_counter()
    if cache_file.is_file():
        cache_part = load_file(str(cache_file))
    else:
        cache_part = {}
        lm_rows = (
            np.array_split(np.arange(len(corpus.train)), world)[rank] if corpus is not None else []
        )
        task_rows = np.array_split(np.arange(len(task_train)), world)[rank] if task_train else []
        total = (len(lm_rows) * cfg.block_size) + sum(len(task_train[i]) for i in task_rows)
        bar = _bar(total, "teacher cache", progress and acc.is_main_process, unit="tok")
        if len(lm_rows):
            cache_part.update(
                cache_lm(
                    tmodel,
                    corpus.train[torch.as_tensor(lm_rows)],
                    cfg.topk,
                    bool(cfg.alpha_cos),
                    cfg.precision,
                    cfg.temperature,
                    bar=bar,
                )
            )
        if len(task_rows):
            cache_part.update(
                cache_answers(
                    tmodel,
                    [task_train[i] for i in task_rows],
                    tok.pad_token_id,
                    cfg.precision,
                    bar=bar,
                )
            )
        if bar is not None:
            bar.close()
        with atomic_path(cache_file) as tmp:
            save_file(cache_part, str(tmp))
    acc.wait_for_everyone()
    if world > 1:
        parts = [
            load_file(str(out / f"teacher_cache.{key}.rank{r}.safetensors")) for r in range(world)
        ]
        cache = {k: torch.cat([p[k] for p in parts if k in p]) for k in set().union(*parts)}
    else:
        cache = cache_part
    cache_seconds = time.perf_counter() - t0

    # steps: one step = one global LM batch and/or one global task batch
    n_lm = len(corpus.train) if corpus is not None else 0
    n_task = len(task_train) if task_train else 0
    per_epoch = max(
        math.ceil(n_lm / cfg.batch_size) if n_lm else 0,
        math.ceil(n_task / cfg.task_batch_size) if n_task else 0,
    )
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))

    fwd = StudentForward(smodel)
    params = [p for p in smodel.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    sched = make_scheduler(opt, cfg, total_steps)
    fwd, opt = acc.prepare(fwd, opt)
    step = 0
    metrics_path = out / "metrics.jsonl"
    if state is not None:
        step = state["step"]
        own_w = load_file(str(ckpt_dir / "student_own.safetensors"))
        named = dict(smodel.named_parameters())
        with torch.no_grad():
            for n, v in own_w.items():
                named[n].copy_(v)
        opt_state = torch.load(ckpt_dir / "optimizer.pt", weights_only=True)
        _optimizer(opt).load_state_dict(opt_state)
        sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(sched.lr_lambdas)})
        torch.set_rng_state(torch.load(ckpt_dir / "rng.pt", weights_only=True)["torch"])
        if acc.is_main_process and metrics_path.is_file():  # drop lines logged after the checkpoint
            keep = [
                ln
                for ln in metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step
            ]
            with atomic_path(metrics_path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in keep))
    elif acc.is_main_process and metrics_path.exists():
        metrics_path.unlink()
    acc.wait_for_everyone()

    def run_eval() -> dict:
        return evaluate_student(
            smodel,
            tmodel,
            corpus.heldout if corpus is not None else None,
            task_held,
            tok.pad_token_id,
            cfg.precision,
            class_scores=class_scores,
        )

    before = None
    if acc.is_main_process:
        before = state["before"] if state is not None else run_eval()
    tokens_per_step = cfg.batch_size * cfg.block_size if n_lm else 0
    task_tok_mean = float(np.mean([len(x) for x in task_train])) if n_task else 0.0
    tokens_per_step_total = tokens_per_step + (cfg.task_batch_size * task_tok_mean if n_task else 0)

    def save_checkpoint(at_step: int) -> None:
        if not acc.is_main_process:
            return
        tmp_dir = out / "checkpoint.tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        named = dict(smodel.named_parameters())
        save_file(
            {n: named[n].detach().cpu().contiguous() for n in own},
            str(tmp_dir / "student_own.safetensors"),
        )
        torch.save(_optimizer(opt).state_dict(), tmp_dir / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp_dir / "rng.pt")
        sd = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
        write_json(
            tmp_dir / "state.json",
            {
                "step": at_step,
                "total_steps": total_steps,
                "config": cfg.to_dict(),
                "teacher": teacher_reference(teacher_spec, t.info),
                "scheduler": sd,
                "before": before,
            },
        )
        old = out / "checkpoint.old"
        if ckpt_dir.exists():
            os.replace(ckpt_dir, old)
        os.replace(tmp_dir, ckpt_dir)
        if old.exists():
            import shutil

            shutil.rmtree(old)

    delay = float(
        os.environ.get("PROMPTPORT_STEP_DELAY", "0") or 0
    )  # test hook: widen the kill window
    bar = _bar(total_steps, "distil", progress and acc.is_main_process, unit="step", initial=step)
    t_train = time.perf_counter()
    start_step, stopped_early = step, False
    trained_tokens = step * tokens_per_step_total
    local_lm = cfg.batch_size // world
    local_task = cfg.task_batch_size // world
    fwd.train()
    step_s = 0.0
    while step < total_steps:
        t_step = time.perf_counter()
        if (
            time_budget_s is not None and t_step - t_start + step_s > time_budget_s
        ):  # the next step must fit
            stopped_early = True
            break
        lm_idx = (
            stream_indices(n_lm, cfg.batch_size, step, cfg.seed, 0)[
                rank * local_lm : (rank + 1) * local_lm
            ]
            if n_lm
            else None
        )
        tk_idx = (
            stream_indices(n_task, cfg.task_batch_size, step, cfg.seed, 1)[
                rank * local_task : (rank + 1) * local_task
            ]
            if n_task
            else None
        )
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            sync = micro == cfg.grad_accum - 1
            with acc.no_sync(fwd) if not sync and world > 1 else _null():
                kwargs, inputs = {}, {}
                if lm_idx is not None:
                    lsel = torch.as_tensor(np.array_split(lm_idx, cfg.grad_accum)[micro])
                    ids = corpus.train[lsel].to(acc.device)
                    inputs.update(lm_ids=ids, lm_mask=torch.ones_like(ids))
                if tk_idx is not None:
                    tsel = np.array_split(tk_idx, cfg.grad_accum)[micro]
                    task_ids, task_mask = collate(
                        [task_train[i] for i in tsel], tok.pad_token_id, "right"
                    )
                    inputs.update(
                        task_ids=task_ids.to(acc.device), task_mask=task_mask.to(acc.device)
                    )
                with _autocast(cfg.precision):
                    (sh, sl), (ah, al) = fwd(**inputs)
                if lm_idx is not None:
                    kwargs.update(
                        s_logits=sl,
                        t_topv=cache["lm_topv"][lsel],
                        t_topi=cache["lm_topi"][lsel],
                        t_lse=cache["lm_lse"][lsel],
                        input_ids=ids,
                        mask=inputs["lm_mask"],
                        s_hidden=sh,
                        t_hidden=cache["lm_hidden"][lsel] if "lm_hidden" in cache else None,
                    )
                if tk_idx is not None:
                    st = torch.as_tensor(tsel)
                    kwargs.update(
                        s_answer=al,
                        t_answer=cache["task_logits"][st],
                        s_answer_h=ah,
                        t_answer_h=cache["task_hidden"][st],
                        class_scores=class_scores,
                    )
                terms = distill_loss(cfg, **kwargs)
                acc.backward(terms["total"] / cfg.grad_accum)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        if cfg.max_grad_norm:
            gnorm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
        else:
            gnorm = float("nan")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        step_s = time.perf_counter() - t_step
        trained_tokens += tokens_per_step_total
        if world > 1:
            vals = acc.reduce(torch.tensor([sums[k] for k in sorted(sums)]), reduction="mean")
            sums = dict(zip(sorted(sums), vals.tolist()))
        if delay:
            time.sleep(delay)
        if acc.is_main_process:
            secs = time.perf_counter() - t_train
            rate = (step - start_step) * tokens_per_step_total / max(secs, 1e-9)
            rec = {
                "step": step,
                "loss": sums["total"],
                **{k: v for k, v in sums.items() if k != "total"},
                "lr": sched.get_last_lr()[0],
                "grad_norm": gnorm,
                "tokens": int(trained_tokens),
                "tokens_per_s": round(rate, 1),
            }
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                fwd.eval()
                rec["eval"] = run_eval()
                fwd.train()
            append_jsonl(metrics_path, rec)
            if bar is not None:
                bar.set_postfix(loss=f"{sums['total']:.3f}", tok_s=f"{rate:.0f}")
                bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            save_checkpoint(step)
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t_train
    fwd.eval()
    smodel.eval()

    result = None
    if acc.is_main_process:
        save_checkpoint(step)
        after = run_eval()
        wall = time.perf_counter() - t_start
        meta = {
            "teacher": teacher_reference(teacher_spec, t.info),
            "layers": layers,
            "strategy": cfg.strategy if student is None else "continued",
            "parameters": counts,
            "trained_embeddings": not cfg.freeze_embeddings,
            "training": {"steps": step, "tokens": int(trained_tokens), "seed": cfg.seed},
        }
        save_student(out / "student", smodel, tok, own, meta)
        result = {
            "stage": "distill",
            "teacher": t.info.model_id,
            "student": str(out / "student"),
            "layers": layers,
            "strategy": meta["strategy"],
            "parameters": counts,
            "before": before,
            "after": after,
            "kl_reduction": _reduction(before, after, "kl_per_token"),
            "answer_kl_reduction": _reduction(before, after, "answer_kl"),
            "steps": step,
            "total_steps": total_steps,
            "stopped_early": stopped_early,
            "tokens_trained": int(trained_tokens),
            "processes": world,
            "cache_seconds": round(cache_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "wall_seconds": round(wall, 2),
            "tokens_per_s": round(
                (step - start_step) * tokens_per_step_total / max(train_seconds, 1e-9), 1
            ),
            "corpus": corpus.meta if corpus is not None else None,
            "task_aware": task_meta,
            "config": cfg.to_dict(),
            "versions": versions(),
        }
        write_json(out / "metrics.json", result)
    acc.wait_for_everyone()
    if (
        acc.is_main_process
    ):  # a finished run needs no cache; an interrupted one keeps it for --resume
        for f in out.glob("teacher_cache.*.safetensors"):
            if stopped_early is False or key not in f.name:
                f.unlink()
    return result if result is not None else {"stage": "distill", "rank": rank}


def _reduction(before: dict, after: dict, key: str) -> float | None:
    if key not in before or key not in after or not before[key] > 0:
        return None
    return round(1 - after[key] / before[key], 4)


def _optimizer(opt):
    return getattr(opt, "optimizer", opt)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _bar(total: int, desc: str, enabled: bool, unit: str = "it", initial: int = 0):
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
