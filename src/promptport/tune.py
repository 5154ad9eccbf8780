"""Prompt tuning (user side, step 2 of POST): train only the soft prompt on a frozen LM, optionally with DP-SGD.

`train_prompt` is the loop (callable many times on one loaded model, e.g. for LiRA shadow prompts);
`tune` is the stage: it loads model and data, runs `train_prompt` with checkpoints and JSONL metrics,
and writes OUT/prompt/ (the artifact), OUT/metrics.json, OUT/metrics.jsonl and OUT/checkpoint/.

Gradients: non-DP steps backpropagate the mean loss into the shared [n, H] prompt. DP steps give every
example in the batch its own copy of the prompt ([B, n, H]); the gradient of the summed loss with
respect to that tensor is every example's gradient at once, so per-example clipping costs one extra
norm and no extra passes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptport.checkpoint import CHECKPOINT_FILE as CHECKPOINT_FILE
from promptport.checkpoint import Checkpoint, MetricsLog, progress_bar
from promptport.classify import (
    Encoded,
    PromptClassifier,
    calibration_offset,
    with_class_offset,
)
from promptport.distributed import SINGLE, Single
from promptport.errors import BadInput
from promptport.fileio import check_writable_dir, write_json
from promptport.options import setting
from promptport.privacy import (
    DPConfig,
    PoissonSampler,
    PrivacyLedger,
    SecureRNG,
    calibrate_sigma,
    clip_per_example,
    format_statement,
    noisy_average,
    privacy_statement,
)
from promptport.prompt import INITS, init_prompt_embeddings, label_text
from promptport.runtime import (
    PRECISIONS,
    at_precision,
    check_precision,
    with_resolved_precision,
)
from promptport.schedules import SCHEDULES, check_schedule, lr_factor

OPTIMIZERS = ("adam", "adamw", "sgd")
# Settings of the training loop around the optimisation (validation, early stopping, checkpoints):
# audit shadows train without validation or checkpoints, so `promptport audit` does not offer them.
LOOP_ONLY_SETTINGS = ("eval_every", "eval_on_start", "patience", "checkpoint_every")


@dataclass
class TuneConfig:
    """Prompt-tuning settings; every field is also a `promptport tune` option and a YAML key."""

    n_tokens: int = setting(20, "Number of virtual tokens.")
    init: str = setting(
        "text",
        "Initial prompt: embeddings of a text (the task description, or --init-text), of the class "
        "label words, of random vocabulary tokens, or random.",
        choices=INITS,
    )
    init_text: str | None = setting(None, "Text for --init text (default: the task's description).")
    calibrate: bool = setting(
        False,
        "Tune against the model's class scores calibrated on the training inputs (labels unused): a "
        "fixed offset that makes the unprompted model's mean prediction uniform, so the prompt learns "
        "the task rather than a repair of a small student's label bias, which POST would copy to the "
        "teacher. Recorded in the prompt (C numbers: a mean over the training inputs); not with DP.",
        flag="--calibrate/--no-calibrate",
    )
    optimizer: str = setting("adam", "Optimizer.", choices=OPTIMIZERS)
    lr: float = setting(3e-2, "Learning rate.")
    weight_decay: float = setting(0.0, "Weight decay.")
    schedule: str = setting("linear", "Learning-rate schedule after warm-up.", choices=SCHEDULES)
    warmup_steps: int = setting(0, "Linear warm-up steps.")
    epochs: float = setting(1.0, "Passes over the training data.")
    max_steps: int | None = setting(None, "Optimizer steps (overrides --epochs).")
    batch_size: int = setting(
        16, "Examples per forward pass (DP: the expected batch is batch-size x grad-accum)."
    )
    grad_accum: int = setting(1, "Forward passes per optimizer step.")
    eval_every: int | None = setting(None, "Evaluate every N steps (default: every epoch).")
    eval_on_start: bool = setting(
        True,
        "Evaluate the initial prompt too (step 0): the validation curve starts where training does, "
        "and the best-prompt selection never returns a prompt worse than the initial one.",
        flag="--eval-on-start/--no-eval-on-start",
    )
    patience: int | None = setting(None, "Stop after N evaluations without improvement.")
    max_length: int = setting(
        128, "Token limit per input; longer texts lose tokens from the left, the template is kept."
    )
    eval_batch_size: int = setting(32, "Examples per evaluation batch.")
    precision: str = setting(
        "fp32",
        "fp32, bf16 autocast for the model's body (the answer projection stays fp32), or auto: bf16 "
        "where the device multiplies bf16 natively, else fp32 (resolved before the run and recorded).",
        choices=PRECISIONS,
    )
    seed: int = setting(0, "Random seed (the --seed every command has).", cli=False)
    dp: DPConfig | None = setting(None, "DP-SGD settings (the DP options).", cli=False)
    checkpoint_every: int | None = setting(
        None, "Checkpoint every N steps (default: at evaluations)."
    )

    def validate(self, n_train: int) -> None:
        def positive(name, integer=True, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
            )
            if integer:
                ok = ok and float(v).is_integer()
            if not ok:
                raise BadInput(
                    name, f"must be a positive {'integer' if integer else 'number'}, got {v}"
                )

        for name in ("n_tokens", "batch_size", "grad_accum", "eval_batch_size", "max_length"):
            positive(name)
        for name in ("max_steps", "eval_every", "patience", "checkpoint_every"):
            positive(name, allow_none=True)
        positive("lr", integer=False)
        positive("epochs", integer=False)
        if self.weight_decay < 0:
            raise BadInput("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise BadInput("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.init not in INITS:
            raise BadInput("init", f"unknown init '{self.init}' (choose {', '.join(INITS)})")
        check_precision(self.precision)
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(
                "optimizer",
                f"unknown optimizer '{self.optimizer}' (choose {', '.join(OPTIMIZERS)})",
            )
        check_schedule(self.schedule)
        if n_train <= 0:
            raise BadInput("data", "the training split is empty")
        if self.batch_size > n_train:
            raise BadInput(
                "batch_size",
                f"{self.batch_size} is larger than the training data ({n_train} examples)",
            )
        if self.calibrate and self.dp is not None:
            raise BadInput(
                "calibrate",
                "reads the training inputs outside DP-SGD's accounting: tune without it under DP",
            )
        if self.dp is not None:
            self.dp.validate(n_train)
            if self.logical_batch > n_train:
                raise BadInput(
                    "grad_accum",
                    f"expected DP batch batch_size*grad_accum = {self.logical_batch} is "
                    f"larger than the training data ({n_train} examples)",
                )

    @property
    def logical_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def total_steps(self, n_train: int) -> int:
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * n_train / self.logical_batch))

    def steps_per_epoch(self, n_train: int) -> int:
        return max(1, math.ceil(n_train / self.logical_batch))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dp"] = None if self.dp is None else self.dp.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TuneConfig:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInput(sorted(unknown)[0], "unknown tuning setting")
        if isinstance(d.get("dp"), dict):
            d["dp"] = DPConfig(**d["dp"])
        return cls(**d)


@dataclass
class TuneResult:
    embeddings: (
        torch.Tensor
    )  # best by validation accuracy, or the last if there is no validation split
    history: list[dict]
    best: dict
    privacy: dict | None
    seconds: float
    examples_per_s: float
    steps: int
    last_embeddings: torch.Tensor | None = None
    stopped_early: bool = False
    class_offset: torch.Tensor | None = None  # [C], when tuned with `calibrate`
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- gradients


def _batch(
    clf: PromptClassifier, enc: Encoded, idx
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = clf.batch([enc.input_ids[i] for i in idx])
    assert enc.labels is not None  # training splits are checked to have labels
    return ids, mask, enc.labels[torch.as_tensor(list(idx), dtype=torch.long)].to(clf.device)


def _chunks(idx: list[int], size: int) -> list[list[int]]:
    """Split a batch into near-equal chunks of at most `size` examples (none for an empty batch)."""
    if not idx:
        return []
    k = math.ceil(len(idx) / size)
    step = math.ceil(len(idx) / k)
    return [idx[i : i + step] for i in range(0, len(idx), step)]


def per_example_gradients(
    clf: PromptClassifier, prompt: torch.Tensor, enc: Encoded, idx
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, n, H] gradient of each example's loss w.r.t. the prompt, [B] losses), in one backward pass."""
    ids, mask, y = _batch(clf, enc, idx)
    p = prompt.detach().unsqueeze(0).repeat(len(idx), 1, 1).requires_grad_()
    losses = clf.loss(ids, mask, y, p, reduction="none")
    (g,) = torch.autograd.grad(losses.sum(), p)
    return g, losses.detach()


