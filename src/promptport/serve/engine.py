"""One teacher, many tenants' prompts, one forward pass: each row of a batch carries its own soft
prompt. Plain torch over the transformers model; no HTTP here.

Classification packs the rows into one sequence without padding; each row attends to its own
prompt's cached keys and values (computed once per prompt) and to its own earlier tokens. The linear
layers run once over the whole pack; attention runs row by row (`row_attention`), so it costs what the
rows cost alone instead of the pack's square (a dense block-diagonal mask over 16 rows spent 17% of
the forward on scores that are masked out). It reads
the answer as `PromptClassifier` does for `promptport evaluate` (the prompt's own template and
verbalizer, positions counted from the start of the prompt), so a served prompt gives the classes
and probabilities the offline evaluation gives. Generation left-pads [prompt_i, x_i] and runs
`model.generate(inputs_embeds=...)` with the KV cache, one call per group of rows that share their
sampling settings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from promptport.classify import cache_argument, encode, prefix_kv, project
from promptport.data import TextDataset
from promptport.errors import BadInput
from promptport.modelinfo import LoadedModel
from promptport.serve.registry import Refused, ServedPrompt


@dataclass
class ClassifyRow:
    prompt: ServedPrompt
    ids: list[int]


@dataclass
class GenerateRow:
    prompt: ServedPrompt
    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    n_tokens: int


ROW_ATTENTION = "promptport_rows"


@dataclass
class PackedRow:
    """Where one row of a pack sits: its queries at [start, start+length) of the packed tokens, its
    prompt's keys at [prompt_start, prompt_start+prompt_length) of the cache, and its own mask."""

    start: int
    length: int
    prompt_start: int
    prompt_length: int
    mask: torch.Tensor  # [length, prompt_length + length]: the whole prompt, then causal


