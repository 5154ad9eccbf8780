"""The audit of the *transferred* prompt: does the prompt the provider serves leak what the user's did?

Transfer is post-processing: it reads the user's prompt and public data only, so by the
data-processing inequality it cannot leak more about the user's training set than the prompt it
starts from (any DP guarantee carries over unchanged). This module shows it on the audit's own
shadows: every shadow prompt of a finished `promptport audit` directory is transferred to the teacher
with the same public data and settings, the teacher scores the audit pool with it, and the same
attacks run on the teacher's scores with the same masks. The two sides are reported side by side.

Layout, inside the audit directory::

    transferred/spec.json                    teacher, public data, transfer settings (fixed)
    transferred/shadows/shadow_007.safetensors   the teacher's pool logits with shadow 7's transferred prompt
    transferred/report.json                  student side vs teacher side (AUC, TPR@1%FPR, intervals, bound)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from promptport.audit import (
    PRIMARY,
    ShadowSet,
    finished_shadows,
    load_shadow_prompt,
    load_shadows,
    prepare,
    save_shadow,
    shadow_path,
    shadows_membership_test,
)
from promptport.errors import BadInput, PromptportError
from promptport.fileio import read_json, write_json
from promptport.lira import (
    FPR_LEVELS,
    all_attack_scores,
    epsilon_lower_bound,
    logit_confidence,
    metrics_with_intervals,
    tpr_key,
)

SUBDIR = "transferred"


def _side_metrics(sh: ShadowSet, n_boot: int, delta: float, seed: int) -> dict:
    """The attacks' figures on one side (the shadows' pool logits under their own model)."""
    stat = logit_confidence(sh.logits, sh.labels[None, :])
    scores = all_attack_scores(stat, sh.masks, seed=seed)
    attacks = {}
    for key, sc in scores.items():
        attacks[key] = metrics_with_intervals(sc, sh.masks, n_boot, seed)
    correct = sh.logits.argmax(-1) == sh.labels[None, :]
    prim = attacks[PRIMARY]
    test = shadows_membership_test(sh, stat, seed)
    return {
        "auc": prim["auc"],
        "auc_ci": prim["auc_ci"],
        "tpr_at_1%fpr": prim[tpr_key(0.01)],
        "tpr_at_1%fpr_ci": prim[tpr_key(0.01) + "_ci"],
        "empirical_epsilon_lower_bound": epsilon_lower_bound(scores, sh.masks, delta, seed=seed)[
            "value"
        ],
        "membership_p_value": test["p_value"],
        "chance_auc_95": test["null_auc_95"],
        "accuracy_in": float(correct[sh.masks].mean()),
        "accuracy_out": float(correct[~sh.masks].mean()),
        "attacks": {k: {"auc": v["auc"], "auc_ci": v["auc_ci"]} for k, v in attacks.items()},
    }


def transfer_shadows(
    audit_dir: str | Path,
    teacher,
    *,
    public_data: str,
    cfg=None,
    student=None,
    public_text_column: str | None = None,
    shadow_ids: list[int] | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Transfer the finished shadow prompts of `audit_dir` to `teacher` and keep the teacher's pool
    logits per shadow (resumable: finished shadows are kept). `student` defaults to the audited model.
    Returns {"transferred": [...], "skipped": [...], "seconds": float}."""
    from promptport.classify import PromptClassifier
    from promptport.models import LoadedModel, load_model
    from promptport.prompt import PromptArtifact, load_prompt, make_metadata
    from promptport.transfer import TransferConfig, transfer

    t0 = time.perf_counter()
    audit_dir = Path(audit_dir)
    cfg = cfg or TransferConfig()
    sh = load_shadows(audit_dir)
    out = audit_dir / SUBDIR
    spec_doc = {
        "teacher": teacher.info.model_id if isinstance(teacher, LoadedModel) else str(teacher),
        "public_data": public_data,
        "transfer": asdict(cfg),
    }
    spec_file = out / "spec.json"
    if spec_file.is_file() and read_json(spec_file) != spec_doc:
        raise BadInput("out", f"{out} holds transfers with other settings; remove it or use them")
    out.mkdir(parents=True, exist_ok=True)
    write_json(spec_file, spec_doc)
    ids = sh.ids if shadow_ids is None else [s for s in shadow_ids if s in sh.ids]
    done = [s for s in ids if shadow_path(out, s).is_file()]
    todo = [s for s in ids if s not in done]
    if not todo:
        return {"transferred": [], "skipped": done, "seconds": 0.0}
    task, pool, _, _ = prepare(audit_dir, sh.spec)
    s_lm = (
        student
        if isinstance(student, LoadedModel)
        else load_model(student or sh.spec.model, device=device)
    )
    t_lm = teacher if isinstance(teacher, LoadedModel) else load_model(teacher, device=device)
    max_length = int((sh.spec.tune or {}).get("max_length", 128))
    t_clf = PromptClassifier(t_lm.model, t_lm.tokenizer, task, max_length=max_length)
    enc = t_clf.encode(pool)
    shared: dict = {}  # the unprompted public logits, computed once for every shadow
    row = {s: i for i, s in enumerate(sh.ids)}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="transfer shadows", unit="shadow", dynamic_ncols=True)
    for s in todo:
        emb = torch.from_numpy(load_shadow_prompt(audit_dir, s))
        meta = make_metadata(
            model_info=s_lm.info, task=task, init="audit-shadow", n_tokens=len(emb)
        )
        work = out / "work" / f"{s:03d}"
        r = transfer(
            PromptArtifact(emb, meta),
            s_lm,
            t_lm,
            public_data=public_data,
            out=work,
            cfg=cfg,
            public_text_column=public_text_column,
            shared=shared,
        )
        p_t = load_prompt(work / "prompt").embeddings
        logits = t_clf.predict_logits(enc, p_t).numpy()
        info = {"shadow": s, "transfer_alpha": r["alpha"], "transfer_steps": r["steps"]}
        save_shadow(out, s, logits, sh.masks[row[s]], info)
        shutil.rmtree(work, ignore_errors=True)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"transferred": todo, "skipped": done, "seconds": round(time.perf_counter() - t0, 3)}


