"""POST transfer (provider, step 3): train a teacher prompt p_t so that the teacher with p_t behaves like
the student with the user's prompt p_s, using public data only.

For a public input x, at the answer position over the full vocabulary, with s = student(x),
s_p = student(p_s + x), t = teacher(x), t_p = teacher(p_t + x):

    loss = alpha * T^2 * KL(softmax((s_p - s)/T) || softmax((t_p - t)/T))      # copy the prompt's effect
         + (1 - alpha) * T^2 * KL(softmax(s_p/T) || softmax(t_p/T))             # copy the prompted output

s, s_p and t do not depend on p_t: they are computed once (cached), so a step costs one teacher
forward+backward with the prompt.

The firewall: `transfer()` takes the prompt artifact, the student, the teacher and a public text source.
It has no parameter through which private data could enter, and it selects its checkpoint on held-out
*public* examples (transfer loss) or, with `select_data`, on labelled *public* examples the provider
holds (`promptport.transfer_select`), never on the user's data or labels.

Generation tasks (`kind: generation`) use the same objective at every position of a teacher-forced
continuation: `promptport.gen_transfer` (`generation_transfer_loss`, cached top-k plus remainder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from promptport.checkpoint import CHECKPOINT_FILE as CHECKPOINT_FILE
from promptport.checkpoint import Checkpoint, MetricsLog, progress_bar
from promptport.classify import Encoded, PromptClassifier
from promptport.data import load_texts
from promptport.errors import BadInput, PromptportError
from promptport.fileio import check_writable_dir, write_json
from promptport.losses import kl_divergence
from promptport.models import LoadedModel, load_model
from promptport.options import setting
from promptport.prompt import (
    PromptArtifact,
    check_compatible,
    load_prompt,
    make_metadata,
    save_prompt,
)
from promptport.runtime import (
    PRECISIONS,
    at_precision,
    check_precision,
    seed_everything,
    versions,
    with_resolved_precision,
)
from promptport.schedules import SCHEDULES, check_schedule, set_rate
from promptport.tasks import Task, get_task, task_from_dict
from promptport.transfer_common import (
    PUBLIC_CUTS,
    TransferResult,
    check_public_cut,
    loop_fields,
    method_alpha,
    public_dataset,
    stalled,
    teacher_init,
    teacher_lengths,
    user_init,
    write_transfer_manifest,
)
from promptport.transfer_select import (
    ACCURACY_RULE,
    LOSS_RULE,
    Selector,
    best_of,
    better,
    transfer_selector,
)

METHODS = ("post", "output", "shift", "direct")


SPACES = ("vocab", "labels")
SHIFT_MEANS = ("keep", "drop", "match")
SHIFT_BASES = ("unprompted", "init")


@dataclass
class TransferConfig:
    """Transfer settings; every field is also a `promptport transfer` option and a run-YAML key."""

    method: str = setting(
        "post",
        "post: both KL terms; output / shift: one term (ablations); direct: p_s unchanged.",
        choices=METHODS,
    )
    alpha: float | str = setting(
        0.5,
        "Weight of the shift term in [0, 1], or 'auto' (from public-data agreement).",
        cli=False,  # a number or 'auto': its own option in the CLI
    )
    temperature: float = setting(2.0, "Softmax temperature.")
    space: str = setting(
        "vocab",
        "Distributions the KL terms compare: the full vocabulary at the answer position (the paper), "
        "or the task's classes (label-word scores), which keeps only what the task reads.",
        choices=SPACES,
    )
    init: str = setting(
        "copy",
        "Start p_t from a copy of p_s, or from the task description's embeddings.",
        choices=("copy", "text"),
    )
    n_tokens: str | int | None = setting(
        None,
        "Length of the teacher's prompt with --init text (default: the user's prompt's). The teacher "
        "prompt is the provider's own parameter: a shorter one moves the teacher's zero-shot less "
        "before training (50 description tokens cost SmolLM2 11 points on SST-2's validation split). "
        "Several lengths ('50,10,1', or 'auto': the user's, 10 and 1) train one prompt each from the "
        "same cached targets and keep the one with the lowest held-out public transfer loss "
        "(classification; costs one training per length).",
    )
    shift_mean: str = setting(
        "keep",
        "Shift term, the student's mean prompt shift over the public set (its change of label prior): "
        "keep it (the paper); drop it, so the teacher keeps its own prior and copies only how the "
        "prompt's effect varies across inputs; or match, so the teacher's mean target is the prompted "
        "student's mean (the student's unprompted mean is replaced by the teacher's: a correction of "
        "the student's own bias is not copied, a prior the teacher lacks is).",
        choices=SHIFT_MEANS,
    )
    shift_base: str = setting(
        "unprompted",
        "What the shift term measures the user's prompt against on the student: the unprompted student "
        "(the paper), or the student with the prompt's own starting point (init, rebuilt from the "
        "prompt's metadata), so only what tuning on the private data changed is copied: a prompt "
        "that learned nothing leaves the teacher at its zero-shot.",
        choices=SHIFT_BASES,
    )
    n_public: int = setting(1000, "Number of public examples used.")
    public_chars: int | None = setting(
        None,
        "Re-cut the public texts into runs of whole sentences of at least this many characters "
        "before use (classification): long reviews become sentences for a sentence task, one-line "
        "snippets paragraphs for a document task. Set it to the typical length of the user's inputs, "
        "which the user states like the template (a number, not data): text of the user's shape "
        "transfers better (one seed: SST-2 0.821 -> 0.838 with IMDB reviews cut to sentences, IMDB "
        "0.755 -> 0.802 with one-line snippets joined; zero-shot 0.812 / 0.799; "
        "benchmarks/README.md). Default: the texts as they are.",
    )
    public_cut: str = setting(
        "sentences",
        "How --public-chars cuts: runs of whole sentences, or phrases: sentences at least twice "
        "--public-chars long are first split into runs of whole words, for users whose inputs are "
        "phrases (MPQA's opinion phrases, 14 characters), which whole sentences do not resemble.",
        choices=PUBLIC_CUTS,
    )
    heldout_fraction: float = setting(
        0.1, "Share of the public examples held out to pick the best step.", cli=False
    )
    steps: int | None = setting(None, "Optimiser steps (default: --epochs over the public set).")
    epochs: float = setting(2.0, "Passes over the public examples (the most, with --patience).")
    patience: int | None = setting(
        None,
        "Stop after N held-out evaluations (every half pass) without a better one (a lower held-out "
        "public loss, or with --select-data a higher selection accuracy); the best step's prompt is "
        "kept either way. Makes --epochs a ceiling: a longer transfer costs only where it still "
        "improves. Default: run every step.",
    )
    select_data: str | None = setting(
        None,
        "Labelled public examples of the task's kind that the provider holds (a file in the task's "
        "format, every row; a folder / hub id, its train split; or embedded:rt_reviews, the "
        "embedded public reviews with their fresh/rotten labels), never the user's data: keep the "
        "step (and, with several --n-tokens, the length) under which the teacher is most accurate "
        "on them, instead of the lowest held-out transfer loss (transformers' metric_for_best_model). "
        "Costs a teacher pass over --n-select examples per held-out evaluation. It assumes the set "
        "resembles the user's task (of another domain it can choose worse than the loss); on three "
        "seeds of four tasks it kept a step scoring higher on test than the loss's in 11 of 12 "
        "(benchmarks/README.md). Classification only.",
    )
    n_select: int = setting(500, "Examples drawn (with --seed) from --select-data.")
    average_from: float | None = setting(
        None,
        "Keep the mean of the prompt over the steps after this share of the run (0.67: the last "
        "third; Polyak-Ruppert tail averaging, the prompt's torch.optim.swa_utils) instead of one "
        "step's: one step's prompt carries that step's batch noise, which choosing among the checks "
        "on a few hundred public examples cannot average away. Its held-out loss is recorded. Not "
        "with --patience or --select-data (they choose a step); classification only.",
    )
    lr: float = setting(1e-3, "Adam learning rate.")
    schedule: str = setting(
        "constant",
        "Learning-rate schedule over the steps (--epochs' steps, also with --patience): constant, or "
        "linear / cosine decay to 0 at the last step, which settles the prompt where a constant rate "
        "keeps it moving between evaluations.",
        choices=SCHEDULES,
    )
    batch_size: int = setting(16, "Public examples per step.")
    max_length: int = setting(128, "Token limit per public input.")
    precision: str = setting(
        "fp32",
        "fp32, bf16 autocast for both models' bodies (answer projections, cached targets' "
        "comparison and the loss stay fp32), or auto: bf16 where the device multiplies bf16 "
        "natively, else fp32 (resolved before the run and recorded).",
        choices=PRECISIONS,
    )
    eval_every: int | None = setting(None, "Held-out evaluation every N steps.", cli=False)
    seed: int = setting(0, "Random seed (the --seed every command has).", cli=False)
    top_k: int = setting(
        256,
        "Generation tasks: kept tokens per position in the cache (see gen_transfer).",
        cli=False,
    )

    def __post_init__(self) -> None:
        if isinstance(self.n_tokens, str) and self.n_tokens.strip().isdigit():
            self.n_tokens = int(self.n_tokens)  # the command line gives text

    def validate(self) -> None:
        if self.method not in METHODS:
            raise BadInput(
                "method", f"unknown method '{self.method}' (choose {', '.join(METHODS)})"
            )
        if not (
            self.alpha == "auto"
            or (isinstance(self.alpha, (int, float)) and 0.0 <= float(self.alpha) <= 1.0)
        ):
            raise BadInput("alpha", f"must be in [0, 1] or 'auto', got {self.alpha!r}")
        if self.temperature <= 0:
            raise BadInput("temperature", f"must be > 0, got {self.temperature}")
        if self.space not in SPACES:
            raise BadInput("space", f"must be one of {', '.join(SPACES)}, got '{self.space}'")
        if self.shift_mean not in SHIFT_MEANS:
            raise BadInput(
                "shift_mean", f"must be one of {', '.join(SHIFT_MEANS)}, got '{self.shift_mean}'"
            )
        if self.shift_base not in SHIFT_BASES:
            raise BadInput(
                "shift_base", f"must be one of {', '.join(SHIFT_BASES)}, got '{self.shift_base}'"
            )
        if self.init not in ("copy", "text"):
            raise BadInput("init", f"must be copy or text, got '{self.init}'")
        check_precision(self.precision)
        teacher_lengths(self.n_tokens, 1)  # one-line error naming n_tokens
        if self.public_chars is not None and self.public_chars <= 0:
            raise BadInput("public_chars", f"must be positive, got {self.public_chars}")
        check_public_cut(self.public_cut)
        for name in ("n_public", "batch_size", "max_length", "top_k", "n_select"):
            if getattr(self, name) <= 0:
                raise BadInput(name, f"must be positive, got {getattr(self, name)}")
        if self.patience is not None and self.patience <= 0:
            raise BadInput("patience", f"must be positive, got {self.patience}")
        if self.steps is not None and self.steps < 0:
            raise BadInput("steps", f"must be >= 0, got {self.steps}")
        if not 0.0 < self.heldout_fraction < 0.9:
            raise BadInput("heldout_fraction", f"must be in (0, 0.9), got {self.heldout_fraction}")
        if self.lr <= 0:
            raise BadInput("lr", f"must be > 0, got {self.lr}")
        check_schedule(self.schedule)
        if self.average_from is not None:
            if not 0.0 <= self.average_from < 1.0:
                raise BadInput("average_from", f"must be in [0, 1), got {self.average_from}")
            for other in ("patience", "select_data"):
                if getattr(self, other) is not None:
                    raise BadInput(
                        "average_from",
                        f"keeps a mean of steps, not one step: drop {other} or average_from",
                    )


def transfer_loss(
    t_p: torch.Tensor,
    s_p: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    alpha: float,
    temperature: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """The POST objective over full-vocabulary answer logits ([B, V] each); only t_p carries gradient."""
    T = temperature
    per_example = torch.zeros(t_p.shape[0], device=t_p.device)
    if alpha > 0:
        per_example = per_example + alpha * T * T * kl_divergence(s_p - s, t_p - t, T)
    if alpha < 1:
        per_example = per_example + (1 - alpha) * T * T * kl_divergence(s_p, t_p, T)
    return per_example.mean() if reduction == "mean" else per_example


@dataclass
class TransferCache:
    """Fixed answer-position logits of the public examples: s, s_p (student) and t (teacher)."""

    s: torch.Tensor
    s_p: torch.Tensor
    t: torch.Tensor
    seconds: float = 0.0


def build_cache(
    student: PromptClassifier,
    teacher: PromptClassifier,
    p_s: torch.Tensor,
    s_enc: Encoded,
    t_enc: Encoded,
    batch_size: int = 32,
    progress: bool = False,
    unprompted: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TransferCache:
    """`unprompted`: (s, t) already computed for the same public examples (shared by several prompts)."""
    t0 = time.perf_counter()
    s_p = student.predict_logits(
        s_enc, p_s, batch_size, progress, "cache student+prompt", vocab=True
    )
    if unprompted is None:
        unprompted = (
            student.predict_logits(s_enc, None, batch_size, progress, "cache student", vocab=True),
            teacher.predict_logits(t_enc, None, batch_size, progress, "cache teacher", vocab=True),
        )
    s, t = unprompted
    return TransferCache(s, s_p, t, time.perf_counter() - t0)


def auto_alpha(
    cache: TransferCache,
    verbalizer_ids: torch.Tensor,
    average: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> tuple[float, dict]:
    """The paper's rule: alpha (the weight of the shift term) is higher when the teacher's zero-shot is
    strong and lower when the prompted student is stronger: alpha = a_t / (a_t + a_s), 0.5 when equal.

    With labelled public examples (`labels`: public data, which the provider may use) a_t and a_s are
    the teacher's zero-shot and the prompted student's accuracy on them. Without labels they are a
    proxy, each model's mean top-class probability on the public examples (its own estimate of its
    accuracy, exact for a calibrated model); the returned info says which was used.
    """

    def class_probs(v):
        return torch.softmax(v[:, verbalizer_ids] @ average.T, -1)

    p_t, p_s = class_probs(cache.t), class_probs(cache.s_p)
    info: dict = {
        "rule": "alpha = a_t / (a_t + a_s)",
        "teacher_zero_shot_agreement_with_prompted_student": float(
            (p_t.argmax(-1) == p_s.argmax(-1)).float().mean()
        ),
    }
    if labels is not None:
        a_t = float((p_t.argmax(-1) == labels).float().mean())
        a_s = float((p_s.argmax(-1) == labels).float().mean())
        info.update(
            basis="accuracy on labelled public examples",
            n_labelled=len(labels),
            teacher_zero_shot_accuracy=a_t,
            prompted_student_accuracy=a_s,
        )
    else:
        a_t, a_s = float(p_t.max(-1).values.mean()), float(p_s.max(-1).values.mean())
        info.update(
            basis="proxy without labels: mean top-class probability (confidence)",
            teacher_zero_shot_confidence=a_t,
            prompted_student_confidence=a_s,
        )
    alpha = 0.5 if a_t + a_s == 0 else a_t / (a_t + a_s)
    return alpha, info


def public_labels(task: Task, public_data: str, texts: list[str], text_column=None):
    """Labels of the public examples `texts` when the public source has a label column the task
    understands (public data: the provider may use them); None otherwise."""
    from promptport.data import load_split

    try:
        p = Path(public_data).expanduser()
        split = "all" if p.is_file() else "train"
        ds = load_split(task, public_data, split, text_column=text_column, require_labels=False)
    except (BadInput, PromptportError):
        return None
    if ds.labels is None:
        return None
    by_text = dict(zip(ds.fields[task.template_fields[0]], ds.labels))
    ys = [by_text.get(t) for t in texts]
    if any(y is None for y in ys):
        return None
    return torch.tensor(ys)


def task_from_prompt(artifact: PromptArtifact, task: str | Task | None = None) -> Task:
    """The task the prompt was tuned for, from the template and verbalizer stored in it: the provider
    needs no registry entry, and a registry entry of the same name cannot swap the template. A `task`
    given as well must agree with the stored one (refused otherwise)."""
    t = artifact.meta.get("task")
    if not t:
        if task is None:
            raise BadInput("prompt", "prompt metadata has no task; pass --task")
        return get_task(task)
    spec = {
        "name": t["name"],
        "description": t.get("description", t["name"]),
        "template": t["template"],
        "columns": {f: [f] for f in _fields(t["template"])},
    }
    if t.get("kind") == "generation":
        spec.update(
            kind="generation",
            target=t["target"],
            decoding=t.get("decoding", {}),
            metrics=t.get("metrics", ["bleu", "rougeL"]),
        )
        spec["columns"][t["target"]] = [t["target"]]
    else:
        spec.update(classes=t["classes"], verbalizer=t["verbalizer"])
    try:  # keep the registry's column names and label map (reading data), never its template
        known = get_task(task if task is not None else t["name"])
    except BadInput:
        known = None
    if known is not None and task is not None:
        stored: tuple = (t["template"], t.get("classes"), t.get("verbalizer"))
        given: tuple = (
            known.template,
            known.classes if not t.get("kind") else None,
            known.verbalizer,
        )
        if t.get("kind") == "generation":
            stored, given = stored[:1], given[:1]
        if stored != given:
            raise BadInput(
                "task",
                f"'{known.name}' has another template or verbalizer than the prompt was tuned with "
                f"({t['template']!r}); transfer uses the prompt's own (omit --task)",
            )
    if known is not None and known.template == t["template"]:
        return known
    return task_from_dict(spec, source="prompt.task")


def _fields(template: str) -> list[str]:
    import string

    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def shift_mean(cache: TransferCache, how: str) -> TransferCache:
    """The shift term's target with the student's mean prompt shift kept, dropped or matched.

    Only s changes (it appears in the shift term alone; s_p, which the output term reads, is kept).
    drop: s + mean(s_p - s), so s_p - s has mean zero: a prompt that moves every input the same way
    on the student -- a change of the student's label prior -- asks nothing of the teacher.
    match: s - mean(s) + mean(t), so the teacher's target t + s_p - s has the prompted student's mean
    mean(s_p): the part of the shift that repairs the student's own bias (where the student's mean
    is off the teacher's) cancels, and the part that moves the prior where the user's data wants it
    stays. Means are over the public set, per vocabulary entry or class."""
    if how == "keep":
        return cache
    s = cache.s.float()
    if how == "drop":
        s = s + (cache.s_p.float() - s).mean(0, keepdim=True)
    elif how == "match":
        s = s - s.mean(0, keepdim=True) + cache.t.float().mean(0, keepdim=True)
    else:
        raise ValueError(f"shift_mean: {how!r}, not one of {SHIFT_MEANS}")
    return TransferCache(s.to(cache.s.dtype), cache.s_p, cache.t, cache.seconds)


def label_space(cache: TransferCache, verbalizer) -> TransferCache:
    """The cached full-vocabulary logits as class scores (`space: labels`): the KL terms then compare
    the class distributions, the only part of the answer distribution the task reads."""
    return TransferCache(
        verbalizer.scores_from_vocab(cache.s),
        verbalizer.scores_from_vocab(cache.s_p),
        verbalizer.scores_from_vocab(cache.t),
        cache.seconds,
    )


def _answer_logits(teacher, cfg, ids, mask, p_t) -> torch.Tensor:
    """The teacher's prompted answer logits in the space the loss compares."""
    if cfg.space == "labels":
        return teacher.class_logits(ids, mask, p_t)
    return teacher.vocab_logits(ids, mask, p_t)