def mean_gradient(
    clf: PromptClassifier,
    prompt: torch.Tensor,
    enc: Encoded,
    idx: list[int],
    batch_size: int,
    dist: Single = SINGLE,
) -> tuple[torch.Tensor, float]:
    """Non-DP gradient: the gradient of the mean loss over `idx` (in chunks of batch_size), and that loss.

    With several processes each computes its shard of `idx` and the sums are all-reduced, so every
    process gets the gradient a single process would compute on the whole batch."""
    p = prompt.detach().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for chunk in _chunks(dist.shard(idx), batch_size):
        ids, mask, y = _batch(clf, enc, chunk)
        loss = clf.loss(ids, mask, y, p, reduction="sum") / len(idx)
        loss.backward()
        total += float(loss.detach())
    grad = p.grad if p.grad is not None else torch.zeros_like(p)
    return dist.sum(grad), float(dist.sum(total))


def dp_gradient(
    clf: PromptClassifier,
    prompt: torch.Tensor,
    enc: Encoded,
    idx: list[int],
    batch_size: int,
    *,
    max_grad_norm: float,
    sigma: float,
    expected_batch_size: float,
    generator,
    dist: Single = SINGLE,
) -> tuple[torch.Tensor, dict]:
    """DP-SGD gradient of one Poisson batch `idx` (possibly empty): clip each example's gradient, sum,
    add N(0, (sigma C)^2), divide by the expected batch size. Returns (gradient, stats).

    With several processes each clips its shard, the clipped sums are all-reduced, and the noise is
    rank 0's (broadcast), so the noise is added once, exactly as in a single process."""
    clipped = torch.zeros_like(prompt, dtype=torch.float32)
    loss_sum, norms = torch.zeros((), dtype=torch.float64), []
    for chunk in _chunks(dist.shard(idx), batch_size):
        g, losses = per_example_gradients(clf, prompt, enc, chunk)
        s, n = clip_per_example(g, max_grad_norm)
        clipped += s
        loss_sum += float(losses.sum())
        norms.append(n.detach().cpu())
    clipped, loss_total = dist.sum(clipped), float(dist.sum(loss_sum))
    grad = dist.broadcast(
        noisy_average(clipped, max_grad_norm, sigma, expected_batch_size, generator)
    )
    norms = [n for part in dist.gather_objects([norms]) for n in part] if dist.world > 1 else norms
    norms_t = torch.cat(norms) if norms else torch.zeros(0)
    stats = {
        "loss": loss_total / len(idx) if idx else None,
        "batch_size": len(idx),
        "grad_norm_median": float(norms_t.median()) if len(norms_t) else None,
        "clipped_fraction": float((norms_t > max_grad_norm).float().mean())
        if len(norms_t)
        else None,
    }
    return grad, stats


