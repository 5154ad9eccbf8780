"""Membership-inference mathematics: LiRA and RMIA scores, ROC metrics, and a valid empirical-ε bound.

Everything here works on arrays: `stat[N, P]` (a per-example statistic under each of N shadow models)
and `masks[N, P]` (True = the example was in that shadow's training set). The audit stage
(`promptport.audit`) trains the shadows; this module turns their outputs into privacy figures, so that
every figure can be checked on synthetic data where the right answer is known (`null_study`).

Three rules keep the figures honest:

* **Leave-one-shadow-out with equal reference counts.** With every example IN for exactly N/2 shadows,
  removing the target leaves N/2-1 IN and N/2 OUT references when the target had the example and the
  reverse when it did not: the reference counts would depend on the answer, and the online attack
  reads below chance on null data. `leave_one_out` keeps, per example, the same number of IN (and of
  OUT) references for every target: the smallest count over targets (Carlini et al.'s reference code
  truncates the same way), the references dropped chosen at random with a fixed seed.
* **A bound is a bound.** `epsilon_lower_bound` chooses the attack and threshold on one half of the
  target shadows and counts true and false positives on the other half, then applies one-sided
  Clopper-Pearson bounds (Bonferroni-split so both hold together at the stated confidence) to the
  (ε, δ)-DP hypothesis-test inequalities (Kairouz et al. 2015; Jagielski et al. 2020; Nasr et al. 2021).
* **State the assumption.** Clopper-Pearson treats the counted guesses as independent trials. Within one
  target shadow, examples are IN independently with probability 1/2 (the mask design), which is the
  setting of Steinke, Nasr & Jagielski (2023), where many guesses about one model give a valid audit;
  guesses about one example under different targets share that example. The report says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special, stats

from promptport.errors import BadInput, PromptportError

ATTACKS = ("online", "offline-logpdf", "offline-cdf", "global-threshold", "rmia")
VARIANCES = ("per-example", "global")
# (attack, variance) pairs in the report; the key is "attack/variance" (the others have no variance).
REPORT_ATTACKS = (
    ("online", "global"),
    ("online", "per-example"),
    ("offline-cdf", "global"),
    ("offline-cdf", "per-example"),
    ("offline-logpdf", "global"),
    ("offline-logpdf", "per-example"),
    ("global-threshold", None),
    ("rmia", None),
)
PRIMARY = "online/global"  # Carlini et al. recommend the fixed (global) variance below ~64 shadows
FPR_LEVELS = (0.001, 0.01)
BOUND_CONFIDENCE = 0.95
RMIA_OFFLINE_A, RMIA_GAMMA = 0.3, 1.0


# The audit's mask design (promptport.audit uses it; the null-data check below uses the same one).
def make_masks(n_shadows: int, n_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    """[N, P] bool: every example IN for exactly k = round(pkeep * N) shadows (as in Carlini et al.'s
    code, so each example has the same number of IN and OUT references) *and* every shadow trained on
    round(pkeep * P) examples (within one). Carlini et al.'s columns-only design lets subset sizes vary;
    a DP mechanism's output may depend on the set size (its sampling rate does), and pooling guesses
    over targets of different sizes then moves the AUC away from 0.5 on data where membership has no
    effect. A balanced start is mixed by random 2x2 swaps, which keep every row and column sum."""
    if n_shadows < 1 or n_examples < 1:
        raise BadInput("shadows", "an audit needs at least one shadow and one example")
    rng = np.random.default_rng([seed, 0x6C697261])
    k = int(round(pkeep * n_shadows))
    # example j is IN for k consecutive shadows starting at j*k (mod N): columns sum to k, rows to
    # within one of k*P/N
    start = (np.arange(n_examples) * k) % n_shadows
    m = ((np.arange(n_shadows)[:, None] - start[None, :]) % n_shadows) < k
    draws = rng.integers(0, [n_shadows, n_shadows, n_examples, n_examples], (8 * m.size, 4))
    for r1, r2, c1, c2 in draws.tolist():
        if m[r1, c1] and m[r2, c2] and not m[r1, c2] and not m[r2, c1]:
            m[r1, c1] = m[r2, c2] = False
            m[r1, c2] = m[r2, c1] = True
    return m[rng.permutation(n_shadows)][:, rng.permutation(n_examples)]


def attack_key(attack: str, variance: str | None) -> str:
    return attack if variance is None else f"{attack}/{variance}"


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
    import warnings

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
    target_stat,
    ref_stats,
    ref_in,
    attack: str = "online",
    variance: str = "global",
    ref_out=None,
) -> np.ndarray:
    """Membership scores (higher = member) of the target's statistics [P] given reference shadows.

    ref_stats [R, P]: the statistic of every example under each reference shadow; ref_in [R, P]: the
    IN references to use; ref_out [R, P] the OUT references (default: every reference not IN).

    * online: log N(t; mu_in, s_in) - log N(t; mu_out, s_out)  (= -TF Privacy option 'both')
    * offline-logpdf: -log N(t; mu_out, s_out), two-sided, as in the authors' reference code (= -TFP 'out')
    * offline-cdf: log Pr[Z <= t], Z ~ N(mu_out, s_out), one-sided, as in the paper's text
    * global-threshold: t itself (Yeom et al.'s threshold on the confidence; no references)
    """
    t = np.asarray(target_stat, dtype=np.float64)
    if attack == "global-threshold":
        return t.copy()
    if attack not in ATTACKS or attack == "rmia":
        raise BadInput("attack", f"unknown LiRA attack '{attack}' (choose {', '.join(ATTACKS)})")
    ref_stats = np.asarray(ref_stats, dtype=np.float64)
    ref_in = np.asarray(ref_in, dtype=bool)
    ref_out = ~ref_in if ref_out is None else np.asarray(ref_out, dtype=bool)
    if ref_stats.shape != ref_in.shape or ref_stats.shape[1:] != t.shape:
        raise ValueError(
            f"shapes disagree: target {t.shape}, references {ref_stats.shape}, masks {ref_in.shape}"
        )
    mu_out, sd_out = _gaussian(ref_stats, ref_out, variance)
    sd_out = sd_out + 1e-30
    if attack == "online":
        mu_in, sd_in = _gaussian(ref_stats, ref_in, variance)
        return stats.norm.logpdf(t, mu_in, sd_in + 1e-30) - stats.norm.logpdf(t, mu_out, sd_out)
    if attack == "offline-logpdf":
        return -stats.norm.logpdf(t, mu_out, sd_out)
    return stats.norm.logcdf(t, mu_out, sd_out)


def _mean_selected(values: np.ndarray, select: np.ndarray) -> np.ndarray:
    """Mean over the selected rows of each column; a column with none takes the mean of the others."""
    count = select.sum(0)
    mean = np.where(count > 0, (values * select).sum(0) / np.maximum(count, 1), np.nan)
    return np.where(np.isnan(mean), np.nanmean(mean), mean)


def rmia_scores(
    target_x,
    ref_x,
    ref_x_out,
    target_z,
    ref_z,
    ref_z_out,
    offline_a: float = RMIA_OFFLINE_A,
    gamma: float = RMIA_GAMMA,
) -> np.ndarray:
    """RMIA (Zarifzadeh et al., ICML 2024), offline: the share of population points z for which the
    likelihood ratio (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) exceeds gamma.

    Signals are the probabilities of the true label: target_x [P] under the target, ref_x [R, P] under
    the references, ref_x_out [R, P] which references are OUT for x (likewise target_z, ref_z,
    ref_z_out for the population). Pr(x) comes from the OUT references with the paper's offline
    approximation Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2 (as privacy_meter's `run_rmia`, whose
    defaults a = 0.3 and gamma = 1 we keep).
    """
    tx, rx = np.asarray(target_x, np.float64), np.asarray(ref_x, np.float64)
    tz, rz = np.asarray(target_z, np.float64), np.asarray(ref_z, np.float64)
    p_x = (1 + offline_a) / 2 * _mean_selected(rx, np.asarray(ref_x_out, bool)) + (
        1 - offline_a
    ) / 2
    p_z = (1 + offline_a) / 2 * _mean_selected(rz, np.asarray(ref_z_out, bool)) + (
        1 - offline_a
    ) / 2
    ratio_x, ratio_z = tx / p_x, np.sort(tz / p_z)
    # share of z with ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z)


def _equal_reference_selection(
    masks: np.ndarray, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each target s, the IN and OUT references [N-1, P] to use, with counts per example that do not
    depend on the target: per example, the smallest count over targets (the references dropped are
    drawn at random with a fixed seed, so any of them is equally likely to go)."""
    n = masks.shape[0]
    others = [np.arange(n) != s for s in range(n)]
    in_counts = np.stack([masks[o].sum(0) for o in others])  # [N, P]
    out_counts = np.stack([(~masks[o]).sum(0) for o in others])
    k_in, k_out = in_counts.min(0), out_counts.min(0)  # [P]
    rng = np.random.default_rng([seed, 0x726566])
    sel_in: list[np.ndarray] = []
    sel_out: list[np.ndarray] = []
    for s in range(n):
        ref = masks[others[s]]
        keys = rng.random(ref.shape)
        for side, k, acc in ((ref, k_in, sel_in), (~ref, k_out, sel_out)):
            rank = np.where(side, keys, np.inf).argsort(0).argsort(0)
            acc.append(side & (rank < k[None, :]))
    return sel_in, sel_out


def leave_one_out(
    stat: np.ndarray,
    masks: np.ndarray,
    attack: str = "online",
    variance: str = "global",
    *,
    prob: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Scores [N, P]: row s attacks shadow s with the other N-1 shadows as references; masks[s] is the
    truth. Reference counts are equalised (module docstring); `prob` [N, P] is the true-label
    probability that RMIA reads (default: from the statistic)."""
    stat, masks = np.asarray(stat, dtype=np.float64), np.asarray(masks, dtype=bool)
    n = stat.shape[0]
    if n < 3:
        raise PromptportError(f"leave-one-shadow-out needs at least 3 shadows, got {n}")
    sel_in, sel_out = _equal_reference_selection(masks, seed)
    if prob is None:  # p_y = sigmoid(log p_y - log(1 - p_y)), exact for any number of classes
        prob = special.expit(stat)
    out = np.empty_like(stat)
    for s in range(n):  # a loop over shadows (tens), each vectorised over all examples
        ref = np.arange(n) != s
        if attack == "rmia":
            # the audited pool is RMIA's population z too: every example plays x and z
            out[s] = rmia_scores(prob[s], prob[ref], sel_out[s], prob[s], prob[ref], sel_out[s])
        else:
            out[s] = lira_scores(stat[s], stat[ref], sel_in[s], attack, variance, sel_out[s])
    return out


def all_attack_scores(
    stat: np.ndarray, masks: np.ndarray, prob: np.ndarray | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Leave-one-out scores [N, P] of every attack in REPORT_ATTACKS, keyed by attack_key."""
    return {
        attack_key(a, v): leave_one_out(stat, masks, a, v or "global", prob=prob, seed=seed)
        for a, v in REPORT_ATTACKS
    }


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


def roc_counts(scores, members) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, false positives, true positives) for the rule 'member if score >= threshold', one
    entry per distinct score, highest threshold first."""
    s, m = _finite(scores), np.asarray(members, dtype=bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[np.flatnonzero(np.diff(s)), m.size - 1]  # last index of each distinct score
    tps = np.cumsum(m)[last]
    return s[last], last + 1 - tps, tps


def roc_curve_fast(scores, members) -> tuple[np.ndarray, np.ndarray]:
    """The same points as sklearn's roc_curve(drop_intermediate=False), without its per-call input
    validation, which dominates the cost of the thousands of small curves a bootstrap draws."""
    _, fps, tps = roc_counts(scores, members)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def tpr_key(level: float) -> str:
    return f"tpr_at_{level * 100:g}%fpr"


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


BOOTSTRAP_UNIT = {
    "two_way": "shadows and examples, resampled independently (two-way bootstrap, Owen 2007): the "
    "guesses about one example share its difficulty, and the guesses of one target shadow share "
    "that shadow's training run; conservative (coverage >= nominal in benchmarks/audit_ci_coverage)",
    "examples": "examples (all guesses about an example together); shadows held fixed",
}


def bootstrap_intervals(
    scores: np.ndarray,
    members: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    fpr_levels=FPR_LEVELS,
    unit: str = "two_way",
) -> dict:
    """Percentile intervals of every roc_metrics figure over [N, P] guesses (N target shadows).

    unit "two_way" resamples target shadows (rows) and examples (columns) independently; "examples"
    resamples columns only. Examples-only intervals hold the shadows fixed, so they miss how much the
    AUC moves with the shadows' training runs: on null audits (simulated, and real shadows with fresh
    masks) they covered 0.5 in 0.85-0.97 of repetitions, about 0.93 overall, at 0.95 nominal; the
    two-way interval in 0.97-1.00, about 40% wider (benchmarks/audit_ci_coverage.json)."""
    if unit not in BOOTSTRAP_UNIT:
        raise BadInput(
            "unit", f"unknown bootstrap unit '{unit}' (choose {', '.join(BOOTSTRAP_UNIT)})"
        )
    scores, members = np.asarray(scores), np.asarray(members, dtype=bool)
    rng = np.random.default_rng(seed)
    p = scores.shape[-1]
    rows = scores.shape[0] if scores.ndim == 2 and unit == "two_way" else 0
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, p, p)
        s, m = scores[..., idx], members[..., idx]
        if rows:
            r = rng.integers(0, rows, rows)
            s, m = s[r], m[r]
        if m.all() or not m.any():
            continue
        for k, v in roc_metrics(s, m, fpr_levels, fast=True).items():
            draws.setdefault(k, []).append(v)
    a = (1 - level) / 2
    return {k: [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))] for k, v in draws.items()}


def metrics_with_intervals(
    scores, members, n_boot: int = 1000, seed: int = 0, unit: str = "two_way"
) -> dict:
    """roc_metrics plus a `<metric>_ci` bootstrap interval for each (unit: see bootstrap_intervals)."""
    m = roc_metrics(scores, members)
    m.update(
        {
            f"{k}_ci": v
            for k, v in bootstrap_intervals(scores, members, n_boot, seed=seed, unit=unit).items()
        }
    )
    return m


def membership_test(
    stat: np.ndarray,
    masks: np.ndarray,
    design,
    attack: str = PRIMARY,
    draws: int = 199,
    seed: int = 0,
) -> dict:
    """A randomisation test of "membership has no effect" on the shadows' own outputs.

    `design(i)` returns the i-th fresh mask [N, P] from the same design as `masks` (same shadows, same
    rule, another seed). Under the null the shadows' statistics do not depend on which mask trained
    them, so the real mask and the fresh ones are exchangeable and the attack's AUC under the real mask
    is one more draw from the AUCs under fresh masks: p = (1 + #{null AUC >= AUC}) / (draws + 1) is
    exact, whatever the shadows' structure (shadow prompts that collapse to one class each, few
    shadows, correlated examples). The null AUCs also show where chance lies for *these* shadows.
    """
    name, _, variance = attack.partition("/")
    stat, masks = np.asarray(stat, dtype=np.float64), np.asarray(masks, dtype=bool)

    def auc(m: np.ndarray, s: int) -> float:
        sc = leave_one_out(stat, m, name, variance or "global", seed=s)
        return roc_metrics(sc, m, fpr_levels=(), fast=True)["auc"]

    # one statistic for every mask (the same reference-drop seed too): with the masks iid, the draws
    # are then exchangeable and the p-value exact; ties count against the observed AUC
    observed = auc(masks, seed)
    null = np.array([auc(np.asarray(design(i), dtype=bool), seed) for i in range(draws)])
    return {
        "attack": attack,
        "auc": observed,
        "p_value": float((1 + (null >= observed).sum()) / (draws + 1)),
        "null_auc_mean": float(null.mean()),
        "null_auc_sd": float(null.std()),
        "null_auc_95": [float(x) for x in np.quantile(null, [0.025, 0.975])],
        "draws": draws,
        "assumes": "the real mask was drawn from the same design as the fresh ones (exchangeable); "
        "one-sided: small p means members look more like members than chance allows",
    }


# ------------------------------------------------------------------------------------------ epsilon


def clopper_pearson(k, n, confidence: float = 0.95, side: str = "upper") -> np.ndarray:
    """One-sided exact binomial bound on a rate from k successes out of n."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        if side == "upper":
            return np.where(k >= n, 1.0, stats.beta.ppf(confidence, k + 1, n - k))
        return np.where(k <= 0, 0.0, stats.beta.ppf(1 - confidence, k, n - k + 1))


