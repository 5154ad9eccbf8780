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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from promptport.errors import BadInput, PromptportError
from promptport.fileio import atomic_path, check_writable_dir, read_json, write_json

FORMAT = "promptport.audit/2"  # /2: doubly balanced masks
SPEC_FILE = "audit.json"
MASKS_FILE = "masks.safetensors"
SHADOW_DIR = "shadows"
REPORT_DIR = "report"
# The mathematics lives in promptport.lira; these names stay importable from here.
from promptport.lira import (  # noqa: E402
    ATTACKS,
    BOOTSTRAP_UNIT,
    BOUND_CONFIDENCE,
    FPR_LEVELS,
    PRIMARY,
    REPORT_ATTACKS,
    VARIANCES,
    all_attack_scores,
    attack_key,
    bootstrap_intervals,
    clopper_pearson,
    epsilon_from_rates,
    epsilon_lower_bound,
    leave_one_out,
    lira_scores,
    logit_confidence,
    make_masks,
    membership_test,
    metrics_with_intervals,
    rmia_scores,
    roc,
    roc_curve_fast,
    roc_metrics,
    tpr_key,
)

# Generation tasks: the statistic is the target's length-normalised log-likelihood l (mean log-prob of
# its tokens), stored as two-column "logits" [l, 0] with label 0, so that the classification statistic
# z_y - logsumexp(z_{-y}) below is exactly l.
GEN_STATISTIC = "length-normalised log-likelihood of the target (mean token log-prob, float64)"

__all__ = [
    "ATTACKS",
    "BOUND_CONFIDENCE",
    "FPR_LEVELS",
    "PRIMARY",
    "REPORT_ATTACKS",
    "VARIANCES",
    "AuditSpec",
    "all_attack_scores",
    "attack_key",
    "audit",
    "bootstrap_intervals",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "leave_one_out",
    "lira_scores",
    "logit_confidence",
    "rmia_scores",
    "roc",
    "roc_curve_fast",
    "roc_metrics",
    "tpr_key",
]


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
    split_column: str | None = None  # a single data file's column naming each row's split
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


def save_shadow(
    out: Path,
    s: int,
    logits: np.ndarray,
    mask: np.ndarray,
    info: dict,
    prompt: np.ndarray | None = None,
) -> Path:
    """One shadow's pool logits and mask, and its prompt (so that the audit of a transferred prompt
    can transfer every shadow to the teacher later)."""
    p = shadow_path(out, s)
    tensors: dict[str, np.ndarray] = {
        "logits": np.asarray(logits, dtype=np.float32),
        "mask": np.asarray(mask, dtype=np.uint8),
    }
    if prompt is not None:
        tensors["prompt"] = np.asarray(prompt, dtype=np.float32)
    _save_tensors(p, tensors, dict(info, shadow=s))
    return p


def load_shadow_prompt(out: str | Path, s: int) -> np.ndarray:
    t, _ = _load_tensors(shadow_path(Path(out), s))
    if "prompt" not in t:
        raise PromptportError(f"{shadow_path(Path(out), s)} holds no prompt (an older audit)")
    return t["prompt"]


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


