"""The losses: one KL divergence, used by distillation, its evaluation and the prompt transfer.

`kl_from_log_probs` is the single implementation; `kl_divergence` applies it to logits at a
temperature, `kd_kl` adds the T^2 factor of knowledge distillation and accepts a teacher cached as
its exact top-k log-probabilities. `distill_loss` combines the distillation terms.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


def kl_from_log_probs(target_logp: torch.Tensor, pred_logp: torch.Tensor) -> torch.Tensor:
    """sum_i p_i (log p_i - log q_i) over the last dim, from log-probabilities of p (target) and q."""
    return (target_logp.exp() * (target_logp - pred_logp)).sum(-1)


def kl_divergence(
    target_logits: torch.Tensor, pred_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-row KL(softmax(target/T) || softmax(pred/T)) over the last dim, computed in float32."""
    target_logp = F.log_softmax(target_logits.float() / temperature, -1)
    pred_logp = F.log_softmax(pred_logits.float() / temperature, -1)
    return kl_from_log_probs(target_logp, pred_logp)


def kd_kl(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    T: float,
    teacher_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position T^2 * KL(softmax(t/T) || softmax(s/T)) over the last dim (the full vocabulary).

    Without `teacher_idx`, `teacher` holds the teacher's logits. With `teacher_idx`, the teacher comes
    from the distillation cache: `teacher` holds its float32 log-probabilities at temperature T for the
    vocabulary ids `teacher_idx` (its top k). The top-k terms are then exact and the remaining mass forms
    one "rest" bucket for both models (exact in the top k, a tight lower bound of the full KL).
    """
    s_logp = F.log_softmax(student_logits.float() / T, dim=-1)
    if teacher_idx is None:
        t_logp = F.log_softmax(teacher.float() / T, dim=-1)
        return kl_from_log_probs(t_logp, s_logp) * T * T
    s_top = s_logp.gather(-1, teacher_idx.long())
    t_top = teacher.float().clamp(max=0.0)
    kl = kl_from_log_probs(t_top, s_top)
    t_rest = (1 - t_top.exp().sum(-1)).clamp(min=1e-8)
    s_rest = (1 - s_top.exp().sum(-1)).clamp(min=1e-8)
    return (kl + t_rest * (t_rest.log() - s_rest.log())) * T * T


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


class LossWeights(Protocol):
    """The weights `distill_loss` reads (a `promptport.distill.DistillConfig`)."""

    temperature: float
    alpha_ce: float
    alpha_lm: float
    alpha_cos: float
    alpha_task: float
    alpha_label: float


def distill_loss(
    cfg: LossWeights,
    *,
    s_logits=None,
    t_top_logp=None,
    t_topi=None,
    input_ids=None,
    mask=None,
    s_hidden=None,
    t_hidden=None,
    s_answer=None,
    t_answer=None,
    s_answer_h=None,
    t_answer_h=None,
    class_scores=None,
) -> dict[str, torch.Tensor]:
    """The weighted terms: alpha_ce*KL + alpha_lm*CE + alpha_cos*(1-cos) on LM blocks, alpha_task*KL at
    answers, alpha_label*KL between the class distributions the task's label words give at answers.

    `t_top_logp` / `t_topi`: the teacher's cached top-k log-probabilities at the temperature and their
    vocabulary ids. `class_scores` maps [B, V] vocabulary logits to [B, C] class scores (the task's
    `Verbalizer.scores_from_vocab`); the label term is what a classifier built on the student reads,
    which the full-vocabulary KL weighs as a few tokens of 49k.

    Padding (mask == 0) is excluded from every term; the LM term predicts token t+1 from position t.
    """
    terms: dict[str, torch.Tensor] = {}
    if s_logits is not None:
        if cfg.alpha_ce:
            terms["ce"] = cfg.alpha_ce * masked_mean(
                kd_kl(s_logits, t_top_logp, cfg.temperature, t_topi), mask
            )
        if cfg.alpha_lm:
            tgt = (
                input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                if mask is not None
                else input_ids[:, 1:]
            )
            terms["lm"] = cfg.alpha_lm * F.cross_entropy(
                s_logits[:, :-1].float().flatten(0, 1), tgt.flatten(), ignore_index=-100
            )
        if cfg.alpha_cos and s_hidden is not None:
            cos = F.cosine_similarity(s_hidden.float(), t_hidden.float(), dim=-1)
            terms["cos"] = cfg.alpha_cos * masked_mean(1 - cos, mask)
    if s_answer is not None and cfg.alpha_task:
        terms["task"] = cfg.alpha_task * kd_kl(s_answer, t_answer, cfg.temperature).mean()
        if cfg.alpha_cos and s_answer_h is not None:
            cos = F.cosine_similarity(s_answer_h.float(), t_answer_h.float(), dim=-1)
            terms["task_cos"] = cfg.alpha_cos * (1 - cos).mean()
    if s_answer is not None and cfg.alpha_label and class_scores is not None:
        s_cls, t_cls = class_scores(s_answer.float()), class_scores(t_answer.float())
        terms["label"] = cfg.alpha_label * kd_kl(s_cls, t_cls, 1.0).mean()
    total = torch.zeros(())
    for i, term in enumerate(terms.values()):
        total = term if i == 0 else total + term  # the sum in insertion order, as sum() adds
    terms["total"] = total
    return terms
