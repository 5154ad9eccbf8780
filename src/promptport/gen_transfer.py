"""POST transfer for generation tasks (provider side, public data only).

The classification objective of `promptport.transfer.transfer_loss` applied at every position of a
continuation, teacher-forced. For a public input x (a public MR formatted with the task template) the
continuation y is the prompted student's own greedy output on x, generated once and cached. At each
position j of y, with s = student(x, y<j), s_p = student(p_s; x, y<j), t = teacher(x, y<j) and
t_p = teacher(p_t; x, y<j) the next-token logits:

    loss_j = alpha * T^2 * KL(softmax((s_p - s)/T) || softmax((t_p - t)/T))
           + (1 - alpha) * T^2 * KL(softmax(s_p/T) || softmax(t_p/T))

summed over the positions of y (padding masked), averaged over examples.

**Cache (top-k plus remainder).** s, s_p and t do not depend on p_t, but full-vocabulary logits at every
position do not fit in memory (49k floats per position). Per position we keep the k tokens with the
highest tempered probability under any of s, s_p, t, their logits, and each distribution's full-vocabulary
log-normaliser logsumexp(x/T). Both terms are then computed on the distributions coarsened to
k + 1 bins (the kept tokens and one remainder bin): every kept token's probability is exact (its
normaliser is the full one), and the remainder bin holds the exact leftover mass 1 - sum(kept). The
teacher's t_p is computed in full each step and coarsened the same way. The output term is then a
lower bound of the full-vocabulary KL (coarsening never increases a KL); the shift term is the shift
KL between the coarsened distributions, i.e. the remainder acts as one pseudo-token whose shift is the
ratio of remainder masses. With k >= V (no remainder) both equal the full-vocabulary objective exactly
(tested).

The firewall and the public-only checkpoint selection (lowest held-out public transfer loss) are those
of the classification path; this transfer has no mid-run checkpoint (a crash restarts the stage).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptport.classify import Encoded
from promptport.errors import BadInput
from promptport.generation import PromptGenerator, source_ids, target_logits
from promptport.losses import kl_from_log_probs

REST_FLOOR = 1e-30


# ------------------------------------------------------------------------------------------ the loss


def coarse_logprobs(kept_logits: torch.Tensor, lse: torch.Tensor, T: float, rest: bool):
    """[N, k] logits at the kept tokens + [N] logsumexp(x/T) over the vocabulary -> [N, k(+1)] log-probs
    at temperature T of the kept tokens (and the remainder bin)."""
    lp = kept_logits.float() / T - lse.float()[:, None]
    if not rest:
        return lp
    left = (1.0 - lp.exp().sum(-1)).clamp(min=REST_FLOOR)
    return torch.cat([lp, left.log()[:, None]], dim=-1)


def generation_transfer_loss(
    t_p: torch.Tensor,
    kept: torch.Tensor,
    s_p: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    lse_sp: torch.Tensor,
    lse_s: torch.Tensor,
    lse_t: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Per-position POST loss [N]: t_p [N, V] full teacher+prompt logits (the only tensor with gradient),
    kept [N, k] token ids, s_p / s / t [N, k] cached logits at those ids, lse_* [N] their normalisers."""
    T = temperature
    V = t_p.shape[-1]
    rest = kept.shape[-1] < V
    tp_k = t_p.gather(1, kept.to(t_p.device))
    lse_tp = torch.logsumexp(t_p.float() / T, -1)
    a_tp = coarse_logprobs(tp_k, lse_tp, T, rest)
    a_sp = coarse_logprobs(s_p, lse_sp, T, rest)
    loss = torch.zeros(t_p.shape[0], device=t_p.device)
    if alpha > 0:
        a_s = coarse_logprobs(s, lse_s, T, rest)
        a_t = coarse_logprobs(t, lse_t, T, rest)
        shift_target = F.log_softmax(a_sp - a_s, -1)
        shift_pred = F.log_softmax(a_tp - a_t, -1)
        loss = loss + alpha * T * T * kl_from_log_probs(shift_target, shift_pred)
    if alpha < 1:
        loss = loss + (1 - alpha) * T * T * kl_from_log_probs(a_sp, a_tp)
    return loss


# ------------------------------------------------------------------------------------------ the cache