# ---------------------------------------------------------------- sampling, optimiser, schedule


class ShuffleSampler:
    """Non-DP batches: a fresh random permutation each epoch; a batch may run across an epoch boundary."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.rng = torch.Generator().manual_seed(seed)
        self.perm: list[int] = []
        self.pos = 0
        self.epoch = 0

    def sample(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos >= len(self.perm):
                self.perm = torch.randperm(self.n, generator=self.rng).tolist()
                self.pos = 0
                self.epoch += 1
            take = self.perm[self.pos : self.pos + k - len(out)]
            self.pos += len(take)
            out += take
        return out

    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "rng": self.rng.get_state(),
            "perm": list(self.perm),
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, s: dict) -> None:
        self.rng.set_state(s["rng"])
        self.perm, self.pos, self.epoch = list(s["perm"]), int(s["pos"]), int(s["epoch"])


def make_optimizer(params, cfg: TuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_frozen(model: torch.nn.Module) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable:
        shown = ", ".join(trainable[:3]) + (" ..." if len(trainable) > 3 else "")
        raise BadInput(
            "model",
            f"{len(trainable)} trainable parameter tensor(s) besides the prompt ({shown}); "
            "prompt tuning trains the prompt only: freeze the model first "
            "(promptport.models.freeze)",
        )


def data_fingerprint(enc: Encoded | None) -> str | None:
    if enc is None:
        return None
    h = hashlib.sha256()
    for ids in enc.input_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    if enc.labels is not None:
        h.update(enc.labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- the loop


class _Run:
    """All state of one training run that a checkpoint must carry."""

    def __init__(self, clf, train, val, cfg, init_embeddings, dist: Single = SINGLE):
        self.clf, self.train, self.val, self.cfg, self.dist = clf, train, val, cfg, dist
        n = len(train)
        self.total = cfg.total_steps(n)
        self.per_epoch = cfg.steps_per_epoch(n)
        self.eval_every = cfg.eval_every or self.per_epoch
        self.ckpt_every = cfg.checkpoint_every or self.eval_every
        gen = torch.Generator().manual_seed(cfg.seed)
        if init_embeddings is None:
            init_embeddings = init_prompt_embeddings(
                clf.model,
                clf.tokenizer,
                cfg.n_tokens,
                cfg.init,
                cfg.init_text
                or (label_text(clf.task) if cfg.init == "labels" else clf.task.description),
                generator=gen,
            )
        hidden = clf.model.get_input_embeddings().weight.shape[1]
        if init_embeddings.dim() != 2 or init_embeddings.shape[1] != hidden:
            raise BadInput(
                "init_embeddings",
                f"must be [n_tokens, {hidden}], got {list(init_embeddings.shape)}",
            )
        self.prompt = torch.nn.Parameter(
            init_embeddings.detach().to(clf.device, torch.float32).clone()
        )
        self.start = init_embeddings.detach().to("cpu", torch.float32).clone()
        self.opt = make_optimizer([self.prompt], cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.total, cfg.schedule, cfg.warmup_steps)
        )
        self.step = 0
        self.history: list[dict] = []
        self.best: dict = {}
        self.best_embeddings: torch.Tensor | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.train_seconds = 0.0
        self.examples = 0
        self.dp = cfg.dp
        if self.dp is not None:
            self.q = cfg.logical_batch / n
            self.delta = self.dp.resolved_delta(n)
            self.sigma, self.accountant_used = calibrate_sigma(
                self.dp.epsilon, self.delta, self.q, self.total, self.dp.accountant
            )
            self.sampler: PoissonSampler | ShuffleSampler = PoissonSampler(
                n, self.q, seed=cfg.seed + 1, secure=self.dp.secure_rng
            )
            self.noise_rng = (
                SecureRNG() if self.dp.secure_rng else torch.Generator().manual_seed(cfg.seed + 2)
            )
            self.ledger = PrivacyLedger(self.accountant_used)
        else:
            self.sampler = ShuffleSampler(n, cfg.seed + 1)

    def identity(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "n_train": len(self.train),
            "train_fingerprint": data_fingerprint(self.train),
            "val_fingerprint": data_fingerprint(self.val),
            "model_fingerprint": _model_fingerprint(self.clf),
        }

    def state_dict(self) -> dict:
        s = {
            "prompt": self.prompt.detach().cpu().clone(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "history": json.dumps(self.history),
            "best": json.dumps(self.best),
            "best_embeddings": None
            if self.best_embeddings is None
            else self.best_embeddings.clone(),
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
            "train_seconds": self.train_seconds,
            "examples": self.examples,
            "sampler": self.sampler.state_dict(),
        }
        if self.dp is not None:
            s["privacy"] = {
                "sigma": self.sigma,
                "accountant_used": self.accountant_used,
                "q": self.q,
                "ledger": self.ledger.state_dict(),
                "noise_rng": None
                if isinstance(self.noise_rng, SecureRNG)
                else self.noise_rng.get_state(),
            }
        return s

    def load_state_dict(self, s: dict) -> None:
        """Restore a state that `promptport.checkpoint.Checkpoint.load` checked is this run's."""
        with torch.no_grad():
            self.prompt.copy_(s["prompt"].to(self.prompt.device))
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        self.step = int(s["step"])
        self.history = json.loads(s["history"])
        self.best = json.loads(s["best"])
        self.best_embeddings = s["best_embeddings"]
        self.bad_evals, self.stopped_early = int(s["bad_evals"]), bool(s["stopped_early"])
        self.train_seconds, self.examples = float(s["train_seconds"]), int(s["examples"])
        self.sampler.load_state_dict(s["sampler"])
        if self.dp is not None:
            p = s["privacy"]
            if (p["sigma"], p["q"], p["accountant_used"]) != (
                self.sigma,
                self.q,
                self.accountant_used,
            ):
                raise BadInput(
                    "resume", "the checkpoint's noise calibration differs from this run's"
                )
            self.ledger.load_state_dict(p["ledger"])
            if self.ledger.steps != self.step:
                raise BadInput(
                    "resume",
                    f"checkpoint is inconsistent: {self.ledger.steps} accounted steps "
                    f"but {self.step} taken",
                )
            if p["noise_rng"] is not None and not isinstance(self.noise_rng, SecureRNG):
                self.noise_rng.set_state(p["noise_rng"])

    # -- one optimizer step
    def train_step(self) -> dict:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        if self.dp is None:
            assert isinstance(self.sampler, ShuffleSampler)
            idx = self.dist.broadcast_object(self.sampler.sample(cfg.logical_batch))
            grad, loss = mean_gradient(
                self.clf, self.prompt, self.train, idx, cfg.batch_size, self.dist
            )
            stats = {"loss": loss, "batch_size": len(idx)}
        else:
            # every process samples (keeping its sampler state in step); rank 0's batch is the batch
            assert isinstance(self.sampler, PoissonSampler)
            idx = self.dist.broadcast_object([int(i) for i in self.sampler.sample()])
            grad, stats = dp_gradient(
                self.clf,
                self.prompt,
                self.train,
                idx,
                cfg.batch_size,
                max_grad_norm=self.dp.max_grad_norm,
                sigma=self.sigma,
                expected_batch_size=cfg.logical_batch,
                generator=self.noise_rng,
                dist=self.dist,
            )
            self.ledger.step(self.sigma, self.q)
        self.prompt.grad = grad.to(self.prompt.dtype)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.examples += len(idx)
        return dict(stats, lr=lr)

    def evaluate(self) -> dict:
        m = self.clf.evaluate(self.val, self.prompt.detach(), self.cfg.eval_batch_size)
        # classification selects on accuracy; a generation task on its teacher-forced target loss
        select = m.get("select_on", "accuracy")
        shown = [*m.get("report", ["accuracy", "macro_f1"]), select]
        rec = {
            "type": "eval",
            "step": self.step,
            "epoch": round(self.step / self.per_epoch, 4),
            **{f"val_{k}": m[k] for k in dict.fromkeys(shown)},
            "val_seconds": m["seconds"],
        }
        if self.best == {} or m[select] > self.best[f"val_{select}"]:
            self.best = {k: v for k, v in rec.items() if k not in ("type", "val_seconds")}
            self.best_embeddings = self.prompt.detach().cpu().clone()
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        rec["best_step"] = self.best["step"]
        return rec