def _heldout_loss(teacher, t_enc, cache, p_t, held, alpha: float, cfg, dist) -> float:
    """Mean transfer loss over the held-out public examples (each process its shard)."""
    dev = teacher.device
    n_held = len(held)
    total = torch.zeros((), dtype=torch.float64)
    mine = torch.as_tensor(dist.shard(held.tolist()), dtype=torch.long)
    with torch.inference_mode():
        for i in range(0, len(mine), cfg.batch_size * 2):
            idx = mine[i : i + cfg.batch_size * 2]
            ids, mask = teacher.batch([t_enc.input_ids[j] for j in idx])
            t_p = _answer_logits(teacher, cfg, ids, mask, p_t.detach())
            total += float(
                transfer_loss(
                    t_p,
                    cache.s_p[idx].to(dev),
                    cache.s[idx].to(dev),
                    cache.t[idx].to(dev),
                    alpha,
                    cfg.temperature,
                    "none",
                )
                .double()
                .sum()
            )
    return float(dist.sum(total)) / n_held


def _step_loss(teacher, t_enc, cache, p_t, idx, alpha: float, cfg, dist) -> tuple[float, int]:
    """Backpropagate this process's share of the batch's mean loss into p_t; sum over processes."""
    dev = teacher.device
    mine = torch.as_tensor(dist.shard(idx.tolist()), dtype=torch.long)
    local = torch.zeros(2, dtype=torch.float64)  # [loss share, real tokens]
    if len(mine):
        ids, mask = teacher.batch([t_enc.input_ids[j] for j in mine])
        t_p = _answer_logits(teacher, cfg, ids, mask, p_t)
        loss = transfer_loss(
            t_p,
            cache.s_p[mine].to(dev),
            cache.s[mine].to(dev),
            cache.t[mine].to(dev),
            alpha,
            cfg.temperature,
            "none",
        ).sum() / len(idx)
        loss.backward()
        local += torch.tensor([float(loss.detach()), float(mask.sum())], dtype=torch.float64)
    if p_t.grad is None:
        p_t.grad = torch.zeros_like(p_t)
    p_t.grad = dist.sum(p_t.grad)
    both = dist.sum(local)
    return float(both[0]), int(both[1])


