"""Metrics of generated text against all references of an input, with bootstrap intervals.

BLEU and chrF come from `sacrebleu` (corpus-level: sufficient statistics summed over segments, every
reference of a segment counted as sacrebleu does with several reference streams), ROUGE-L from
`rouge-score` (sentence-level F-measure against the best-matching reference, with stemming, averaged
over segments). All three are on a 0-100 scale. METEOR and CIDEr are not computed: no maintained
package computes them without downloading extra data (NLTK's WordNet) or an unmaintained script.

Intervals: percentile bootstrap over segments (inputs, i.e. MRs, not references): every resample
re-sums the per-segment statistics, so a corpus-level BLEU interval costs one matrix product and a
thousand cheap score computations, not a thousand tokenisations.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from promptport.errors import BadInput

METRIC_NAMES = ("bleu", "rougeL", "chrf")


def _ref_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot; a segment with fewer references gets None."""
    k = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(k)]


def _check(hyps: list[str], refs: list[list[str]]) -> None:
    if len(hyps) != len(refs):
        raise BadInput("references", f"{len(hyps)} outputs but {len(refs)} reference lists")
    if not hyps:
        raise BadInput("references", "nothing to score (no examples)")
    for i, r in enumerate(refs):
        if not r or any(not (x or "").strip() for x in r):
            raise BadInput("references", f"example {i} has an empty reference")


def segment_statistics(hyps: list[str], refs: list[list[str]], metrics=METRIC_NAMES) -> dict:
    """Per-segment statistics: BLEU/chrF sufficient statistics ([N, S] arrays), ROUGE-L F ([N], 0-100)."""
    _check(hyps, refs)
    out: dict = {}
    if "bleu" in metrics or "chrf" in metrics:
        from sacrebleu.metrics import BLEU, CHRF

        # sacrebleu takes None where a segment has fewer references (its own multi-reference layout)
        streams = cast("list[list[str]]", _ref_streams(refs))
        if "bleu" in metrics:
            bleu = BLEU()
            stats = bleu._extract_corpus_statistics(hyps, streams)
            out["bleu"] = (bleu, np.asarray(stats, dtype=float))
        if "chrf" in metrics:
            chrf = CHRF()
            stats = chrf._extract_corpus_statistics(hyps, streams)
            out["chrf"] = (chrf, np.asarray(stats, dtype=float))
    if "rougeL" in metrics:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        out["rougeL"] = np.array(
            [scorer.score_multi(r, h)["rougeL"].fmeasure * 100.0 for h, r in zip(hyps, refs)]
        )
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise BadInput("metrics", f"unknown metric(s) {unknown} (choose from {list(METRIC_NAMES)})")
    return out


def _score_from(entry, weights: np.ndarray | None = None) -> float:
    if isinstance(entry, tuple):
        metric, stats = entry
        total = stats.sum(0) if weights is None else weights @ stats
        return float(metric._compute_score_from_stats([int(round(x)) for x in total]).score)
    return float(entry.mean() if weights is None else weights @ entry / weights.sum())


def generation_metrics(
    hyps: list[str],
    refs: list[list[str]],
    metrics=("bleu", "rougeL"),
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """{metric: score, metric_ci: [lo, hi], n, n_references, ...} on a 0-100 scale for every metric."""
    seg = segment_statistics(hyps, refs, tuple(metrics))
    n = len(hyps)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)  # [R, N]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict = {"n": n, "n_references": int(sum(len(r) for r in refs))}
    for name in metrics:
        entry = seg[name]
        out[name] = _score_from(entry)
        boot = np.array([_score_from(entry, counts[r]) for r in range(n_boot)])
        out[f"{name}_ci"] = [float(np.percentile(boot, lo)), float(np.percentile(boot, hi))]
    out.update(
        level=level,
        n_boot=n_boot,
        scale="0-100",
        mean_output_words=float(np.mean([len(h.split()) for h in hyps])),
        empty_outputs=int(sum(not h.strip() for h in hyps)),
    )
    return out