def _teacher_side(audit_dir: Path, sh: ShadowSet) -> ShadowSet:
    out = audit_dir / SUBDIR
    ids = [s for s in finished_shadows(out, sh.spec.n_shadows) if s in sh.ids]
    if len(ids) < 3:
        raise PromptportError(f"only {len(ids)} transferred shadows in {out}; need at least 3")
    from promptport.audit import _load_tensors

    logits = np.stack([_load_tensors(shadow_path(out, s))[0]["logits"] for s in ids])
    rows = [sh.ids.index(s) for s in ids]
    return ShadowSet(
        logits, sh.masks[rows], sh.labels, sh.pool_index, ids, [sh.info[i] for i in rows], sh.spec
    )


def compare_sides(
    audit_dir: str | Path, *, n_boot: int = 1000, delta: float = 1e-5, seed: int = 0
) -> dict:
    """Student side (the user's prompts) and teacher side (their transfers) on the same shadows and
    masks; writes transferred/report.json."""
    audit_dir = Path(audit_dir)
    full = load_shadows(audit_dir)
    teacher = _teacher_side(audit_dir, full)
    student = ShadowSet(
        full.logits[[full.ids.index(s) for s in teacher.ids]],
        teacher.masks,
        full.labels,
        full.pool_index,
        teacher.ids,
        teacher.info,
        full.spec,
    )
    stu = _side_metrics(student, n_boot, delta, seed)
    tea = _side_metrics(teacher, n_boot, delta, seed)
    report = {
        "format": "promptport.audit-transferred/1",
        "primary": PRIMARY,
        "n_shadows": len(teacher.ids),
        "n_examples": int(teacher.masks.shape[1]),
        "fpr_levels": list(FPR_LEVELS),
        "transfer": read_json(audit_dir / SUBDIR / "spec.json"),
        "student_auc": stu["auc"],
        "student_auc_ci": stu["auc_ci"],
        "student_tpr_at_1%fpr": stu["tpr_at_1%fpr"],
        "student_tpr_at_1%fpr_ci": stu["tpr_at_1%fpr_ci"],
        "teacher_auc": tea["auc"],
        "teacher_auc_ci": tea["auc_ci"],
        "teacher_tpr_at_1%fpr": tea["tpr_at_1%fpr"],
        "teacher_tpr_at_1%fpr_ci": tea["tpr_at_1%fpr_ci"],
        "student": stu,
        "teacher": tea,
        "reading": "transfer reads the user's prompt and public data only (post-processing): the "
        "teacher side cannot leak more than the student side beyond sampling noise",
        "complete": len(teacher.ids) == len(full.ids),
    }
    if not report["complete"]:
        report["caveat"] = (
            f"only {len(teacher.ids)} of {len(full.ids)} shadows transferred: on a subset the masks "
            "are no longer balanced per example, which the unbiasedness of the attacks relies on; "
            "transfer every shadow before reading these figures"
        )
    write_json(audit_dir / SUBDIR / "report.json", report)
    return report
