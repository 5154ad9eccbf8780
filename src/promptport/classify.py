"""Verbalizer classification with an optional soft prompt, computing logits only where needed.

A causal LM answers at the last real token of `template(x)`; a masked LM (RoBERTa family) at the mask
token of the template (`{text} It was <mask>.`; a template without `<mask>` gets one appended). We run
the base transformer, pick that one hidden state per example, and project it onto only the vocabulary
rows we need (the label words, or the full vocabulary for distillation/transfer) -- never the full
vocabulary at every position.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from promptport.data import TextDataset
from promptport.errors import BadInput
from promptport.runtime import autocast
from promptport.tasks import Task


@dataclass
class Encoded:
    """A tokenised split: token id lists (unpadded) and labels."""

    input_ids: list[list[int]]
    labels: torch.Tensor | None
    n_truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, idx) -> Encoded:
        idx = list(idx)
        return Encoded(
            [self.input_ids[i] for i in idx], None if self.labels is None else self.labels[idx], 0
        )


def encode(tokenizer, task: Task, ds: TextDataset, max_length: int = 256) -> Encoded:
    """Tokenise template(x); over-long inputs lose text tokens from the left, never the template."""
    texts = ds.texts(task)
    enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
    names = list(ds.fields)
    ids_out, n_trunc = [], 0
    for i, ids in enumerate(enc["input_ids"]):
        if len(ids) > max_length:
            ids = _truncate_text_left(
                task, {n: ds.fields[n][i] for n in names}, ids, enc["offset_mapping"][i], max_length
            )
            n_trunc += 1
        ids_out.append(list(ids))
    labels = None if ds.labels is None else torch.tensor(ds.labels, dtype=torch.long)
    return Encoded(ids_out, labels, n_trunc)


def _truncate_text_left(
    task: Task, fields: dict, ids: list[int], offsets, max_length: int
) -> list[int]:
    # Locate the longest field's character span in the formatted string, then drop its first tokens.
    longest = max(fields, key=lambda f: len(fields[f]))
    prefix = task.template.split("{" + longest + "}")[0].format_map({k: fields[k] for k in fields})
    start, end = len(prefix), len(prefix) + len(fields[longest])
    in_span = [j for j, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
    excess = len(ids) - max_length
    drop = set(in_span[:excess])
    kept = [t for j, t in enumerate(ids) if j not in drop]
    return kept[-max_length:] if len(kept) > max_length else kept


def collate(
    ids: list[list[int]], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, x in enumerate(ids):
        if padding_side == "right":
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        else:
            input_ids[i, n - len(x) :] = torch.tensor(x)
            mask[i, n - len(x) :] = 1
    return input_ids, mask


def label_word_ids(tokenizer, task: Task) -> list[list[int]]:
    """First sub-token of each label word, per class (skipping a lone word-boundary marker)."""
    out = []
    for c in task.classes:
        ids = []
        for w in task.verbalizer[c]:
            toks = tokenizer(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise BadInput("verbalizer", f"label word {w!r} tokenises to nothing")
            if len(toks) > 1 and not tokenizer.decode(toks[:1]).strip():
                toks = toks[1:]
            ids.append(toks[0])
        out.append(ids)
    flat = [t for ids in out for t in ids]
    if len(set(flat)) < len(flat):
        raise BadInput(
            "verbalizer", "two label words share their first token; class scores would tie"
        )
    return out


class Verbalizer:
    """Maps logits over the label-word rows to class scores (mean over each class's words)."""

    def __init__(self, tokenizer, task: Task):
        per_class = label_word_ids(tokenizer, task)
        self.token_ids = torch.tensor(sorted({t for ids in per_class for t in ids}))
        pos = {t: i for i, t in enumerate(self.token_ids.tolist())}
        m = torch.zeros(len(per_class), len(self.token_ids))
        for c, ids in enumerate(per_class):
            for t in ids:
                m[c, pos[t]] = 1.0 / len(ids)
        self.average = m  # [C, U]
        self.per_class = per_class

    def scores(self, word_logits: torch.Tensor) -> torch.Tensor:
        """[B, U] logits of the label-word rows -> [B, C] class scores."""
        return word_logits @ self.average.to(word_logits.device, word_logits.dtype).T

    def scores_from_vocab(self, vocab_logits: torch.Tensor) -> torch.Tensor:
        return self.scores(vocab_logits[..., self.token_ids.to(vocab_logits.device)])


MASK_PLACEHOLDER = "<mask>"


def is_masked_lm(model) -> bool:
    return type(model).__name__.endswith("ForMaskedLM")


def template_for(task: Task, tokenizer, masked: bool) -> Task:
    """The task as a model of this kind answers it: a masked LM needs its mask token in the template
    (`<mask>` is replaced by the tokenizer's own; none given -> appended); a causal LM must not get one."""
    if not masked:
        if MASK_PLACEHOLDER in task.template:
            raise BadInput(
                "task",
                f"template {task.template!r} has a {MASK_PLACEHOLDER} answer slot: it needs a "
                "masked-LM model (RoBERTa family)",
            )
        return task
    mask = getattr(tokenizer, "mask_token", None)
    if not mask:
        raise BadInput("model", "a masked-LM model needs a tokenizer with a mask token")
    template = (
        task.template.replace(MASK_PLACEHOLDER, mask)
        if MASK_PLACEHOLDER in task.template
        else task.template.rstrip() + " " + mask
    )
    return task.model_copy(update={"template": template})


def _position_ids(model, mask: torch.Tensor) -> torch.Tensor:
    """Position ids from the attention mask (left and right padding give the same result); RoBERTa-style
    embeddings count from padding_idx + 1, as `create_position_ids_from_input_ids` does."""
    pad = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if pad is not None and getattr(model.config, "model_type", "") in (
        "roberta",
        "xlm-roberta",
        "camembert",
    ):
        return mask.cumsum(-1) * mask + pad
    return (mask.cumsum(-1) - 1).clamp(min=0)


def answer_index(model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] answer position: a masked LM's (last) mask token, else the last real token."""
    mask_id = getattr(model.config, "mask_token_id", None) if is_masked_lm(model) else None
    if mask_id is not None:
        hit = (input_ids == mask_id) & (mask > 0)
        if not bool(hit.any(-1).all()):
            raise BadInput(
                "task", "an input has no mask token (answer slot) left; raise max_length"
            )
        return input_ids.shape[1] - 1 - hit.flip(-1).int().argmax(-1)
    return mask.shape[1] - 1 - mask.flip(-1).argmax(-1)


def answer_hidden(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt: torch.Tensor | None = None
) -> torch.Tensor:
    """Last-layer hidden state at the answer position, with the soft prompt in front.

    `prompt` is [n, H] (shared) or [B, n, H] (one copy per example, for per-example gradients). A
    shared prompt in front of a causal LM runs once per batch, not once per example: its positions
    never see what follows, so its keys and values are the same for every input (`prefix_kv`); the
    inputs then attend to them. Exact (the same sums, regrouped), and with a 50-token prompt before
    ~30-token snippets it cuts the tokens a batch runs by more than half, forward and backward.
    """
    embeds = model.get_input_embeddings()(input_ids)
    mask = attention_mask
    answer = answer_index(model, input_ids, attention_mask)
    if prompt is not None and prompt.dim() == 2 and shares_prefix(model):
        return _answer_hidden_after_prefix(model, embeds, attention_mask, answer, prompt)
    if prompt is not None:
        b = input_ids.shape[0]
        p = prompt.unsqueeze(0).expand(b, -1, -1) if prompt.dim() == 2 else prompt
        embeds = torch.cat([p.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat(
            [torch.ones(b, p.shape[1], dtype=mask.dtype, device=mask.device), mask], dim=1
        )
        answer = answer + p.shape[1]
    out = model.base_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=_position_ids(model, mask)
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), answer]


def shares_prefix(model) -> bool:
    """Whether a soft prompt's keys and values can be computed once and shared by every input: a
    causal (decoder-only) LM whose base model takes a KV cache."""
    if is_masked_lm(model) or getattr(model.config, "is_encoder_decoder", False):
        return False
    return cache_argument(model) is not None


def cache_argument(model) -> str | None:
    """The keyword under which this transformers version's base model takes a KV cache, if any."""
    params = inspect.signature(model.base_model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def prefix_kv(model, embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of a soft prompt `embeds` [1, n, H] at positions 0..n-1."""
    out = model.base_model(inputs_embeds=embeds, use_cache=True)
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def _answer_hidden_after_prefix(model, embeds, attention_mask, answer, prompt) -> torch.Tensor:
    from transformers import DynamicCache

    b, n = embeds.shape[0], prompt.shape[0]
    kv = prefix_kv(model, prompt.to(embeds.dtype).unsqueeze(0))
    layers = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv]
    cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    ones = torch.ones(b, n, dtype=attention_mask.dtype, device=attention_mask.device)
    mask = torch.cat([ones, attention_mask], dim=1)
    out = model.base_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=_position_ids(model, mask)[:, n:],
        use_cache=False,
        **{cache_argument(model) or "past_key_values": cache},
    )
    hidden = out.last_hidden_state
    return hidden[torch.arange(b, device=hidden.device), answer]


def _head_transform(model):
    """The MLM head's dense + activation + norm before the vocabulary projection (RoBERTa, BERT); None for
    causal LMs, whose head is the projection alone."""
    head = getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "dense") and hasattr(head, "layer_norm"):
        return lambda h: head.layer_norm(F.gelu(head.dense(h)))
    cls = getattr(model, "cls", None)
    if cls is not None and hasattr(getattr(cls, "predictions", None), "transform"):
        return cls.predictions.transform
    return None


def project(model, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """LM-head logits for the given vocabulary rows only (all rows if token_ids is None)."""
    transform = _head_transform(model)
    if transform is not None:
        hidden = transform(hidden)
    head = model.get_output_embeddings()
    w, b = head.weight, getattr(head, "bias", None)
    if token_ids is not None:
        token_ids = token_ids.to(w.device)
        w = w[token_ids]
        b = None if b is None else b[token_ids]
    return F.linear(hidden.to(w.dtype), w, b)


class PromptClassifier:
    """A frozen causal LM + task verbalizer; the soft prompt is passed per call so it can be trained.

    `precision` 'bf16' runs the transformer body under bf16 autocast and the answer projection in
    fp32, so the label-word logits the losses and predictions read keep fp32 resolution."""

    def __init__(
        self, model, tokenizer, task: Task, max_length: int = 256, precision: str = "fp32"
    ):
        task = template_for(task, tokenizer, is_masked_lm(model))
        self.model, self.tokenizer, self.task, self.max_length = model, tokenizer, task, max_length
        self.precision = precision
        self.verbalizer = Verbalizer(tokenizer, task)
        self.padding_side = getattr(tokenizer, "padding_side", "right")
        # [C] added to the class scores: a prompt tuned with `calibrate` is scored on the model it was
        # tuned on with the offset it was tuned against (see `calibration_offset`)
        self.class_offset: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, ds: TextDataset) -> Encoded:
        return encode(self.tokenizer, self.task, ds, self.max_length)

    def batch(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, mask = collate(ids, self.tokenizer.pad_token_id, self.padding_side)
        return input_ids.to(self.device), mask.to(self.device)

    def hidden(self, input_ids, attention_mask, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """The answer position's last hidden state, in this classifier's precision."""
        with autocast(self.device, self.precision):
            return answer_hidden(self.model, input_ids, attention_mask, prompt)

    def class_logits(
        self, input_ids, attention_mask, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.hidden(input_ids, attention_mask, prompt)
        z = self.verbalizer.scores(project(self.model, h, self.verbalizer.token_ids))
        return z if self.class_offset is None else z + self.class_offset.to(z.device, z.dtype)

    def vocab_logits(
        self, input_ids, attention_mask, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        return project(self.model, self.hidden(input_ids, attention_mask, prompt))

    def loss(
        self, input_ids, attention_mask, labels, prompt=None, reduction: str = "mean"
    ) -> torch.Tensor:
        return F.cross_entropy(
            self.class_logits(input_ids, attention_mask, prompt).float(),
            labels,
            reduction=reduction,
        )

    @torch.inference_mode()
    def predict_logits(
        self,
        enc: Encoded,
        prompt: torch.Tensor | None = None,
        batch_size: int = 32,
        progress: bool = False,
        desc: str = "evaluate",
        vocab: bool = False,
    ) -> torch.Tensor:
        """Class scores (or full-vocabulary answer logits if `vocab`) for every example, in input order;
        batches are formed by length to waste little on padding."""
        order = np.argsort([len(x) for x in enc.input_ids], kind="stable")
        width = (
            self.model.get_output_embeddings().weight.shape[0] if vocab else len(self.task.classes)
        )
        out = torch.empty(len(enc), width)
        p = None if prompt is None else prompt.detach().to(self.device)
        fn = self.vocab_logits if vocab else self.class_logits
        bar = _progress(math.ceil(len(enc) / batch_size), desc, progress, unit="batch")
        for start in range(0, len(enc), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask = self.batch([enc.input_ids[i] for i in idx])
            out[torch.as_tensor(idx)] = fn(input_ids, mask, p).float().cpu()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out

    def evaluate(
        self,
        enc: Encoded,
        prompt: torch.Tensor | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> dict:
        t0 = time.perf_counter()
        logits = self.predict_logits(enc, prompt, batch_size, progress)
        secs = time.perf_counter() - t0
        if enc.labels is None:
            raise BadInput("data", "evaluation needs labels")
        return dict(
            classification_metrics(
                enc.labels.numpy(), logits.argmax(-1).numpy(), len(self.task.classes)
            ),
            seconds=round(secs, 3),
            examples_per_s=round(len(enc) / max(secs, 1e-9), 2),
            n_truncated=enc.n_truncated,
        )


def calibration_offset(
    clf: PromptClassifier, enc: Encoded, batch_size: int = 32, iterations: int = 100
) -> torch.Tensor:
    """[C] offset that, added to the unprompted model's class scores, makes its mean class probability
    over `enc` uniform (labels unused; the fixed point of b <- b - log mean softmax(z + b), the EM prior
    adjustment of Saerens et al. 2002, started from contextual calibration's -log mean softmax(z)).

    A prompt tuned against a small student's scores learns, besides the task, to repair that student's
    label bias, and POST's shift term copies the repair onto a teacher that never had the bias; tuned
    against the calibrated scores, it need not."""
    z = with_class_offset(clf, None).predict_logits(enc, None, batch_size).float()
    b = torch.zeros(z.shape[1])
    for _ in range(iterations):
        mean = (z + b).softmax(-1).mean(0)
        if float((mean * len(b) - 1).abs().max()) < 1e-4:
            break
        b = b - mean.clamp_min(1e-12).log()
    return b - b.mean()


def with_class_offset(clf: PromptClassifier, offset: torch.Tensor | None) -> PromptClassifier:
    """`clf` scoring with `offset` added to its class scores: a shallow copy over the same frozen model
    when that differs, so the caller's classifier is left as it was."""
    if offset is None and clf.class_offset is None:
        return clf
    other = copy.copy(clf)
    other.class_offset = None if offset is None else torch.as_tensor(offset, dtype=torch.float32)
    return other


def scoring_prompt(clf: PromptClassifier, meta: dict, info) -> PromptClassifier:
    """`clf` as a prompt artifact (its metadata `meta`) is scored on the model `info` describes."""
    return with_class_offset(clf, prompt_class_offset(meta, info))


def prompt_class_offset(meta: dict, info) -> torch.Tensor | None:
    """The calibration offset a prompt artifact was tuned against (prompt.json `calibration`), when
    `info` (a ModelInfo) is the model it was tuned on; None on any other model (the teacher, say)."""
    cal = meta.get("calibration")
    if not cal or meta.get("model") != info.to_dict():
        return None
    return torch.tensor(cal["class_offset"], dtype=torch.float32)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    labels = list(range(n_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "n": int(len(y_true)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "predicted_class_counts": np.bincount(y_pred, minlength=n_classes).tolist(),
    }


def _progress(total: int, desc: str, enabled: bool, unit: str = "it"):
    from promptport.checkpoint import progress_bar

    return progress_bar(total, desc, enabled, unit)
