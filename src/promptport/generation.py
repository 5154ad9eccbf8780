"""Generation tasks: a soft-prompted causal LM writes the `target` field of a task from its template.

* **Data**: `load_gen_split` reads (input fields, target) rows; `eval_set` groups rows by input so every
  input (e.g. an E2E meaning representation) is generated once and scored against all its references.
* **Tokens**: a training example is `template(x)` followed by `" " + target` and the end-of-sequence
  token. It is stored as an `Encoded` whose `labels` hold the number of target tokens at the end of each
  sequence, so the tuning loop, DP-SGD (per-example prompt copies), checkpoints and data fingerprints of
  `promptport.tune` work unchanged.
* **Loss**: cross-entropy of the target tokens only (input and padding masked), averaged over each
  example's target tokens (a length-normalised sequence loss per example), then over the batch. The
  vocabulary projection runs only at the positions that predict target tokens.
* **Generation**: `generate(inputs_embeds=...)` with the prompt inserted after the left padding
  (`[pad..., prompt, template(x)]`), KV cache, greedy or beam search; the text is cut at the first
  newline (targets are one line; newline tokens also stop decoding).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from promptport.classify import Encoded, _position_ids, _progress, collate, project
from promptport.errors import BadInput
from promptport.runtime import autocast
from promptport.tasks import Decoding, Task

# ------------------------------------------------------------------------------------------ data


@dataclass
class GenDataset:
    """Rows of a generation task: input fields (template fields) and targets (None without targets)."""

    fields: dict[str, list[str]]
    targets: list[str] | None
    source: str
    split: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def select(self, idx) -> GenDataset:
        idx = list(idx)
        return GenDataset(
            {k: [v[i] for i in idx] for k, v in self.fields.items()},
            None if self.targets is None else [self.targets[i] for i in idx],
            self.source,
            self.split,
        )

    def inputs(self, task: Task) -> list[str]:
        names = list(self.fields)
        return [task.format(**dict(zip(names, vals))) for vals in zip(*self.fields.values())]

    def keys(self) -> list[tuple[str, ...]]:
        """The input of each row (the fields' values): rows with equal keys share an input (an MR)."""
        return list(zip(*self.fields.values()))


def check_generation_task(task: Task) -> None:
    if not task.is_generation:
        raise BadInput("task", f"'{task.name}' is a {task.kind} task, not a generation task")


def load_gen_split(
    task: Task,
    data,
    split: str = "train",
    *,
    limit: int | None = None,
    require_target: bool = True,
    text_column: str | None = None,
    label_column: str | None = None,
    split_column: str | None = None,
) -> GenDataset:
    """One split of a generation task from a folder of split files or a single file (CSV/TSV/JSONL).

    `text_column` / `label_column` override the input column (single-field templates) and the target
    column. A single file holds every split: the rows whose `split_column` names the split, else whole
    inputs by hash (the classification loader's rule). An empty target is refused with its file and line."""
    from pathlib import Path

    from promptport.data import canonical_split, find_split_file, read_rows

    check_generation_task(task)
    if data is None:
        raise BadInput("data", f"generation task '{task.name}' needs a data folder or file")
    p = Path(data).expanduser()
    if not p.exists():
        raise BadInput("data", f"'{data}' does not exist")
    path = find_split_file(p, split) if p.is_dir() else p
    one_file = not p.is_dir() and split != "all" and split_column is None
    want = canonical_split(split)
    names = task.template_fields
    fields: dict[str, list[str]] = {f: [] for f in names}
    targets: list[str] = []
    cols: dict[str, str] | None = None
    tcol: str | None = None

    def pick(row, cands, what):
        for c in cands:
            if c in row:
                return c
        raise BadInput(
            "data", f"{path}: no {what} column (tried {cands}; the file has {list(row)})"
        )

    for lineno, row in read_rows(path):
        if split_column is not None and not p.is_dir():
            if split_column not in row:
                raise BadInput(
                    "split_column", f"{path}: no column '{split_column}' (the file has {list(row)})"
                )
            if canonical_split(str(row[split_column]).strip()) != want:
                continue
        if cols is None:
            cols = {
                f: pick(
                    row,
                    [text_column] if text_column and len(names) == 1 else task.columns[f],
                    f"'{f}'",
                )
                for f in names
            }
            assert task.target is not None  # a generation task names its target field
            tcands = [label_column] if label_column else task.columns[task.target]
            if require_target:
                tcol = pick(row, tcands, f"target '{task.target}'")
            else:
                tcol = next((c for c in tcands if c in row), None)
        for f, c in cols.items():
            fields[f].append(str(row.get(c) or "").strip())
        if tcol is not None:
            t = str(row.get(tcol) or "").strip()
            if not t:
                raise BadInput("data", f"{path}:{lineno}: empty reference in column '{tcol}'")
            targets.append(t)
        if limit is not None and len(fields[names[0]]) >= limit and not one_file:
            break
    ds = GenDataset(
        fields, targets if tcol is not None else None, str(path), canonical_split(split)
    )
    if one_file:  # one file holds every split: whole inputs (MRs) by hash, never a row twice
        from promptport.data import hash_split

        ds = hash_split(ds, split, limit, what="input")
    if len(ds) == 0:
        where = f" with {split_column} = '{split}'" if split_column else ""
        raise BadInput("split_column" if split_column else "data", f"{path}: no examples{where}")
    return ds


@dataclass
class EvalSet:
    """Distinct inputs of a split with all their references (metrics compare against all of them)."""

    keys: list[tuple[str, ...]]
    inputs: list[str]
    refs: list[list[str]]

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, idx) -> EvalSet:
        idx = list(idx)
        return EvalSet(
            [self.keys[i] for i in idx], [self.inputs[i] for i in idx], [self.refs[i] for i in idx]
        )