@dataclass
class GenTransferCache:
    """Per target position (flattened in example order): kept ids and s, s_p, t at them, normalisers."""

    kept: torch.Tensor  # [P, k] long
    s: torch.Tensor  # [P, k]
    s_p: torch.Tensor
    t: torch.Tensor
    lse_s: torch.Tensor  # [P]
    lse_sp: torch.Tensor
    lse_t: torch.Tensor
    offsets: torch.Tensor  # [N + 1]: positions of example i are offsets[i]:offsets[i+1]
    seconds: float = 0.0

    def positions(self, idx) -> torch.Tensor:
        return torch.cat(
            [torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in idx]
        )


def compress(s, s_p, t, k: int, T: float) -> tuple:
    """Full-vocabulary logits [P, V] x3 -> kept ids [P, k] (highest tempered probability under any of
    the three), the three at those ids, and the three normalisers logsumexp(x/T)."""
    k = min(k, s.shape[-1])
    lses = [torch.logsumexp(x.float() / T, -1) for x in (s, s_p, t)]
    score = torch.stack([x.float() / T - lse[:, None] for x, lse in zip((s, s_p, t), lses)]).amax(0)
    kept = score.topk(k, dim=-1).indices.sort(-1).values
    vals = [x.float().gather(1, kept) for x in (s, s_p, t)]
    return kept, vals, lses


@torch.inference_mode()
def build_gen_cache(
    student: PromptGenerator,
    teacher: PromptGenerator,
    p_s: torch.Tensor,
    enc: Encoded,
    *,
    k: int,
    temperature: float,
    batch_size: int = 16,
    progress: bool = False,
) -> GenTransferCache:
    from promptport.classify import _progress

    t0 = time.perf_counter()
    parts: dict[str, list] = {n: [] for n in ("kept", "s", "s_p", "t", "lse_s", "lse_sp", "lse_t")}
    assert enc.labels is not None  # continuation lengths
    labels = enc.labels
    counts = labels.tolist()
    bar = _progress(math.ceil(len(enc) / batch_size), "cache s, s_p, t", progress, "batch")
    ps = p_s.to(student.device)
    for start in range(0, len(enc), batch_size):
        idx = list(range(start, min(start + batch_size, len(enc))))
        ids, mask = student.batch([enc.input_ids[i] for i in idx])
        y = labels[idx]
        s, _, _ = target_logits(student.model, ids, mask, y)
        sp, _, _ = target_logits(student.model, ids, mask, y, ps)
        ids_t, mask_t = teacher.batch([enc.input_ids[i] for i in idx])
        t, _, _ = target_logits(teacher.model, ids_t, mask_t, y)
        kept, (vs, vsp, vt), (ls, lsp, lt) = compress(s, sp, t, k, temperature)
        for n, v in zip(parts, (kept, vs, vsp, vt, ls, lsp, lt)):
            parts[n].append(v.cpu())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    offsets = torch.tensor([0] + list(np.cumsum(counts)), dtype=torch.long)
    cat = {n: torch.cat(v) for n, v in parts.items()}
    return GenTransferCache(**cat, offsets=offsets, seconds=time.perf_counter() - t0)


