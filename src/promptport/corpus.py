"""Distillation data: the public text corpus (packed token blocks) and task-formatted public examples.

Everything here is provider-side public data: the corpus trains the student to imitate the teacher's
next-token distribution, and the task examples (public texts put through a task template, labels never
read) teach it to imitate the teacher's answer. Private data never enters this module.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from promptport.errors import BadInput

EMBEDDED_TEXTS = ("rt_plots", "rt_reviews", "headlines", "speeches")
DEFAULT_CORPUS = ("embedded:rt_plots", "embedded:headlines", "embedded:speeches")


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
    token_lists: list[list[int]] = []
    counts: dict[str, int] = {}
    n_tok = 0
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
