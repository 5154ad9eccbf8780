"""The paper's results table at this project's scale: five private tasks x seven methods x three seeds,
plus ablations, resumable cell by cell.

    python -m benchmarks.paper --quick                          # small sizes, fills what time allows
    python -m benchmarks.paper --tasks sst2 mpqa --methods teacher_zero_shot post --seeds 0
    python -m benchmarks.paper --table-only                     # rebuild the JSON and README table

Every (task, method, seed) result is one cell, a JSON file under RECORD/cells/ written atomically as
soon as it is done; a rerun skips every cell that exists, and the artifacts a cell needs (the tuned
prompt, the transferred prompt, under STATE/art/) are reused the same way, so a kill costs at most the
stage in flight. The two folders differ in what survives a sitting: STATE (`runs/paper/<profile>`, the
data files, prompts and students: gigabytes, rebuilt on demand) is scratch, while RECORD
(`benchmarks/results/paper/<profile>`: the cells and the identity of what made them, a few kilobytes) is
committed, so a later sitting on a fresh machine carries on from the cells already measured. It may do
so only with the same student: one distilled again from the same recipe must have the same weights'
checksum (distillation is seeded), or the record refuses it. The profile (`quick` or `full`) sets the
sizes, so cells of different sizes never mix, and they are recorded in the JSON.

Methods (the JSON names): teacher_zero_shot, student_zero_shot, student_prompt (the user's prompt on the
student), direct (that prompt on the teacher unchanged), post (POST transfer with public data, in the
tool's own transfer setting: the `transfer:` section of the embedded run config), post_dp8 (the same from a prompt tuned with DP-SGD at epsilon 8), teacher_tuned (prompt tuning on the teacher with
the private data: the expensive non-private reference, one seed). Zero-shot methods do not depend on the
seed: they are computed once and reported with that single value.

Ablations (`--ablations NAME...`, on `--ablation-tasks`, first seed): non_distilled (the same layers cut
from the teacher, no training), alpha (0 to 1 and `auto`), paper_setting (the tool's transfer setting
against the paper's: alpha 0.5 over the full vocabulary from a copy of the user's prompt, lr 1e-3),
public_data (same / cross domain),
prompt_length (10, 50, 100 tokens), depth (`--depths`: the shared student's recipe at other depths,
distilled on demand and kept in the student store).

The shared student and the recipes are part of the state: a state holds cells of one student only (its
weights' checksum in student.json), one transfer recipe (transfer.json: the embedded run config's
`transfer:` section) and one tuning recipe (tune.json: its `tune:` section; DP tuning keeps the
profile's SGD learning rate), in STATE and in RECORD, and paper_tables.json names all three.

Output: benchmarks/results/paper_tables.json with `tasks.<task>.<method>.{mean, std, per_seed}` and
`ablations.<name>`, and the markdown table between the PAPER-TABLE markers of benchmarks/README.md.

Private tasks and their public data (provider side; never a private text, checked):
    sst2        SST-2 (train / dev / test files)           public: IMDB train reviews (same domain)
    imdb        IMDB (train, 1,000 held out as validation)  public: Rotten Tomatoes sentences
    tweet_eval  TweetEval sentiment (val file = validation; the test file split 85/15 into train/test)
                                                           public: TweetEval emotion tweets
    arisetv     ARISE TV news topics (6 classes)           public: AG News articles
    mpqa        MPQA phrases (split 80/10/10 by text hash)  public: SST-5 sentences
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import RESULTS, SHARED, load_average
from promptport.fileio import read_json, write_json, write_text

TASKS = ("sst2", "imdb", "tweet_eval", "arisetv", "mpqa")
METHODS = (
    "teacher_zero_shot",
    "student_zero_shot",
    "student_prompt",
    "direct",
    "post",
    "post_dp8",
    "teacher_tuned",
)
SEED_FREE = ("teacher_zero_shot", "student_zero_shot")
ONE_SEED = ("teacher_tuned",)
ABLATIONS = ("non_distilled", "alpha", "paper_setting", "public_data", "prompt_length", "depth")
# The paper's transfer setting (TransferConfig's own defaults), kept as an ablation against the tool's.
PAPER_TRANSFER = {"alpha": 0.5, "space": "vocab", "init": "copy", "lr": 1e-3}
# Transfer fields the profile's Sizes set (not the recipe's).
SIZED = ("n_public", "epochs", "max_length", "seed")
# Tuning fields the profile's Sizes (or the DP setting) set; the rest is the run config's `tune:`.
TUNE_SIZED = ("epochs", "max_steps", "batch_size", "grad_accum", "eval_every", "max_length", "seed")
# Validation checks per pass over the training data (the default run's: eval_every 118 of 470 steps).
CHECKS_PER_EPOCH = 4


def transfer_recipe() -> dict:
    """POST's recipe for the table: the embedded run config's `transfer:` section (the setting a user of
    `promptport run` gets), less the fields the profile's sizes set. Defined there once."""
    from promptport.config import DEFAULT_CONFIG, load_run_config

    return {k: v for k, v in load_run_config(DEFAULT_CONFIG).transfer.items() if k not in SIZED}


