"""Distillation (POST step 1) as a recipe: the provider cuts a shallow student out of its teacher and
trains it to imitate the teacher.

The components live in their own modules: `promptport.student` (layer selection, extraction, the
student artifact), `promptport.corpus` (the public corpus and task-formatted public examples) and
`promptport.losses` (the KL and the weighted distillation terms). This module holds the settings
(`DistillConfig`), the teacher cache and the `Distiller`, whose phases are setup, teacher cache,
optimiser, train step, checkpoint and evaluate -- the same shape as `promptport.tune`.

The teacher's forward dominates a distillation step, so it runs once over the corpus and caches what
the losses need (exact float32 top-k log-probabilities and last hidden states per position; logits at
the answer position of task-formatted public examples); the student then trains for several epochs
from the cache. Several processes (`accelerate launch`) go through `promptport.distributed.group`
like every other stage: each process computes its shard of every global batch and the gradients are
averaged across processes before the optimiser step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from promptport.checkpoint import Checkpoint, MetricsLog, checkpoint_file, progress_bar
from promptport.classify import collate
from promptport.corpus import (
    DEFAULT_CORPUS,
    EMBEDDED_TEXTS,
    Corpus,
    build_corpus,
    build_task_examples,
    clean_text,
    corpus_char_budget,
    pack_blocks,
    read_corpus_texts,
    sample_from_teacher,
    split_sentences,
    task_prefixes,
)
from promptport.errors import BadInput
from promptport.fileio import atomic_path, read_json, write_json
from promptport.losses import distill_loss, kd_kl, kl_from_log_probs, masked_mean
from promptport.modelinfo import LoadedModel
from promptport.options import setting
from promptport.runtime import PRECISIONS, autocast, check_precision
from promptport.student import (
    LAYER_PATHS,
    STRATEGIES,
    STUDENT_FORMAT,
    STUDENT_META,
    STUDENT_WEIGHTS,
    check_same_teacher,
    extract_student,
    is_student_dir,
    layer_path,
    load_student,
    num_layers,
    parameter_counts,
    save_student,
    select_layers,
    set_trainable,
    shared_parameter_names,
    teacher_reference,
)

# Names that lived here before the split into student / corpus / losses, kept for old callers.
__all__ = [
    "DEFAULT_CORPUS",
    "EMBEDDED_TEXTS",
    "LAYER_PATHS",
    "STRATEGIES",
    "STUDENT_FORMAT",
    "STUDENT_META",
    "STUDENT_WEIGHTS",
    "Corpus",
    "DistillConfig",
    "Distiller",
    "build_corpus",
    "build_task_examples",
    "check_same_teacher",
    "clean_text",
    "corpus_char_budget",
    "distill",
    "distill_loss",
    "evaluate_student",
    "extract_student",
    "is_student_dir",
    "kd_kl",
    "layer_path",
    "load_student",
    "masked_mean",
    "num_layers",
    "pack_blocks",
    "parameter_counts",
    "read_corpus_texts",
    "sample_from_teacher",
    "save_student",
    "select_layers",
    "set_trainable",
    "shared_parameter_names",
    "split_sentences",
    "task_prefixes",
    "teacher_reference",
]

# Bumped when what the teacher cache holds changes, so an old cache file is never read as a new one.
CACHE_FORMAT = 2


# ---------------------------------------------------------------- configuration


SCHEDULES = ("cosine", "linear", "constant")  # what make_scheduler implements


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (recorded in metrics.json and checked on resume).
    Each field is also its `promptport distill` option (options.click_options)."""

    layers: int = setting(4, "Student depth (layers kept).")
    strategy: str = setting(
        "first-last",
        "first-last: first ceil(k/2) + last floor(k/2) layers; uniform: evenly spread layers.",
        choices=STRATEGIES,
    )
    corpus: list[str] = setting(
        help="LM distillation text (repeatable): embedded:rt_plots|headlines|speeches, a "
        ".txt/.jsonl/.csv[.gz] file, a folder with a train file, or a hub data set id. Default: the "
        "three embedded texts.",
        default_factory=lambda: list(DEFAULT_CORPUS),
        short="-c",
    )
    max_tokens: int = setting(100_000, "Corpus tokens to train on.")
    block_size: int = setting(128, "Tokens per packed block.")
    heldout_blocks: int = setting(16, "Blocks held out for evaluation.")
    teacher_samples: int = setting(
        0, "Also train on N sequences sampled from the teacher (sequence-level distillation)."
    )
    temperature: float = setting(2.0, "Distillation temperature.", short="-T")
    alpha_ce: float = setting(1.0, "Weight of T^2*KL on LM tokens.")
    alpha_lm: float = setting(0.0, "Weight of causal-LM cross-entropy.")
    alpha_cos: float = setting(
        1.0, "Weight of 1-cosine between teacher and student last hidden states."
    )
    alpha_task: float = setting(
        1.0,
        "Weight of the task-aware term: T^2*KL at the answer position of public task-formatted text "
        "(0 with --alpha-label 0: plain LM distillation).",
    )
    alpha_label: float = setting(
        1.0,
        "Weight of KL between teacher and student class distributions (the task's label words) at "
        "the answer position of the same public examples: what a classifier on the student reads.",
    )
    task_template: str | None = setting(
        "general",
        "'general' (default): a mixture of task templates and label-word sets, one student that "
        "every user's task can steer; or one task whose template formats the public examples "
        "(e.g. sst2: the per-task recipe).",
    )
    task_data: list[str] = setting(
        help="Public text for the task-aware term (repeatable; same forms as --corpus; labels are "
        "ignored). Default: the --corpus texts.",
        default_factory=list,
    )
    task_examples: int = setting(4000, "Public task examples to cache.")
    task_heldout: int = setting(128, "Public task examples held out for evaluation.")
    task_max_length: int = setting(96, "Longest public task example, in tokens.")
    task_sentences: bool = setting(
        True,
        "Split public task texts into sentences (short inputs like a user's) or keep whole texts.",
        flag="--task-sentences/--task-whole-texts",
    )
    prefix_prob: float = setting(
        0.5,
        "Share of task examples with a prompt-like prefix (task descriptions, public snippets).",
    )
    topk: int = setting(64, "Teacher logits cached per LM position.")
    epochs: float = setting(2.0, "Passes over the cached data.")
    max_steps: int | None = setting(None, "Optimizer steps (overrides --epochs).")
    batch_size: int = setting(8, "LM blocks per step (all processes).")
    task_batch_size: int = setting(32, "Task examples per step.")
    grad_accum: int = setting(1, "Micro-batches per step.")
    lr: float = setting(5e-4, "AdamW peak learning rate.")
    weight_decay: float = setting(0.01, "AdamW weight decay.")
    warmup: float = setting(0.05, "Warm-up share of the steps.")
    schedule: str = setting("cosine", "Learning-rate schedule.", choices=SCHEDULES)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    precision: str = setting(
        "bf16",
        "bf16 autocast (about 2x faster on CPUs with bf16 support), fp32, or auto: bf16 where the "
        "device multiplies bf16 natively, else fp32 (resolved before the run and recorded).",
        choices=PRECISIONS,
    )
    freeze_embeddings: bool = setting(
        True,
        "Train the embeddings/LM head too (--train-embeddings) or keep them frozen, shared with "
        "the teacher and not stored (default).",
        flag="--freeze-embeddings/--train-embeddings",
    )
    eval_every: int = setting(0, "Held-out evaluation every N steps.")
    save_every: int = setting(50, "Checkpoint every N steps.")
    seed: int = setting(0, "Random seed.", cli=False)  # the shared --seed option

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise BadInput(
                "strategy", f"unknown strategy '{self.strategy}' (choose {', '.join(STRATEGIES)})"
            )
        check_precision(self.precision)
        if self.schedule not in SCHEDULES:
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
        if self.uses_task and not self.task_sources:
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
    def task_sources(self) -> list[str]:
        """Public text the task terms format: --task-data, else the LM corpus."""
        return list(self.task_data or self.corpus)

    @property
    def uses_lm(self) -> bool:
        return bool(self.alpha_ce or self.alpha_lm or self.alpha_cos)

    def resolved(self, device) -> DistillConfig:
        """This recipe with `precision: auto` replaced by what runs on `device`, so that checkpoints,
        metrics, stage manifests and student-store keys name what ran (and agree with each other)."""
        from promptport.runtime import with_resolved_precision

        return with_resolved_precision(self, device)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- teacher cache


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _base_forward(model, input_ids, attention_mask):
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


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
    """The teacher's top-k log-probabilities at temperature T (float32, exact for the logits the
    forward gives), their vocabulary ids and (with `keep_hidden`) last hidden states, at every position."""
    from promptport.classify import project

    top_logp, top_idx, hidden = [], [], []
    dev = model_device(teacher)
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start : start + batch_size].to(dev)
        with autocast(dev, precision):
            h = _base_forward(teacher, ids, torch.ones_like(ids))
            logits = project(teacher, h)
        logp = F.log_softmax(logits.float() / temperature, -1)
        values, idx = logp.topk(min(topk, logp.shape[-1]), dim=-1)
        top_logp.append(values.cpu())
        top_idx.append(idx.to(torch.int32).cpu())
        if keep_hidden:
            hidden.append(h.to(torch.bfloat16).cpu())
        if bar is not None:
            bar.update(ids.numel())
    out = {"lm_top_logp": torch.cat(top_logp), "lm_topi": torch.cat(top_idx)}
    if keep_hidden:
        out["lm_hidden"] = torch.cat(hidden)
    return out