def row_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """Attention of a pack, one row at a time (`packed_rows`, a list of PackedRow); without it,
    transformers' SDPA attention, so generation and everything else runs unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = kw.pop("packed_rows", None)
    if rows is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kw
        )
    n_prompt = key.shape[2] - query.shape[2]  # the cache holds the pack's prompts first
    outs = []
    for r in rows:
        k_r = (r.prompt_start, r.prompt_start + r.prompt_length)
        own = (n_prompt + r.start, n_prompt + r.start + r.length)
        outs.append(
            F.scaled_dot_product_attention(
                query[:, :, r.start : r.start + r.length],
                torch.cat([key[:, :, k_r[0] : k_r[1]], key[:, :, own[0] : own[1]]], 2),
                torch.cat([value[:, :, k_r[0] : k_r[1]], value[:, :, own[0] : own[1]]], 2),
                attn_mask=r.mask,
                scale=scaling,
                enable_gqa=query.shape[1] != key.shape[1],
            )
        )
    return torch.cat(outs, 2).transpose(1, 2).contiguous(), None


def _register_row_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ROW_ATTENTION, row_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROW_ATTENTION, sdpa_mask)


class ServeEngine:
    """The served model: tokenises requests and answers batches of rows (one thread at a time)."""

    def __init__(self, lm: LoadedModel, max_input_tokens: int = 512):
        if getattr(lm.model.config, "is_encoder_decoder", False) or type(
            lm.model
        ).__name__.endswith("ForMaskedLM"):
            raise BadInput("model", "serving needs a causal (decoder-only) LM")
        self.lm, self.tokenizer = lm, lm.tokenizer
        self.model: Any = lm.model  # a transformers causal LM
        self.max_input_tokens = max_input_tokens
        self.max_pack_tokens = max(1024, max_input_tokens)  # attention over a pack is quadratic
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        self._lock = threading.Lock()
        model: Any = lm.model
        self._dtype = model.get_input_embeddings().weight.dtype
        self._cache_kw = cache_argument(model) or "past_key_values"
        # row-by-row attention for packs, where the model runs SDPA (the others keep the dense mask)
        # (an engine made earlier on the same model has already switched it)
        self._row_attention = model.config._attn_implementation in ("sdpa", ROW_ATTENTION)
        if self._row_attention:
            _register_row_attention()
            model.set_attn_implementation(ROW_ATTENTION)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- tokenising (called on the request's side, before batching)
    def classify_ids(self, prompt: ServedPrompt, inputs: list[str | dict]) -> list[list[int]]:
        """template(x) token ids per input, truncated from the left of the text as `evaluate` does."""
        task = prompt.task
        fields = task.template_fields
        cols: dict[str, list[str]] = {f: [] for f in fields}
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                if len(fields) != 1:
                    raise Refused(
                        f"input[{i}]", f"this prompt's template needs the fields {fields}"
                    )
                x = {fields[0]: x}
            missing = [f for f in fields if not isinstance(x.get(f), str)]
            if missing or set(x) - set(fields):
                raise Refused(f"input[{i}]", f"needs exactly the string fields {fields}")
            for f in fields:
                cols[f].append(x[f])
        ds = TextDataset(cols, None, "request", "serve")
        enc = encode(self.tokenizer, task, ds, self.max_input_tokens)
        return enc.input_ids

    def completion_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > self.max_input_tokens:
            raise Refused(
                "prompt", f"{len(ids)} tokens; this server takes at most {self.max_input_tokens}"
            )
        return list(ids)

    # -- batches
    def _left_padded(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, H] embeddings [pad..., prompt_i, x_i] and the [B, T] mask."""
        emb = self.model.get_input_embeddings()
        seqs = []
        for r in rows:
            x = emb(torch.tensor(r.ids, device=self.device))
            seqs.append(torch.cat([r.prompt.embeddings.to(x.dtype), x]))
        T = max(s.shape[0] for s in seqs)
        H = seqs[0].shape[1]
        out = seqs[0].new_zeros(len(seqs), T, H)
        mask = torch.zeros(len(seqs), T, dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            out[i, T - s.shape[0] :] = s
            mask[i, T - s.shape[0] :] = 1
        return out, mask

    def _prefix(self, prompt: ServedPrompt) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The soft prompt's keys and values per layer, computed once per prompt: in a causal LM the
        prompt's positions never see the input, so its cache is exact for every request."""
        if prompt.prefix_kv is None:
            prompt.prefix_kv = prefix_kv(self.model, prompt.embeddings[None].to(self._dtype))
        return prompt.prefix_kv

    @torch.inference_mode()
    def classify(self, rows: list[ClassifyRow]) -> list[torch.Tensor]:
        """Class probabilities per row (each row with its prompt's verbalizer).

        The rows are packed into one sequence with no padding: row i's tokens see its own prompt's
        cached keys and values and its own earlier tokens (a block-diagonal causal mask), with
        positions counted from the end of its prompt, exactly as if it ran alone."""
        with self._lock:
            probs: list[torch.Tensor] = []
            start = 0
            while start < len(rows):
                end, n_tok = start + 1, len(rows[start].ids)
                while end < len(rows) and n_tok + len(rows[end].ids) <= self.max_pack_tokens:
                    n_tok += len(rows[end].ids)
                    end += 1
                probs += self._classify_packed(rows[start:end])
                start = end
            return probs

    def _classify_packed(self, rows: list[ClassifyRow]) -> list[torch.Tensor]:
        from transformers import DynamicCache

        uniq: dict[int, tuple[int, ServedPrompt]] = {}  # id(prompt) -> (offset, prompt)
        offset = 0
        for r in rows:
            if id(r.prompt) not in uniq:
                uniq[id(r.prompt)] = (offset, r.prompt)
                offset += r.prompt.embeddings.shape[0]
        prefixes = [self._prefix(p) for _, p in uniq.values()]
        layers = [
            (torch.cat([p[i][0] for p in prefixes], 2), torch.cat([p[i][1] for p in prefixes], 2))
            for i in range(len(prefixes[0]))
        ]
        cache = DynamicCache(ddp_cache_data=layers, config=self.model.config)
        P, N = offset, sum(len(r.ids) for r in rows)
        dev = self.device
        ids = torch.tensor([t for r in rows for t in r.ids], device=dev)[None]
        pos = torch.empty(1, N, dtype=torch.long, device=dev)
        packed: list[PackedRow] = []
        last, s = [], 0
        for r in rows:
            k, n = len(r.ids), r.prompt.embeddings.shape[0]
            own = torch.ones(k, n + k, dtype=torch.bool, device=dev)
            own[:, n:] = own[:, n:].tril()
            packed.append(PackedRow(s, k, uniq[id(r.prompt)][0], n, own))
            pos[0, s : s + k] = n + torch.arange(k, device=dev)
            s += k
            last.append(s - 1)
        if self._row_attention:
            kw: dict[str, Any] = {"packed_rows": packed}
        else:  # the same pattern as one dense block-diagonal mask
            mask = torch.zeros(1, 1, N, P + N, dtype=torch.bool, device=dev)
            for p in packed:
                q = slice(p.start, p.start + p.length)
                mask[0, 0, q, p.prompt_start : p.prompt_start + p.prompt_length] = p.mask[
                    :, : p.prompt_length
                ]
                mask[0, 0, q, P + p.start : P + p.start + p.length] = p.mask[:, p.prompt_length :]
            kw = {"attention_mask": mask}
        out = self.model.base_model(
            input_ids=ids,
            position_ids=pos,
            use_cache=False,
            **{self._cache_kw: cache},
            **kw,
        )
        h = out.last_hidden_state[0, last]
        probs = []
        for i, r in enumerate(rows):
            v = r.prompt.verbalizer
            assert v is not None  # classification prompts have one (registry)
            scores = v.scores(project(self.model, h[i : i + 1], v.token_ids))
            probs.append(torch.softmax(scores.float(), -1)[0].cpu())
        return probs

    @torch.inference_mode()
    def generate(self, rows: list[GenerateRow]) -> list[Completion]:
        """Completions per row; rows that share sampling settings share one generate() call."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            key = (r.temperature > 0, round(r.temperature, 6), round(r.top_p, 6))
            groups.setdefault(key, []).append(i)
        results: list[Completion | None] = [None] * len(rows)
        with self._lock:
            for (sample, temperature, top_p), idx in groups.items():
                for i, c in zip(
                    idx, self._generate_group([rows[i] for i in idx], sample, temperature, top_p)
                ):
                    results[i] = c
        return results  # type: ignore[return-value]

    def _generate_group(self, rows, sample: bool, temperature: float, top_p: float):
        from transformers import GenerationConfig

        embeds, mask = self._left_padded(rows)
        gc = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in rows),
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=None,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        seq = self.model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=gc)
        out = []
        eos = set(self.eos_ids)
        for r, toks in zip(rows, seq.tolist()):
            toks = toks[: r.max_tokens]
            cut = next((k for k, t in enumerate(toks) if t in eos), None)
            reason = "stop" if cut is not None else "length"
            toks = toks if cut is None else toks[:cut]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            hits = [text.index(s) for s in r.stop if s in text]
            if hits:
                text, reason = text[: min(hits)], "stop"
            out.append(Completion(text, reason, len(toks)))
        return out