def _loop_identity(cfg, alpha: float, n: int, total: int, p_s, cache) -> dict:
    """What a transfer checkpoint must match to be resumed: settings, prompt and cached targets."""
    return {
        "config": asdict(cfg),
        "alpha": alpha,
        "n": n,
        "total": total,
        "p_s": hashlib.sha256(p_s.detach().float().cpu().numpy().tobytes()).hexdigest(),
        "targets": hashlib.sha256(
            b"".join(x.float().cpu().numpy().tobytes() for x in (cache.s, cache.s_p, cache.t))
        ).hexdigest(),
    }


def _loop_state(step: int, p_t, opt, generator, loop: dict, best: dict, best_emb, avg) -> dict:
    """The transfer loop's state at `step`, as its checkpoint stores it."""
    return {
        "avg": avg.mean.cpu().clone(),
        "avg_n": avg.n,
        "step": step,
        "p_t": p_t.detach().cpu().clone(),
        "optimizer": opt.state_dict(),
        "generator": generator.get_state(),
        "order": loop["order"],
        "pos": loop["pos"],
        "tokens": loop["tokens"],
        "history": json.dumps(loop["history"]),
        "best": json.dumps(best),
        "best_emb": best_emb.cpu().clone(),
    }


def _heldout_split(n: int, fraction: float, g: torch.Generator):
    """(held-out, training) indices of the n public examples: a seeded share held out."""
    perm = torch.randperm(n, generator=g)
    n_held = max(1, int(round(n * fraction)))
    return perm[:n_held], perm[n_held:]


