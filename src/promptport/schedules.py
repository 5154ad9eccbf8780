"""Learning-rate schedules of the prompt-training loops (tune, transfer): one multiplier of the base
rate per optimiser step, a pure function of the step, so a resumed loop needs no scheduler state."""

from __future__ import annotations

import math

from promptport.errors import BadInput

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, total: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`: linear warm-up, then
    `schedule` (linear and cosine decay to 0 at `total`, as transformers' schedules of those names)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_schedule(schedule: str) -> None:
    """A one-line error naming the field for a schedule that is not one of SCHEDULES."""
    if schedule not in SCHEDULES:
        raise BadInput("schedule", f"unknown schedule '{schedule}' (choose {', '.join(SCHEDULES)})")


def set_rate(opt, lr: float, step: int, total: int, schedule: str) -> None:
    """Set every parameter group's rate for optimizer step `step` (0-based) of `total`: the loops
    that checkpoint no scheduler (transfer) set it from the step alone."""
    for group in opt.param_groups:
        group["lr"] = lr * lr_factor(step, total, schedule)