def _cli_names(cls) -> tuple[str, ...]:
    """The command-line settings of `cls` a shadow uses (shadows train without validation or
    checkpoints, so the loop-only tuning settings do not apply)."""
    from promptport.options import cli_fields
    from promptport.tune import LOOP_ONLY_SETTINGS

    return tuple(f.name for f in cli_fields(cls) if f.name not in LOOP_ONLY_SETTINGS)


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
    from promptport.privacy import DPConfig, dp_from_settings
    from promptport.tune import TuneConfig

    tune_names, dp_names = _cli_names(TuneConfig), _cli_names(DPConfig)
    tune = {k: values[k] for k in tune_names if k in values and (not base or k in given)}
    tune = {**{k: v for k, v in base.items() if k in tune_names}, **tune}
    if values.get("dp"):
        dp = dict(base.get("dp") or {})
        dp.update({k: values[k] for k in dp_names if k in values and (k in given or k not in dp)})
        dp_cfg = dp_from_settings(True, dp)
        assert dp_cfg is not None  # enabled: a DPConfig or an error
        tune["dp"] = dp_cfg.to_dict()
    elif given & set(dp_names):
        dp_from_settings(False, {k: values.get(k) for k in given & set(dp_names)})
        tune["dp"] = base.get("dp") if base and "dp" not in given else None
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
    from promptport.data import load_split as load_text_split
    from promptport.tasks import get_task

    spec.validate()
    out = check_writable_dir(out)
    task = get_task(spec.task)
    load_split: Any = load_text_split
    if task.is_generation:  # pool of (input, target) rows; see GEN_STATISTIC
        from promptport.generation import load_gen_split

        load_split = load_gen_split
    ds = load_split(
        task,
        spec.data,
        spec.split,
        text_column=spec.text_column,
        label_column=spec.label_column,
        split_column=spec.split_column,
    )
    if not task.is_generation and ds.labels is None:
        raise BadInput("data", "the audit pool needs labels")
    if spec.pool_size > len(ds):
        raise BadInput(
            "pool_size", f"{spec.pool_size} exceeds the {len(ds)} examples of split '{spec.split}'"
        )
    rng = np.random.default_rng([spec.seed, 0x706F6F6C])
    pool_index = np.sort(rng.choice(len(ds), spec.pool_size, replace=False))
    pool = ds.select(pool_index.tolist())
    masks = make_masks(spec.n_shadows, spec.pool_size, spec.pkeep, spec.seed)
    if task.is_generation:
        labels = np.zeros(spec.pool_size, dtype=np.int64)
        rows = zip(pool.inputs(task), pool.targets)
    else:
        labels = np.asarray(pool.labels, dtype=np.int64)
        rows = zip(pool.texts(task), pool.labels)
    h = hashlib.sha256()
    for text, y in rows:
        h.update(f"{y}\t{text}\n".encode())
    doc: dict[str, Any] = {
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
        if old.get("format") != FORMAT:
            raise BadInput(
                "out",
                f"'{out}' holds an audit of format {old.get('format')!r} (this version writes "
                f"{FORMAT}, with other masks); use another --out",
            )
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
    from promptport.classify import PromptClassifier, with_class_offset
    from promptport.models import LoadedModel, load_model
    from promptport.runtime import seed_everything
    from promptport.tune import train_prompt

    timings: dict[str, list] = {"trained": [], "seconds": []}
    if not todo:
        return timings
    lm = (
        lm
        if isinstance(lm, LoadedModel)
        else load_model(spec.model, dtype=spec.dtype, device=device)
    )
    clf: Any  # a PromptGenerator or a PromptClassifier: the loop uses either
    if task.is_generation:
        from promptport.generation import PromptGenerator

        clf = PromptGenerator(lm.model, lm.tokenizer, task, max_length=cfg.max_length)
    else:
        clf = PromptClassifier(lm.model, lm.tokenizer, task, max_length=cfg.max_length)
    enc = clf.encode(pool)
    from promptport.checkpoint import progress_bar

    bar = progress_bar(len(todo), "shadows", progress, unit="shadow")
    for s in todo:
        t0 = time.perf_counter()
        seed = int(np.random.SeedSequence([spec.seed, s]).generate_state(1)[0] % (2**31))
        seed_everything(seed)
        members = np.flatnonzero(masks[s])
        res = train_prompt(clf, enc.subset(members.tolist()), None, replace(cfg, seed=seed))
        if task.is_generation:
            ll = clf.sequence_logprob(enc, res.embeddings, cfg.eval_batch_size).numpy()
            logits = np.stack([ll, np.zeros_like(ll)], -1)  # GEN_STATISTIC
            pred = labels  # no classes: the "accuracies" below are 1; loglik_in/out say more
            extra = {
                "statistic": GEN_STATISTIC,
                "loglik_in": float(ll[masks[s]].mean()),
                "loglik_out": float(ll[~masks[s]].mean()) if (~masks[s]).any() else None,
            }
        else:
            scorer = with_class_offset(clf, res.class_offset)  # as the shadow was tuned
            logits = scorer.predict_logits(enc, res.embeddings, cfg.eval_batch_size).numpy()
            pred = logits.argmax(-1)
            extra = {}
        secs = time.perf_counter() - t0
        info = {
            "seed": seed,
            "n_in": int(len(members)),
            "seconds": round(secs, 3),
            **extra,
            "acc_in": float((pred == labels)[masks[s]].mean()),
            "acc_out": float((pred == labels)[~masks[s]].mean()) if (~masks[s]).any() else None,
            "privacy": _json_safe(getattr(res, "privacy", None)),
            "model": lm.info.to_dict(),
        }
        save_shadow(out, s, logits, masks[s], info, res.embeddings.detach().float().cpu().numpy())
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


def fresh_mask(sh: ShadowSet, seed: int) -> np.ndarray:
    """A mask from the audit's own design (planned shadows, pool, pkeep) with another seed, restricted
    to the finished shadows: it did not train them, so under it membership has no effect."""
    spec = sh.spec
    return make_masks(spec.n_shadows, sh.masks.shape[1], spec.pkeep, seed)[sh.ids]


def shadows_membership_test(
    sh: ShadowSet, stat: np.ndarray, seed: int = 0, draws: int = 199
) -> dict:
    """lira.membership_test on a shadow set, the fresh masks from `fresh_mask`."""

    def fresh(i: int) -> np.ndarray:
        other = int(np.random.default_rng([sh.spec.seed, 0x6E756C6C, i]).integers(2**62))
        return fresh_mask(sh, other)

    return membership_test(stat, sh.masks, fresh, PRIMARY, draws, seed)


def audit_report(
    out: str | Path,
    *,
    n_boot: int = 1000,
    delta: float | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    min_shadows: int = 3,
    null_draws: int = 199,
) -> dict:
    """Score all attacks leave-one-shadow-out on the finished shadows; write report/ and return the summary.

    Intervals resample shadows and examples (lira.bootstrap_intervals); `membership_test` is the exact
    randomisation test over `null_draws` fresh masks (lira.membership_test)."""
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
    all_scores = all_attack_scores(stat, members, seed=seed)
    attacks, curves = {}, {}
    for key, scores in all_scores.items():
        m = metrics_with_intervals(scores, members, n_boot, seed)
        attacks[key], curves[key] = m, roc(scores, members)
    bound = epsilon_lower_bound(all_scores, members, delta, confidence, seed=seed)
    null_test = shadows_membership_test(sh, stat, seed, null_draws)
    files = _write_report_files(rep_dir, sh, stat, all_scores, curves)
    pred = sh.logits.argmax(-1)
    correct = pred == sh.labels[None, :]
    summary = {
        "format": "promptport.audit-report/2",
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
        "evaluation": "leave-one-shadow-out: each shadow is the target once, the others are the "
        "references, with the same number of IN (and of OUT) references for every target of an example",
        "statistic": sh.info[0].get("statistic")
        or "log p_y - log sum_{y'!=y} p_y' over the verbalizer classes (float64)",
        "primary": PRIMARY,
        "auc": attacks[PRIMARY]["auc"],
        "auc_ci": attacks[PRIMARY]["auc_ci"],
        # what the audit printed before the two-way interval, for comparison (it holds shadows fixed)
        "auc_ci_examples_only": bootstrap_intervals(
            all_scores[PRIMARY], members, n_boot, seed=seed, unit="examples"
        )["auc"],
        "tpr_at_1%fpr": attacks[PRIMARY][tpr_key(0.01)],
        "tpr_at_0.1%fpr": attacks[PRIMARY][tpr_key(0.001)],
        "dp": bool(sh.spec.tune.get("dp")),
        "theoretical_epsilon": eps_theory,
        "delta": delta,
        "empirical_epsilon_lower_bound": bound["value"],
        "empirical_epsilon_lower_bound_detail": bound,
        "membership_test": null_test,
        "attacks": attacks,
        "shadow_accuracy_in": float(correct[members].mean()),
        "shadow_accuracy_out": float(correct[~members].mean()),
        "shadow_train_seconds": float(sum(i.get("seconds", 0.0) for i in sh.info)),
        "configuration": sh.spec.tune,
        "bootstrap": {
            "n": n_boot,
            "level": 0.95,
            "unit": BOOTSTRAP_UNIT["two_way"],
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
    return audit_report(out)


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
            summary = audit_report(out, n_boot=n_boot, delta=delta, seed=spec.seed)
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
    b = s["empirical_epsilon_lower_bound_detail"]
    t = s.get("membership_test")  # absent from reports written before promptport.audit-report/2
    test = (
        f"; randomisation test of 'membership has no effect': p = {t['p_value']:.3g} (chance AUC "
        f"for these shadows {t['null_auc_95'][0]:.3f}-{t['null_auc_95'][1]:.3f}, {t['draws']} "
        "fresh masks)"
        if t
        else ""
    )
    return (
        f"audit: {s['primary']} AUC {s['auc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] (95%, shadows and "
        f"examples resampled), TPR@1%FPR "
        f"{s['tpr_at_1%fpr']:.4f}, TPR@0.1%FPR {s['tpr_at_0.1%fpr']:.4f}; epsilon: accountant {eps}, "
        f"empirical lower bound {b['value']:.3g} ({b['confidence']:.0%} one-sided, attack and "
        f"threshold chosen on other shadows) at delta {s['delta']:.0e} "
        f"({s['n_shadows']} shadows x {s['n_examples']} examples){test}"
    )
