"""DP-SGD for the soft prompt: Poisson sampling, per-example clipping, Gaussian noise, accounting.

The mechanism is the Poisson-subsampled Gaussian mechanism of Abadi et al. (2016), accounted with
Opacus's accountants (PRV by default, RDP selectable):

* each step draws a batch by including every training example independently with probability
  q = L / N (L is the expected batch size), so batches vary in size and may be empty;
* every example's gradient of the prompt is clipped to L2 norm C (`max_grad_norm`);
* the clipped gradients are summed, Gaussian noise N(0, (sigma C)^2 I) is added, and the result is
  divided by the *expected* batch size L (not the realised one, which would leak the batch size).

sigma is calibrated once from (epsilon, delta, q, steps) so that the planned run spends exactly the
target budget; the accountant then records every step that was actually taken, so an early stop
spends less and a resumed run continues the same history.

`delta` defaults to 1 / (10 N) for N training examples: well below the 1/N at which a mechanism could
publish one example in the clear and still claim (epsilon, delta)-DP.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from promptport.errors import BadInput
from promptport.options import setting

ACCOUNTANTS = ("prv", "rdp")
MAX_SIGMA = 1e4  # beyond this the run is noise; a target that needs more is unreachable


@dataclass
class DPConfig:
    """Differential privacy settings for prompt tuning (example-level DP on the training split)."""

    epsilon: float = setting(help="DP: target epsilon for the whole run (needs --dp).")
    delta: float | None = setting(None, "DP: delta, in (0, 1/N). Default: 1/(10 N).")
    max_grad_norm: float = setting(1.0, "DP: per-example clip norm C.")
    accountant: str = setting(
        "prv",
        "DP: privacy accountant (Opacus); PRV falls back to RDP with a warning where it fails.",
        choices=ACCOUNTANTS,
    )
    secure_rng: bool = setting(
        False, "DP: draw noise and batches from the OS's CSPRNG (not reproducible)."
    )

    def resolved_delta(self, n: int) -> float:
        return self.delta if self.delta is not None else 1.0 / (10 * n)

    def validate(self, n: int) -> None:
        """Refuse settings that give no guarantee: every check names the offending field."""
        if not (
            isinstance(self.epsilon, (int, float))
            and math.isfinite(self.epsilon)
            and self.epsilon > 0
        ):
            raise BadInput("epsilon", f"must be a positive number, got {self.epsilon}")
        if n <= 0:
            raise BadInput("data", "DP training needs at least one training example")
        delta = self.resolved_delta(n)
        if not (delta > 0 and delta < 1.0 / n):
            raise BadInput(
                "delta",
                f"must be in (0, 1/N) = (0, {1.0 / n:.3g}) for N={n} training examples, "
                f"got {delta}; a delta of 1/N or more allows publishing an example outright",
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise BadInput("max_grad_norm", f"must be positive, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise BadInput(
                "accountant",
                f"unknown accountant '{self.accountant}' (choose {', '.join(ACCOUNTANTS)})",
            )

    def to_dict(self) -> dict:
        return asdict(self)


DP_ONLY_SETTINGS = ("epsilon", "delta", "secure_rng")  # meaningless without DP


def dp_from_settings(enabled: bool, settings: dict, prefix: str = "") -> DPConfig | None:
    """The one static check of DP settings (command line, audit and run config alike): DP needs a
    target epsilon; a DP-only setting without DP is refused. `prefix` names the field's section."""
    if not enabled:
        stray = [k for k in DP_ONLY_SETTINGS if settings.get(k) not in (None, False)]
        if stray:
            raise BadInput(prefix + stray[0], "is a DP setting: add --dp (a dp: section in YAML)")
        return None
    if settings.get("epsilon") is None:
        raise BadInput(
            prefix + "epsilon",
            "DP-SGD needs a target epsilon (--dp --epsilon 8, or dp: {epsilon: 8} in YAML)",
        )
    names = {f.name for f in fields(DPConfig)}
    return DPConfig(**{k: v for k, v in settings.items() if k in names})


# ---------------------------------------------------------------- accounting


def _accountant(name: str):
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise BadInput(
            "accountant", f"unknown accountant '{name}' (choose {', '.join(ACCOUNTANTS)})"
        )
    return create_accountant(mechanism=name)