def eval_set(task: Task, ds: GenDataset, limit: int | None = None) -> EvalSet:
    """Group rows by input, in order of first appearance; `limit` counts distinct inputs."""
    if ds.targets is None:
        raise BadInput("data", f"{ds.source}: evaluation needs references (target column)")
    texts = ds.inputs(task)
    groups: dict[tuple, int] = {}
    keys: list[tuple] = []
    inputs: list[str] = []
    refs: list[list[str]] = []
    for k, x, t in zip(ds.keys(), texts, ds.targets):
        if k not in groups:
            groups[k] = len(keys)
            keys.append(k)
            inputs.append(x)
            refs.append([])
        refs[groups[k]].append(t)
    es = EvalSet(keys, inputs, refs)
    if limit is not None:
        if limit <= 0:
            raise BadInput("eval_limit", f"must be positive, got {limit}")
        es = es.select(range(min(limit, len(es))))
    return es


def split_by_input(ds: GenDataset, fractions: dict[str, float], seed: int = 0) -> dict:
    """Split rows into named parts by whole inputs (no input in two parts), shuffled with the seed."""
    keys = list(dict.fromkeys(ds.keys()))
    order = np.random.default_rng(seed).permutation(len(keys))
    bounds, acc, parts = {}, 0.0, {}
    for name, f in fractions.items():
        bounds[name] = (round(acc * len(keys)), round((acc + f) * len(keys)))
        acc += f
    where = {}
    for name, (a, b) in bounds.items():
        for i in order[a:b]:
            where[keys[i]] = name
    rows: dict[str, list[int]] = {n: [] for n in fractions}
    for i, k in enumerate(ds.keys()):
        if k in where:
            rows[where[k]].append(i)
    for name, idx in rows.items():
        parts[name] = ds.select(idx)
    return parts


# ------------------------------------------------------------------------------------------ tokens


def target_ids(tokenizer, target: str) -> list[int]:
    """Token ids of a target as it follows the template: a leading space, then end-of-sequence."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])


def source_ids(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """template(x) token ids; an over-long input keeps its last max_length tokens. Returns (ids, count)."""
    enc = tokenizer(texts, add_special_tokens=True)["input_ids"]
    out, n = [], 0
    for ids in enc:
        if len(ids) > max_length:
            ids, n = ids[-max_length:], n + 1
        out.append(list(ids))
    return out, n


def encode_pairs(
    tokenizer, task: Task, ds: GenDataset, max_length: int = 128, warn: bool = True
) -> Encoded:
    """template(x) + target tokens per row; `labels` = the number of target tokens at the end.

    A sequence longer than `max_length` loses target tokens from the right (never silently: a warning
    names the count); the input keeps at least one target token's room, losing its first tokens if needed.
    """
    if ds.targets is None:
        raise BadInput("data", f"{ds.source}: training needs targets")
    if max_length < 2:
        raise BadInput("max_length", f"must be >= 2 for generation, got {max_length}")
    srcs, n_src = source_ids(tokenizer, ds.inputs(task), max_length - 1)
    ids_out, lens, n_tgt = [], [], 0
    for src, t in zip(srcs, ds.targets):
        tgt = target_ids(tokenizer, t)
        room = max_length - len(src)
        if len(tgt) > room:
            tgt, n_tgt = tgt[:room], n_tgt + 1
        ids_out.append(src + tgt)
        lens.append(len(tgt))
    if warn and (n_tgt or n_src):
        warnings.warn(
            f"{n_tgt} of {len(ds)} targets truncated to fit max_length={max_length} tokens"
            + (f"; {n_src} inputs lost their first tokens" if n_src else ""),
            stacklevel=2,
        )
    return Encoded(ids_out, torch.tensor(lens, dtype=torch.long), n_tgt + n_src)


def stop_token_ids(tokenizer) -> list[int]:
    """End of sequence plus every token whose text contains a newline (targets are one line)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    toks = sorted(vocab.values())
    for t, s in zip(toks, tokenizer.batch_decode([[t] for t in toks])):
        if "\n" in s:
            ids.add(t)
    return sorted(ids)