def _model_fingerprint(clf: PromptClassifier) -> str:
    """Cheap identity of the frozen model: shape, class and a few weight values (not a full hash)."""
    w = clf.model.get_input_embeddings().weight
    sample = w.detach().flatten()[:: max(1, w.numel() // 4096)].float().cpu().numpy().tobytes()
    cfg = clf.model.config
    return hashlib.sha256(
        repr(
            (
                type(clf.model).__name__,
                tuple(w.shape),
                getattr(cfg, "num_hidden_layers", None),
                clf.task.template,
                clf.task.verbalizer,
            )
        ).encode()
        + sample
    ).hexdigest()[:16]


def train_prompt(
    clf: PromptClassifier,
    train: Encoded,
    val: Encoded | None,
    cfg: TuneConfig,
    *,
    init_embeddings: torch.Tensor | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    metrics_path: Path | None = None,
    progress: bool = False,
    dist: Single = SINGLE,
) -> TuneResult:
    """Train a soft prompt on a frozen model; returns the best prompt by validation accuracy (or the last).

    The model is never reloaded or modified: call this many times on one `PromptClassifier`.
    With `cfg.dp`, training is DP-SGD with Poisson sampling and the result carries a privacy statement.
    With `checkpoint_dir`, the full state (prompt, optimiser, schedule, samplers' RNG, privacy ledger) is
    saved atomically at every evaluation/`checkpoint_every` steps; `resume=True` continues from it exactly.
    With `dist` (a `promptport.distributed` group) the batches are split over processes and the gradients
    summed; only the main process writes files. Each process evaluates the whole validation split, so
    best-prompt selection needs no communication.
    """
    check_frozen(clf.model)
    clf = at_precision(clf, cfg.precision)
    if train.labels is None:
        raise BadInput("data", "the training split has no labels")
    if val is not None and (len(val) == 0 or val.labels is None):
        raise BadInput("data", "the validation split is empty or has no labels")
    cfg.validate(len(train))
    if isinstance(clf, PromptClassifier):  # scored with this run's offset only, or none
        offset = calibration_offset(clf, train, cfg.eval_batch_size) if cfg.calibrate else None
        clf = with_class_offset(clf, offset)
    elif cfg.calibrate:
        raise BadInput("calibrate", "applies to classification tasks only")
    ckpt_file = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt_file is not None and ckpt_file.exists() and not resume:
        raise BadInput(
            "resume",
            f"{ckpt_file} exists from an earlier run: pass resume=True (--resume) to continue "
            "it, or use another output directory",
        )
    dist.barrier()  # no process may write a checkpoint before every process has checked for one
    run = _Run(clf, train, val, cfg, init_embeddings, dist)
    # the main process writes checkpoints and metrics
    metrics = MetricsLog(metrics_path if dist.is_main else None)
    ckpt = Checkpoint(ckpt_file, "tune", run.identity()) if ckpt_file is not None else None
    resumed_from = None
    if resume and ckpt is not None and ckpt.exists():
        run.load_state_dict(ckpt.load(metrics))
        resumed_from = run.step
    else:
        metrics.reset()
    if not dist.is_main:
        ckpt = None

    def log(rec: dict) -> None:
        run.history.append(rec)
        metrics.append(rec)

    def log_eval() -> None:
        ev = run.evaluate()
        if run.dp is not None:
            ev["epsilon_spent"] = run.ledger.epsilon(run.delta)  # 0 before the first step
        log(ev)

    if resumed_from is None:
        start = {
            "type": "start",
            "steps": run.total,
            "steps_per_epoch": run.per_epoch,
            "n_train": len(train),
            "n_val": None if val is None else len(val),
        }
        if run.dp is not None:
            start.update(
                sigma=run.sigma, sample_rate=run.q, delta=run.delta, accountant=run.accountant_used
            )
        log(start)
        if val is not None and cfg.eval_on_start:
            log_eval()
    else:
        log({"type": "resume", "step": resumed_from})

    desc = "tune" + (" (DP)" if run.dp else "")
    bar = progress_bar(run.total, desc, progress and dist.is_main, initial=run.step)
    t_wall = time.perf_counter()
    while run.step < run.total and not run.stopped_early:
        t0 = time.perf_counter()
        stats = run.train_step()
        dt = time.perf_counter() - t0
        run.train_seconds += dt
        rec = {
            "type": "train",
            "step": run.step,
            "epoch": round(run.step / run.per_epoch, 4),
            **stats,
            "examples_per_s": round(stats["batch_size"] / max(dt, 1e-9), 2),
        }
        log(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{stats['loss']:.3f}" if stats["loss"] is not None else "-",
                ex_s=f"{run.examples / max(run.train_seconds, 1e-9):.1f}",
            )
        last = run.step >= run.total
        if val is not None and (run.step % run.eval_every == 0 or last):
            log_eval()
            if cfg.patience is not None and run.bad_evals >= cfg.patience and not last:
                run.stopped_early = True
                log({"type": "early_stop", "step": run.step, "best_step": run.best["step"]})
        if ckpt is not None and (run.step % run.ckpt_every == 0 or last or run.stopped_early):
            ckpt.save(run.state_dict(), metrics)
    if bar is not None:
        bar.close()

    return _result(run, train, val, resumed_from, t_wall)


def prompt_drift(start: torch.Tensor, end: torch.Tensor) -> dict:
    """How far tuning moved the prompt from its start: the distance relative to the start's norm, and
    the ratio of mean token norms. A prompt that moves less keeps closer to what the model reads as
    text, which bears on how well it transfers (benchmarks.paper's tune_optimizer ablation)."""
    start, end = start.float().cpu(), end.float().cpu()
    return {
        "relative_distance": round(float((end - start).norm() / start.norm().clamp_min(1e-12)), 4),
        "norm_ratio": round(
            float(end.norm(dim=-1).mean() / start.norm(dim=-1).mean().clamp_min(1e-12)), 4
        ),
    }


def _result(run: _Run, train: Encoded, val: Encoded | None, resumed_from, t_wall: float):
    """The TuneResult of a finished loop: the best prompt (or the last) and its privacy statement."""
    cfg = run.cfg
    last_emb = run.prompt.detach().cpu().clone()
    if val is None or run.best_embeddings is None:
        best_emb = last_emb
        best = {"step": run.step, "selection": "last"}
    else:
        best_emb = run.best_embeddings
        best = dict(
            run.best,
            selection="validation accuracy"
            if "val_accuracy" in run.best
            else "validation target loss",
        )
    statement = None
    if run.dp is not None:
        statement = privacy_statement(
            dp=run.dp,
            n_train=len(train),
            sigma=run.sigma,
            sample_rate=run.q,
            ledger=run.ledger,
            planned_steps=run.total,
            accountant_used=run.accountant_used,
            expected_batch_size=cfg.logical_batch,
            model_selection_on_validation=val is not None,
            n_validation=0 if val is None else len(val),
        )
    return TuneResult(
        embeddings=best_emb,
        history=run.history,
        best=best,
        privacy=statement,
        seconds=round(run.train_seconds, 3),
        examples_per_s=round(run.examples / max(run.train_seconds, 1e-9), 2),
        steps=run.step,
        last_embeddings=last_emb,
        stopped_early=run.stopped_early,
        class_offset=getattr(run.clf, "class_offset", None),
        extra={
            "resumed_from": resumed_from,
            "drift": prompt_drift(run.start, best_emb),
            "examples": run.examples,
            "loop_seconds": round(time.perf_counter() - t_wall, 3),
        },
    )


# ---------------------------------------------------------------- the stage


def _calibration(offset: torch.Tensor | None) -> dict | None:
    """The `calibration` entry of prompt.json and metrics.json: the offset a calibrated prompt was tuned
    against, which scoring applies on the model it was tuned on only."""
    if offset is None:
        return None
    return {
        "class_offset": [round(float(v), 6) for v in offset],
        "what": "an offset added to this model's class scores that makes its mean class probability "
        "over the training inputs uniform (labels unused); applied on this model only",
    }


def _subset(enc: Encoded, limit: int | None, seed: int, field_name: str) -> Encoded:
    if limit is None or limit >= len(enc):
        return enc
    if limit <= 0:
        raise BadInput(field_name, f"must be positive, got {limit}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(enc))[:limit])
    return enc.subset(idx.tolist())


def _prompt_model(lm, the_task, max_length: int, precision: str = "fp32") -> Any:
    """A PromptGenerator for a generation task, else a PromptClassifier (the loop uses either)."""
    if the_task.is_generation:
        from promptport.generation import PromptGenerator

        return PromptGenerator(lm.model, lm.tokenizer, the_task, max_length, precision)
    from promptport.classify import PromptClassifier

    return PromptClassifier(lm.model, lm.tokenizer, the_task, max_length, precision)


def _load_splits(the_task, data, train_split, val_split, test_split, columns: dict, echo) -> dict:
    """The named splits (train, and validation / test when named), refusing any split used twice or
    splits that share content."""
    from promptport.data import canonical_split, check_disjoint_splits
    from promptport.data import load_split as load_text_split

    if (
        val_split is not None
        and test_split is not None
        and canonical_split(val_split) == canonical_split(test_split)
    ):
        raise BadInput(
            "val_split",
            f"the validation split '{val_split}' is also the test split; model selection "
            "on test data would make the test accuracy meaningless",
        )
    if canonical_split(train_split) in {canonical_split(s) for s in (val_split, test_split) if s}:
        raise BadInput("train_split", f"'{train_split}' is also used for validation or test")
    columns = dict(columns)
    if the_task.is_generation:  # same loop; the loss is the target tokens' cross-entropy
        from promptport.generation import load_gen_split

        load_split: Callable[..., Any] = load_gen_split
        columns.pop("split_column")
    else:
        load_split = load_text_split
    splits = {"train": load_split(the_task, data, train_split, **columns)}
    if val_split:
        splits["validation"] = load_split(the_task, data, val_split, **columns)
    if test_split:
        splits["test"] = load_split(the_task, data, test_split, **columns)
    if not the_task.is_generation:
        check_disjoint_splits(
            splits["train"], val_split=splits.get("validation"), test_split=splits.get("test")
        )
    split_rules = {
        k: rule for k, v in splits.items() if (rule := getattr(v, "meta", {}).get("split_rule"))
    }
    if split_rules and echo is not None:
        echo(f"one data file: splits by text hash ({split_rules['train']})")
    return splits


def tune(
    model,
    task,
    *,
    data=None,
    out,
    train_split: str = "train",
    val_split: str | None = "validation",
    test_split: str | None = None,
    train_limit: int | None = None,
    val_limit: int | None = None,
    cfg: TuneConfig,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = False,
    text_column: str | None = None,
    label_column: str | None = None,
    train_eval_limit: int | None = 2000,
    echo=None,
    split_column: str | None = None,
) -> dict:
    """Prompt tuning as a stage: writes OUT/prompt/ (artifact), OUT/metrics.json, OUT/metrics.jsonl and
    OUT/checkpoint/. The test split is only evaluated when named. Returns the metrics dict.

    Under `accelerate launch --num_processes N` the training batches are split over the N processes
    (same result as one process); the main process writes the outputs."""
    from promptport.distributed import group
    from promptport.models import LoadedModel, load_model
    from promptport.prompt import make_metadata, save_prompt
    from promptport.runtime import seed_everything, versions
    from promptport.tasks import get_task

    t0 = time.perf_counter()
    out = check_writable_dir(out)
    cfg = with_resolved_precision(cfg, device)
    seed_everything(cfg.seed)
    the_task = get_task(task)
    columns = dict(text_column=text_column, label_column=label_column, split_column=split_column)
    splits = _load_splits(the_task, data, train_split, val_split, test_split, columns, echo)
    lm = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    check_frozen(lm.model)
    clf = _prompt_model(lm, the_task, cfg.max_length, cfg.precision)
    enc = {k: clf.encode(v) for k, v in splits.items()}
    train = _subset(enc["train"], train_limit, cfg.seed, "train_limit")
    val = (
        _subset(enc["validation"], val_limit, cfg.seed, "val_limit")
        if "validation" in enc
        else None
    )
    cfg.validate(len(train))
    dist = group(device)
    res = train_prompt(
        clf, train, val, cfg, checkpoint_dir=out / "checkpoint", resume=resume,
        metrics_path=out / "metrics.jsonl", progress=progress, dist=dist,
    )  # fmt: skip

    if the_task.is_generation and train_eval_limit is not None:
        train_eval_limit = min(train_eval_limit, 64)  # a teacher-forced loss needs few examples
    train_eval = _subset(train, train_eval_limit, cfg.seed + 7, "train_eval_limit")
    named = {"train": train_eval, "validation": val, "test": enc.get("test")}
    if res.class_offset is not None:  # scored as it was tuned
        clf = with_class_offset(clf, res.class_offset)
    results = {
        k: clf.evaluate(e, res.embeddings, cfg.eval_batch_size, progress)
        for k, e in named.items()
        if e is not None
    }

    # The artifact travels to the provider: settings only. No data path, no set sizes, accuracies,
    # throughput or early-stopping outcome (examples/s x seconds is about the sum of the realised
    # Poisson batch sizes); the DP statement names the facts it assumes public (N among them). With
    # `calibrate`, the C-number offset (a mean over the training inputs, like the prompt itself a
    # function of them; refused under DP, where it would sit outside the accounting).
    training = {"config": cfg.to_dict(), "train_split": train_split, "val_split": val_split}
    calibration = _calibration(res.class_offset)
    meta = make_metadata(
        model_info=lm.info,
        task=the_task,
        init=cfg.init,
        training=training,
        privacy=res.privacy,
        n_tokens=int(res.embeddings.shape[0]),
        extra=None if calibration is None else {"calibration": calibration},
    )
    metrics = {
        "stage": "tune",
        "task": the_task.name,
        "model": lm.info.model_id,
        "data": splits["train"].source,
        "splits": {"train": train_split, "validation": val_split, "test": test_split},
        "n_train": len(train),
        "n_val": None if val is None else len(val),
        "train_accuracy": results["train"].get("accuracy"),
        "val_accuracy": results["validation"].get("accuracy") if "validation" in results else None,
        "test_accuracy": results["test"].get("accuracy") if "test" in results else None,
        "examples_per_s": res.examples_per_s,
        "train_seconds": res.seconds,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "steps": res.steps,
        "best": res.best,
        "stopped_early": res.stopped_early,
        "prompt_drift": res.extra.get("drift"),
        "resumed_from_step": res.extra.get("resumed_from"),
        "evaluations": results,
        "privacy": res.privacy,
        "calibration": calibration,
        "prompt": str(out / "prompt"),
        "config": cfg.to_dict(),
        "processes": dist.world,
        "versions": versions(),
    }
    if dist.is_main:
        save_prompt(out / "prompt", res.embeddings, meta)
        write_json(out / "metrics.json", metrics)
        if echo is not None and res.privacy is not None:
            echo(format_statement(res.privacy))
    dist.barrier()
    return metrics