def epsilon_of_history(history: list, delta: float, accountant: str) -> float:
    """epsilon spent by an Opacus history [(sigma, q, steps), ...] under the named accountant."""
    history = [tuple(h) for h in history if int(h[2]) > 0]
    if not history:
        return 0.0
    acc = _accountant(accountant)
    acc.history = [(float(s), float(q), int(t)) for s, q, t in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha" note
        eps = float(acc.get_epsilon(delta=delta))
    if not math.isfinite(eps) or eps < 0:
        raise ArithmeticError(f"{accountant} accountant returned epsilon={eps}")
    return eps


def compute_epsilon(
    sigma: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """epsilon of `steps` Poisson-subsampled Gaussian steps with noise multiplier sigma (Opacus)."""
    if steps <= 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    return epsilon_of_history([(sigma, sample_rate, steps)], delta, accountant)


def _solve_sigma(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, rel_tol: float
) -> float:
    """Smallest sigma (up to rel_tol in epsilon) whose epsilon does not exceed the target.

    epsilon(sigma) is decreasing; we bracket the target by doubling/halving sigma, then run the Illinois
    variant of regula falsi on log epsilon against log sigma (nearly linear there), keeping the bracket,
    so that a handful of accountant calls suffice. The answer is always the bracket's feasible end.
    """

    def f(log_s: float) -> float:
        return math.log(
            compute_epsilon(math.exp(log_s), sample_rate, steps, delta, accountant)
        ) - math.log(epsilon)

    def unreachable():
        return BadInput(
            "epsilon",
            f"epsilon={epsilon} cannot be reached with {steps} steps at sampling rate "
            f"{sample_rate:.4g} and delta={delta:.3g} under the {accountant} accountant, "
            "even with overwhelming noise; raise epsilon or delta, or train fewer steps "
            "or with a smaller batch",
        )

    # bracket: lo infeasible (f > 0), hi feasible (f <= 0)
    hi, f_hi = 0.0, f(0.0)
    if f_hi > 0:
        lo, f_lo = hi, f_hi
        while f_hi > 0:
            lo, f_lo = hi, f_hi
            hi += math.log(2)
            if hi > math.log(MAX_SIGMA):
                raise unreachable()
            f_hi = f(hi)
    else:
        lo, f_lo = hi, f_hi
        while f_lo <= 0:
            hi, f_hi = lo, f_lo
            lo -= math.log(2)
            if lo < math.log(1e-3):
                return math.exp(hi)
            f_lo = f(lo)
    target_gap = math.log(1 - rel_tol)  # accept f in [log(1 - rel_tol), 0]
    side = 0
    for _ in range(100):
        if f_hi >= target_gap:
            break
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo)  # secant point, inside (lo, hi)
        if not (min(lo, hi) < x < max(lo, hi)):
            x = (lo + hi) / 2
        fx = f(x)
        if fx <= 0:
            hi, f_hi = x, fx
            if side == -1:
                f_lo /= 2  # Illinois: keep the stale end from stalling the secant
            side = -1
        else:
            lo, f_lo = x, fx
            if side == 1:
                f_hi /= 2
            side = 1
    return math.exp(hi)


def calibrate_sigma(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    rel_tol: float = 0.005,
) -> tuple[float, str]:
    """Noise multiplier for a budget: (sigma, accountant actually used).

    The returned sigma spends at most `epsilon` and at least epsilon * (1 - rel_tol) over `steps` steps
    under the accountant. Where PRV fails numerically (it can at large epsilon), RDP is used instead
    with a warning; RDP is the looser bound, so the guarantee still holds.
    """
    if not (epsilon > 0):
        raise BadInput("epsilon", f"must be positive, got {epsilon}")
    if not (0 < delta < 1):
        raise BadInput("delta", f"must be in (0, 1), got {delta}")
    if not (0 < sample_rate <= 1):
        raise BadInput("batch_size", f"sampling rate must be in (0, 1], got {sample_rate}")
    if steps <= 0:
        raise BadInput("steps", f"DP training needs at least one step, got {steps}")
    if accountant not in ACCOUNTANTS:
        raise BadInput(
            "accountant", f"unknown accountant '{accountant}' (choose {', '.join(ACCOUNTANTS)})"
        )
    if accountant == "prv":
        try:
            return _calibrated(epsilon, delta, sample_rate, steps, "prv", rel_tol), "prv"
        except BadInput:
            raise
        except Exception as e:
            warnings.warn(
                f"PRV accountant failed ({type(e).__name__}: {str(e)[:120]}); "
                "calibrating and accounting with RDP instead",
                RuntimeWarning,
                stacklevel=2,
            )
    return _calibrated(epsilon, delta, sample_rate, steps, "rdp", rel_tol), "rdp"


@functools.lru_cache(maxsize=256)
def _calibrated(epsilon, delta, sample_rate, steps, accountant, rel_tol) -> float:
    # cached: LiRA shadows and resumed runs ask for the same calibration many times
    return _solve_sigma(epsilon, delta, sample_rate, steps, accountant, rel_tol)


class PrivacyLedger:
    """The accountant's history of (sigma, q, steps), kept in checkpoints so resumes neither repeat nor
    forget spent privacy."""

    def __init__(self, accountant: str, history: list | None = None):
        self.accountant = accountant
        self.history: list[tuple[float, float, int]] = [tuple(h) for h in (history or [])]

    def step(self, sigma: float, sample_rate: float) -> None:
        if self.history and self.history[-1][0] == sigma and self.history[-1][1] == sample_rate:
            s, q, t = self.history[-1]
            self.history[-1] = (s, q, t + 1)
        else:
            self.history.append((float(sigma), float(sample_rate), 1))

    @property
    def steps(self) -> int:
        return sum(int(t) for _, _, t in self.history)

    def epsilon(self, delta: float, accountant: str | None = None) -> float:
        return epsilon_of_history(self.history, delta, accountant or self.accountant)

    def state_dict(self) -> dict:
        return {"accountant": self.accountant, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.accountant = state["accountant"]
        self.history = [(float(s), float(q), int(t)) for s, q, t in state["history"]]


# ---------------------------------------------------------------- randomness


class SecureRNG:
    """Cryptographically strong Gaussian noise and Bernoulli draws from the OS's CSPRNG (os.urandom).

    Uniforms take 53 random bits each; Gaussians come from the Box-Muller transform in float64. It has
    no state to save: a resumed run draws fresh randomness.
    """

    secure = True

    def uniform(self, n: int) -> np.ndarray:
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return bits.astype(np.float64) * (1.0 / (1 << 53))

    def normal(self, shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
        n = int(np.prod(shape)) if len(shape) else 1
        m = (n + 1) // 2
        u1 = 1.0 - self.uniform(m)  # (0, 1]: log is finite
        u2 = self.uniform(m)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
        return torch.from_numpy(z.reshape(shape)).to(device=device, dtype=dtype)

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        return self.uniform(n) < p

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def gaussian(shape, generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Standard normal noise from a torch.Generator (reproducible) or a SecureRNG."""
    if isinstance(generator, SecureRNG):
        return generator.normal(tuple(shape), dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(
        device=device, dtype=dtype
    )


class PoissonSampler:
    """Batches for DP-SGD: each example joins each batch independently with probability `sample_rate`.

    Batches vary in size and may be empty. The RNG state and the step count are in `state_dict`, so a
    resumed run draws exactly the batches the uninterrupted run would have drawn (a SecureRNG has no
    state; a resumed secure run draws fresh batches).
    """

    def __init__(self, n: int, sample_rate: float, seed: int = 0, secure: bool = False):
        if n <= 0:
            raise BadInput("data", "the sampler needs at least one example")
        if not (0 < sample_rate <= 1):
            raise BadInput("batch_size", f"sampling rate must be in (0, 1], got {sample_rate}")
        self.n, self.sample_rate, self.steps = n, float(sample_rate), 0
        self.rng: torch.Generator | SecureRNG = (
            SecureRNG() if secure else torch.Generator().manual_seed(seed)
        )

    def sample(self) -> list[int]:
        if isinstance(self.rng, SecureRNG):
            mask = torch.from_numpy(self.rng.bernoulli(self.n, self.sample_rate))
        else:
            mask = torch.rand(self.n, generator=self.rng, dtype=torch.float64) < self.sample_rate
        self.steps += 1
        return mask.nonzero().flatten().tolist()

    def state_dict(self) -> dict:
        rng = None if isinstance(self.rng, SecureRNG) else self.rng.get_state()
        return {"n": self.n, "sample_rate": self.sample_rate, "steps": self.steps, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["sample_rate"] != self.sample_rate:
            raise BadInput(
                "resume",
                f"the checkpoint's sampler (N={state['n']}, q={state['sample_rate']}) does not "
                f"match this run (N={self.n}, q={self.sample_rate})",
            )
        self.steps = int(state["steps"])
        if state["rng"] is not None and not isinstance(self.rng, SecureRNG):
            self.rng.set_state(state["rng"])


# ---------------------------------------------------------------- the DP gradient


def clip_per_example(
    per_example_grads: torch.Tensor, max_grad_norm: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over examples of each gradient clipped to L2 norm max_grad_norm, the unclipped norms).

    Gradients are [B, ...]; one example's gradient is everything after the first dimension. The factor
    is min(1, C / norm), so a clipped gradient's norm is at most C (up to float rounding).
    """
    b = per_example_grads.shape[0]
    g = per_example_grads.reshape(b, math.prod(per_example_grads.shape[1:])).float()
    norms = g.norm(dim=1)
    factor = (max_grad_norm / norms.clamp(min=1e-12)).clamp(max=1.0)
    summed = (factor.unsqueeze(1) * g).sum(0) if b else g.new_zeros(g.shape[1])
    return summed.reshape(per_example_grads.shape[1:]), norms


def noisy_average(
    clipped_sum: torch.Tensor,
    max_grad_norm: float,
    sigma: float,
    expected_batch_size: float,
    generator,
) -> torch.Tensor:
    """(sum of clipped gradients + N(0, (sigma C)^2 I)) / expected batch size."""
    out = clipped_sum.float()
    if sigma > 0:
        out = out + gaussian(out.shape, generator, device=out.device) * (sigma * max_grad_norm)
    return out / expected_batch_size


def clip_and_noise(
    per_example_grads: torch.Tensor,
    max_grad_norm: float,
    sigma: float,
    expected_batch_size: float,
    generator,
) -> torch.Tensor:
    """The DP-SGD gradient of one step from per-example gradients [B, ...] (B may be 0)."""
    summed, _ = clip_per_example(per_example_grads, max_grad_norm)
    return noisy_average(summed, max_grad_norm, sigma, expected_batch_size, generator)


# ---------------------------------------------------------------- the statement


def library_versions() -> dict:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for pkg in ("promptport", "opacus", "torch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def privacy_statement(
    *,
    dp: DPConfig,
    n_train: int,
    sigma: float,
    sample_rate: float,
    ledger: PrivacyLedger,
    planned_steps: int,
    accountant_used: str,
    expected_batch_size: float,
    model_selection_on_validation: bool,
    n_validation: int = 0,
) -> dict:
    """What the prompt's (epsilon, delta) guarantee says, under which assumptions, and what it covers."""
    delta = dp.resolved_delta(n_train)
    steps = ledger.steps
    other = "rdp" if accountant_used == "prv" else "prv"
    eps = ledger.epsilon(delta, accountant_used)
    try:
        eps_other = ledger.epsilon(delta, other)
    except Exception as e:
        eps_other = None
        warnings.warn(
            f"{other} accountant failed for the comparison figure: {e}",
            RuntimeWarning,
            stacklevel=2,
        )
    selection = (
        "The prompt returned is the one with the best validation accuracy among the evaluated "
        f"checkpoints ({n_validation} validation examples). Those validation examples are NOT "
        "protected by this guarantee: the selection itself was not made private. Use a public "
        "validation set, or no validation (--val-split none), if they must be protected."
        if model_selection_on_validation
        else "No model selection on validation data: the prompt is the last DP-SGD iterate."
    )
    return {
        "mechanism": "DP-SGD (Poisson-subsampled Gaussian mechanism) on the soft prompt only",
        "guarantee": f"({eps:.4g}, {delta:.3g})-DP with respect to adding or removing one training example",
        "epsilon": eps,
        "delta": delta,
        "delta_default": dp.delta is None,
        "target_epsilon": dp.epsilon,
        "accountant": accountant_used,
        "accountant_requested": dp.accountant,
        "epsilon_other_accountant": {other: eps_other},
        "noise_multiplier": sigma,
        "sample_rate": sample_rate,
        "expected_batch_size": expected_batch_size,
        "steps": steps,
        "planned_steps": planned_steps,
        "epochs": steps * sample_rate,
        "max_grad_norm": dp.max_grad_norm,
        "dataset_size": n_train,
        "sampling": "Poisson (each example joins each batch independently with probability sample_rate)",
        "noise_source": "os.urandom (cryptographically strong)"
        if dp.secure_rng
        else "torch.Generator (seeded, reproducible; NOT cryptographically strong)",
        "history": [list(h) for h in ledger.history],
        "protected": "example-level DP for the training examples: the prompt's distribution changes by at most "
        "(epsilon, delta) when any one training example is added or removed",
        "not_protected": [
            selection,
            "Training logs (metrics.jsonl: loss on training batches) and checkpoints are local "
            "diagnostics, not covered; share only the prompt artifact.",
            "The model, the task template and verbalizer, and the initial prompt are assumed public.",
        ],
        "assumed_public": [
            "the training-set size N (dataset_size): it sets the sampling rate q = L/N, as in "
            "standard DP-SGD accounting",
            "the number of steps and every hyper-parameter of the configuration",
        ],
        "library_versions": library_versions(),
    }


def format_statement(s: dict) -> str:
    other = ", ".join(
        f"{k}: {v:.4g}" for k, v in s["epsilon_other_accountant"].items() if v is not None
    )
    lines = [
        f"privacy: {s['guarantee']} ({s['accountant']} accountant"
        + (f"; {other}" if other else "")
        + ")",
        f"  sigma={s['noise_multiplier']:.4g}, q={s['sample_rate']:.4g} (expected batch {s['expected_batch_size']:g} "
        f"of N={s['dataset_size']}), steps={s['steps']}/{s['planned_steps']} ({s['epochs']:.3g} epochs), "
        f"clip C={s['max_grad_norm']:g}, {s['sampling'].split(' (')[0]} sampling, noise from {s['noise_source']}",
        f"  protects: {s['protected']}",
    ]
    lines += [f"  not covered: {x}" for x in s["not_protected"]]
    return "\n".join(lines)