def _checkpoint(checkpoint_dir: Path | None, identity: dict) -> Checkpoint | None:
    """The transfer loop's checkpoint in `checkpoint_dir` (none without one)."""
    if checkpoint_dir is None:
        return None
    return Checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE, "transfer", identity)


class TailMean:
    """The running mean of the prompt over the steps after `first` (`average_from`), kept exactly
    across a resume (its checkpoint stores the mean and the count)."""

    def __init__(self, p: torch.Tensor, first: int | None) -> None:
        self.first, self.n = first, 0
        self.mean = torch.zeros_like(p.detach())

    def add(self, step: int, p: torch.Tensor) -> None:
        if self.first is not None and step > self.first:
            self.n += 1
            self.mean += (p.detach() - self.mean) / self.n

    def restore(self, st: dict) -> None:
        # every checkpoint this loop resumes has them: one from before the field fails its identity
        self.mean.copy_(st["avg"].to(self.mean.device))
        self.n = int(st["avg_n"])


def train_transfer(
    teacher: PromptClassifier,
    t_enc: Encoded,
    cache: TransferCache,
    p_s: torch.Tensor,
    cfg: TransferConfig,
    *,
    alpha: float,
    init_embeddings: torch.Tensor | None = None,
    metrics_path: Path | None = None,
    progress: bool = False,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    select: Selector | None = None,
) -> TransferResult:
    """Optimise p_t against the cached targets; keep the p_t of the lowest held-out public loss, of the
    top accuracy on labelled public data (`select`), or its mean over the last steps (average_from).

    With `checkpoint_dir` the loop state is saved atomically at every held-out evaluation; `resume`
    continues from it exactly (a crash costs at most `eval_every` steps, never a different result).
    Under `accelerate launch --num_processes N` every batch (and the held-out set) is split over the
    processes and the gradients summed: the same steps as one process; the main process writes.
    """
    from promptport.distributed import group

    dist = group(teacher.device)
    teacher = at_precision(teacher, cfg.precision)
    if not dist.is_main:
        metrics_path = None
    if cfg.space == "labels":
        cache = label_space(cache, teacher.verbalizer)
    cache = shift_mean(cache, cfg.shift_mean)
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(t_enc)
    held, train = _heldout_split(n, cfg.heldout_fraction, g)
    init = p_s if init_embeddings is None else init_embeddings
    p_t = torch.nn.Parameter(init.detach().clone().float().to(teacher.device))
    opt = torch.optim.Adam([p_t], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * steps_per_epoch)))
    eval_every = cfg.eval_every or max(1, steps_per_epoch // 2)
    dev = teacher.device
    first = None if cfg.average_from is None else min(int(cfg.average_from * total), total - 1)
    avg = TailMean(p_t, first)

    def evaluation(step: int) -> dict:
        rec = {
            "step": step,
            "heldout_loss": _heldout_loss(teacher, t_enc, cache, p_t, held, alpha, cfg, dist),
        }
        if select is not None:
            rec["select_accuracy"] = select.score(p_t)
        return rec

    ckpt = _checkpoint(checkpoint_dir, _loop_identity(cfg, alpha, n, total, p_s, cache))
    metrics = MetricsLog(metrics_path)
    t0, tokens, start = time.perf_counter(), 0, 1
    if resume and ckpt is not None and ckpt.exists():
        st = ckpt.load(metrics)
        with torch.no_grad():
            p_t.copy_(st["p_t"].to(dev))
        opt.load_state_dict(st["optimizer"])
        g.set_state(st["generator"])
        order, pos = st["order"], int(st["pos"])
        start, tokens = int(st["step"]) + 1, int(st["tokens"])
        history, best = json.loads(st["history"]), json.loads(st["best"])
        best_emb = st["best_emb"].to(dev)
        avg.restore(st)
    else:
        if metrics.path is not None and metrics.path.exists():
            metrics.reset()
        history = [evaluation(0)]
        best = dict(history[0])
        best_emb = p_t.detach().clone()
        order = train[torch.randperm(len(train), generator=g)]
        pos = 0

    bar = progress_bar(total, "transfer", progress and dist.is_main, initial=start - 1)
    stop = stalled(history, best, cfg.patience)  # a resumed loop that had already stopped
    for step in range(start, total + 1):
        if stop:
            break
        if pos + cfg.batch_size > len(order):
            order, pos = train[torch.randperm(len(train), generator=g)], 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        opt.zero_grad(set_to_none=True)
        loss, n_tok = _step_loss(teacher, t_enc, cache, p_t, idx, alpha, cfg, dist)
        set_rate(opt, cfg.lr, step - 1, total, cfg.schedule)  # from the step: nothing to resume
        opt.step()
        avg.add(step, p_t)
        tokens += n_tok + p_t.shape[0] * len(idx)
        rec = {"step": step, "loss": loss}
        if step % eval_every == 0 or step == total:
            rec.update(evaluation(step))
            if better(rec, best):
                best = {k: rec[k] for k in ("step", "heldout_loss", "select_accuracy") if k in rec}
                best_emb = p_t.detach().clone()
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(rec)
        stop = "heldout_loss" in rec and stalled(history, best, cfg.patience)
        metrics.append(rec)
        if ckpt is not None and "heldout_loss" in rec and dist.is_main:
            loop = {"order": order.clone(), "pos": pos, "tokens": tokens, "history": history}
            ckpt.save(_loop_state(step, p_t, opt, g, loop, best, best_emb, avg), metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{rec['loss']:.4f}", tok_s=f"{tokens / max(rec['seconds'], 1e-9):.0f}"
            )
    if bar is not None:
        bar.close()
    if avg.n:  # the tail's mean replaces the best step (`average_from`)
        loss = _heldout_loss(teacher, t_enc, cache, avg.mean, held, alpha, cfg, dist)
        best = {"step": int(history[-1]["step"]), "heldout_loss": loss, "averaged_steps": avg.n}
        best_emb = avg.mean.clone()
    seconds = time.perf_counter() - t0
    return TransferResult.of_loop(
        best_emb, alpha, history, best, seconds, cache.seconds, total, tokens
    )


def _load_pair(student, teacher, artifact, cfg, device: str) -> tuple[LoadedModel, LoadedModel]:
    """Student and teacher, checked against the prompt and each other (one tokenizer)."""
    s_lm = student if isinstance(student, LoadedModel) else load_model(student, device=device)
    t_lm = teacher if isinstance(teacher, LoadedModel) else load_model(teacher, device=device)
    check_compatible(artifact, s_lm.info)
    if (
        cfg.init == "copy"
        and cfg.method != "direct"
        and teacher_lengths(cfg.n_tokens, artifact.n_tokens) != [artifact.n_tokens]
    ):
        raise BadInput(
            "n_tokens",
            f"copy init keeps the user's prompt length ({artifact.n_tokens}); "
            f"--n-tokens {cfg.n_tokens} needs --init text",
        )
    if (cfg.init == "copy" or cfg.method == "direct") and (
        artifact.hidden_size != t_lm.info.hidden_size
    ):
        raise BadInput(
            "prompt",
            f"copy init needs the teacher's width: prompt has hidden size "
            f"{artifact.hidden_size}, teacher '{t_lm.info.model_id}' has "
            f"{t_lm.info.hidden_size} (use --init text)",
        )
    if s_lm.info.tokenizer_fingerprint != t_lm.info.tokenizer_fingerprint:
        raise BadInput("student", "student and teacher use different tokenizers")
    return s_lm, t_lm


def _train_teacher_prompt(
    artifact,
    the_task,
    s_lm,
    t_lm,
    pub,
    source_id,
    cfg,
    progress,
    resume,
    shared,
    out,
    public_data,
    public_text_column,
) -> tuple[torch.Tensor, float | None, TransferResult | None, dict, bool]:
    """The teacher prompt: copied (direct) or trained against the cached student targets.
    Returns (embeddings, alpha, TransferResult or None, auto-alpha details, shared-cache hit)."""
    s_clf = PromptClassifier(s_lm.model, s_lm.tokenizer, the_task, cfg.max_length, cfg.precision)
    t_clf = PromptClassifier(t_lm.model, t_lm.tokenizer, the_task, cfg.max_length, cfg.precision)
    s_enc, t_enc = s_clf.encode(pub), t_clf.encode(pub)
    p_s = artifact.embeddings
    if cfg.method == "direct":
        return p_s.clone(), None, None, {}, False
    alpha_info: dict = {}
    key = (
        the_task.template,
        source_id,
        len(pub),
        cfg.seed,
        cfg.max_length,
        cfg.precision,
        s_lm.info.embedding_fingerprint,
        s_lm.info.model_id,
        t_lm.info.model_id,
    )
    cache_shared = shared is not None and key in shared
    cache = build_cache(
        s_clf,
        t_clf,
        p_s,
        s_enc,
        t_enc,
        progress=progress,
        unprompted=shared[key] if cache_shared and shared is not None else None,
    )
    if shared is not None:
        shared[key] = (cache.s, cache.t)
    if cfg.shift_base == "init":  # the student with the user's starting prompt, not unprompted
        p0 = user_init(artifact, s_lm, the_task)
        s0 = s_clf.predict_logits(s_enc, p0, 32, progress, "cache student+init", vocab=True)
        cache = TransferCache(s0, cache.s_p, cache.t, cache.seconds)
    if cfg.method != "post":  # output and shift train one term: that is the alpha used
        alpha = method_alpha(cfg.method, 0.0)
    elif cfg.alpha == "auto":
        labels = public_labels(
            the_task, public_data, pub.fields[the_task.template_fields[0]], public_text_column
        )
        alpha, alpha_info = auto_alpha(
            cache, t_clf.verbalizer.token_ids, t_clf.verbalizer.average, labels
        )
    else:
        alpha = float(cfg.alpha)
    lengths = teacher_lengths(cfg.n_tokens, artifact.n_tokens) if cfg.init == "text" else [None]
    starts = {n: teacher_init(cfg, t_lm, artifact, the_task, n) for n in lengths}
    select = None if cfg.select_data is None else transfer_selector(t_clf, the_task, cfg)
    train = dict(alpha=alpha, progress=progress, resume=resume, select=select)
    if len(starts) == 1:
        res = train_transfer(
            t_clf,
            t_enc,
            cache,
            p_s,
            cfg,
            init_embeddings=next(iter(starts.values())),
            metrics_path=out / "metrics.jsonl",
            checkpoint_dir=out / "checkpoint",
            **train,
        )
    else:
        res = train_candidates(starts, t_clf, t_enc, cache, p_s, cfg, out, **train)
    if select is not None:
        kept = res.best["select_accuracy"]
        res.select_info = {
            **select.info,
            "rule": ACCURACY_RULE,
            "kept_accuracy": round(kept, 4),
            # the kept prompt makes the teacher no better than no prompt on the provider's own set
            "below_zero_shot": kept <= select.info["teacher_zero_shot_accuracy"],
        }
    return res.embeddings, alpha, res, alpha_info, cache_shared


LENGTH_RULE = f"the teacher prompt length with {LOSS_RULE}"


def lowest_heldout(losses: dict):
    """The candidate (a key of `losses`: candidate -> best held-out public transfer loss) to keep:
    the lowest loss; a tie keeps the first listed."""
    return best_of({k: {"heldout_loss": v} for k, v in losses.items()})


def train_candidates(
    starts: dict, teacher, t_enc, cache, p_s, cfg: TransferConfig, out: Path, **train
) -> TransferResult:
    """One teacher prompt per start (`starts`: length -> embeddings), each trained as `train_transfer`
    trains one, from the same cached targets, seed, held-out public examples and batch order; the
    one with the lowest held-out transfer loss is kept. It is the choice the loop already makes
    between its steps, made between starts: public data only, and no start is favoured by a
    different split. Each candidate logs to OUT/metrics-n<N>.jsonl (the kept one is copied to
    OUT/metrics.jsonl) and checkpoints under OUT/checkpoint/n<N>/, so a resume skips finished ones.
    The result's seconds and tokens are the sum over candidates (the cost of choosing)."""
    runs = {
        n: train_transfer(
            teacher,
            t_enc,
            cache,
            p_s,
            cfg,
            init_embeddings=init,
            metrics_path=out / f"metrics-n{n}.jsonl",
            checkpoint_dir=out / "checkpoint" / f"n{n}",
            **train,
        )
        for n, init in starts.items()
    }
    chosen = best_of({n: r.best for n, r in runs.items()})
    if (out / f"metrics-n{chosen}.jsonl").exists():  # (the main process writes the logs)
        shutil.copyfile(out / f"metrics-n{chosen}.jsonl", out / "metrics.jsonl")
    selection = {
        "rule": LENGTH_RULE if train.get("select") is None else f"the length with {ACCURACY_RULE}",
        "n_tokens": chosen,
        "candidates": [
            {
                "n_tokens": n,
                "best": r.best,
                "initial_heldout_loss": r.history[0]["heldout_loss"],
                "train_seconds": round(r.seconds, 3),
            }
            for n, r in runs.items()
        ],
    }
    return dataclasses.replace(
        runs[chosen],
        seconds=sum(r.seconds for r in runs.values()),
        tokens=sum(r.tokens for r in runs.values()),
        selection=selection,
    )


def _result(cfg, alpha, alpha_info, pub, source_id, res, cache_shared, wall: float) -> dict:
    """metrics.json of a transfer."""
    return {
        "stage": "transfer",
        "method": cfg.method,
        "alpha": alpha,
        "alpha_auto": alpha_info or None,
        "n_public": len(pub),
        "public_source": source_id,
        **loop_fields(res),
        "unprompted_cache_shared": cache_shared,
        "teacher_tokens": None if res is None else int(res.embeddings.shape[0]),
        "teacher_tokens_selection": None if res is None else res.selection,
        "tokens_per_s": None
        if res is None or res.seconds == 0
        else round(res.tokens / res.seconds, 1),
        "wall_seconds": round(wall, 3),
        "config": asdict(cfg),
        "versions": versions(),
    }


def _generated_public(t_lm, the_task, public_data: str, out, cfg, progress):
    """The public examples from texts the teacher writes (`generate:N`, kept in OUT/public/) and
    their source id."""
    from promptport.public_gen import generate_public

    path, _ = generate_public(
        t_lm, the_task, public_data, out / "public", seed=cfg.seed, progress=progress
    )
    texts = load_texts(path)[0]
    pub = public_dataset(the_task, texts, cfg.n_public, cfg.seed, cfg.public_chars, cfg.public_cut)
    return pub, f"{public_data} ({path})"


def _training_record(cfg, alpha, alpha_info, source_id, pub, artifact, s_lm, res) -> dict:
    """The transferred prompt's `training` metadata: how it was made, from what public source."""
    training = {
        "stage": "transfer",
        "method": cfg.method,
        "config": asdict(cfg),
        "alpha_used": alpha,
        "alpha_auto": alpha_info or None,
        "public_source": source_id,
        "n_public": len(pub),
        "source_prompt_sha256": artifact.meta.get("sha256"),
        "student": s_lm.info.model_id,
    }
    if res is not None:
        training.update(
            steps=res.steps,
            stopped_early=res.stopped_early,
            best=res.best,
            seconds=round(res.seconds, 3),
            cache_seconds=round(res.cache_seconds, 3),
            tokens=res.tokens,
            teacher_tokens_selection=res.selection,
        )
    return training


def transfer(
    prompt: str | Path | PromptArtifact,
    student: str | LoadedModel,
    teacher: str | LoadedModel,
    *,
    public_data: str,
    out: str | Path,
    cfg: TransferConfig | None = None,
    task: str | Task | None = None,
    public_text_column: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    resume: bool = False,
    shared: dict | None = None,
) -> dict:
    """Transfer a user's prompt from the student to the teacher with public data only.

    Writes OUT/prompt/ (the teacher prompt artifact), OUT/metrics.json, OUT/metrics.jsonl and
    OUT/manifest.json (inputs with fingerprints: the prompt artifact and the public source only).
    `resume`: continue from OUT/checkpoint/ (left by an interrupted run) to the same result; without it
    an old checkpoint is discarded.
    `shared`: a dict kept across calls with the same student and teacher (see `transfer_many`): the
    unprompted student and teacher logits of a public set are computed once and reused.
    """
    cfg = with_resolved_precision(cfg or TransferConfig(), device)
    cfg.validate()
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    out = check_writable_dir(out)
    artifact = prompt if isinstance(prompt, PromptArtifact) else load_prompt(prompt)
    the_task = task_from_prompt(artifact, task)
    if the_task.is_generation and cfg.select_data is not None:
        raise BadInput("select_data", "selection by accuracy is for classification tasks")
    if the_task.is_generation and cfg.average_from is not None:
        raise BadInput("average_from", "the prompt's tail mean is for classification tasks")
    generated = public_data.startswith("generate:")
    if not the_task.is_generation and not generated:
        texts, source_id = load_texts(public_data, text_column=public_text_column, limit=None)
        pub = public_dataset(
            the_task, texts, cfg.n_public, cfg.seed, cfg.public_chars, cfg.public_cut
        )

    s_lm, t_lm = _load_pair(student, teacher, artifact, cfg, device)
    if the_task.is_generation:
        from promptport.gen_transfer import transfer_generation

        return transfer_generation(
            artifact,
            the_task,
            s_lm,
            t_lm,
            public_data=public_data,
            out=out,
            cfg=dataclasses.replace(cfg, precision="fp32"),  # its sequence losses run in fp32
            public_text_column=public_text_column,
            progress=progress,
            prompt_source=prompt,
        )

    if generated:  # the teacher writes the public texts (promptport.public_gen), into OUT/public/
        pub, source_id = _generated_public(t_lm, the_task, public_data, out, cfg, progress)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    ckpt_dir = out / "checkpoint"
    if not resume:
        metrics_path.unlink(missing_ok=True)  # (several processes may race to it)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    emb, alpha, res, alpha_info, cache_shared = _train_teacher_prompt(
        artifact,
        the_task,
        s_lm,
        t_lm,
        pub,
        source_id,
        cfg,
        progress,
        resume,
        shared,
        out,
        public_data,
        public_text_column,
    )

    training = _training_record(cfg, alpha, alpha_info, source_id, pub, artifact, s_lm, res)
    meta = make_metadata(
        model_info=t_lm.info,
        task=the_task,
        init=cfg.init if cfg.method != "direct" else "copy",
        training=training,
        privacy=artifact.meta.get("privacy"),
        n_tokens=int(emb.shape[0]),
        extra={"transferred_from": artifact.meta.get("model")},
    )
    from promptport.distributed import group

    is_main = group(
        next(t_lm.model.parameters()).device
    ).is_main  # under a launcher every process holds the same p_t
    if is_main:
        save_prompt(out / "prompt", emb, meta)
    wall = time.perf_counter() - t_start
    result = _result(cfg, alpha, alpha_info, pub, source_id, res, cache_shared, wall)
    if not is_main:
        return result
    write_json(out / "metrics.json", result)
    select = None if res is None else res.select_info
    write_transfer_manifest(
        out, cfg, prompt, artifact, source_id, len(pub), s_lm, t_lm, wall, select=select
    )
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the artifacts are complete
    return result