def epsilon_from_rates(fpr, tpr, delta: float) -> np.ndarray:
    """The ε that the (ε, δ)-DP hypothesis-test inequalities TPR <= e^ε FPR + δ and
    1 - FPR <= e^ε (1 - TPR) + δ need at each (FPR, TPR) pair; 0 where they bind nothing.

    Applied to *true* rates it is a lower bound on ε; applied to measured rates it is only a point
    estimate (and its maximum over thresholds is biased upwards): `epsilon_lower_bound` is the bound."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    best = np.zeros(np.broadcast(fpr, tpr).shape)
    for num, den in ((tpr - delta, fpr), (1 - delta - fpr, 1 - tpr)):
        ok = (num > 0) & (den > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            val = np.where(ok, np.log(np.where(ok, num, 1.0)) - np.log(np.where(ok, den, 1.0)), 0.0)
        best = np.maximum(best, val)
    return best


def _rates_bound(fp, tp, n_neg, n_pos, delta: float, confidence: float) -> np.ndarray:
    """ε bound from counts: FPR by its upper, TPR by its lower Clopper-Pearson bound, each at
    1 - (1 - confidence)/2, so that both hold together with probability >= confidence."""
    each = 1 - (1 - confidence) / 2
    fpr_hi = clopper_pearson(fp, n_neg, each, "upper")
    tpr_lo = clopper_pearson(tp, n_pos, each, "lower")
    return epsilon_from_rates(fpr_hi, tpr_lo, delta)


def epsilon_lower_bound(
    scores: dict[str, np.ndarray],
    members: np.ndarray,
    delta: float,
    confidence: float = BOUND_CONFIDENCE,
    seed: int = 0,
) -> dict:
    """A one-sided lower bound on ε at `confidence`, valid for the choice of attack and threshold.

    The N target shadows are split at random into a selection half and a counting half. On the
    selection half every attack and every threshold is tried and the pair with the largest
    Clopper-Pearson bound is chosen; on the counting half, which played no part in the choice, that one
    test is applied once and its bound reported. Returns the value (0 when nothing is shown) and what
    it rests on.
    """
    members = np.asarray(members, dtype=bool)
    n = members.shape[0]
    if n < 2:
        raise PromptportError(
            "the ε bound needs at least 2 target shadows (one to choose, one to count)"
        )
    perm = np.random.default_rng([seed, 0x656273]).permutation(n)
    choose, count = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
    m_choose, m_count = members[choose], members[count]
    best: dict[str, Any] = {"bound": 0.0, "attack": None, "threshold": None}
    pos, neg = int(m_choose.sum()), int((~m_choose).sum())
    for key, sc in scores.items():
        thr, fps, tps = roc_counts(np.asarray(sc)[choose], m_choose)
        b = _rates_bound(fps, tps, neg, pos, delta, confidence)
        i = int(np.argmax(b))
        if b[i] > best["bound"]:
            best = {"bound": float(b[i]), "attack": key, "threshold": float(thr[i])}
    value, counts = 0.0, None
    pos_c, neg_c = int(m_count.sum()), int((~m_count).sum())
    if best["attack"] is not None:
        guess = np.asarray(scores[best["attack"]])[count] >= best["threshold"]
        tp, fp = int((guess & m_count).sum()), int((guess & ~m_count).sum())
        value = float(_rates_bound(fp, tp, neg_c, pos_c, delta, confidence))
        counts = {"true_positives": tp, "false_positives": fp}
    return {
        "value": value,
        "confidence": confidence,
        "delta": delta,
        "attack": best["attack"],
        "threshold": best["threshold"],
        "selection_shadows": [int(i) for i in choose],
        "counting_shadows": [int(i) for i in count],
        "counting_members": pos_c,
        "counting_nonmembers": neg_c,
        "counts": counts,
        "method": (
            "attack and threshold chosen on the selection shadows; on the counting shadows one test, "
            "FPR and TPR replaced by one-sided Clopper-Pearson bounds (Bonferroni: each at "
            f"{1 - (1 - confidence) / 2:g}) in TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) "
            "+ delta"
        ),
        "assumes": (
            "the counted guesses are independent trials; each target shadow includes each example "
            "independently with probability pkeep, guesses about one example under different targets "
            "share that example"
        ),
    }


# ------------------------------------------------------------------------------------------ null study


def null_study(
    n_shadows: int,
    n_examples: int = 1000,
    repetitions: int = 20,
    *,
    delta: float = 1e-5,
    seed: int = 0,
) -> dict:
    """Audits of data where membership has no effect: the statistic is an example's difficulty plus a
    shadow's level plus noise, the same whether the example is IN or not. Every attack's AUC should average 0.5 and the
    ε bound should be 0 in at least `confidence` of the repetitions.

    Returns {"attacks": {key: {"mean_auc", "auc_sd", "aucs"}}, "bounds": [...], "bound_zero_fraction"}.
    """

    aucs: dict[str, list[float]] = {}
    bounds = []
    for r in range(repetitions):
        rng = np.random.default_rng([seed, n_shadows, r])
        masks = make_masks(n_shadows, n_examples, seed=seed * 1000 + r)
        difficulty, shadow_level = rng.normal(0, 2, n_examples), rng.normal(0, 1, (n_shadows, 1))
        stat = difficulty + shadow_level + rng.normal(0, 1, (n_shadows, n_examples))
        scores = all_attack_scores(stat, masks, seed=r)
        for k, sc in scores.items():
            aucs.setdefault(k, []).append(roc_metrics(sc, masks, fast=True)["auc"])
        bounds.append(epsilon_lower_bound(scores, masks, delta, seed=r)["value"])
    return {
        "n_shadows": n_shadows,
        "n_examples": n_examples,
        "repetitions": repetitions,
        "attacks": {
            k: {"mean_auc": float(np.mean(v)), "auc_sd": float(np.std(v)), "aucs": v}
            for k, v in aucs.items()
        },
        "bounds": bounds,
        "bound_zero_fraction": float(np.mean(np.asarray(bounds) == 0.0)),
    }
