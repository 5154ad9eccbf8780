"""What a loaded model is and how it is identified: the record every model-level module passes around.

`models` (loading teachers from the hub, local folders or the embedded default) and `student`
(rebuilding a distilled student from its teacher) both build `LoadedModel`s; neither needs the other
to describe one, which keeps the import graph acyclic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class ModelInfo:
    """What a prompt or a student must know about the model it was made on."""

    model_id: str
    architecture: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    embedding_fingerprint: str
    tokenizer_fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer
    info: ModelInfo


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def describe(model, tokenizer, model_id: str) -> ModelInfo:
    cfg = model.config
    return ModelInfo(
        model_id=model_id,
        architecture=(cfg.architectures or [type(model).__name__])[0],
        hidden_size=int(model.get_input_embeddings().weight.shape[1]),
        num_layers=int(getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", 0))),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        embedding_fingerprint=embedding_fingerprint(model),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )


def embedding_fingerprint(model) -> str:
    """sha256 of the input embedding matrix: identifies the space a soft prompt lives in."""
    w = model.get_input_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(w.shape)).encode())
    h.update(w.numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    return h.hexdigest()[:16]