def transfer_many(
    prompts: list[str | Path | PromptArtifact],
    student: str | LoadedModel,
    teacher: str | LoadedModel,
    *,
    public_data: str,
    out: str | Path,
    cfg: TransferConfig | None = None,
    task: str | Task | None = None,
    public_text_column: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Several users' prompts in one provider job: the models load once, and the unprompted student and
    teacher logits of the public set are computed once per task template and reused, so each further
    prompt costs one student pass with its prompt plus its training. Each prompt gets its own
    OUT/NN-NAME/ transfer directory (as `transfer` writes it); OUT/summary.json lists them."""
    if not prompts:
        raise BadInput("prompt", "give at least one prompt")
    out = check_writable_dir(out)
    s_lm = student if isinstance(student, LoadedModel) else load_model(student, device=device)
    t_lm = teacher if isinstance(teacher, LoadedModel) else load_model(teacher, device=device)
    shared: dict = {}
    runs = []
    for i, p in enumerate(prompts):
        name = "prompt" if isinstance(p, PromptArtifact) else Path(p).name
        sub = out / f"{i:02d}-{name}"
        r = transfer(
            p,
            s_lm,
            t_lm,
            public_data=public_data,
            out=sub,
            cfg=cfg,
            task=task,
            public_text_column=public_text_column,
            device=device,
            progress=progress,
            shared=shared,
        )
        runs.append(
            {
                "prompt": str(p) if not isinstance(p, PromptArtifact) else None,
                "out": str(sub),
                "alpha": r["alpha"],
                "steps": r["steps"],
                "cache_seconds": r["cache_seconds"],
                "train_seconds": r["train_seconds"],
                "wall_seconds": r["wall_seconds"],
                "unprompted_cache_shared": r["unprompted_cache_shared"],
            }
        )
    summary = {
        "stage": "transfer-many",
        "prompts": len(runs),
        "runs": runs,
        "distinct_public_caches": len(shared),
    }
    write_json(out / "summary.json", summary)
    return summary