@torch.inference_mode()
def cache_answers(
    teacher, ids: list[list[int]], pad_id: int, precision: str, batch_size: int = 32, bar=None
) -> dict[str, torch.Tensor]:
    """Teacher full-vocabulary logits and last hidden state at the answer position of each example
    (stored in bf16: [examples, vocabulary] in float32 would double the largest cached tensor)."""
    from promptport.classify import answer_hidden, project

    order = np.argsort([len(x) for x in ids], kind="stable")
    dev = model_device(teacher)
    logits_all = torch.empty(
        len(ids), teacher.get_output_embeddings().weight.shape[0], dtype=torch.bfloat16
    )
    hid_all = torch.empty(
        len(ids), teacher.get_input_embeddings().weight.shape[1], dtype=torch.bfloat16
    )
    for start in range(0, len(ids), batch_size):
        sel = order[start : start + batch_size]
        input_ids, mask = collate([ids[i] for i in sel], pad_id, "right")
        with autocast(dev, precision):
            h = answer_hidden(teacher, input_ids.to(dev), mask.to(dev))
            lg = project(teacher, h)
        logits_all[torch.as_tensor(sel)] = lg.to(torch.bfloat16).cpu()
        hid_all[torch.as_tensor(sel)] = h.to(torch.bfloat16).cpu()
        if bar is not None:
            bar.update(int(mask.sum()))
    return {"task_logits": logits_all, "task_hidden": hid_all}


