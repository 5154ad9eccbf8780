"""The stages a cell runs (tune, transfer, evaluate), in one object tests replace."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.paper import tasks
from benchmarks.paper.recipes import (
    CHECKS_PER_EPOCH,
    TABLE_PUBLIC,
    TABLE_TRANSFER,
    Sizes,
    dp_recipe,
    transfer_recipe,
    tune_recipe,
)


class Stages:
    """The real stage functions; every one writes its artifact into `out` and is skipped by the caller
    when the artifact exists."""

    def __init__(
        self, teacher: str, sizes: Sizes, progress: bool = False, recipe: dict | None = None,
        tune: dict | None = None, device: str = "cpu", public: str = "given", dp: dict | None = None,
        table_transfer: str = "tool",
    ):  # fmt: skip
        self.teacher, self.sizes, self.progress, self.device = teacher, sizes, progress, device
        if public not in TABLE_PUBLIC:
            raise SystemExit(f"table public data: choose {' or '.join(TABLE_PUBLIC)}, not {public}")
        if table_transfer not in TABLE_TRANSFER:
            raise SystemExit(
                f"table transfer: choose {' or '.join(TABLE_TRANSFER)}, not {table_transfer}"
            )
        self.public = public  # the public texts of the table's own transfers (POST, POST with DP)
        self.table_transfer = table_transfer  # and how they keep their step
        self.recipe = transfer_recipe() if recipe is None else recipe
        self.tune_recipe = tune_recipe() if tune is None else tune
        self.dp_recipe = dp_recipe(sizes) if dp is None else dp
        self._models: dict = {}
        self._encoded: dict = {}

    def model(self, spec: str):
        from promptport.models import load_model

        if spec not in self._models:
            self._models[spec] = load_model(spec, device=self.device)
        return self._models[spec]

    def non_distilled(self, student: str, out: Path) -> str:
        """The same layers as the student, cut from the teacher with no training."""
        from promptport.distill import extract_student, save_student, set_trainable
        from promptport.fileio import read_json

        meta = read_json(Path(student) / "student.json")
        layers = meta.get("layers") or meta.get("teacher_layers")
        t = self.model(self.teacher)
        s = extract_student(t.model, list(layers))
        own = set_trainable(s)
        save_student(out, s, t.tokenizer, own, {**meta, "distilled": False, "training": None})
        return str(out)

    def tune(self, model: str, spec: dict, seed: int, out: Path, dp: float | None, **over) -> str:
        from promptport.privacy import DPConfig
        from promptport.tune import TuneConfig, tune

        z = self.sizes
        # DP tuning's optimisation (the dp recipe); then a variant's own changes
        recipe = {**self.tune_recipe, **(self.dp_recipe if dp else {}), **over}
        # the profile's sizes, unless the DP recipe or an ablation (tune_budget) changes them
        epochs = recipe.pop("epochs", z.tune_epochs)
        train_limit = recipe.pop("train_limit", z.train_limit)
        # DP's expected batch: four forward batches, or fewer where the training split is small
        default_accum = max(1, min(4, train_limit // (4 * z.batch_size))) if dp else 1
        accum = recipe.pop("grad_accum", default_accum)
        steps = max(1, train_limit // (z.batch_size * accum))  # optimizer steps in a pass
        cfg = TuneConfig(
            **recipe,
            epochs=epochs,
            batch_size=z.batch_size,
            grad_accum=accum,
            eval_every=max(1, math.ceil(steps / CHECKS_PER_EPOCH)),
            max_length=z.max_length,
            seed=seed,
            dp=DPConfig(epsilon=dp) if dp else None,
        )
        tune(
            self.model(model), spec["task"], data=spec["data"], out=out, train_limit=train_limit,
            val_limit=z.val_limit, cfg=cfg, progress=self.progress, train_eval_limit=200,
        )  # fmt: skip
        return str(out / "prompt")

    def transfer(self, prompt: str, student: str, spec: dict, seed: int, out: Path, **over) -> str:
        from promptport.transfer import TransferConfig, transfer

        z = self.sizes
        fields = {
            k: v for k, v in over.items() if k != "public"
        }  # ablations' changes to the recipe (transfer_budget: its passes too)
        cfg = TransferConfig(
            **{
                **self.recipe, "n_public": z.n_public, "epochs": z.transfer_epochs,
                "max_length": z.max_length, "seed": seed, **fields,
            }
        )  # fmt: skip
        transfer(
            prompt, self.model(student), self.model(self.teacher),
            public_data=over.get("public") or self.table_public(spec), out=out, cfg=cfg,
            task=spec["task"],
            progress=self.progress,
        )  # fmt: skip
        return str(out / "prompt")

    def table_public(self, spec: dict) -> str:
        """The public data of the table's own transfers: the task's public texts as given, or the
        same texts re-cut to the user's text length (`length_matched_public`, the tool's
        `--public-chars`), or that cut into phrases; an ablation that names its own public data
        overrides it."""
        if self.public == "length_matched":
            return tasks.length_matched_public(spec, self.sizes)
        if self.public == "phrases":
            return tasks.length_matched_public(spec, self.sizes, cut="phrases")
        return spec["public"]

    def _classifier(self, model: str, spec: dict):
        """(classifier, encoded test split) of a model on a task; the encoding is made once."""
        from promptport.classify import PromptClassifier
        from promptport.data import load_split
        from promptport.tasks import get_task

        task = get_task(spec["task"])
        lm = self.model(model)
        clf = PromptClassifier(lm.model, lm.tokenizer, task, self.sizes.max_length)
        key = (model, spec["task"], spec["data"])  # a task's own test split or another set
        if key not in self._encoded:
            ds = load_split(task, spec["data"], "test", limit=self.sizes.eval_limit)
            self._encoded[key] = clf.encode(ds)
        return clf, self._encoded[key]

    def _scoring(self, model: str, prompt: str | None, spec: dict):
        """(classifier, encoded test split, prompt embeddings or None): a calibrated prompt
        (`tune.calibrate`) is scored with its offset on the model it was tuned on, as `evaluate` does."""
        from promptport.classify import scoring_prompt
        from promptport.prompt import load_prompt

        clf, enc = self._classifier(model, spec)
        if prompt is None:
            return clf, enc, None
        art = load_prompt(prompt)
        return scoring_prompt(clf, art.meta, self.model(model).info), enc, art.embeddings

    def class_logits(self, model: str, prompt: str | None, spec: dict):
        """[N, C] class scores on the test split, and its labels (for analyses such as
        benchmarks.shift_reference)."""
        clf, enc, emb = self._scoring(model, prompt, spec)
        return clf.predict_logits(enc, emb, 64), enc.labels

    def select_scores(
        self, model: str, prompt: str, task: str, select_file: str, n: int, seed: int
    ) -> tuple[float, float]:
        """(zero-shot, prompted) accuracy of `model` on labelled public data, scored as a transfer's
        `select_data` scores its steps (`promptport.transfer_select`: the transfer's precision and
        batch, the same draw), so that a prompt made elsewhere compares with a selection's."""
        from promptport.classify import PromptClassifier
        from promptport.prompt import load_prompt
        from promptport.runtime import with_resolved_precision
        from promptport.tasks import get_task
        from promptport.transfer import TransferConfig
        from promptport.transfer_select import transfer_selector

        lm, t = self.model(model), get_task(task)
        cfg = TransferConfig(
            **{k: v for k, v in self.recipe.items() if k != "public"},
            max_length=self.sizes.max_length, select_data=select_file, n_select=n, seed=seed,
        )  # fmt: skip
        cfg = with_resolved_precision(cfg, lm.model.device)
        clf = PromptClassifier(lm.model, lm.tokenizer, t, cfg.max_length, cfg.precision)
        sel = transfer_selector(clf, t, cfg)
        emb = load_prompt(prompt).embeddings.to(clf.device)
        return sel.info["teacher_zero_shot_accuracy"], round(sel.score(emb), 4)

    def evaluate(self, model: str, prompt: str | None, spec: dict) -> dict:
        clf, enc, emb = self._scoring(model, prompt, spec)
        m = clf.evaluate(enc, emb, 64)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": len(enc)}
