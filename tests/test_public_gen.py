"""public_data: generate:N -- the teacher writes public texts from the task's description and classes."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_llama
from promptport.errors import BadInput
from promptport.models import load_model
from promptport.prompt import init_prompt_embeddings, make_metadata, save_prompt
from promptport.public_gen import (
    GenerateConfig,
    clean,
    generate_public,
    generate_texts,
    instructions,
    parse_source,
)
from promptport.tasks import get_task


class EchoModel(torch.nn.Module):
    """generate() returns a fixed cycle of continuations: duplicates are predictable."""

    def __init__(self, tokenizer, outputs):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.outs = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in outputs]
        self.i = 0
        self.calls = []

    def generate(self, input_ids, attention_mask, **kw):
        self.calls.append((input_ids.shape, kw))
        rows = []
        for _ in range(input_ids.shape[0]):
            rows.append(self.outs[self.i % len(self.outs)])
            self.i += 1
        width = max(map(len, rows))
        pad = kw["pad_token_id"]
        cont = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, cont], 1)


def test_parse_source_and_bad_values():
    assert parse_source("embedded:rt_reviews") is None
    assert parse_source("generate:50").n == 50
    for bad in ("generate:x", "generate:1", "generate:"):
        with pytest.raises(BadInput, match="public_data"):
            parse_source(bad)


def test_instructions_use_only_description_and_classes():
    t = get_task("rt_snippets")
    ins = instructions(t)
    assert len(ins) == len(t.classes)
    for c, text in zip(t.classes, ins):
        assert t.description in text and f"'{c}'" in text and "review" in text


def test_dedup_length_cap_and_settings(tiny_model_dir):
    tok = load_model(str(tiny_model_dir)).tokenizer
    outs = [
        "the movie was great and wonderful",
        "The  movie was great and wonderful",  # a duplicate once normalised
        "bad",  # too short
        "a terrible boring film with bad acting",
        "the plot is thin but the jokes land " * 10,  # cut at the length cap
    ]
    model = EchoModel(tok, outs)
    cfg = GenerateConfig(n=3, batch_size=2, max_chars=60, temperature=0.7, top_p=0.9)
    texts, stats = generate_texts(model, tok, get_task("sst2"), cfg)
    assert len(texts) == 3 and len({t.lower() for t in texts}) == 3
    assert all(len(t) <= 60 for t in texts)
    assert stats["duplicates"] >= 1 and stats["too_short"] >= 1 and stats["kept"] == 3
    kw = model.calls[0][1]
    assert kw["do_sample"] and kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["use_cache"]
    assert model.calls[0][0][0] == 2  # batched
    assert clean('"Review: a fine film"', 100) == "a fine film"


def test_transfer_with_generated_public_data(tmp_path, tiny_model_dir):
    from promptport.transfer import TransferConfig, transfer

    teacher = load_model(str(tiny_model_dir))
    student = load_model(str(build_tiny_llama(tmp_path / "student", layers=2, seed=1)))
    g = torch.Generator().manual_seed(3)
    emb = init_prompt_embeddings(student.model, student.tokenizer, 4, "random", generator=g)
    meta = make_metadata(model_info=student.info, task=get_task("sst2"), init="random", n_tokens=4)
    prompt = save_prompt(tmp_path / "p", emb, meta)
    cfg = TransferConfig(n_public=8, steps=2, batch_size=4, max_length=32)
    transfer(prompt, student, teacher, public_data="generate:8", out=tmp_path / "x", cfg=cfg)
    rec = json.loads((tmp_path / "x" / "public" / "generation.json").read_text())
    lines = (tmp_path / "x" / "public" / "texts.jsonl").read_text().splitlines()
    assert rec["kept"] == len(lines) >= 2 and rec["settings"]["n"] == 8
    assert rec["tokens_per_s"] > 0 and rec["task"] == "sst2"
    m = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert m["n_public"] == len(lines)
    # the same settings reuse the texts; the file is not rewritten
    before = (tmp_path / "x" / "public" / "texts.jsonl").stat().st_mtime_ns
    path, _ = generate_public(teacher, get_task("sst2"), "generate:8", tmp_path / "x" / "public")
    assert (tmp_path / "x" / "public" / "texts.jsonl").stat().st_mtime_ns == before