def tune_recipe() -> dict:
    """The user's tuning recipe for the table, as for POST: the embedded run config's `tune:` section
    (prompt length, learning rate, precision), less the fields the profile's sizes set. DP tuning keeps
    the profile's SGD learning rate (dp_lr)."""
    from promptport.config import DEFAULT_CONFIG, load_run_config

    return {k: v for k, v in load_run_config(DEFAULT_CONFIG).tune.items() if k not in TUNE_SIZED}


README = Path(__file__).parent / "README.md"
# The shared student: the general recipe (one student for every task), at the default run's sizes.
GENERAL_STUDENT = Path(__file__).parent.parent / "configs" / "general-student.yaml"
BEGIN, END = "<!-- PAPER-TABLE:BEGIN -->", "<!-- PAPER-TABLE:END -->"


@dataclass
class Sizes:
    """Everything that sets a cell's cost; part of the state directory's identity."""

    train_limit: int
    val_limit: int
    eval_limit: int
    n_public: int
    tune_epochs: float
    transfer_epochs: float
    dp_lr: float
    max_length: int = 96
    batch_size: int = 16

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


# full: about 14 min a task and seed on 2 AVX512-BF16 cores (tune, DP tune, two transfers, five
# evaluations of 1,000 test examples), so the 5 x 3 grid and the teacher references take about 4 h,
# over several sittings.
PROFILES = {
    "quick": Sizes(
        train_limit=600, val_limit=200, eval_limit=300, n_public=300, tune_epochs=2,
        transfer_epochs=1, dp_lr=0.3,
    ),
    "full": Sizes(
        train_limit=2000, val_limit=300, eval_limit=1000, n_public=1000, tune_epochs=2,
        transfer_epochs=1, dp_lr=0.3,
    ),
}  # fmt: skip


# ---------------------------------------------------------------- data: the five tasks as split files


