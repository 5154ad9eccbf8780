"""Public data the provider can always get: the teacher writes it (`public_data: generate:N`).

The teacher is asked, through its chat template when it has one, for short example inputs of the task,
built only from the task's description and class names -- never from private data. Classes are cycled
so the texts cover every class (the class is only a writing hint; no label is kept). Generation is
batched with left padding and a KV cache (`generate(..., use_cache=True)`), sampled (temperature /
top-p) for diversity; outputs are cleaned, cut to a length cap, deduplicated (case and whitespace
normalised) and the settings, counts and throughput go into a manifest next to the texts:

    OUT/texts.jsonl      {"text": ...} one per line (a public source any stage reads)
    OUT/generation.json  settings, counts (asked, kept, duplicates, empty), tokens/s, seconds
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from promptport.data import normalize_text
from promptport.errors import BadInput


@dataclass
class GenerateConfig:
    n: int = 1000
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 48
    max_chars: int = 300
    batch_size: int = 32
    seed: int = 0
    max_rounds: int = 4  # extra rounds to replace duplicates, at most

    def validate(self) -> None:
        if self.n < 2:
            raise BadInput("public_data", f"generate:N needs N >= 2, got {self.n}")
        if not self.temperature > 0:
            raise BadInput("temperature", f"must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BadInput("top_p", f"must be in (0, 1], got {self.top_p}")
        for k in ("max_new_tokens", "max_chars", "batch_size", "max_rounds"):
            if getattr(self, k) <= 0:
                raise BadInput(k, f"must be positive, got {getattr(self, k)}")


def parse_source(source: str) -> GenerateConfig | None:
    """`generate:N` -> GenerateConfig(n=N); anything else -> None."""
    if not source.startswith("generate:"):
        return None
    n = source.split(":", 1)[1]
    if not n.isdigit():
        raise BadInput("public_data", f"generate:N needs a number of texts, got '{source}'")
    cfg = GenerateConfig(n=int(n))
    cfg.validate()
    return cfg


def _input_kind(task) -> str:
    field = task.template_fields[0] if task.template_fields else "text"
    # the template's own name for the input: "Review: {text}" -> "review"
    m = re.search(r"([A-Za-z][A-Za-z ]{1,30}):\s*\{" + re.escape(field) + r"\}", task.template)
    return m.group(1).strip().lower() if m else "text"


def instructions(task) -> list[str]:
    """One request per class, from the description and the class names only."""
    kind = _input_kind(task)
    return [
        f"Task: {task.description}\nWrite one realistic {kind} that a person might have written, "
        f"one whose answer would be '{c}'. Reply with the {kind} only, in one or two sentences."
        for c in task.classes
    ]


def _prompt_ids(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(text + "\n", add_special_tokens=True)["input_ids"]


def clean(text: str, max_chars: int) -> str:
    t = " ".join(text.split()).strip().strip('"').strip()
    t = re.sub(r"^(review|tweet|text|news|phrase|article|answer)\s*:\s*", "", t, flags=re.I)
    if len(t) > max_chars:
        cut = t[:max_chars]
        t = cut[: cut.rfind(" ")] if " " in cut else cut
    return t.strip()


@torch.inference_mode()
def generate_texts(model, tokenizer, task, cfg: GenerateConfig, progress: bool = False):
    """(texts, stats): cfg.n distinct cleaned texts (fewer only if max_rounds run out)."""
    cfg.validate()
    reqs = [_prompt_ids(tokenizer, r) for r in instructions(task)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    kept: dict[str, str] = {}
    asked = dups = empty = new_tokens = 0
    t0 = time.perf_counter()
    from promptport.classify import _progress

    bar = _progress(cfg.n, "generate public texts", progress)
    tick = bar.update if bar is not None else (lambda _n: None)
    for _ in range(cfg.max_rounds):
        need = cfg.n - len(kept)
        if need <= 0:
            break
        for start in range(0, need, cfg.batch_size):
            b = min(cfg.batch_size, need - start)
            rows = [reqs[(asked + i) % len(reqs)] for i in range(b)]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=dev)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                use_cache=True,
                pad_token_id=pad,
            )
            cont = out[:, width:]
            new_tokens += int((cont != pad).sum())
            asked += b
            for text in tokenizer.batch_decode(cont, skip_special_tokens=True):
                t = clean(text, cfg.max_chars)
                if len(t.split()) < 3:
                    empty += 1
                elif normalize_text(t) in kept:
                    dups += 1
                else:
                    kept[normalize_text(t)] = t
                    tick(1)
                if len(kept) >= cfg.n:
                    break
            if len(kept) >= cfg.n:
                break
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - t0
    texts = list(kept.values())[: cfg.n]
    stats = {
        "settings": asdict(cfg),
        "instructions": instructions(task),
        "asked": asked,
        "kept": len(texts),
        "duplicates": dups,
        "too_short": empty,
        "new_tokens": new_tokens,
        "seconds": round(secs, 2),
        "tokens_per_s": round(new_tokens / secs, 1) if secs > 0 else None,
        "texts_per_s": round(asked / secs, 2) if secs > 0 else None,
    }
    return texts, stats


def generate_public(
    teacher, task, source: str, out: str | Path, *, seed: int = 0, progress: bool = False
) -> tuple[str, dict]:
    """Write OUT/texts.jsonl from `generate:N` with the teacher (a LoadedModel); reused when OUT already
    holds texts made with the same settings. Returns (path of texts.jsonl, the generation record)."""
    import json

    from promptport.fileio import read_json, write_json

    cfg = parse_source(source)
    if cfg is None:
        raise BadInput("public_data", f"not a generate:N source: '{source}'")
    cfg.seed = seed
    out = Path(out)
    rec_path, texts_path = out / "generation.json", out / "texts.jsonl"
    want = {"settings": asdict(cfg), "teacher": teacher.info.model_id, "task": task.name}
    if rec_path.is_file() and texts_path.is_file():
        rec = read_json(rec_path)
        if {k: rec.get(k) for k in want} == want:
            return str(texts_path), rec
    texts, stats = generate_texts(teacher.model, teacher.tokenizer, task, cfg, progress)
    if len(texts) < 2:
        raise BadInput("public_data", f"the teacher produced only {len(texts)} usable texts")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".texts.jsonl.tmp"
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tmp.replace(texts_path)
    rec = {**want, **stats, "source": source}
    write_json(rec_path, rec)
    return str(texts_path), rec