def continuations(
    student: PromptGenerator,
    p_s: torch.Tensor,
    inputs: list[str],
    max_length: int,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> Encoded:
    """x + the prompted student's greedy continuation of x (decoding settings of the task, greedy), as an
    `Encoded` whose labels count the continuation's tokens (stop token included)."""
    src, _ = source_ids(student.tokenizer, inputs, max_length - 1)
    greedy = student.task.decoding.model_copy(update={"num_beams": 1})
    new = student.generate_ids(src, p_s, greedy, batch_size, progress, "continuations")
    ids, lens = [], []
    for x, y in zip(src, new):
        y = y[: max_length - len(x)] or [student.tokenizer.eos_token_id]
        ids.append(x + y)
        lens.append(len(y))
    return Encoded(ids, torch.tensor(lens, dtype=torch.long), 0)


# ------------------------------------------------------------------------------------------ training


def sequence_losses(teacher, enc, cache, idx, p_t, alpha, T):
    """[len(idx)] summed per-position loss of each example (teacher forward with p_t)."""
    ids, mask = teacher.batch([enc.input_ids[i] for i in idx])
    y = enc.labels[list(idx)]
    t_p, _, rows = target_logits(teacher.model, ids, mask, y, p_t)
    pos = cache.positions(idx)
    per_pos = generation_transfer_loss(
        t_p,
        cache.kept[pos],
        cache.s_p[pos].to(t_p.device),
        cache.s[pos].to(t_p.device),
        cache.t[pos].to(t_p.device),
        cache.lse_sp[pos].to(t_p.device),
        cache.lse_s[pos].to(t_p.device),
        cache.lse_t[pos].to(t_p.device),
        alpha,
        T,
    )
    return torch.zeros(len(idx), device=per_pos.device).index_add(0, rows, per_pos)


def train_gen_transfer(
    teacher: PromptGenerator,
    enc: Encoded,
    cache: GenTransferCache,
    p_s: torch.Tensor,
    cfg,
    *,
    alpha: float,
    init_embeddings: torch.Tensor | None = None,
    metrics_path: Path | None = None,
    progress: bool = False,
):
    """Adam on p_t against the cached targets; keep the p_t with the lowest held-out public loss."""
    from promptport.fileio import append_jsonl
    from promptport.schedules import set_rate
    from promptport.transfer_common import TransferResult, stalled

    g = torch.Generator().manual_seed(cfg.seed)
    n = len(enc)
    perm = torch.randperm(n, generator=g)
    n_held = max(1, int(round(n * cfg.heldout_fraction)))
    held, train = perm[:n_held].tolist(), perm[n_held:]
    if len(train) == 0:
        raise BadInput("n_public", f"{n} public inputs leave nothing to train on after hold-out")
    dev = teacher.device
    p_t = torch.nn.Parameter(
        (p_s if init_embeddings is None else init_embeddings).detach().clone().float().to(dev)
    )
    opt = torch.optim.Adam([p_t], lr=cfg.lr)
    bs = min(cfg.batch_size, len(train))
    per_epoch = math.ceil(len(train) / bs)
    total = cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * per_epoch)))
    eval_every = cfg.eval_every or max(1, per_epoch // 2)

    def heldout() -> float:
        tot = 0.0
        with torch.inference_mode():
            for i in range(0, len(held), bs * 2):
                chunk = held[i : i + bs * 2]
                tot += float(
                    sequence_losses(
                        teacher, enc, cache, chunk, p_t.detach(), alpha, cfg.temperature
                    ).sum()
                )
        return tot / len(held)

    if metrics_path is not None:
        metrics_path.write_text("")
    history = [{"step": 0, "heldout_loss": heldout()}]
    best, best_emb = dict(history[0]), p_t.detach().clone()
    order, pos, tokens = train[torch.randperm(len(train), generator=g)], 0, 0
    from promptport.classify import _progress

    bar = _progress(total, "transfer (generation)", progress, "step")
    t0 = time.perf_counter()
    stop = False
    for step in range(1, total + 1):
        if stop:
            break
        if pos + bs > len(order):
            order, pos = train[torch.randperm(len(train), generator=g)], 0
        idx = order[pos : pos + bs].tolist()
        pos += bs
        opt.zero_grad(set_to_none=True)
        loss = sequence_losses(teacher, enc, cache, idx, p_t, alpha, cfg.temperature).mean()
        loss.backward()
        set_rate(opt, cfg.lr, step - 1, total, cfg.schedule)
        opt.step()
        tokens += sum(len(enc.input_ids[i]) for i in idx) + p_t.shape[0] * len(idx)
        rec = {"step": step, "loss": float(loss.detach())}
        if step % eval_every == 0 or step == total:
            rec["heldout_loss"] = heldout()
            if rec["heldout_loss"] < best["heldout_loss"]:
                best = {"step": step, "heldout_loss": rec["heldout_loss"]}
                best_emb = p_t.detach().clone()
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        history.append(rec)
        stop = "heldout_loss" in rec and stalled(history, best, cfg.patience)
        if metrics_path is not None:
            append_jsonl(metrics_path, rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    return TransferResult.of_loop(
        best_emb, alpha, history, best, seconds, cache.seconds, total, tokens
    )


# ------------------------------------------------------------------------------------------ the stage


def transfer_generation(
    artifact,
    the_task,
    s_lm,
    t_lm,
    *,
    public_data: str,
    out: Path,
    cfg,
    public_text_column: str | None = None,
    progress: bool = False,
    prompt_source=None,
) -> dict:
    """The transfer stage for a generation task (called by `promptport.transfer.transfer`)."""
    if cfg.space != "vocab":
        raise BadInput("space", "a generation task has no classes: use space 'vocab'")
    from promptport.data import load_texts
    from promptport.fileio import write_json
    from promptport.prompt import make_metadata, save_prompt
    from promptport.runtime import versions
    from promptport.transfer_common import (
        loop_fields,
        method_alpha,
        public_dataset,
        teacher_init,
        write_transfer_manifest,
    )

    t_start = time.perf_counter()
    field = the_task.template_fields[0]
    texts, source_id = load_texts(
        public_data, text_column=public_text_column or the_task.columns[field][0]
    )
    pub = public_dataset(the_task, texts, cfg.n_public, cfg.seed)
    inputs = pub.texts(the_task)
    student = PromptGenerator(s_lm.model, s_lm.tokenizer, the_task, cfg.max_length)
    teacher = PromptGenerator(t_lm.model, t_lm.tokenizer, the_task, cfg.max_length)
    p_s = artifact.embeddings
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    res, cont_seconds, n_positions = None, 0.0, 0
    if cfg.method == "direct":
        emb, alpha = p_s.clone(), float("nan")
    else:
        tc = time.perf_counter()
        enc = continuations(student, p_s, inputs, cfg.max_length, progress=progress)
        cont_seconds = time.perf_counter() - tc
        assert enc.labels is not None  # continuation lengths
        n_positions = int(enc.labels.sum())
        cache = build_gen_cache(
            student, teacher, p_s, enc, k=cfg.top_k, temperature=cfg.temperature, progress=progress
        )
        if cfg.method == "post" and cfg.alpha == "auto":
            raise BadInput("alpha", "alpha 'auto' is defined for classification tasks only")
        # output and shift train one term: report the alpha that trains, not the configured one
        alpha = float(cfg.alpha) if cfg.method == "post" else method_alpha(cfg.method, 0.0)
        init = teacher_init(cfg, t_lm, artifact, the_task)
        res = train_gen_transfer(
            teacher,
            enc,
            cache,
            p_s,
            cfg,
            alpha=alpha,
            init_embeddings=init,
            metrics_path=metrics_path,
            progress=progress,
        )
        emb = res.embeddings
    training = {
        "stage": "transfer",
        "kind": "generation",
        "method": cfg.method,
        "config": asdict(cfg),
        "alpha_used": alpha,
        "public_source": source_id,
        "n_public": len(pub),
        "source_prompt_sha256": artifact.meta.get("sha256"),
        "student": s_lm.info.model_id,
    }
    if res is not None:
        training.update(steps=res.steps, stopped_early=res.stopped_early, best=res.best)
        training["seconds"] = round(res.seconds, 3)
    meta = make_metadata(
        model_info=t_lm.info,
        task=the_task,
        init=cfg.init if cfg.method != "direct" else "copy",
        training=training,
        privacy=artifact.meta.get("privacy"),
        n_tokens=int(emb.shape[0]),
        extra={"transferred_from": artifact.meta.get("model")},
    )
    save_prompt(out / "prompt", emb, meta)
    wall = time.perf_counter() - t_start
    result = {
        "stage": "transfer",
        "kind": "generation",
        "method": cfg.method,
        "alpha": alpha,
        "alpha_auto": None,
        "n_public": len(pub),
        "public_source": source_id,
        "continuation_positions": n_positions,
        "top_k": cfg.top_k,
        **loop_fields(res),
        "continuation_seconds": round(cont_seconds, 3),
        "unprompted_cache_shared": False,
        "wall_seconds": round(wall, 3),
        "config": asdict(cfg),
        "versions": versions(),
    }
    write_json(out / "metrics.json", result)
    source = prompt_source or artifact
    n = len(pub)
    write_transfer_manifest(out, cfg, source, artifact, source_id, n, s_lm, t_lm, wall)
    return result
