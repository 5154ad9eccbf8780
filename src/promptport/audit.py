"""LiRA membership-inference audit of a soft-prompt training configuration (Carlini et al., S&P 2022).

How much does a prompt leak about its training data? We train N shadow prompts, each on a random half
of an audit pool, with exactly the configuration being audited (DP or not), and keep every pool
example's class logits under every shadow. Each shadow in turn plays the target; the other N-1 are the
attacker's reference models (leave-one-shadow-out), so every (shadow, example) pair is one membership
guess with known ground truth.

Layout of an audit directory::

    audit.json                     the audited configuration, pool, shadow count (the spec; fixed)
    masks.safetensors              masks [N, P] (1 = IN), labels [P], pool_index [P] into the split
    shadows/shadow_007.safetensors logits [P, C] + mask [P] of one shadow (+ JSON info in metadata)
    report/report.json             audit_summary(): metrics with bootstrap intervals, epsilons
    report/roc.png, roc.csv        log-log ROC of every attack and its points
    report/scores.csv              per (target shadow, example): membership, statistic, attack scores
    manifest.json                  stage manifest (written when the report is complete)

Score conventions: the statistic is the logit-scaled confidence log p_y - log sum_{y'!=y} p_y'
(float64). Every attack score is "higher = more likely a member".
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from scipy import special, stats

from promptport.errors import BadInput, PromptportError
from promptport.fileio import atomic_path, check_writable_dir, read_json, write_json

FORMAT = "promptport.audit/1"
SPEC_FILE = "audit.json"
MASKS_FILE = "masks.safetensors"
SHADOW_DIR = "shadows"
REPORT_DIR = "report"
ATTACKS = ("online", "offline-logpdf", "offline-cdf", "global-threshold")
VARIANCES = ("per-example", "global")
# (attack, variance) pairs in the report; the key is "attack/variance" (global-threshold has none).
REPORT_ATTACKS = (
    ("online", "global"),
    ("online", "per-example"),
    ("offline-cdf", "global"),
    ("offline-cdf", "per-example"),
    ("offline-logpdf", "global"),
    ("offline-logpdf", "per-example"),
    ("global-threshold", None),
)
PRIMARY = "online/global"  # Carlini et al. recommend the fixed (global) variance below ~64 shadows
FPR_LEVELS = (0.001, 0.01)


# ------------------------------------------------------------------------------------------ statistic


def logit_confidence(logits, labels) -> np.ndarray:
    """log p_y - log(sum_{y' != y} p_y') of softmax(logits), computed as z_y - logsumexp(z_{-y}) in float64.

    The softmax normaliser cancels, so this never forms probabilities: no underflow at confident
    predictions, where the ratio p/(1-p) computed naively would round to inf.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError("logits need a class axis with at least two classes")
    y = np.broadcast_to(np.asarray(labels, dtype=np.int64), z.shape[:-1])[..., None]
    z_y = np.take_along_axis(z, y, -1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y, -np.inf, -1)
    return z_y - special.logsumexp(others, axis=-1)


# ------------------------------------------------------------------------------------------ attacks


def _gaussian(
    ref_stats: np.ndarray, select: np.ndarray, variance: str
) -> tuple[np.ndarray, np.ndarray]:
    """Median and standard deviation (ddof 0) of each example's statistic over the selected references.

    TF Privacy semantics (`compute_score_lira`): examples without any selected reference take the mean of
    the other examples' values; 'global' variance pools the residuals from each example's median over all
    references and examples. One departure: with fewer than two selected references the per-example
    standard deviation is undefined (TF Privacy gets 0) and we use the global one.
    """
    vals = np.where(select, ref_stats, np.nan)
    count = select.sum(0)
    if not count.any():
        raise PromptportError(
            "need at least one reference shadow on each side (IN and OUT) of some example"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are handled below
        mu = np.nanmedian(vals, axis=0)
        mu = np.where(np.isnan(mu), np.nanmean(mu), mu)
        global_sd = np.nanstd(vals - mu)
        if variance == "global":
            sd = np.full_like(mu, global_sd)
        elif variance == "per-example":
            sd = np.where(count >= 2, np.nanstd(vals, axis=0), global_sd)
        else:
            raise BadInput(
                "variance", f"unknown variance '{variance}' (choose {', '.join(VARIANCES)})"
            )
    return mu, sd


def lira_scores(
    target_stat, ref_stats, ref_in, attack: str = "online", variance: str = "global"
) -> np.ndarray:
    """Membership scores (higher = member) of the target's statistics [P] given reference shadows.

    ref_stats [R, P]: the statistic of every example under each reference shadow; ref_in [R, P]: whether
    the example was in that shadow's training set.

    * online: log N(t; mu_in, s_in) - log N(t; mu_out, s_out)  (= -TF Privacy option 'both')
    * offline-logpdf: -log N(t; mu_out, s_out), two-sided, as in the authors' reference code (= -TFP 'out')
    * offline-cdf: log Pr[Z <= t], Z ~ N(mu_out, s_out), one-sided, as in the paper's text
    * global-threshold: t itself (Yeom et al.'s threshold on the confidence; no references)
    """
    t = np.asarray(target_stat, dtype=np.float64)
    if attack == "global-threshold":
        return t.copy()
    if attack not in ATTACKS:
        raise BadInput("attack", f"unknown attack '{attack}' (choose {', '.join(ATTACKS)})")
    ref_stats = np.asarray(ref_stats, dtype=np.float64)
    ref_in = np.asarray(ref_in, dtype=bool)
    if ref_stats.shape != ref_in.shape or ref_stats.shape[1:] != t.shape:
        raise ValueError(
            f"shapes disagree: target {t.shape}, references {ref_stats.shape}, masks {ref_in.shape}"
        )
    mu_out, sd_out = _gaussian(ref_stats, ~ref_in, variance)
    sd_out = sd_out + 1e-30
    if attack == "online":
        mu_in, sd_in = _gaussian(ref_stats, ref_in, variance)
        return stats.norm.logpdf(t, mu_in, sd_in + 1e-30) - stats.norm.logpdf(t, mu_out, sd_out)
    if attack == "offline-logpdf":
        return -stats.norm.logpdf(t, mu_out, sd_out)
    return stats.norm.logcdf(t, mu_out, sd_out)


def leave_one_out(
    stat: np.ndarray, masks: np.ndarray, attack: str = "online", variance: str = "global"
) -> np.ndarray:
    """Scores [N, P]: row s attacks shadow s with the other N-1 shadows as references; masks[s] is the truth."""
    stat, masks = np.asarray(stat, dtype=np.float64), np.asarray(masks, dtype=bool)
    n = stat.shape[0]
    if n < 3:
        raise PromptportError(f"leave-one-shadow-out needs at least 3 shadows, got {n}")
    out = np.empty_like(stat)
    for s in range(n):  # a loop over shadows (tens), each vectorised over all examples
        ref = np.arange(n) != s
        out[s] = lira_scores(stat[s], stat[ref], masks[ref], attack, variance)
    return out


# ------------------------------------------------------------------------------------------ metrics


def _finite(scores: np.ndarray) -> np.ndarray:
    """ROC curves only need the order; map +-inf to the largest finite values so sklearn accepts them."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(s).any():
        raise PromptportError("attack scores contain NaN")
    big = np.finfo(np.float64).max
    return np.clip(s, -big, big)


def roc(scores, members) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(
        np.asarray(members, dtype=bool).ravel(), _finite(scores), drop_intermediate=False
    )
    return fpr, tpr


def roc_curve_fast(scores, members) -> tuple[np.ndarray, np.ndarray]:
    """The same points as sklearn's roc_curve(drop_intermediate=False), without its per-call input
    validation, which dominates the cost of the thousands of small curves a bootstrap draws."""
    s, m = _finite(scores), np.asarray(members, dtype=bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[np.flatnonzero(np.diff(s)), m.size - 1]  # last index of each distinct score
    tps = np.cumsum(m)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def roc_metrics(scores, members, fpr_levels=FPR_LEVELS, fast: bool = False) -> dict:
    """AUC, best-threshold balanced accuracy (as Carlini et al. report it), and TPR at FPR <= each level."""
    from sklearn.metrics import auc

    fpr, tpr = (roc_curve_fast if fast else roc)(scores, members)
    out = {
        "auc": float(auc(fpr, tpr)),
        "balanced_accuracy": float(np.max(1 - (fpr + (1 - tpr)) / 2)),
    }
    for level in fpr_levels:
        out[tpr_key(level)] = float(tpr[fpr <= level].max())
    return out


def tpr_key(level: float) -> str:
    return f"tpr_at_{level * 100:g}%fpr"


def bootstrap_intervals(
    scores: np.ndarray,
    members: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    fpr_levels=FPR_LEVELS,
) -> dict:
    """Percentile intervals from resampling *examples* (whole columns of [N, P]): the N guesses about one
    example share its difficulty, so resampling pairs would understate the uncertainty."""
    scores, members = np.asarray(scores), np.asarray(members, dtype=bool)
    rng = np.random.default_rng(seed)
    p = scores.shape[-1]
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, p, p)
        m = members[..., idx]
        if m.all() or not m.any():
            continue
        for k, v in roc_metrics(scores[..., idx], m, fpr_levels, fast=True).items():
            draws.setdefault(k, []).append(v)
    a = (1 - level) / 2
    return {k: [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))] for k, v in draws.items()}


def clopper_pearson(k, n, confidence: float = 0.95, side: str = "upper") -> np.ndarray:
    """One-sided exact binomial bound on a rate from k successes out of n."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        if side == "upper":
            return np.where(k >= n, 1.0, stats.beta.ppf(confidence, k + 1, n - k))
        return np.where(k <= 0, 0.0, stats.beta.ppf(1 - confidence, k, n - k + 1))


def empirical_epsilon(
    fpr,
    tpr,
    delta: float,
    *,
    n_neg: int | None = None,
    n_pos: int | None = None,
    confidence: float | None = None,
) -> float:
    """Lower bound on epsilon implied by an attack: an (eps, delta)-DP mechanism forces, at every threshold,
    TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta, so

        eps >= max over thresholds of max(log((TPR - delta) / FPR), log((1 - delta - FPR) / (1 - TPR))).

    Terms whose numerator is <= 0 bound nothing and are skipped; a zero denominator would make the point
    estimate infinite from finitely many guesses and is skipped too. With `confidence`, FPR is replaced by
    its one-sided Clopper-Pearson upper bound and TPR by its lower bound (each at that confidence), which
    never divides by zero: the high-confidence version (Jagielski et al. 2020). Both are maximised over
    thresholds without correction for that choice, and the pairs of a leave-one-out audit are not
    independent trials, so read them as estimates, not certificates.
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    if confidence is not None:
        if not (n_neg and n_pos):
            raise ValueError("the Clopper-Pearson version needs n_neg and n_pos")
        fpr = clopper_pearson(np.round(fpr * n_neg), n_neg, confidence, "upper")
        tpr = clopper_pearson(np.round(tpr * n_pos), n_pos, confidence, "lower")
    best = 0.0
    for num, den in ((tpr - delta, fpr), (1 - delta - fpr, 1 - tpr)):
        ok = (num > 0) & (den > 0)
        if ok.any():
            best = max(best, float(np.max(np.log(num[ok]) - np.log(den[ok]))))
    return best


# ------------------------------------------------------------------------------------------ spec & storage


@dataclass
class AuditSpec:
    """What is audited: the model, the data pool and the exact prompt-tuning configuration of the shadows."""

    model: str
    task: str
    data: str | None = None
    split: str = "train"
    pool_size: int = 500
    n_shadows: int = 16
    pkeep: float = 0.5
    seed: int = 0
    dtype: str = "float32"
    text_column: str | None = None
    label_column: str | None = None
    tune: dict = field(default_factory=dict)  # asdict(TuneConfig), DP config nested under "dp"

    def validate(self) -> None:
        if self.pool_size < 4:
            raise BadInput("pool_size", f"must be at least 4, got {self.pool_size}")
        if self.n_shadows < 3:
            raise BadInput(
                "shadows", f"leave-one-shadow-out needs at least 3 shadows, got {self.n_shadows}"
            )
        if not 0.0 < self.pkeep < 1.0:
            raise BadInput("pkeep", f"must be in (0, 1), got {self.pkeep}")

    @classmethod
    def from_dict(cls, d: dict) -> AuditSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_masks(n_shadows: int, n_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    """[N, P] bool: every example is IN for exactly round(pkeep * N) shadows (as in Carlini et al.'s code),
    so each example has the same number of IN and OUT references; subset sizes vary around pkeep * P."""
    rng = np.random.default_rng([seed, 0x6C697261])
    order = rng.random((n_shadows, n_examples)).argsort(0).argsort(0)
    return order < int(round(pkeep * n_shadows))


def parse_shadow_ids(text: str | None, n_shadows: int) -> list[int]:
    """'0-7', '3', '0,2,5-6' -> sorted ids; None -> all."""
    if text is None or str(text).strip() in ("", "all"):
        return list(range(n_shadows))
    ids: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise BadInput("shadow_ids", f"'{text}' is not a list of ids or ranges like 0-7,12")
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if b < a:
            raise BadInput("shadow_ids", f"range '{part.strip()}' runs backwards")
        ids.update(range(a, b + 1))
    bad = [i for i in ids if i >= n_shadows]
    if bad:
        raise BadInput(
            "shadow_ids",
            f"id {min(bad)} is out of range: the audit has {n_shadows} shadows (0-{n_shadows - 1})",
        )
    return sorted(ids)


def shadow_path(out: Path, s: int) -> Path:
    return Path(out) / SHADOW_DIR / f"shadow_{s:03d}.safetensors"


def _save_tensors(path: Path, tensors: dict[str, np.ndarray], meta: dict | None = None) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(tmp),
            metadata={"format": FORMAT, "info": json.dumps(meta or {})},
        )


def _load_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("info", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise PromptportError(
            f"{path} is not a readable audit file ({e}); delete it and rerun with --resume"
        ) from None


def save_shadow(out: Path, s: int, logits: np.ndarray, mask: np.ndarray, info: dict) -> Path:
    p = shadow_path(out, s)
    _save_tensors(
        p,
        {"logits": np.asarray(logits, dtype=np.float32), "mask": np.asarray(mask, dtype=np.uint8)},
        dict(info, shadow=s),
    )
    return p


def finished_shadows(out: Path, n_shadows: int) -> list[int]:
    return [s for s in range(n_shadows) if shadow_path(out, s).is_file()]


@dataclass
class ShadowSet:
    logits: np.ndarray  # [N, P, C] float32
    masks: np.ndarray  # [N, P] bool
    labels: np.ndarray  # [P]
    pool_index: np.ndarray  # [P]
    ids: list[int]
    info: list[dict]
    spec: AuditSpec


def load_shadows(out: str | Path) -> ShadowSet:
    """The finished shadows of an audit directory (checks each one against the saved masks)."""
    out = Path(out)
    spec = read_spec(out)
    tensors, _ = _load_tensors(out / MASKS_FILE)
    masks = tensors["masks"].astype(bool)
    logits, infos, ids = [], [], []
    for s in finished_shadows(out, spec.n_shadows):
        t, info = _load_tensors(shadow_path(out, s))
        if (
            not np.array_equal(t["mask"].astype(bool), masks[s])
            or t["logits"].shape[0] != masks.shape[1]
        ):
            raise PromptportError(
                f"{shadow_path(out, s)} does not belong to this audit (its mask differs)"
            )
        logits.append(t["logits"])
        infos.append(info)
        ids.append(s)
    if not ids:
        raise PromptportError(f"no finished shadows in {out / SHADOW_DIR}")
    return ShadowSet(
        np.stack(logits), masks[ids], tensors["labels"], tensors["pool_index"], ids, infos, spec
    )


def read_spec(out: Path) -> AuditSpec:
    p = Path(out) / SPEC_FILE
    if not p.is_file():
        raise BadInput("out", f"'{out}' is not an audit directory (no {SPEC_FILE})")
    return AuditSpec.from_dict(read_json(p)["spec"])


def _spec_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _spec_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            diffs.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return diffs


# ------------------------------------------------------------------------------------------ shadow training


def tune_config_from_spec(spec: AuditSpec):
    from promptport.tune import TuneConfig

    return TuneConfig.from_dict(spec.tune)


TUNE_OPTIONS = (
    "n_tokens",
    "init",
    "init_text",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_length",
    "eval_batch_size",
)
DP_OPTIONS = ("epsilon", "delta", "max_grad_norm", "accountant")


def tune_settings(
    values: dict, given: set[str] | None = None, like: str | Path | None = None
) -> dict:
    """The shadows' tuning settings (a TuneConfig dict) from command-line values; with `like`, from a prompt
    artifact's recorded configuration, overridden by the options in `given` (set on the command line)."""
    given = set(values) if given is None else set(given)
    base: dict = {}
    if like is not None:
        from promptport.prompt import load_prompt

        cfg = (load_prompt(like).meta.get("training") or {}).get("config")
        if not isinstance(cfg, dict):
            raise BadInput(
                "like",
                f"'{like}' records no tuning configuration (was it made by promptport tune?)",
            )
        base = dict(cfg)
    tune = {k: values[k] for k in TUNE_OPTIONS if k in values and (not base or k in given)}
    tune = {**{k: v for k, v in base.items() if k in TUNE_OPTIONS}, **tune}
    dp_given = [
        k
        for k in DP_OPTIONS
        if k in given and values.get(k) is not None and k in ("epsilon", "delta")
    ]
    if values.get("dp"):
        if values.get("epsilon") is None and not (base.get("dp") or {}).get("epsilon"):
            raise BadInput("epsilon", "--dp needs a target --epsilon")
        dp = dict(base.get("dp") or {})
        dp.update({k: values[k] for k in DP_OPTIONS if k in values and (k in given or k not in dp)})
        tune["dp"] = {k: v for k, v in dp.items() if k in DP_OPTIONS + ("secure_rng",)}
    elif dp_given:
        raise BadInput(dp_given[0], "is a DP setting: add --dp")
    else:
        tune["dp"] = base.get("dp") if base and "dp" not in given else None
    tune["seed"] = int(values.get("seed", 0) or 0)
    return tune


def _json_safe(x):
    return json.loads(
        json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    )


def prepare(out: str | Path, spec: AuditSpec, lm=None):
    """Create (or re-open) the audit directory: spec, pool and masks. Deterministic in the spec, so several
    processes or machines that start slices of the same audit write identical files."""
    from promptport.data import load_split
    from promptport.tasks import get_task

    spec.validate()
    out = check_writable_dir(out)
    task = get_task(spec.task)
    ds = load_split(
        task, spec.data, spec.split, text_column=spec.text_column, label_column=spec.label_column
    )
    if ds.labels is None:
        raise BadInput("data", "the audit pool needs labels")
    if spec.pool_size > len(ds):
        raise BadInput(
            "pool_size", f"{spec.pool_size} exceeds the {len(ds)} examples of split '{spec.split}'"
        )
    rng = np.random.default_rng([spec.seed, 0x706F6F6C])
    pool_index = np.sort(rng.choice(len(ds), spec.pool_size, replace=False))
    pool = ds.select(pool_index.tolist())
    masks = make_masks(spec.n_shadows, spec.pool_size, spec.pkeep, spec.seed)
    labels = np.asarray(pool.labels, dtype=np.int64)
    h = hashlib.sha256()
    for text, y in zip(pool.texts(task), pool.labels):
        h.update(f"{y}\t{text}\n".encode())
    doc = {
        "format": FORMAT,
        "spec": asdict(spec),
        "pool": {
            "source": ds.source,
            "split": ds.split,
            "n_split": len(ds),
            "sha256": h.hexdigest(),
        },
    }
    existing = out / SPEC_FILE
    if existing.is_file():
        old = read_json(existing)
        diffs = _spec_diff(old.get("spec", {}), doc["spec"]) + _spec_diff(
            old.get("pool", {}), doc["pool"], "pool."
        )
        if diffs:
            raise BadInput(
                "out",
                f"'{out}' holds an audit of another configuration ({'; '.join(diffs[:4])}); "
                "use another --out",
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        _save_tensors(
            out / MASKS_FILE,
            {
                "masks": masks.astype(np.uint8),
                "labels": labels,
                "pool_index": pool_index.astype(np.int64),
            },
        )
        write_json(existing, doc)
    return task, pool, masks, labels


def train_shadows(
    out: str | Path,
    spec: AuditSpec,
    *,
    shadow_ids: list[int] | None = None,
    resume: bool = False,
    lm=None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Train the requested shadows (all by default) and store each one's pool logits; returns timings.

    The model is loaded once; each shadow is a fresh prompt trained by `tune.train_prompt` on its IN
    subset with the audited configuration and its own seed. A finished shadow file is never recomputed
    when `resume` is set; without it, an existing one is an error (so nothing is silently mixed).

    Under `accelerate launch --num_processes N` the shadows are dealt out to the processes (shadow s to
    process s mod N among those to train); each shadow depends only on its seed, so the files are the
    ones a single process writes. The returned timings cover all processes.
    """
    from promptport.distributed import group

    out = Path(out)
    dist = group(device)
    with (
        dist.main_first()
    ):  # the main process writes spec and masks; the others then read and check them
        task, pool, masks, labels = prepare(out, spec)
    cfg = tune_config_from_spec(spec)
    ids = list(range(spec.n_shadows)) if shadow_ids is None else list(shadow_ids)
    done = [s for s in ids if shadow_path(out, s).is_file()]
    dist.barrier()  # every process has listed the finished shadows before any writes a new one
    if done and not resume:
        raise BadInput(
            "out",
            f"shadow {done[0]} already exists in '{out}'; pass --resume to keep the finished "
            "shadows, or choose another --out",
        )
    todo = [s for s in ids if s not in done]
    timings = {"trained": [], "skipped": done, "seconds": []}
    if not todo:
        return timings
    if dist.world > 1:
        mine = todo[dist.rank :: dist.world]
        mine_timings = _train_shadow_list(
            out, spec, mine, task, pool, masks, labels, cfg, lm, device, progress and dist.is_main
        )
        parts = dist.gather_objects([mine_timings])
        dist.barrier()
        for part in parts:
            timings["trained"] += part["trained"]
            timings["seconds"] += part["seconds"]
        order = np.argsort(timings["trained"], kind="stable")
        timings["trained"] = [timings["trained"][i] for i in order]
        timings["seconds"] = [timings["seconds"][i] for i in order]
        return timings
    return dict(
        timings,
        **_train_shadow_list(out, spec, todo, task, pool, masks, labels, cfg, lm, device, progress),
    )


def _train_shadow_list(
    out: Path,
    spec: AuditSpec,
    todo: list[int],
    task,
    pool,
    masks,
    labels,
    cfg,
    lm,
    device,
    progress: bool,
) -> dict:
    """Train the shadows `todo` in this process; returns {"trained", "seconds"}."""
    from promptport.classify import PromptClassifier
    from promptport.models import LoadedModel, load_model
    from promptport.runtime import seed_everything
    from promptport.tune import train_prompt

    timings = {"trained": [], "seconds": []}
    if not todo:
        return timings
    lm = (
        lm
        if isinstance(lm, LoadedModel)
        else load_model(spec.model, dtype=spec.dtype, device=device)
    )
    clf = PromptClassifier(lm.model, lm.tokenizer, task, max_length=cfg.max_length)
    enc = clf.encode(pool)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="shadows", unit="shadow", dynamic_ncols=True)
    for s in todo:
        t0 = time.perf_counter()
        seed = int(np.random.SeedSequence([spec.seed, s]).generate_state(1)[0] % (2**31))
        seed_everything(seed)
        members = np.flatnonzero(masks[s])
        res = train_prompt(clf, enc.subset(members.tolist()), None, replace(cfg, seed=seed))
        logits = clf.predict_logits(enc, res.embeddings, batch_size=cfg.eval_batch_size).numpy()
        pred = logits.argmax(-1)
        secs = time.perf_counter() - t0
        info = {
            "seed": seed,
            "n_in": int(len(members)),
            "seconds": round(secs, 3),
            "acc_in": float((pred == labels)[masks[s]].mean()),
            "acc_out": float((pred == labels)[~masks[s]].mean()) if (~masks[s]).any() else None,
            "privacy": _json_safe(getattr(res, "privacy", None)),
            "model": lm.info.to_dict(),
        }
        save_shadow(out, s, logits, masks[s], info)
        timings["trained"].append(s)
        timings["seconds"].append(secs)
        if bar is not None:
            bar.set_postfix(
                shadow=s, acc_in=f"{info['acc_in']:.2f}", acc_out=f"{info['acc_out']:.2f}"
            )
            bar.update(1)
    if bar is not None:
        bar.close()
    return timings


# ------------------------------------------------------------------------------------------ report


def theoretical_epsilon(spec: AuditSpec, infos: list[dict]) -> tuple[float | None, float | None]:
    """(epsilon, delta) the shadows were trained to (the largest over shadows, as accounted by the tuner);
    (None, None) without DP: no guarantee."""
    dp = (spec.tune or {}).get("dp")
    if not dp:
        return None, None
    priv = [
        i["privacy"]
        for i in infos
        if isinstance(i.get("privacy"), dict) and i["privacy"].get("epsilon")
    ]
    eps = max([float(q["epsilon"]) for q in priv], default=float(dp["epsilon"]))
    delta = max(
        [float(q["delta"]) for q in priv if q.get("delta") is not None], default=dp.get("delta")
    )
    return eps, delta


def attack_key(attack: str, variance: str | None) -> str:
    return attack if variance is None else f"{attack}/{variance}"


def build_report(
    out: str | Path,
    *,
    n_boot: int = 1000,
    delta: float | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    min_shadows: int = 3,
) -> dict:
    """Score all attacks leave-one-shadow-out on the finished shadows; write report/ and return the summary."""
    t0 = time.perf_counter()
    out = Path(out)
    sh = load_shadows(out)
    n, p = sh.masks.shape
    if n < min_shadows:
        raise PromptportError(
            f"only {n} of {sh.spec.n_shadows} shadows are finished; the report needs at least "
            f"{min_shadows}"
        )
    stat = logit_confidence(sh.logits, sh.labels[None, :])
    members = sh.masks
    eps_theory, dp_delta = theoretical_epsilon(sh.spec, sh.info)
    delta = delta if delta is not None else (dp_delta if dp_delta is not None else 1e-5)
    n_pos, n_neg = int(members.sum()), int((~members).sum())
    rep_dir = out / REPORT_DIR
    rep_dir.mkdir(parents=True, exist_ok=True)
    attacks, all_scores, curves = {}, {}, {}
    for attack, variance in REPORT_ATTACKS:
        key = attack_key(attack, variance)
        scores = leave_one_out(stat, members, attack, variance or "global")
        fpr, tpr = roc(scores, members)
        m = roc_metrics(scores, members)
        ci = bootstrap_intervals(scores, members, n_boot=n_boot, seed=seed)
        m.update({f"{k}_ci": v for k, v in ci.items()})
        m["empirical_epsilon"] = empirical_epsilon(fpr, tpr, delta)
        m[f"empirical_epsilon_cp{round(confidence * 100)}"] = empirical_epsilon(
            fpr, tpr, delta, n_neg=n_neg, n_pos=n_pos, confidence=confidence
        )
        attacks[key], all_scores[key], curves[key] = m, scores, (fpr, tpr)
    files = _write_report_files(rep_dir, sh, stat, all_scores, curves)
    pred = sh.logits.argmax(-1)
    correct = pred == sh.labels[None, :]
    summary = {
        "format": "promptport.audit-report/1",
        "stage": "audit",
        "model": (sh.info[0].get("model") or {}).get("model_id", sh.spec.model),
        "task": sh.spec.task,
        "n_shadows": n,
        "n_shadows_planned": sh.spec.n_shadows,
        "shadow_ids": sh.ids,
        "n_examples": p,
        "n_guesses": n * p,
        "n_members": n_pos,
        "n_nonmembers": n_neg,
        "evaluation": "leave-one-shadow-out: each shadow is the target once, the others are the references",
        "statistic": "log p_y - log sum_{y'!=y} p_y' over the verbalizer classes (float64)",
        "primary": PRIMARY,
        "auc": attacks[PRIMARY]["auc"],
        "auc_ci": attacks[PRIMARY]["auc_ci"],
        "tpr_at_1%fpr": attacks[PRIMARY][tpr_key(0.01)],
        "tpr_at_0.1%fpr": attacks[PRIMARY][tpr_key(0.001)],
        "dp": bool(sh.spec.tune.get("dp")),
        "theoretical_epsilon": eps_theory,
        "delta": delta,
        "empirical_epsilon": max(a["empirical_epsilon"] for a in attacks.values()),
        f"empirical_epsilon_cp{round(confidence * 100)}": max(
            a[f"empirical_epsilon_cp{round(confidence * 100)}"] for a in attacks.values()
        ),
        "empirical_epsilon_note": "max over attacks and thresholds of the (eps, delta)-DP hypothesis-test bound; "
        f"the cp{round(confidence * 100)} version uses one-sided Clopper-Pearson bounds "
        "on FPR and TPR",
        "attacks": attacks,
        "shadow_accuracy_in": float(correct[members].mean()),
        "shadow_accuracy_out": float(correct[~members].mean()),
        "shadow_train_seconds": float(sum(i.get("seconds", 0.0) for i in sh.info)),
        "configuration": sh.spec.tune,
        "bootstrap": {
            "n": n_boot,
            "level": 0.95,
            "unit": "examples (all guesses about an example together)",
        },
        "files": files,
        "report_seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(rep_dir / "report.json", summary)
    if n == sh.spec.n_shadows:
        from promptport.manifest import write_manifest

        outputs = [shadow_path(out, s) for s in sh.ids] + [
            out / MASKS_FILE,
            out / SPEC_FILE,
            rep_dir / "report.json",
        ]
        outputs += [out / f for f in files.values()]
        write_manifest(
            out,
            stage="audit",
            config=sh.spec.tune,
            inputs={"spec": asdict(sh.spec), "model": sh.info[0].get("model")},
            outputs=outputs,
            seconds=summary["shadow_train_seconds"] + summary["report_seconds"],
        )
    return summary


def _write_report_files(
    rep_dir: Path, sh: ShadowSet, stat: np.ndarray, scores: dict, curves: dict
) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, p = stat.shape
    keys = list(scores)
    with atomic_path(rep_dir / "scores.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(
                ["target_shadow", "example", "pool_index", "label", "member", "statistic", *keys]
            )
            cols = np.stack([scores[k] for k in keys], -1)  # [N, P, A]
            for i, s in enumerate(sh.ids):
                for j in range(p):
                    w.writerow(
                        [
                            s,
                            j,
                            int(sh.pool_index[j]),
                            int(sh.labels[j]),
                            int(sh.masks[i, j]),
                            f"{stat[i, j]:.9g}",
                            *(f"{v:.9g}" for v in cols[i, j]),
                        ]
                    )
    with atomic_path(rep_dir / "roc.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["attack", "fpr", "tpr"])
            for k, (fpr, tpr) in curves.items():
                for a, b in zip(fpr, tpr):
                    w.writerow([k, f"{a:.6g}", f"{b:.6g}"])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo = 1.0 / max(1, int((~sh.masks).sum()))
    for k, (fpr, tpr) in curves.items():
        from sklearn.metrics import auc

        ax.plot(
            np.maximum(fpr, lo / 2),
            np.maximum(tpr, lo / 2),
            label=f"{k} (AUC {auc(fpr, tpr):.3f})",
            lw=2 if k == PRIMARY else 1,
        )
    ax.plot([lo / 2, 1], [lo / 2, 1], "k--", lw=0.8, label="chance")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo / 2, 1),
        ylim=(lo / 2, 1),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"LiRA on soft prompts ({n} shadows x {p} examples)",
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(rep_dir / "roc.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return {
        "roc_png": f"{REPORT_DIR}/roc.png",
        "roc_csv": f"{REPORT_DIR}/roc.csv",
        "scores_csv": f"{REPORT_DIR}/scores.csv",
        "report": f"{REPORT_DIR}/report.json",
    }


def roc_plot_path(out: str | Path) -> Path:
    return Path(out) / REPORT_DIR / "roc.png"


def audit_summary(out: str | Path) -> dict:
    """The report of an audit directory (built from its shadows if missing or older than a shadow)."""
    out = Path(out)
    rep = out / REPORT_DIR / "report.json"
    newest = max(
        (p.stat().st_mtime for p in (out / SHADOW_DIR).glob("shadow_*.safetensors")), default=0.0
    )
    if rep.is_file() and rep.stat().st_mtime >= newest:
        return read_json(rep)
    return build_report(out)


# ------------------------------------------------------------------------------------------ the stage


def audit(
    out: str | Path,
    spec: AuditSpec | None = None,
    *,
    shadow_ids: list[int] | str | None = None,
    resume: bool = False,
    report: bool = True,
    n_boot: int = 1000,
    delta: float | None = None,
    lm=None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Train the (requested) shadows, then, once all are finished, write the report.

    `spec=None` re-opens an existing audit directory (for --resume or --report-only style use).
    Returns {"trained", "skipped", "finished", "n_shadows", "seconds", "summary" (or None)}.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if spec is None:
        spec = read_spec(out)
    if isinstance(shadow_ids, str) or shadow_ids is None:
        shadow_ids = parse_shadow_ids(shadow_ids, spec.n_shadows)
    timings = train_shadows(
        out, spec, shadow_ids=shadow_ids, resume=resume, lm=lm, device=device, progress=progress
    )
    finished = finished_shadows(out, spec.n_shadows)
    summary = None
    if report and len(finished) == spec.n_shadows:
        from promptport.distributed import group

        dist = group(
            device
        )  # under a launcher: the main process writes the report, the others read it
        if dist.is_main:
            summary = build_report(out, n_boot=n_boot, delta=delta, seed=spec.seed)
        dist.barrier()
        if not dist.is_main:
            summary = read_json(out / REPORT_DIR / "report.json")
    return {
        **timings,
        "finished": finished,
        "n_shadows": spec.n_shadows,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "summary": summary,
    }


def format_summary(s: dict) -> str:
    ci = s["auc_ci"]
    eps = "none (no DP)" if s["theoretical_epsilon"] is None else f"{s['theoretical_epsilon']:.3g}"
    cp = next(k for k in s if k.startswith("empirical_epsilon_cp"))
    return (
        f"audit: {s['primary']} AUC {s['auc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}], TPR@1%FPR "
        f"{s['tpr_at_1%fpr']:.4f}, TPR@0.1%FPR {s['tpr_at_0.1%fpr']:.4f}; epsilon: theoretical {eps}, "
        f"empirical lower bound {s['empirical_epsilon']:.3g} ({cp.split('_')[-1]}: {s[cp]:.3g}) at delta "
        f"{s['delta']:.0e} ({s['n_shadows']} shadows x {s['n_examples']} examples)"
    )