def student_lineage(meta: dict) -> dict:
    """What a continued student was trained from: the source's weights checksum, how it was cut and
    trained, and its own source in turn, so a student distilled in several runs says so (its
    `training` holds only the last run's steps)."""
    keep = ("sha256", "layers", "strategy", "training", "continued_from")
    return {k: meta[k] for k in keep if meta.get(k) is not None}


def cache_key(cfg: DistillConfig, teacher_fingerprint: str, world: int) -> str:
    """What the teacher cache depends on: a resumed run reuses the cache only when all of it matches."""
    parts = {
        "format": CACHE_FORMAT,
        "teacher": teacher_fingerprint,
        "corpus": cfg.corpus,
        "max_tokens": cfg.max_tokens,
        "block": cfg.block_size,
        "held": cfg.heldout_blocks,
        "samples": cfg.teacher_samples,
        "topk": cfg.topk,
        "T": cfg.temperature,
        "precision": cfg.precision,
        "task": cfg.task_template,
        "task_data": cfg.task_sources if cfg.uses_task else cfg.task_data,
        "task_n": cfg.task_examples,
        "task_held": cfg.task_heldout,
        "task_len": cfg.task_max_length,
        "sent": cfg.task_sentences,
        "prefix": cfg.prefix_prob,
        "cos": bool(cfg.alpha_cos),
        "seed": cfg.seed,
        "world": world,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- training components


class StudentForward(torch.nn.Module):
    """The student's differentiable computation in one forward()."""

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


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def _heldout_metrics(student, teacher, heldout: torch.Tensor, precision: str, batch_size: int):
    from promptport.classify import project

    dev = model_device(student)
    nll_s = nll_t = kl = agree = n = 0.0
    for start in range(0, len(heldout), batch_size):
        ids = heldout[start : start + batch_size].to(dev)
        mask = torch.ones_like(ids)
        with autocast(dev, precision):
            s = project(student, _base_forward(student, ids, mask)).float()
            t = project(teacher, _base_forward(teacher, ids, mask)).float()
        s_lp, t_lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        tgt = ids[:, 1:].unsqueeze(-1)
        nll_s += -s_lp[:, :-1].gather(-1, tgt).sum().item()
        nll_t += -t_lp[:, :-1].gather(-1, tgt).sum().item()
        n += tgt.numel()
        kl += kl_from_log_probs(t_lp, s_lp).sum().item()
        agree += (s.argmax(-1) == t.argmax(-1)).sum().item()
    if not n:
        return {}
    n_pos = heldout.numel()
    return {
        "student_ppl": _safe_exp(nll_s / n),
        "teacher_ppl": _safe_exp(nll_t / n),
        "kl_per_token": kl / n_pos,
        "top1_agreement": agree / n_pos,
        "heldout_tokens": int(n_pos),
    }


@torch.inference_mode()
def _answer_metrics(student, teacher, task_ids, pad_id: int, precision: str, class_scores):
    from promptport.classify import answer_hidden, project

    dev = model_device(student)
    kl_a = agree_a = agree_c = 0.0
    for start in range(0, len(task_ids), 32):
        input_ids, mask = collate(task_ids[start : start + 32], pad_id, "right")
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        with autocast(dev, precision):
            s = project(student, answer_hidden(student, input_ids, mask)).float()
            t = project(teacher, answer_hidden(teacher, input_ids, mask)).float()
        s_lp, t_lp = F.log_softmax(s, -1), F.log_softmax(t, -1)
        kl_a += kl_from_log_probs(t_lp, s_lp).sum().item()
        agree_a += (s.argmax(-1) == t.argmax(-1)).sum().item()
        if class_scores is not None:
            agree_c += (class_scores(s).argmax(-1) == class_scores(t).argmax(-1)).sum().item()
    out = {
        "answer_kl": kl_a / len(task_ids),
        "answer_top1_agreement": agree_a / len(task_ids),
        "answer_examples": len(task_ids),
    }
    if class_scores is not None:
        out["answer_class_agreement"] = agree_c / len(task_ids)
    return out


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
    """Held-out text: perplexities, KL(teacher||student) per token (T=1, full vocabulary), top-1
    agreement; at the answer position of held-out task examples: KL, top-1 agreement and (with
    `class_scores`, the task's verbalizer) how often the student picks the teacher's class -- the
    closest label-free proxy of whether a classifier on the student behaves like one on the teacher."""
    out: dict = {}
    if heldout is not None:
        out.update(_heldout_metrics(student, teacher, heldout, precision, batch_size))
    if task_ids:
        out.update(_answer_metrics(student, teacher, task_ids, pad_id, precision, class_scores))
    return out


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def _reduction(before: dict, after: dict, key: str) -> float | None:
    if key not in before or key not in after or not before[key] > 0:
        return None
    return round(1 - after[key] / before[key], 4)


# ---------------------------------------------------------------- the recipe


@dataclass
class DistillData:
    """What the student trains and is evaluated on (all public)."""

    corpus: Corpus | None = None
    task_train: list[list[int]] | None = None
    task_heldout: list[list[int]] | None = None
    task_meta: dict | None = None
    class_scores: object = None  # [B, V] logits -> [B, C] class scores, or None

    @property
    def n_lm(self) -> int:
        return len(self.corpus.train) if self.corpus is not None else 0

    @property
    def n_task(self) -> int:
        return len(self.task_train) if self.task_train else 0


class Distiller:
    """One distillation run: `run()` = setup -> teacher cache -> optimiser (+ restore) -> train steps
    (with checkpoints) -> final evaluation and the student artifact."""

    def __init__(
        self,
        teacher: str | LoadedModel,
        out: str | Path,
        cfg: DistillConfig,
        *,
        student: str | None = None,
        resume: bool = False,
        device: str = "cpu",
        progress: bool = False,
        time_budget_s: float | None = None,
    ):
        self.teacher_arg, self.out_arg, self.cfg = teacher, out, cfg
        self.student_dir, self.resume, self.device_arg = student, resume, device
        self.progress, self.time_budget_s = progress, time_budget_s
        self.t_start = time.perf_counter()
        self.source: dict | None = None  # the continued student's lineage (None: a fresh cut)

    # ---- setup

    def setup(self) -> None:
        from promptport.distributed import group
        from promptport.fileio import check_writable_dir
        from promptport.models import load_model
        from promptport.runtime import seed_everything

        cfg = self.cfg
        cfg.check()
        self.out = check_writable_dir(self.out_arg)
        self.dist = group(self.device_arg)
        world = self.dist.world
        for name, b in (("batch_size", cfg.batch_size), ("task_batch_size", cfg.task_batch_size)):
            if b % (world * cfg.grad_accum):
                raise BadInput(
                    name,
                    f"{b} is not divisible by processes x grad_accum = {world * cfg.grad_accum}",
                )
        seed_everything(cfg.seed)
        t = self.teacher_arg
        self.teacher = t if isinstance(t, LoadedModel) else load_model(t, device=self.device_arg)
        self.teacher_spec = self.teacher.info.model_id if isinstance(t, LoadedModel) else t
        self.device = model_device(self.teacher.model)
        self.cfg = cfg = cfg.resolved(self.device)
        self._check_teacher_kind()
        info = self.teacher.info
        identity = {
            "config": cfg.to_dict(),
            "teacher": [info.embedding_fingerprint, info.tokenizer_fingerprint],
        }
        self.checkpoint = Checkpoint(checkpoint_file(self.out), "distill", identity)
        self.metrics = MetricsLog(self.out / "metrics.jsonl" if self.dist.is_main else None)
        self.state = None
        if self.resume:
            if not self.checkpoint.exists():
                raise BadInput("resume", f"no checkpoint in {self.checkpoint.path.parent}")
            self.state = self.checkpoint.load(self.metrics)
        self._make_student()
        self.data = self._build_data()

    def _check_teacher_kind(self) -> None:
        from promptport.classify import is_masked_lm

        if self.cfg.alpha_lm and is_masked_lm(self.teacher.model):
            raise BadInput(
                "alpha_lm",
                "the LM term is next-token cross-entropy; a masked-LM teacher distils with "
                "alpha_ce, alpha_cos and the task terms",
            )

    def _make_student(self) -> None:
        """A fresh cut of the teacher, or an existing student of the same teacher."""
        tmodel = self.teacher.model
        if self.student_dir is not None:
            from promptport.models import resolve_source

            if resolve_source(self.student_dir)[0] != "local" or not is_student_dir(
                self.student_dir
            ):
                raise BadInput(
                    "student", f"'{self.student_dir}' is not a student folder (no {STUDENT_META})"
                )
            smeta = read_json(Path(self.student_dir) / STUDENT_META)
            check_same_teacher(smeta["teacher"], self.teacher.info, field="student")
            self.layers = smeta["layers"]
            self.source = student_lineage(smeta)
            smodel = load_student(
                self.student_dir, teacher=self.teacher, device=self.device_arg
            ).model
        else:
            self.layers = select_layers(num_layers(tmodel), self.cfg.layers, self.cfg.strategy)
            smodel = extract_student(tmodel, self.layers)
        smodel.to(self.device).float()
        self.student = smodel
        self.own = set_trainable(smodel, self.cfg.freeze_embeddings)
        n_teacher_params = sum(p.numel() for p in tmodel.parameters())
        self.counts = parameter_counts(smodel, n_teacher_params, self.own)

    def _build_data(self) -> DistillData:
        cfg, tok = self.cfg, self.teacher.tokenizer
        data = DistillData()
        if cfg.uses_lm:
            extra = []
            if cfg.teacher_samples:
                heads, _ = read_corpus_texts(cfg.corpus, max_texts=2000) if cfg.corpus else ([], [])
                prompts = [x for _, x in heads] or ["The"]
                extra = sample_from_teacher(
                    self.teacher.model, tok, prompts, cfg.teacher_samples, cfg.block_size, cfg.seed
                )
            data.corpus = build_corpus(
                tok,
                cfg.corpus,
                block_size=cfg.block_size,
                max_tokens=cfg.max_tokens,
                heldout_blocks=cfg.heldout_blocks,
                seed=cfg.seed,
                extra_texts=extra,
            )
        if cfg.uses_task:
            self._build_task_data(data)
        elif data.corpus is None:
            raise BadInput(
                "alpha_task",
                "with alpha_ce = alpha_lm = alpha_cos = 0 the task term is the only one",
            )
        return data

    def _build_task_data(self, data: DistillData) -> None:
        from promptport.classify import Verbalizer, is_masked_lm, template_for
        from promptport.mixture import GENERAL, UnionScores, build_mixture_examples, general_tasks
        from promptport.tasks import get_task

        cfg, tok = self.cfg, self.teacher.tokenizer
        masked = is_masked_lm(self.teacher.model)
        pairs, used = read_corpus_texts(cfg.task_sources)
        kw: dict = dict(
            n=cfg.task_examples + cfg.task_heldout,
            max_length=cfg.task_max_length,
            seed=cfg.seed,
            sentences=cfg.task_sentences,
            prefix_prob=cfg.prefix_prob,
        )
        scores: Any
        if cfg.task_template == GENERAL:  # one student for every user: a mixture of templates
            tasks = [template_for(t, tok, masked) for t in general_tasks()]
            ids, meta, _ = build_mixture_examples(
                tok, [x for _, x in pairs], build_fn=build_task_examples, tasks=tasks, **kw
            )
            scores = UnionScores(tok, tasks)
        else:
            assert cfg.task_template is not None  # DistillConfig.check: the task terms need one
            # a masked-LM teacher reads its answer at the mask token the template puts in
            task = template_for(get_task(cfg.task_template), tok, masked)
            ids, meta, _ = build_task_examples(tok, task, [x for _, x in pairs], **kw)
            scores = Verbalizer(tok, task).scores_from_vocab
        if len(ids) <= cfg.task_heldout:
            raise BadInput(
                "task_data",
                f"only {len(ids)} public examples; need more than {cfg.task_heldout} (held out)",
            )
        data.task_heldout, data.task_train = ids[: cfg.task_heldout], ids[cfg.task_heldout :]
        meta["sources"] = used
        data.task_meta = meta
        data.class_scores = scores

    # ---- teacher cache

    def teacher_cache(self) -> dict[str, torch.Tensor]:
        """Computed once (each process its share of the rows), reused by resumed runs."""
        from safetensors.torch import load_file, save_file

        cfg, dist = self.cfg, self.dist
        self.cache_key = cache_key(cfg, self.teacher.info.embedding_fingerprint, dist.world)
        t0 = time.perf_counter()

        def part_file(rank: int) -> Path:
            return self.out / f"teacher_cache.{self.cache_key}.rank{rank}.safetensors"

        cache_file = part_file(dist.rank)
        if cache_file.is_file():
            part = load_file(str(cache_file))
        else:
            part = self._compute_cache_part()
            with atomic_path(cache_file) as tmp:
                save_file(part, str(tmp))
        dist.barrier()
        if dist.world > 1:
            parts = [load_file(str(part_file(r))) for r in range(dist.world)]
            part = {k: torch.cat([p[k] for p in parts if k in p]) for k in set().union(*parts)}
        self.cache_seconds = time.perf_counter() - t0
        return part

    def _compute_cache_part(self) -> dict[str, torch.Tensor]:
        cfg, dist, data = self.cfg, self.dist, self.data
        tmodel, tok = self.teacher.model, self.teacher.tokenizer
        none = np.zeros(0, dtype=np.int64)
        lm_rows = np.array_split(np.arange(data.n_lm), dist.world)[dist.rank] if data.n_lm else none
        task_rows = (
            np.array_split(np.arange(data.n_task), dist.world)[dist.rank] if data.n_task else none
        )
        task_train = data.task_train or []
        total = len(lm_rows) * cfg.block_size + sum(len(task_train[i]) for i in task_rows)
        bar = progress_bar(total, "teacher cache", self.progress and dist.is_main, unit="tok")
        part: dict[str, torch.Tensor] = {}
        if len(lm_rows):
            assert data.corpus is not None
            blocks = data.corpus.train[torch.as_tensor(lm_rows)]
            part.update(
                cache_lm(
                    tmodel,
                    blocks,
                    cfg.topk,
                    bool(cfg.alpha_cos),
                    cfg.precision,
                    cfg.temperature,
                    bar=bar,
                )
            )
        if len(task_rows):
            rows = [task_train[i] for i in task_rows]
            part.update(cache_answers(tmodel, rows, tok.pad_token_id, cfg.precision, bar=bar))
        if bar is not None:
            bar.close()
        return part

    # ---- optimiser, schedule, restore

    def setup_optimizer(self) -> None:
        cfg, data = self.cfg, self.data
        per_epoch = max(
            math.ceil(data.n_lm / cfg.batch_size) if data.n_lm else 0,
            math.ceil(data.n_task / cfg.task_batch_size) if data.n_task else 0,
        )
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
        self.forward = StudentForward(self.student)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        self.sched = make_scheduler(self.opt, cfg, self.total_steps)
        lm_tokens = cfg.batch_size * cfg.block_size if data.n_lm else 0
        task_tok_mean = (
            float(np.mean([len(x) for x in data.task_train or []])) if data.n_task else 0
        )
        self.tokens_per_step = lm_tokens + cfg.task_batch_size * task_tok_mean

    def restore(self) -> int:
        """Load the checkpoint's weights, optimiser, scheduler and RNG; returns its step."""
        state = self.state
        if state is None:
            self.metrics.reset()
            return 0
        named = dict(self.student.named_parameters())
        with torch.no_grad():
            for n, w in state["student_own"].items():
                named[n].copy_(w)
        self.opt.load_state_dict(state["optimizer"])
        lambdas = [None] * len(self.sched.lr_lambdas)
        self.sched.load_state_dict({**state["scheduler"], "lr_lambdas": lambdas})
        torch.set_rng_state(state["rng"])
        return int(state["step"])

    # ---- one step

    def _micro_inputs(self, lm_idx, task_idx, micro: int) -> tuple[dict, dict]:
        """Student inputs and the matching teacher-cache rows for one micro-batch."""
        cfg, data, cache, dev = self.cfg, self.data, self.cache, self.device
        inputs: dict = {}
        targets: dict = {}
        if lm_idx is not None:
            assert data.corpus is not None
            rows = torch.as_tensor(np.array_split(lm_idx, cfg.grad_accum)[micro])
            ids = data.corpus.train[rows].to(dev)
            inputs.update(lm_ids=ids, lm_mask=torch.ones_like(ids))
            targets.update(
                t_top_logp=cache["lm_top_logp"][rows].to(dev),
                t_topi=cache["lm_topi"][rows].to(dev),
                input_ids=ids,
                mask=inputs["lm_mask"],
                t_hidden=cache["lm_hidden"][rows].to(dev) if "lm_hidden" in cache else None,
            )
        if task_idx is not None:
            assert data.task_train is not None
            sel = np.array_split(task_idx, cfg.grad_accum)[micro]
            task_ids, task_mask = collate(
                [data.task_train[i] for i in sel], self.teacher.tokenizer.pad_token_id, "right"
            )
            inputs.update(task_ids=task_ids.to(dev), task_mask=task_mask.to(dev))
            rows = torch.as_tensor(sel)
            targets.update(
                t_answer=cache["task_logits"][rows].to(dev),
                t_answer_h=cache["task_hidden"][rows].to(dev),
                class_scores=data.class_scores,
            )
        return inputs, targets

    def _local_indices(self, step: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """This process's share of the step's global LM and task batches."""
        cfg, data, world, rank = self.cfg, self.data, self.dist.world, self.dist.rank
        lm_idx = task_idx = None
        if data.n_lm:
            local = cfg.batch_size // world
            lm_idx = stream_indices(data.n_lm, cfg.batch_size, step, cfg.seed, 0)
            lm_idx = lm_idx[rank * local : (rank + 1) * local]
        if data.n_task:
            local = cfg.task_batch_size // world
            task_idx = stream_indices(data.n_task, cfg.task_batch_size, step, cfg.seed, 1)
            task_idx = task_idx[rank * local : (rank + 1) * local]
        return lm_idx, task_idx

    def train_step(self, step: int) -> tuple[dict[str, float], float]:
        """One optimiser step on the `step`-th global batch; returns (mean loss terms, grad norm)."""
        cfg = self.cfg
        lm_idx, task_idx = self._local_indices(step)
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            inputs, targets = self._micro_inputs(lm_idx, task_idx, micro)
            with autocast(self.device, cfg.precision):
                (lm_h, lm_logits), (answer_h, answer_logits) = self.forward(**inputs)
            if lm_idx is not None:
                targets.update(s_logits=lm_logits, s_hidden=lm_h)
            if task_idx is not None:
                targets.update(s_answer=answer_logits, s_answer_h=answer_h)
            terms = distill_loss(cfg, **targets)
            (terms["total"] / cfg.grad_accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        self._average_gradients()
        if cfg.max_grad_norm:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        else:
            gnorm = float("nan")
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.dist.world > 1:
            keys = sorted(sums)
            mean = self.dist.sum(torch.tensor([sums[k] for k in keys])) / self.dist.world
            sums = dict(zip(keys, mean.tolist()))
        return sums, gnorm

    def _average_gradients(self) -> None:
        """Every process's loss is the mean over its shard: averaging the gradients gives the
        gradient of the global batch mean (what data-parallel training does)."""
        if self.dist.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.dist.sum(torch.cat([g.flatten() for g in grads])) / self.dist.world
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    # ---- checkpoint and evaluation

    def save_checkpoint(self, step: int) -> None:
        """The whole training state in one atomically written file (main process)."""
        if not self.dist.is_main:
            return
        named = dict(self.student.named_parameters())
        state = {
            "step": step,
            "total_steps": self.total_steps,
            "student_own": {n: named[n].detach().cpu().contiguous() for n in self.own},
            "optimizer": self.opt.state_dict(),
            "scheduler": {k: v for k, v in self.sched.state_dict().items() if k != "lr_lambdas"},
            "rng": torch.get_rng_state(),
            "before": json.dumps(self.before),
        }
        self.checkpoint.save(state, self.metrics)

    def evaluate(self) -> dict:
        data = self.data
        return evaluate_student(
            self.student,
            self.teacher.model,
            data.corpus.heldout if data.corpus is not None else None,
            data.task_heldout,
            self.teacher.tokenizer.pad_token_id,
            self.cfg.precision,
            class_scores=data.class_scores,
        )

    # ---- the loop

    def train(self, step: int) -> int:
        """Steps from `step` to the end (or until the time budget is spent); returns the last step."""
        cfg, dist = self.cfg, self.dist
        delay = float(os.environ.get("PROMPTPORT_STEP_DELAY", "0") or 0)  # tests: widen kill window
        bar = progress_bar(self.total_steps, "distil", self.progress and dist.is_main, "step", step)
        t_train = time.perf_counter()
        self.start_step, self.stopped_early, step_s = step, False, 0.0
        self.forward.train()
        while step < self.total_steps:
            t_step = time.perf_counter()
            budget = self.time_budget_s
            if budget is not None and t_step - self.t_start + step_s > budget:  # next step must fit
                self.stopped_early = True
                break
            sums, gnorm = self.train_step(step)
            step += 1
            step_s = time.perf_counter() - t_step
            if delay:
                time.sleep(delay)
            if dist.is_main:
                rate = (
                    (step - self.start_step)
                    * self.tokens_per_step
                    / max(time.perf_counter() - t_train, 1e-9)
                )
                self._log_step(step, sums, gnorm, rate)
                if bar is not None:
                    bar.set_postfix(loss=f"{sums['total']:.3f}", tok_s=f"{rate:.0f}")
                    bar.update(1)
            if cfg.save_every and step % cfg.save_every == 0 and step < self.total_steps:
                self.save_checkpoint(step)
        if bar is not None:
            bar.close()
        self.train_seconds = time.perf_counter() - t_train
        self.forward.eval()
        self.student.eval()
        return step

    def _log_step(self, step: int, sums: dict[str, float], gnorm: float, rate: float) -> None:
        rec = {
            "step": step,
            "loss": sums["total"],
            **{k: v for k, v in sums.items() if k != "total"},
            "lr": self.sched.get_last_lr()[0],
            "grad_norm": gnorm,
            "tokens": int(step * self.tokens_per_step),
            "tokens_per_s": round(rate, 1),
        }
        if self.cfg.eval_every and step % self.cfg.eval_every == 0 and step < self.total_steps:
            self.forward.eval()
            rec["eval"] = self.evaluate()
            self.forward.train()
        self.metrics.append(rec)

    def finish(self, step: int) -> dict:
        """Final checkpoint, evaluation, the student folder and metrics.json (main process)."""
        from promptport.runtime import versions

        cfg, out, before = self.cfg, self.out, self.before
        assert before is not None  # evaluated (or restored) before training, on the main process
        self.save_checkpoint(step)
        after = self.evaluate()
        strategy = cfg.strategy if self.student_dir is None else "continued"
        tokens = int(step * self.tokens_per_step)
        meta = {
            "teacher": teacher_reference(self.teacher_spec, self.teacher.info),
            "layers": self.layers,
            "strategy": strategy,
            "parameters": self.counts,
            "trained_embeddings": not cfg.freeze_embeddings,
            "training": {"steps": step, "tokens": tokens, "seed": cfg.seed},
        }
        if self.source is not None:
            meta["continued_from"] = self.source
        save_student(out / "student", self.student, self.teacher.tokenizer, self.own, meta)
        trained = (step - self.start_step) * self.tokens_per_step
        result = {
            "stage": "distill",
            "teacher": self.teacher.info.model_id,
            "student": str(out / "student"),
            "layers": self.layers,
            "strategy": strategy,
            "continued_from": self.source,
            "parameters": self.counts,
            "before": self.before,
            "after": after,
            "kl_reduction": _reduction(before, after, "kl_per_token"),
            "answer_kl_reduction": _reduction(before, after, "answer_kl"),
            "steps": step,
            "total_steps": self.total_steps,
            "stopped_early": self.stopped_early,
            "tokens_trained": tokens,
            "processes": self.dist.world,
            "cache_seconds": round(self.cache_seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - self.t_start, 2),
            "tokens_per_s": round(trained / max(self.train_seconds, 1e-9), 1),
            "corpus": self.data.corpus.meta if self.data.corpus is not None else None,
            "task_aware": self.data.task_meta,
            "config": cfg.to_dict(),
            "versions": versions(),
        }
        write_json(out / "metrics.json", result)
        return result

    def run(self) -> dict:
        self.setup()
        self.cache = self.teacher_cache()
        self.setup_optimizer()
        step = self.restore()
        self.dist.barrier()
        self.before = None
        if self.dist.is_main:
            self.before = (
                json.loads(self.state["before"]) if self.state is not None else self.evaluate()
            )
        step = self.train(step)
        result = self.finish(step) if self.dist.is_main else None
        self.dist.barrier()
        if (
            self.dist.is_main
        ):  # a finished run needs no cache; an interrupted one keeps it (--resume)
            for f in self.out.glob("teacher_cache.*.safetensors"):
                if not self.stopped_early or self.cache_key not in f.name:
                    f.unlink()
        return result if result is not None else {"stage": "distill", "rank": self.dist.rank}


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
    run = Distiller(
        teacher,
        out,
        cfg or DistillConfig(),
        student=student,
        resume=resume,
        device=device,
        progress=progress,
        time_budget_s=time_budget_s,
    )
    return run.run()