def clean_output(text: str) -> str:
    return text.split("\n", 1)[0].strip()


# ------------------------------------------------------------------------------------------ model


def target_mask(mask: torch.Tensor, tgt_len: torch.Tensor) -> torch.Tensor:
    """[B, T] True at the target tokens: the last tgt_len[i] real tokens of row i (any padding side)."""
    T = mask.shape[1]
    last = T - 1 - mask.flip(-1).argmax(-1)  # [B] last real token
    pos = torch.arange(T, device=mask.device)[None]
    first = last - tgt_len.to(mask.device) + 1
    return (pos >= first[:, None]) & (pos <= last[:, None]) & (mask > 0)


def prompted_hidden(model, input_ids, attention_mask, prompt=None) -> tuple[torch.Tensor, int]:
    """Last-layer hidden states of [prompt; x] (prompt [n, H] shared or [B, n, H] per example); (h, n)."""
    embeds = model.get_input_embeddings()(input_ids)
    mask = attention_mask
    n = 0
    if prompt is not None:
        b = input_ids.shape[0]
        p = prompt.unsqueeze(0).expand(b, -1, -1) if prompt.dim() == 2 else prompt
        n = p.shape[1]
        embeds = torch.cat([p.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat([torch.ones(b, n, dtype=mask.dtype, device=mask.device), mask], dim=1)
    out = model.base_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=_position_ids(model, mask)
    )
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return h, n


def target_logits(model, input_ids, attention_mask, tgt_len, prompt=None):
    """Full-vocabulary logits at the positions that predict target tokens, flattened in row order.

    Returns (logits [N_tok, V], targets [N_tok], rows [N_tok]) where rows[k] is the example of token k."""
    h, n = prompted_hidden(model, input_ids, attention_mask, prompt)
    tm = target_mask(attention_mask, tgt_len)
    rows, cols = tm.nonzero(as_tuple=True)
    if bool((cols == 0).any()):
        raise BadInput("data", "a target starts at the first position: the input is empty")
    logits = project(model, h[rows, cols - 1 + n])
    return logits, input_ids[rows, cols], rows


class PromptGenerator:
    """A frozen causal LM + generation task; the soft prompt is passed per call so it can be trained.

    Has the interface `promptport.tune.train_prompt` uses (`encode`, `batch`, `loss`, `evaluate`);
    `precision` 'bf16' computes the teacher-forced logits under bf16 autocast (decoding stays fp32)."""

    def __init__(
        self, model, tokenizer, task: Task, max_length: int = 128, precision: str = "fp32"
    ):
        check_generation_task(task)
        if getattr(model.config, "is_encoder_decoder", False) or type(model).__name__.endswith(
            "ForMaskedLM"
        ):
            raise BadInput("model", "generation tasks need a causal (decoder-only) LM")
        self.model, self.tokenizer, self.task, self.max_length = model, tokenizer, task, max_length
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self._stop: list[int] | None = None
        self.precision = precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, ds: GenDataset, warn: bool = True) -> Encoded:
        return encode_pairs(self.tokenizer, self.task, ds, self.max_length, warn)

    def batch(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, mask = collate(ids, self.pad_id, "right")
        return input_ids.to(self.device), mask.to(self.device)

    def loss(self, input_ids, attention_mask, tgt_len, prompt=None, reduction: str = "mean"):
        """Per-example mean cross-entropy of the target tokens; 'none' -> [B], 'sum' / 'mean' over B."""
        with autocast(self.device, self.precision):
            logits, y, rows = target_logits(self.model, input_ids, attention_mask, tgt_len, prompt)
        nll = F.cross_entropy(logits.float(), y, reduction="none")
        b = input_ids.shape[0]
        per = torch.zeros(b, device=nll.device, dtype=nll.dtype).index_add(0, rows, nll)
        per = per / tgt_len.to(per.device).clamp(min=1).to(per.dtype)
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.mean()

    @torch.inference_mode()
    def sequence_logprob(
        self, enc: Encoded, prompt=None, batch_size: int = 32, progress: bool = False
    ) -> torch.Tensor:
        """[N] length-normalised log-likelihood of each target (minus the per-example loss)."""
        out = torch.empty(len(enc), dtype=torch.float64)
        order = np.argsort([len(x) for x in enc.input_ids], kind="stable")
        p = None if prompt is None else prompt.detach().to(self.device)
        bar = _progress(math.ceil(len(enc) / batch_size), "log-likelihood", progress, "batch")
        for s in range(0, len(enc), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = self.batch([enc.input_ids[i] for i in idx])
            assert enc.labels is not None  # target lengths, set by encode
            y = enc.labels[torch.as_tensor(idx)]
            out[torch.as_tensor(idx)] = -self.loss(ids, mask, y, p, "none").double().cpu()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out

    def evaluate(
        self, enc: Encoded, prompt=None, batch_size: int = 32, progress: bool = False
    ) -> dict:
        """Teacher-forced target loss (what tuning selects on: higher `neg_loss` is better)."""
        t0 = time.perf_counter()
        lp = self.sequence_logprob(enc, prompt, batch_size, progress)
        secs = time.perf_counter() - t0
        loss = float(-lp.mean())
        return {
            "loss": loss,
            "neg_loss": -loss,
            "perplexity": float(math.exp(min(loss, 50.0))),
            "n": len(enc),
            "select_on": "neg_loss",
            "report": ["loss", "perplexity"],
            "seconds": round(secs, 3),
            "examples_per_s": round(len(enc) / max(secs, 1e-9), 2),
            "n_truncated": enc.n_truncated,
        }

    # -- generation
    def stop_ids(self) -> list[int]:
        if self._stop is None:
            self._stop = stop_token_ids(self.tokenizer)
        return self._stop

    def _embeds(self, ids: list[list[int]], prompt):
        """Left-padded [pad..., prompt, x] embeddings and mask."""
        input_ids, mask = collate(ids, self.pad_id, "left")
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        emb = self.model.get_input_embeddings()(input_ids)
        if prompt is None:
            return emb, mask
        p = prompt.to(self.device, emb.dtype)
        n, T = p.shape[0], input_ids.shape[1]
        rows, masks = [], []
        for i, x in enumerate(ids):
            k = T - len(x)
            rows.append(torch.cat([emb[i, :k], p, emb[i, k:]]))
            masks.append(
                torch.cat(
                    [mask[i, :k], torch.ones(n, dtype=mask.dtype, device=mask.device), mask[i, k:]]
                )
            )
        return torch.stack(rows), torch.stack(masks)

    @torch.inference_mode()
    def generate_ids(
        self,
        ids: list[list[int]],
        prompt: torch.Tensor | None = None,
        decoding: Decoding | None = None,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[list[int]]:
        """New token ids per input (stop token included, padding removed), in input order."""
        from transformers import GenerationConfig

        d = decoding or self.task.decoding
        gc = GenerationConfig(
            max_new_tokens=d.max_new_tokens,
            num_beams=d.num_beams,
            do_sample=False,
            length_penalty=d.length_penalty,
            no_repeat_ngram_size=d.no_repeat_ngram_size,
            eos_token_id=self.stop_ids(),
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        order = np.argsort([len(x) for x in ids], kind="stable")
        out: list[list[int] | None] = [None] * len(ids)
        bar = _progress(math.ceil(len(ids) / batch_size), desc, progress, "batch")
        stops = set(self.stop_ids())
        for s in range(0, len(ids), batch_size):
            idx = order[s : s + batch_size]
            emb, mask = self._embeds([ids[i] for i in idx], prompt)
            seq = self.model.generate(
                inputs_embeds=emb,
                attention_mask=mask,
                generation_config=gc,
            )
            for j, i in enumerate(idx):
                toks = seq[j].tolist()
                cut = next((k + 1 for k, t in enumerate(toks) if t in stops), len(toks))
                out[i] = toks[:cut]
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]

    def generate(
        self,
        inputs: list[str],
        prompt: torch.Tensor | None = None,
        decoding: Decoding | None = None,
        batch_size: int = 16,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[str]:
        ids, _ = source_ids(self.tokenizer, inputs, self.max_length)
        new = self.generate_ids(ids, prompt, decoding, batch_size, progress, desc)
        return [clean_output(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def evaluate_generation(
        self,
        es: EvalSet,
        prompt: torch.Tensor | None = None,
        *,
        batch_size: int = 16,
        decoding: Decoding | None = None,
        n_boot: int = 1000,
        seed: int = 0,
        progress: bool = False,
        desc: str = "generate",
    ) -> tuple[dict, list[str]]:
        """Generate for every distinct input; metrics against all references with bootstrap intervals."""
        from promptport.gen_metrics import generation_metrics

        t0 = time.perf_counter()
        hyps = self.generate(es.inputs, prompt, decoding, batch_size, progress, desc)
        secs = time.perf_counter() - t0
        m = generation_metrics(hyps, es.refs, self.task.metrics, n_boot=n_boot, seed=seed)
        m.update(seconds=round(secs, 3), inputs_per_s=round(len(es) / max(secs, 1e-9), 3))
        return m, hyps


# ------------------------------------------------------------------------------------------ E2E files


def prepare_e2e(
    e2e_dir, out_dir, *, n_test_mrs: int = 100, val_fraction: float = 0.1, seed: int = 0
) -> dict:
    """Private train/validation from the challenge's dev set and test/public from its test set, split by
    whole MRs (see scripts/prepare_e2e.py). Returns counts."""
    import csv
    import json
    from pathlib import Path

    from promptport.fileio import atomic_path
    from promptport.tasks import get_task

    task = get_task("e2e_nlg")
    src, out = Path(e2e_dir), Path(out_dir)
    for f in ("devset.csv", "testset_w_refs.csv"):
        if not (src / f).is_file():
            raise BadInput("e2e", f"no {f} in {src}")
    dev = load_gen_split(task, src / "devset.csv", "all")
    test = load_gen_split(task, src / "testset_w_refs.csv", "all")
    parts = split_by_input(dev, {"train": 1 - val_fraction, "validation": val_fraction}, seed)
    n_mrs = len(set(test.keys()))
    if not 0 < n_test_mrs < n_mrs:
        raise BadInput("test_mrs", f"must be in [1, {n_mrs - 1}], got {n_test_mrs}")
    test_fraction = n_test_mrs / n_mrs
    parts.update(split_by_input(test, {"test": test_fraction, "public": 1 - test_fraction}, seed))
    keys = {k: set(v.keys()) for k, v in parts.items()}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if keys[a] & keys[b]:
                raise AssertionError(f"MR in both {a} and {b}")
    out.mkdir(parents=True, exist_ok=True)

    def write_csv(name, rows, header):
        with atomic_path(out / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    for name in ("train", "validation", "test"):
        ds = parts[name]
        write_csv(f"{name}.csv", zip(ds.fields["mr"], ds.targets), ["mr", "ref"])
    pub = parts["public"]
    write_csv("public.csv", [[k[0]] for k in dict.fromkeys(pub.keys())], ["mr"])
    with atomic_path(out / "public_corpus.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for x, r in zip(pub.inputs(task), pub.targets):
            fh.write(json.dumps({"text": f"{x} {r}"}) + "\n")
    return {
        **{f"{k}_rows": len(v) for k, v in parts.items()},
        **{f"{k}_mrs": len(v) for k, v in keys.items()},
    }


# ------------------------------------------------------------------------------------------ pipeline


def evaluate_stage(
    e_dir,
    *,
    task: Task,
    prompts: dict,
    inputs: dict,
    models: dict,
    data,
    split: str,
    limit: int | None,
    max_length: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
    log=print,
) -> None:
    """The pipeline's evaluation stage for a generation task: every baseline generates for the split's
    distinct inputs; metrics against all references with bootstrap intervals. Writes
    e_dir/metrics.json ({"baselines": {name: metrics}}), e_dir/NAME.jsonl (input, references, output)
    and the stage manifest; reused when complete. `models`: {"teacher": path, "student": path}."""
    import json
    from pathlib import Path

    from promptport.fileio import atomic_path, write_json
    from promptport.manifest import is_complete, write_manifest
    from promptport.models import load_model
    from promptport.prompt import load_prompt

    e_dir = Path(e_dir)
    key_cfg = {
        "split": split,
        "limit": limit,
        "task": task.name,
        "kind": "generation",
        "decoding": task.decoding.model_dump(),
        "metrics": task.metrics,
        "max_length": max_length,
    }
    if is_complete(e_dir, key_cfg, inputs):
        log("[evaluate] reused")
        return
    t0 = time.perf_counter()
    es = eval_set(task, load_gen_split(task, data, split), limit)
    log(f"[evaluate] {len(prompts)} baselines on {task.name}/{split}: {len(es)} inputs")

    class _Lazy(dict):  # a model loads only when a baseline that is not reused needs it
        def __missing__(self, k):
            m = models[k] if not isinstance(models[k], str) else load_model(models[k])
            self[k] = PromptGenerator(m.model, m.tokenizer, task, max_length)
            return self[k]

    gens = _Lazy()
    base = {}
    for name, (which, p) in prompts.items():
        # a baseline already generated with the same settings and prompt is reused (generation is the
        # expensive part; adding a baseline to a finished run should not redo the others)
        done = e_dir / f"{name}.metrics.json"
        ident = json.loads(json.dumps({"key": key_cfg, "input": inputs.get(name)}, default=str))
        if done.is_file() and (e_dir / f"{name}.jsonl").is_file():
            old = json.loads(done.read_text(encoding="utf-8"))
            if old.get("identity") == ident:
                base[name] = old["metrics"]
                log(f"  {name:18s} reused")
                continue
        emb = None if p is None else load_prompt(p).embeddings
        m, hyps = gens[which].evaluate_generation(
            es, emb, batch_size=batch_size, seed=seed, progress=progress, desc=name
        )
        base[name] = m
        with atomic_path(e_dir / f"{name}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for x, refs, h in zip(es.inputs, es.refs, hyps):
                fh.write(json.dumps({"input": x, "references": refs, "output": h}) + "\n")
        write_json(done, {"identity": ident, "metrics": m})
        log(
            f"  {name:18s} "
            + "  ".join(
                f"{k} {m[k]:.2f} [{m[k + '_ci'][0]:.1f}, {m[k + '_ci'][1]:.1f}]"
                for k in task.metrics
            )
            + f"  ({m['seconds']:.0f} s)"
        )
    write_json(
        e_dir / "metrics.json",
        {"split": split, "n": len(es), "kind": "generation", "baselines": base},
    )
    write_manifest(
        e_dir,
        stage="evaluate",
        config=key_cfg,
        inputs=inputs,
        outputs=[e_dir / "metrics.json"] + [e_dir / f"{k}.jsonl" for k in prompts],
        seconds=time.perf_counter() - t0,
        extra={"side": "user"},
    )


def summary_line(task: Task, base: dict, split: str, privacy: dict | None) -> str:
    def f(name):
        return ", ".join(f"{k} {base[name][k]:.1f}" for k in ("rougeL", "bleu") if k in base[name])

    return (
        f"POST transfer: {f('post_transfer')} on {task.name}/{split} "
        f"(teacher zero-shot {f('teacher_zero_shot')}; direct transfer {f('direct_transfer')}; "
        f"student + prompt {f('student_prompt')})"
        + (f"; prompt privacy epsilon={privacy.get('epsilon'):.3g}" if privacy else "; no DP")
    )


def evaluate_split(
    lm,
    task: Task,
    *,
    data,
    split: str,
    prompt=None,
    limit: int | None = None,
    out=None,
    batch_size: int = 16,
    max_length: int = 256,
    seed: int = 0,
    text_column: str | None = None,
    label_column: str | None = None,
    progress: bool = False,
) -> dict:
    """`promptport evaluate` for a generation task: metrics over the split's distinct inputs (the first
    `limit`), OUT/metrics.json and OUT/outputs.jsonl (input, references, output)."""
    import json
    from pathlib import Path

    from promptport.fileio import atomic_path

    ds = load_gen_split(task, data, split, text_column=text_column, label_column=label_column)
    es = eval_set(task, ds, limit)
    g = PromptGenerator(lm.model, lm.tokenizer, task, max_length)
    m, hyps = g.evaluate_generation(
        es,
        None if prompt is None else prompt.embeddings,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(out) / "outputs.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for x, refs, h in zip(es.inputs, es.refs, hyps):
                f.write(json.dumps({"input": x, "references": refs, "output": h}) + "\n")
    return {"kind": "generation", "data": ds.source, "split": ds.split, **m}