def _bucket(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _lines(path: Path) -> list[str]:
    op = gzip.open if path.suffix == ".gz" else open
    with op(path, "rt", encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


ARISETV_TASK = {
    "name": "arisetv6",
    "description": "Classify the topic of the news as business, entertainment, health, politics, "
    "sports or technology.",
    "template": "News: {text}\nTopic:",
    "columns": {"text": ["text"]},
    "classes": ["business", "entertainment", "health", "politics", "sports", "technology"],
    "verbalizer": {
        c: [" " + c]
        for c in ["business", "entertainment", "health", "politics", "sports", "technology"]
    },
    "label_map": {"tech": "technology"},
}


def prepare_task(name: str, data_dir: Path, shared: Path = SHARED) -> dict:
    """Write STATE/data/<task>/{train,validation,test,public}.jsonl (text, label) once; returns the spec
    (task name or task file, data folder, public file). Public texts equal to a private one are dropped."""
    out = data_dir / name
    spec = {
        "task": name if name != "arisetv" else str(out / "task.json"),
        "data": str(out),
        "public": str(out / "public.jsonl"),
    }
    if (out / "done").is_file():
        return spec
    from promptport.data import load_split
    from promptport.tasks import get_task

    def rows_of(ds) -> list[dict]:
        task = get_task(spec["task"]) if name != "arisetv" else None
        field = next(iter(ds.fields))
        return [
            {"text": t, "label": (task.classes[y] if task else y)}
            for t, y in zip(ds.fields[field], ds.labels)
        ]

    splits: dict[str, list[dict]] = {}
    public: list[str] = []
    if name == "sst2":
        t = get_task("sst2")
        splits = {
            s: rows_of(load_split(t, str(shared / "sst2"), s))
            for s in ("train", "validation", "test")
        }
        public = [
            json.loads(line)["text"] for line in _lines(shared / "imdb" / "train.jsonl.gz")[:5000]
        ]
    elif name == "imdb":
        t = get_task("imdb")
        train = rows_of(load_split(t, str(shared / "imdb"), "train"))
        splits = {
            "train": [r for r in train if _bucket(r["text"]) >= 0.04],
            "validation": [r for r in train if _bucket(r["text"]) < 0.04],
            "test": rows_of(load_split(t, str(shared / "imdb"), "test")),
        }
        public = [
            line
            for f in ("rt-polarity.pos", "rt-polarity.neg")
            for line in _lines(shared / "rotten_tomatoes" / f)
        ]
    elif name == "tweet_eval":
        d = shared / "tweet_eval" / "sentiment"
        cls = ["negative", "neutral", "positive"]
        val = [
            {"text": x, "label": cls[int(y)]}
            for x, y in zip(_lines(d / "val_text.txt"), _lines(d / "val_labels.txt"))
            if y.strip()
        ]
        pool = [
            {"text": x, "label": cls[int(y)]}
            for x, y in zip(_lines(d / "test_text.txt.gz"), _lines(d / "test_labels.txt"))
            if y.strip()
        ]
        splits = {
            "train": [r for r in pool if _bucket(r["text"]) < 0.85],
            "validation": val,
            "test": [r for r in pool if _bucket(r["text"]) >= 0.85],
        }
        public = _lines(shared / "tweet_eval" / "emotion" / "train_text.txt")
    elif name == "arisetv":
        import csv

        def read(f):
            with open(shared / "arisetv" / f, newline="", encoding="utf-8") as fh:
                return [
                    {"text": f"{r['Title']}. {r['Excerpt']}", "label": r["Category"]}
                    for r in csv.DictReader(fh)
                ]

        train = read("train.csv")
        splits = {
            "train": [r for r in train if _bucket(r["text"]) >= 0.1],
            "validation": [r for r in train if _bucket(r["text"]) < 0.1],
            "test": read("test.csv"),
        }
        import csv as _csv

        with gzip.open(shared / "ag_news" / "train_subset_5k.csv.gz", "rt") as fh:
            public = [row[0] for row in _csv.reader(fh) if row]
        out.mkdir(parents=True, exist_ok=True)
        (out / "task.json").write_text(json.dumps(ARISETV_TASK, indent=1))
    elif name == "mpqa":
        rows = [
            {"text": x.strip(), "label": lab}
            for f, lab in (("mpqa.neg", "negative"), ("mpqa.pos", "positive"))
            for x in _lines(shared / "mpqa" / f)
            if x.strip()
        ]
        splits = {
            "train": [r for r in rows if _bucket(r["text"]) < 0.8],
            "validation": [r for r in rows if 0.8 <= _bucket(r["text"]) < 0.9],
            "test": [r for r in rows if _bucket(r["text"]) >= 0.9],
        }
        public = [line.split("\t", 1)[1] for line in _lines(shared / "sst5" / "train.tsv")]
    else:
        raise SystemExit(f"unknown task {name}")
    private = {" ".join(r["text"].split()).lower() for rows in splits.values() for r in rows}
    public = [p.strip() for p in public if p.strip()]
    public = [p for p in dict.fromkeys(public) if " ".join(p.split()).lower() not in private]
    for s, rows in splits.items():  # in hash order: any prefix (a --limit) is a mixed sample
        _write_jsonl(out / f"{s}.jsonl", sorted(rows, key=lambda r: _bucket("order:" + r["text"])))
    _write_jsonl(out / "public.jsonl", [{"text": p} for p in public])
    (out / "done").write_text("ok\n")
    return spec


# ---------------------------------------------------------------- stages (replaceable in tests)


class Stages:
    """The real stage functions; every one writes its artifact into `out` and is skipped by the caller
    when the artifact exists."""

    def __init__(
        self, teacher: str, sizes: Sizes, progress: bool = False, recipe: dict | None = None,
        tune: dict | None = None,
    ):  # fmt: skip
        self.teacher, self.sizes, self.progress = teacher, sizes, progress
        self.recipe = transfer_recipe() if recipe is None else recipe
        self.tune_recipe = tune_recipe() if tune is None else tune
        self._models: dict = {}
        self._encoded: dict = {}

    def model(self, spec: str):
        from promptport.models import load_model

        if spec not in self._models:
            self._models[spec] = load_model(spec)
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
        accum = max(1, min(4, z.train_limit // (4 * z.batch_size))) if dp else 1
        steps = max(1, z.train_limit // (z.batch_size * accum))  # optimizer steps in a pass
        recipe = {**self.tune_recipe, **over}
        if dp:
            recipe.update(lr=z.dp_lr, optimizer="sgd")
        cfg = TuneConfig(
            **recipe,
            epochs=z.tune_epochs,
            batch_size=z.batch_size,
            grad_accum=accum,
            eval_every=max(1, math.ceil(steps / CHECKS_PER_EPOCH)),
            max_length=z.max_length,
            seed=seed,
            dp=DPConfig(epsilon=dp) if dp else None,
        )
        tune(
            self.model(model), spec["task"], data=spec["data"], out=out, train_limit=z.train_limit,
            val_limit=z.val_limit, cfg=cfg, progress=self.progress, train_eval_limit=200,
        )  # fmt: skip
        return str(out / "prompt")

    def transfer(self, prompt: str, student: str, spec: dict, seed: int, out: Path, **over) -> str:
        from promptport.transfer import TransferConfig, transfer

        z = self.sizes
        fields = {
            k: v for k, v in over.items() if k != "public"
        }  # ablations' changes to the recipe
        cfg = TransferConfig(
            **{**self.recipe, **fields}, n_public=z.n_public, epochs=z.transfer_epochs,
            max_length=z.max_length, seed=seed,
        )  # fmt: skip
        transfer(
            prompt, self.model(student), self.model(self.teacher),
            public_data=over.get("public", spec["public"]), out=out, cfg=cfg, task=spec["task"],
            progress=self.progress,
        )  # fmt: skip
        return str(out / "prompt")

    def _classifier(self, model: str, spec: dict):
        """(classifier, encoded test split) of a model on a task; the encoding is made once."""
        from promptport.classify import PromptClassifier
        from promptport.data import load_split
        from promptport.tasks import get_task

        task = get_task(spec["task"])
        lm = self.model(model)
        clf = PromptClassifier(lm.model, lm.tokenizer, task, self.sizes.max_length)
        key = (model, spec["task"])
        if key not in self._encoded:
            ds = load_split(task, spec["data"], "test", limit=self.sizes.eval_limit)
            self._encoded[key] = clf.encode(ds)
        return clf, self._encoded[key]

    def class_logits(self, model: str, prompt: str | None, spec: dict):
        """[N, C] class scores on the test split, and its labels (for analyses such as
        benchmarks.shift_reference)."""
        from promptport.prompt import load_prompt

        clf, enc = self._classifier(model, spec)
        emb = None if prompt is None else load_prompt(prompt).embeddings
        return clf.predict_logits(enc, emb, 64), enc.labels

    def evaluate(self, model: str, prompt: str | None, spec: dict) -> dict:
        from promptport.prompt import load_prompt

        clf, enc = self._classifier(model, spec)
        emb = None if prompt is None else load_prompt(prompt).embeddings
        m = clf.evaluate(enc, emb, 64)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": len(enc)}


# ---------------------------------------------------------------- the resumable grid


def _done(path: Path) -> bool:
    return (path / "prompt.json").is_file() or (path / "prompt" / "prompt.json").is_file()


class Grid:
    """The (task, method, seed) cells and the ablations over them. Cells live under `record` (default:
    `state`), the prompt artifacts they need under `state`."""

    def __init__(
        self, state: Path, stages, student: str, specs: dict, log=print, depth_student=None,
        depths: tuple[int, ...] = (2, 8), record: Path | None = None,
    ):  # fmt: skip
        self.state, self.stages, self.student, self.specs, self.log = (
            state,
            stages,
            student,
            specs,
            log,
        )
        self.record = state if record is None else record
        # depth ablation: layers -> a student of the same recipe at that depth (distilled on demand)
        self.depth_student, self.depths = depth_student, depths
        self.ran: list[str] = []

    def cell_path(self, *parts) -> Path:
        return self.record.joinpath("cells", *map(str, parts[:-1]), f"{parts[-1]}.json")

    def artifact(self, kind: str, task: str, seed: int, make) -> str:
        """A prompt artifact (tuned or transferred), made once: STATE/art/<task>/<kind>-s<seed>/."""
        d = self.state / "art" / task / f"{kind}-s{seed}"
        if not _done(d):
            import shutil

            shutil.rmtree(d, ignore_errors=True)  # a half-made attempt starts afresh
            t0 = time.perf_counter()
            make(d)
            self.log(f"  [{task}] {kind} seed {seed}: {time.perf_counter() - t0:.0f} s")
        return str(d / "prompt")

    def cell(self, path: Path, compute) -> dict:
        if path.is_file():
            return read_json(path)
        t0 = time.perf_counter()
        r = compute()
        r["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, r)
        self.ran.append(str(path.relative_to(self.record)))
        self.log(f"  {path.relative_to(self.record)}: {r['accuracy']:.4f}")
        return r

    # -- artifacts
    def user_prompt(self, task: str, seed: int, student: str | None = None, tag: str = "tune", **o):
        spec = self.specs[task]
        model = student or self.student
        return self.artifact(
            tag, task, seed, lambda d: self.stages.tune(model, spec, seed, d, None, **o)
        )

    def dp_prompt(self, task: str, seed: int) -> str:
        spec = self.specs[task]
        return self.artifact(
            "tune-dp8", task, seed, lambda d: self.stages.tune(self.student, spec, seed, d, 8.0)
        )

    def post_prompt(self, task: str, seed: int, prompt: str, tag: str, student=None, **o) -> str:
        spec = self.specs[task]
        model = student or self.student
        return self.artifact(
            tag, task, seed, lambda d: self.stages.transfer(prompt, model, spec, seed, d, **o)
        )

    def tuned_and_transferred(
        self, task: str, seed: int, suffix: str, student: str | None = None, **tune_over
    ) -> tuple[str, str]:
        """(user prompt, POST prompt) of a variant: tuned on `student` (default the shared one) with
        `tune_over`, transferred from it; artifacts tune<suffix> and post<suffix>."""
        p = self.user_prompt(task, seed, student, "tune" + suffix, **tune_over)
        return p, self.post_prompt(task, seed, p, "post" + suffix, student)

    # -- cells
    def run_cell(self, task: str, method: str, seed: int) -> dict:
        spec, st, teacher = self.specs[task], self.stages, self.stages.teacher
        path = self.cell_path(task, method, f"seed{seed}")

        def compute():
            if method == "teacher_zero_shot":
                return st.evaluate(teacher, None, spec)
            if method == "student_zero_shot":
                return st.evaluate(self.student, None, spec)
            if method == "student_prompt":
                return st.evaluate(self.student, self.user_prompt(task, seed), spec)
            if method == "direct":
                return st.evaluate(teacher, self.user_prompt(task, seed), spec)
            if method == "post":
                p = self.post_prompt(task, seed, self.user_prompt(task, seed), "post")
                return st.evaluate(teacher, p, spec)
            if method == "post_dp8":
                p = self.post_prompt(task, seed, self.dp_prompt(task, seed), "post-dp8")
                return st.evaluate(teacher, p, spec)
            if method == "teacher_tuned":
                p = self.artifact(
                    "teacher-tune", task, seed, lambda d: st.tune(teacher, spec, seed, d, None)
                )
                return st.evaluate(teacher, p, spec)
            raise SystemExit(f"unknown method {method}")

        return self.cell(path, compute)

    def run_ablation(self, name: str, task: str, seed: int) -> None:
        spec, st, teacher = self.specs[task], self.stages, self.stages.teacher
        user = lambda: self.user_prompt(task, seed)  # noqa: E731
        if name == "non_distilled":
            nd = self.state / "non-distilled-student"
            if not (nd / "student.json").is_file():
                st.non_distilled(self.student, nd)
            for variant, student in (("distilled", self.student), ("non_distilled", str(nd))):
                tag = "" if variant == "distilled" else "-nd"

                def post(student=student, tag=tag):
                    _, q = self.tuned_and_transferred(task, seed, tag, student)
                    return st.evaluate(teacher, q, spec)

                self.cell(self.cell_path("ablations", name, task, variant, f"seed{seed}"), post)
        elif name == "alpha":
            for a in (0.0, 0.25, 0.5, 0.75, 1.0, "auto"):
                tag = a if a == "auto" else f"{a:g}"
                self.cell(
                    self.cell_path("ablations", name, task, f"alpha={tag}", f"seed{seed}"),
                    lambda a=a, tag=tag: st.evaluate(
                        teacher, self.post_prompt(task, seed, user(), f"post-a{tag}", alpha=a), spec
                    ),
                )
        elif name == "paper_setting":
            self.cell(
                self.cell_path("ablations", name, task, "tool", f"seed{seed}"),
                lambda: dict(self.run_cell(task, "post", seed)),
            )
            self.cell(
                self.cell_path("ablations", name, task, "paper", f"seed{seed}"),
                lambda: st.evaluate(
                    teacher,
                    self.post_prompt(task, seed, user(), "post-paper", **PAPER_TRANSFER),
                    spec,
                ),
            )
        elif name == "public_data":
            cross = {"arisetv": "sst2"}.get(task, "arisetv")
            srcs = {
                "same_domain": spec["public"],
                "cross_domain": self.specs[cross]["public"]
                if cross in self.specs
                else spec["public"],
            }
            for variant, src in srcs.items():
                self.cell(
                    self.cell_path("ablations", name, task, variant, f"seed{seed}"),
                    lambda v=variant, src=src: st.evaluate(
                        teacher, self.post_prompt(task, seed, user(), f"post-{v}", public=src), spec
                    ),
                )
        elif name == "prompt_length":
            for n in (10, 50, 100):

                def both(n=n):
                    p, q = self.tuned_and_transferred(task, seed, f"-n{n}", n_tokens=n)
                    r = st.evaluate(teacher, q, spec)
                    r["student_prompt"] = st.evaluate(self.student, p, spec)["accuracy"]
                    return r

                self.cell(
                    self.cell_path("ablations", name, task, f"n_tokens={n}", f"seed{seed}"), both
                )
        elif name == "depth":
            if self.depth_student is None:
                raise SystemExit(
                    "the depth ablation needs students of other depths (depth_student)"
                )
            for k in self.depths:

                def at_depth(k=k):
                    student = self.depth_student(k)
                    p, q = self.tuned_and_transferred(task, seed, f"-L{k}", student)
                    r = st.evaluate(teacher, q, spec)
                    r["student_prompt"] = st.evaluate(student, p, spec)["accuracy"]
                    return r

                self.cell(
                    self.cell_path("ablations", name, task, f"layers={k}", f"seed{seed}"), at_depth
                )
        else:
            raise SystemExit(f"unknown ablation {name}")


# ---------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(state: Path) -> dict:
    """paper_tables.json's tasks and ablations from the cell files present (whatever is filled)."""
    tasks: dict = {}
    for task in TASKS:
        for method in METHODS:
            d = state / "cells" / task / method
            cells = sorted(d.glob("seed*.json")) if d.is_dir() else []
            if not cells:
                continue
            per_seed = {p.stem.removeprefix("seed"): read_json(p)["accuracy"] for p in cells}
            mean, std = _mean_std(list(per_seed.values()))
            tasks.setdefault(task, {})[method] = {
                "mean": round(mean, 4),
                "std": round(std, 4),
                "per_seed": {k: round(v, 4) for k, v in per_seed.items()},
            }
    ablations: dict = {}
    root = state / "cells" / "ablations"
    for p in sorted(root.rglob("seed*.json")) if root.is_dir() else []:
        name, task, variant = p.relative_to(root).parts[:3]
        r = read_json(p)
        slot = ablations.setdefault(name, {}).setdefault(task, {}).setdefault(variant, {})
        slot[p.stem.removeprefix("seed")] = {
            k: round(v, 4) for k, v in r.items() if k in ("accuracy", "student_prompt")
        }
    return {"tasks": tasks, "ablations": ablations}


def targets(tasks: dict) -> dict:
    """Issue 14's 'done when' checks over the filled cells (None where a needed cell is missing)."""

    def m(t, k):
        return tasks.get(t, {}).get(k, {}).get("mean")

    beats = [
        t
        for t in tasks
        if None not in (m(t, "post"), m(t, "teacher_zero_shot"), m(t, "direct"))
        and m(t, "post") > m(t, "teacher_zero_shot")
        and m(t, "post") > m(t, "direct")
    ]
    complete = [t for t in tasks if None not in (m(t, "post"), m(t, "teacher_zero_shot"))]
    ratios = [
        (m(t, "post") - m(t, "teacher_zero_shot"))
        / (m(t, "teacher_tuned") - m(t, "teacher_zero_shot"))
        for t in tasks
        if None not in (m(t, "post"), m(t, "teacher_zero_shot"), m(t, "teacher_tuned"))
        and m(t, "teacher_tuned") != m(t, "teacher_zero_shot")
    ]
    dp_gaps = [
        m(t, "post") - m(t, "post_dp8")
        for t in tasks
        if None not in (m(t, "post"), m(t, "post_dp8"))
    ]
    return {
        "post_beats_zero_shot_and_direct": {
            "tasks": beats, "of_tasks_with_cells": len(complete), "target": "4 of 5",
        },
        "mean_gain_kept": {
            "value": round(statistics.fmean(ratios), 4) if ratios else None,
            "tasks": len(ratios), "target": 0.5,
        },
        "dp8_gap_points": {
            "value": round(100 * statistics.fmean(dp_gaps), 2) if dp_gaps else None,
            "tasks": len(dp_gaps), "target": "<= 2",
        },
    }  # fmt: skip


def markdown(tables: dict) -> str:
    tasks = tables["tasks"]
    head = "| method | " + " | ".join(TASKS) + " |\n|---|" + "---|" * len(TASKS) + "\n"
    rows = []
    for method in METHODS:
        cells = []
        for t in TASKS:
            r = tasks.get(t, {}).get(method)
            if r is None:
                cells.append("–")
            elif len(r["per_seed"]) > 1:
                cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} ({len(r['per_seed'])})")
            else:
                cells.append(f"{r['mean']:.3f} (1)")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    z = tables["sizes"]
    st = tables.get("student") or {}
    recipe = (st.get("recipe") or {}).get("task_template") or "?"
    who = (
        f" One shared student: {len(st.get('layers') or [])} layers {st.get('layers')}, "
        f"{'distilled' if st.get('distilled', True) else 'not distilled'}, task recipe `{recipe}`."
        if st
        else ""
    )
    rec = tables.get("transfer_recipe")
    how = (
        " POST (and post_dp8) in the tool's transfer setting: "
        + ", ".join(f"{k} {v}" for k, v in rec.items() if k != "method")
        + "."
        if rec
        else ""
    )
    note = (
        f"\nProfile `{tables['profile']}`: train {z['train_limit']}, validation {z['val_limit']}, "
        f"test {z['eval_limit']} examples, {z['n_public']} public texts, "
        f"{(tables.get('tune_recipe') or {}).get('n_tokens', '?')} prompt tokens. "
        "Accuracy on each task's test split, mean ± std over seeds (number of seeds); – = not run yet."
        f"{who}{how} "
        f"Command: `{tables['command']}`. Generated from benchmarks/results/paper_tables.json.\n"
    )
    return head + "\n".join(rows) + "\n" + note


def write_readme_table(text: str, readme: Path = README) -> None:
    body = readme.read_text() if readme.is_file() else ""
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, body, flags=re.S)
    else:
        body = (
            body.rstrip("\n")
            + "\n\n## Paper table (`python -m benchmarks.paper`)\n\n"
            + block
            + "\n"
        )
    write_text(readme, body)


def _read_json_or_none(f: Path) -> dict | None:
    return read_json(f) if f.is_file() else None


def write_outputs(record: Path, profile: str, sizes: Sizes, command: str, extra: dict | None = None,
                  results: Path = RESULTS, readme: Path = README) -> dict:  # fmt: skip
    """paper_tables.json and the README table from the cells under `record`."""
    tables = collect(record)
    out = {
        "benchmark": "paper",
        "profile": profile,
        "sizes": asdict(sizes),
        "command": command,
        "record_dir": str(record),
        "student": _read_json_or_none(record / "student.json"),
        "transfer_recipe": _read_json_or_none(record / "transfer.json"),
        "tune_recipe": _read_json_or_none(record / "tune.json"),
        **tables,
        "targets": targets(tables["tasks"]),
        **(extra or {}),
    }
    write_json(results / "paper_tables.json", out)
    write_readme_table(markdown(out), readme)
    return out


# ---------------------------------------------------------------- main


def _recipe(args):
    """The shared student's recipe: --student's own (its run's metrics.json), else --distill-config's:
    a run config's distill section or a `promptport distill --config` file (GENERAL_STUDENT)."""
    from promptport.config import section
    from promptport.distill import DistillConfig
    from promptport.fileio import read_yaml_mapping
    from promptport.pipeline import load_run_config

    run = Path(args.student).parent / "metrics.json" if args.student else None
    if run is not None and run.is_file():
        return DistillConfig(**read_json(run)["config"])
    data = read_yaml_mapping(args.distill_config)
    if "distill" in data:
        rc = load_run_config(args.distill_config)
        return DistillConfig(**{"seed": rc.seed, **rc.distill})
    flat = {str(k).replace("-", "_"): v for k, v in data.items()}
    seed = flat.pop("seed", 0)
    flat.pop("teacher", None)  # --teacher names it
    return DistillConfig(**section(DistillConfig, flat, "distill"), seed=seed)


def _student(args, state: Path, log, layers: int | None = None) -> str:
    """--student, else the recipe from the student store, else distilled here and filed in the store
    (one student shared by every task, method and seed). `layers`: the same recipe at another depth
    (the depth ablation)."""
    if args.student and layers is None:
        return args.student
    import dataclasses

    from promptport import student_store
    from promptport.distill import distill
    from promptport.models import load_model

    cfg = _recipe(args).resolved("cpu")  # the key `promptport run` files the same student under
    if layers is not None:
        cfg = dataclasses.replace(cfg, layers=layers)
    key, basis = student_store.recipe_key(load_model(args.teacher).info, cfg.to_dict())
    entry = student_store.lookup(key)
    if entry is not None:
        log(f"[student] from the student store: {entry}")
        return str(entry / "student")
    d = state / ("student" if layers is None else f"student-L{layers}")
    log(f"[student] distilling {cfg.layers} layers into {d}")
    distill(args.teacher, d, cfg, resume=(d / "checkpoint" / "state.json").is_file())
    return str(student_store.put(key, basis, d) / "student")


def student_identity(student: str) -> dict:
    """What makes two students the same for the table: the checksum of the weights (checked against
    student.json), the kept layers, whether it was distilled, and the recipe where its run left one."""
    from promptport.student import read_student_meta

    meta = read_student_meta(student)
    sha = next(iter((meta.get("sha256") or {}).values()), "")
    ident = {
        "path": str(student),
        "sha256": sha[:16],
        "layers": meta.get("layers"),
        "distilled": meta.get("distilled", True),
    }
    run = Path(student).parent / "metrics.json"
    if run.is_file():
        cfg = read_json(run).get("config") or {}
        ident["recipe"] = {
            k: cfg[k] for k in ("task_template", "alpha_task", "alpha_label", "corpus", "task_data")
            if k in cfg
        }  # fmt: skip
    return ident


# The artifacts each recipe makes (STATE/art/<task>/<kind>-s<seed>/).
RECIPE_ARTIFACTS = {"transfer": ("*/post*",), "tune": ("*/tune*", "*/teacher-tune*")}


def check_recipe(state: Path, recipe: dict, kind: str = "transfer") -> None:
    """One transfer (and one tuning) recipe per state: a state whose artifacts were made before the
    recipe was recorded (or with another) is refused, so cells of two settings never mix in one table."""
    f = state / f"{kind}.json"
    if f.is_file():
        had = read_json(f)
        if had != recipe:
            raise SystemExit(
                f"{state} holds cells of another {kind} recipe ({had}); "
                "use another --state/--record"
            )
        return
    if any(any((state / "art").glob(g)) for g in RECIPE_ARTIFACTS[kind]):
        raise SystemExit(
            f"{state} holds artifacts of an unrecorded {kind} recipe; use another --state/--record"
        )
    write_json(f, recipe)


def check_student(state: Path, ident: dict) -> None:
    """One student per state or record: cells of two students never mix in one table (as sizes never
    do). A student distilled again elsewhere is the same one only if its weights are."""
    f = state / "student.json"
    if f.is_file():
        had = read_json(f)
        if had.get("sha256") != ident["sha256"]:
            raise SystemExit(
                f"{state} holds cells of another student ({had.get('path')}, sha256 "
                f"{had.get('sha256')}); use another --state/--record"
            )
        return
    if any((state / "cells").rglob("*.json")):
        raise SystemExit(
            f"{state} holds cells of an unrecorded student; use another --state/--record"
        )
    write_json(f, ident)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="the quick profile (small sizes)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ablations", nargs="*", default=[], choices=ABLATIONS)
    ap.add_argument("--ablation-tasks", nargs="+", default=["sst2"], choices=TASKS)
    ap.add_argument(
        "--depths", nargs="+", type=int, default=[2, 8],
        help="student depths of the depth ablation (the shared student's recipe, distilled on demand)",
    )  # fmt: skip
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--student", default=None, help="a student folder (default: distil one)")
    ap.add_argument(
        "--distill-config", default=str(GENERAL_STUDENT),
        help="the shared student's recipe: a `promptport distill --config` YAML or a run YAML "
        "(its distill section); default: the general student's",
    )  # fmt: skip
    ap.add_argument(
        "--state", default=None,
        help="scratch folder: data files, prompts, students (default runs/paper/<profile>)",
    )  # fmt: skip
    ap.add_argument(
        "--record", default=None,
        help="the cells and their identity, committed (default benchmarks/results/paper/<profile>)",
    )  # fmt: skip
    ap.add_argument("--budget-min", type=float, default=None, help="stop starting cells after this")
    ap.add_argument("--table-only", action="store_true", help="only rebuild JSON and README table")
    args = ap.parse_args(argv)
    profile = "quick" if args.quick else "full"
    sizes = PROFILES[profile]
    state = Path(args.state or f"runs/paper/{profile}")
    record = Path(args.record) if args.record else RESULTS / "paper" / profile
    folders = dict.fromkeys([state, record])  # one folder when both are the same
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
        key_file = d / "sizes.json"
        if key_file.is_file() and read_json(key_file) != asdict(sizes):
            raise SystemExit(f"{d} holds cells of other sizes; use another --state/--record")
        write_json(key_file, asdict(sizes))
    command = "python -m benchmarks.paper " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = load_average()
    if not args.table_only:
        import torch

        from promptport.runtime import quiet_libraries

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        quiet_libraries()
        specs = {t: prepare_task(t, state / "data") for t in TASKS}
        student = _student(args, state, print)
        stages = Stages(args.teacher, sizes)
        ident = student_identity(student)
        for d in folders:
            check_student(d, ident)
            check_recipe(d, stages.recipe)
            check_recipe(d, stages.tune_recipe, "tune")
        grid = Grid(
            state, stages, student, specs, record=record,
            depth_student=lambda k: _student(args, state, print, layers=k), depths=tuple(args.depths),
        )  # fmt: skip
        t0 = time.perf_counter()
        deadline = math.inf if args.budget_min is None else t0 + 60 * args.budget_min
        order = [
            (t, m, s)
            for s in args.seeds
            for t in args.tasks
            for m in args.methods
            if not ((m in SEED_FREE or m in ONE_SEED) and s != args.seeds[0])
        ]
        for t, m, s in order:
            if time.perf_counter() > deadline:
                print("[paper] budget spent; rerun to continue")
                break
            grid.run_cell(t, m, s)
            write_outputs(record, profile, sizes, command)
        for name in args.ablations:
            for t in args.ablation_tasks:
                if time.perf_counter() > deadline:
                    break
                grid.run_ablation(name, t, args.seeds[0])
                write_outputs(record, profile, sizes, command)
    out = write_outputs(
        record, profile, sizes, command,
        extra={"load_average_start": load_start, "load_average_end": load_average()},
    )  # fmt: skip
    print(json.dumps(out["targets"]))
    return out


if __name__ == "__main__":
    main()
