"""The table's recipes and sizes: what a cell's tuning and transfer run with, and the profiles."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from promptport.fileio import read_json

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
# The paper's transfer setting (TransferConfig's own defaults), kept as an ablation against the tool's.
PAPER_TRANSFER = {"alpha": 0.5, "space": "vocab", "init": "copy", "lr": 1e-3}
# The table's own public data: each task's public texts as given, re-cut to the user's text length
# (`--table-public length_matched`), or that cut into phrases (`phrases`, the tool's
# `--public-cut phrases`); recorded in the state's transfer.json as `public`.
TABLE_PUBLIC = ("given", "length_matched", "phrases")
# The table's own transfer (POST, POST with DP, the non-distilled student's): the tool's one pass, or
# three passes keeping the step under which the teacher is most accurate on a labelled public set of
# the task's kind (`Grid.selection`; transfer_budget's variant of that name); recorded in the state's
# transfer.json as `table_transfer` where it is not the tool's.
TABLE_TRANSFER = ("tool", "epochs=3,select=public")
# Transfer fields the profile's Sizes set (not the recipe's).
SIZED = ("n_public", "epochs", "max_length", "seed")
# Tuning fields the profile's Sizes (or the DP setting) set; the rest is the run config's `tune:`.
TUNE_SIZED = ("epochs", "max_steps", "batch_size", "grad_accum", "eval_every", "max_length", "seed")
# The dp_recipe ablation's DP tunings (besides the table's own): the optimisation a DP prompt needs
# depends on the student, whose gradients set SGD's step (Adam's step is the lr's own scale).
# The last two keep SGD 10 and spend the same epsilon on larger expected batches (128 and 256 of the
# profile's 16-example forward batches): at epsilon 8 sigma grows slowly with the number of samplings, so
# each step's mean gradient is less noisy, for two and four times the tuning's compute.
DP_VARIANTS = (
    {"optimizer": "sgd", "lr": 0.3},
    {"optimizer": "sgd", "lr": 3.0},
    {"optimizer": "adam", "lr": 0.03},
    {"optimizer": "sgd", "lr": 10.0, "epochs": 4, "grad_accum": 8},
    {"optimizer": "sgd", "lr": 10.0, "epochs": 8, "grad_accum": 16},
)
# Validation checks per pass over the training data (the default run's: eval_every 118 of 470 steps).
CHECKS_PER_EPOCH = 4


def _run_section(name: str, sized: tuple[str, ...]) -> dict:
    """A section of the embedded run config (the setting a user of `promptport run` gets), less the
    fields the profile's sizes set: the table's settings are defined there once."""
    from promptport.config import DEFAULT_CONFIG, load_run_config

    return {
        k: v for k, v in getattr(load_run_config(DEFAULT_CONFIG), name).items() if k not in sized
    }


def transfer_recipe() -> dict:
    """POST's recipe for the table: the run config's `transfer:` section."""
    return _run_section("transfer", SIZED)


def _pairs(pairs: list[str], fields, flag: str) -> dict:
    """KEY=VALUE pairs as recipe fields (values read as YAML: 1 is a number, auto text); a key not in
    `fields` is refused with the flag named."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"{flag} {pair}: not a recipe field KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def recipe_changes(pairs: list[str]) -> dict:
    """`--transfer-set KEY=VALUE ...` as recipe fields, checked against TransferConfig; the profile's
    sizes cannot be changed this way."""
    from promptport.transfer import TransferConfig

    fields = set(TransferConfig.__dataclass_fields__) - set(SIZED)
    out = _pairs(pairs, fields, "--transfer-set")
    TransferConfig(**{**transfer_recipe(), **out}).validate()
    return out


# What DP tuning changes in the user's tuning recipe; the rest (prompt length, warm-up, precision) is
# the tune recipe's. Fields a run may change with --dp-set: TuneConfig's optimisation fields, and the
# DP run's length and expected batch (epochs; grad_accum forward batches of the profile's batch_size
# per step), which set how many noisy steps epsilon pays for and how much noise each step's mean has.
DP_FIELDS = ("optimizer", "lr", "weight_decay", "schedule", "warmup_steps", "epochs", "grad_accum")


def profile_dp_recipe(dp_lr: float) -> dict:
    """The DP recipe of every record made before dp.json was kept: plain SGD at the profile's dp_lr."""
    return {"optimizer": "sgd", "lr": dp_lr}


def dp_recipe(sizes: Sizes, pairs: list[str] = ()) -> dict:
    """The table's DP tuning recipe: plain SGD at the profile's dp_lr (the recipe every record made
    before --dp-set was added used), changed by `--dp-set KEY=VALUE ...` and checked against
    TuneConfig. A learning rate set on one student need not suit another: the gradient a prompt gets
    through a student, and so SGD's step, scales with the student."""
    from promptport.privacy import DPConfig
    from promptport.tune import TuneConfig

    out = {**profile_dp_recipe(sizes.dp_lr), **_pairs(list(pairs), DP_FIELDS, "--dp-set")}
    # the recipe's own fields (the sizes are checked where the stage runs)
    cfg = TuneConfig(**{**tune_recipe(), **out}, batch_size=1, dp=DPConfig(epsilon=8.0))
    cfg.validate(sizes.train_limit)
    return out


def tune_recipe() -> dict:
    """The user's tuning recipe for the table, as for POST: the run config's `tune:` section (prompt
    length, learning rate, precision). DP tuning changes its optimisation (`dp_recipe`)."""
    return _run_section("tune", TUNE_SIZED)


# The shared student: the general recipe (one student for every task), at the default run's sizes.
GENERAL_STUDENT = Path(__file__).parents[2] / "configs" / "general-student.yaml"


def read_json_or_none(f: Path) -> dict | None:
    """A record's optional file (recipes, device, reference): its JSON, or None where it is absent."""
    return read_json(f) if f.is_file() else None


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
