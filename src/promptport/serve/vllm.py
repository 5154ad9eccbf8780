"""Export for vLLM's prompt-embeddings input (`vllm serve MODEL --enable-prompt-embeds`).

vLLM removed prompt adapters in 2025; it now takes a whole prompt as embeddings, shape
[sequence_length, hidden_size]. A soft prompt is served there by prepending its rows to the
embeddings of the (templated) input:

    embeds = prompt_embeds(soft, model.get_input_embeddings(), tokenizer, "the movie was great")
    llm.generate({"prompt_embeds": embeds})                          # offline
    client.completions.create(model=MODEL, prompt="",                # online: Completions API
        extra_body={"prompt_embeds": to_base64(embeds)})

`export_vllm` writes DIR/prompt_embeds.safetensors (the soft prompt, key `prompt_embeds`) and
DIR/vllm.json (the model it belongs to, its fingerprint, the template and verbalizer), which is
what `load_vllm_export` reads back. See docs/serving.md.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from promptport.errors import BadInput
from promptport.fileio import atomic_path, read_json, sha256_file, write_json
from promptport.prompt import PromptArtifact

FORMAT = "promptport.vllm/1"
TENSOR_FILE = "prompt_embeds.safetensors"
META_FILE = "vllm.json"


def export_vllm(artifact: PromptArtifact, out_dir: str | Path, model: str | None = None) -> Path:
    """Write the soft prompt and what a vLLM client needs to use it (model, template, verbalizer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TENSOR_FILE) as tmp:
        save_file({"prompt_embeds": artifact.embeddings.contiguous().float()}, str(tmp))
    m = artifact.meta.get("model") or {}
    task = artifact.meta.get("task") or {}
    write_json(
        out / META_FILE,
        {
            "format": FORMAT,
            "model": model or m.get("model_id"),
            "hidden_size": artifact.hidden_size,
            "n_tokens": artifact.n_tokens,
            "embedding_fingerprint": m.get("embedding_fingerprint"),
            "task": {k: task.get(k) for k in ("name", "template", "classes", "verbalizer", "kind")},
            "sha256": {TENSOR_FILE: sha256_file(out / TENSOR_FILE)},
            "serve": f"vllm serve {model or m.get('model_id')} --enable-prompt-embeds",
        },
    )
    return out


def load_vllm_export(directory: str | Path) -> tuple[torch.Tensor, dict]:
    """(soft prompt [n, H], metadata) of an export, its checksum verified."""
    d = Path(directory)
    meta = read_json(d / META_FILE)
    if meta.get("format") != FORMAT:
        raise BadInput("vllm", f"{d} is not a promptport vLLM export")
    if sha256_file(d / TENSOR_FILE) != (meta.get("sha256") or {}).get(TENSOR_FILE):
        raise BadInput("vllm", f"{d / TENSOR_FILE} does not match its checksum")
    return load_file(str(d / TENSOR_FILE))["prompt_embeds"], meta


def prompt_embeds(soft: torch.Tensor, embedding_layer, tokenizer, text: str) -> torch.Tensor:
    """[n + T, H]: the soft prompt, then the embeddings of `text` as the model's tokenizer reads it
    (special tokens included, as promptport's own serving and evaluation do)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"])
    w = embedding_layer.weight
    with torch.no_grad():
        x = embedding_layer(ids.to(w.device))
    return torch.cat([soft.to(w.device, x.dtype), x])


def to_base64(embeds: torch.Tensor) -> str:
    """The Completions API's `prompt_embeds` value: a base64 string of the `torch.save`d tensor
    (vLLM reads it back with `torch.load(weights_only=True)`)."""
    buf = io.BytesIO()
    torch.save(embeds.detach().cpu().contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode()
