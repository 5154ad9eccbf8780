"""Evaluation as a stage: zero-shot or with a soft prompt, written to DIR/metrics.json."""

from __future__ import annotations

import time
from pathlib import Path

from promptport.classify import PromptClassifier, scoring_prompt
from promptport.data import load_split
from promptport.fileio import check_writable_dir, write_json
from promptport.models import DEFAULT_MODEL, LoadedModel, load_model
from promptport.prompt import check_compatible, load_prompt
from promptport.runtime import seed_everything, versions
from promptport.tasks import get_task


def evaluate(
    model: str | LoadedModel = DEFAULT_MODEL,
    task: str = "rt_snippets",
    *,
    data: str | None = None,
    split: str = "validation",
    prompt: str | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    max_length: int = 256,
    seed: int = 0,
    device: str = "cpu",
    text_column: str | None = None,
    label_column: str | None = None,
    progress: bool = False,
    split_column: str | None = None,
) -> dict:
    """Accuracy and macro-F1 of `model` (optionally with a prompt artifact) on one split of a task.
    `split_column`: a single data file's column naming each row's split."""
    t0 = time.perf_counter()
    seed_everything(seed)
    if out is not None:
        check_writable_dir(out)
    the_task = get_task(task)
    if the_task.is_generation:  # BLEU / ROUGE-L of generated text, see promptport.generation
        return _evaluate_generation(
            model, the_task, data, split, prompt, limit, out, batch_size, max_length, seed,
            device, text_column, label_column, progress, t0,
        )  # fmt: skip
    ds = load_split(
        the_task, data, split, limit=limit, text_column=text_column, label_column=label_column,
        split_column=split_column,
    )  # fmt: skip
    artifact = load_prompt(prompt) if prompt else None
    lm = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    if artifact is not None:
        check_compatible(artifact, lm.info)
    clf = PromptClassifier(lm.model, lm.tokenizer, the_task, max_length=max_length)
    if artifact is not None:  # a calibrated prompt on the model it was tuned on
        clf = scoring_prompt(clf, artifact.meta, lm.info)
    enc = clf.encode(ds)
    metrics = clf.evaluate(
        enc, None if artifact is None else artifact.embeddings, batch_size, progress
    )
    result = {
        "stage": "evaluate",
        "task": the_task.name,
        "model": lm.info.model_id,
        "data": ds.source,
        "split": ds.split,
        "split_rule": ds.meta.get("split_rule"),
        "prompt": str(prompt) if prompt else None,
        **metrics,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "seed": seed,
        "versions": versions(),
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "metrics.json", result)
    return result


def _evaluate_generation(
    model, task, data, split, prompt, limit, out, batch_size, max_length, seed, device,
    text_column, label_column, progress, t0,
) -> dict:  # fmt: skip
    from promptport.generation import evaluate_split

    artifact = load_prompt(prompt) if prompt else None
    lm = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    if artifact is not None:
        check_compatible(artifact, lm.info)
    m = evaluate_split(
        lm, task, data=data, split=split, prompt=artifact, limit=limit, out=out,
        batch_size=batch_size, max_length=max_length, seed=seed, text_column=text_column,
        label_column=label_column, progress=progress,
    )  # fmt: skip
    result = {
        "stage": "evaluate",
        "task": task.name,
        "model": lm.info.model_id,
        "prompt": str(prompt) if prompt else None,
        **m,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "seed": seed,
        "versions": versions(),
    }
    if out is not None:
        write_json(Path(out) / "metrics.json", result)
    return result


def evaluate_baselines(
    models: dict[str, str | LoadedModel],
    task,
    prompts: dict[str, tuple[str, Path | None]],
    out: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    limit: int | None = None,
    max_length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    log=print,
) -> dict:
    """Several (model, prompt) baselines on one split, as `promptport run` reports them: for each name in
    `prompts` -> (a key of `models`, a prompt folder or None for zero-shot), accuracy, macro-F1 and
    bootstrap intervals; writes OUT/NAME.npz (labels, predictions, logits) and OUT/metrics.json."""
    import numpy as np

    from promptport.classify import classification_metrics
    from promptport.report import bootstrap_ci

    out = Path(out)
    the_task = get_task(task)
    ds = load_split(the_task, data, split, limit=limit)
    loaded = {
        k: m if isinstance(m, LoadedModel) else load_model(m, device=device)
        for k, m in models.items()
    }
    clfs = {
        k: PromptClassifier(m.model, m.tokenizer, the_task, max_length) for k, m in loaded.items()
    }
    encs = {k: c.encode(ds) for k, c in clfs.items()}
    baselines = {}
    for name, (which, prompt) in prompts.items():
        art = None if prompt is None else load_prompt(prompt)
        clf = clfs[which]
        if art is not None:  # a calibrated prompt on the model it was tuned on
            clf = scoring_prompt(clf, art.meta, loaded[which].info)
        emb = None if art is None else art.embeddings
        logits = clf.predict_logits(encs[which], emb, batch_size, progress, desc=name)
        y_pred = logits.argmax(-1).numpy()
        labels = encs[which].labels
        assert labels is not None  # evaluation splits are loaded with their labels
        y = labels.numpy()
        m = classification_metrics(y, y_pred, len(the_task.classes))
        m.update(bootstrap_ci(y, y_pred, len(the_task.classes), seed=seed))
        np.savez(out / f"{name}.npz", y_true=y, y_pred=y_pred, logits=logits.numpy())
        baselines[name] = m
        log(f"  {name:18s} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    write_json(out / "metrics.json", {"split": split, "n": len(ds), "baselines": baselines})
    return baselines
