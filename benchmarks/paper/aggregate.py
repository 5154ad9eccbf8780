"""Aggregation: the cells collected into tasks and ablations, and the issue's targets."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from pathlib import Path

from benchmarks.paper.recipes import METHODS, TASKS, Sizes, read_json_or_none
from promptport.fileio import read_json


def mean_std(values: list[float]) -> tuple[float, float]:
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
            mean, std = mean_std(list(per_seed.values()))
            tasks.setdefault(task, {})[method] = {
                "mean": round(mean, 4),
                "std": round(std, 4),
                "per_seed": {k: round(v, 4) for k, v in per_seed.items()},
            }
    ablations = _variant_cells(state / "cells" / "ablations", COLLECTED)
    user_side = collect_user_side(state)
    return {
        "tasks": tasks,
        "ablations": ablations,
        **({"user_side": user_side} if user_side else {}),
    }


# what a user-side cell contributes (the user's own view of a tuning: no test accuracy)
USER_SIDE = (
    "user_val_accuracy",
    "user_val_macro_f1",  # a prompt that learned one class can validate near the majority's share
    "dp_steps",
    "noise_multiplier",
    "user_tune_seconds",
    "prompt_drift",
)


def _variant_cells(root: Path, fields: tuple[str, ...]) -> dict:
    """The cells ROOT/<name>/<task>/<variant>/seed<s>.json as {name: {task: {variant: {seed:
    {field: value}}}}}, keeping the numeric `fields` (teacher_tokens' losses per length are not)."""
    out: dict = {}
    for p in sorted(root.rglob("seed*.json")) if root.is_dir() else []:
        name, task, variant = p.relative_to(root).parts[:3]
        slot = out.setdefault(name, {}).setdefault(task, {}).setdefault(variant, {})
        slot[p.stem.removeprefix("seed")] = {
            k: round(v, 4)
            for k, v in read_json(p).items()
            if k in fields and isinstance(v, (int, float))
        }
    return out


def collect_user_side(state: Path) -> dict:
    """The user-side cells (RECORD/cells/user_side/<name>/<task>/<variant>/seed<s>.json)."""
    return _variant_cells(state / "cells" / "user_side", USER_SIDE)


def dp_recipe_user_choice(cells: dict, own: str) -> dict:
    """Each DP recipe of the user-side cells ({task: {variant: {seed: cell}}}) against the table's
    own recipe `own`, over the (task, seed) cells both have: the mean best validation accuracy of
    their DP prompts on the student and the difference in points (per task and overall). The user's
    choice is the recipe with the highest mean; recipes over other cells do not compare."""

    def acc(v: str) -> dict[str, dict[str, float]]:  # {task: {seed: validation accuracy}}
        return {
            t: {
                s: c["user_val_accuracy"]
                for s, c in variants.get(v, {}).items()
                if c.get("user_val_accuracy") is not None
            }
            for t, variants in cells.items()
        }

    theirs = acc(own)
    recipes = {}
    for v in sorted({v for variants in cells.values() for v in variants} - {own}):
        mine = acc(v)
        shared = {t: sorted(set(mine[t]) & set(theirs[t])) for t in cells}  # seeds both have
        pairs = [(t, s) for t, seeds in shared.items() for s in seeds]
        if not pairs:
            continue
        m = statistics.fmean(mine[t][s] for t, s in pairs)
        o = statistics.fmean(theirs[t][s] for t, s in pairs)
        recipes[v] = {
            "cells": len(pairs), "mean_user_val_accuracy": round(m, 4),
            "own_mean_user_val_accuracy": round(o, 4),
            "difference_points": round(100 * (m - o), 2),
            "per_task_points": {
                t: round(100 * statistics.fmean(mine[t][s] - theirs[t][s] for s in seeds), 2)
                for t, seeds in shared.items() if seeds
            },
        }  # fmt: skip
    return {
        "own": own,
        "recipes": recipes,
        "assumes": "the best validation accuracy of each DP prompt on the student, on the user's "
        "validation split (what a user sees before any transfer); each tuning is (8, delta)-DP, "
        "but choosing among recipes by private validation data is not covered by that epsilon",
    }


# what an ablation cell contributes to paper_tables.json (the cell files keep the rest)
COLLECTED = (
    "accuracy", "student_prompt", "prompt_drift", "teacher_tokens", "heldout_loss", "best_step",
)  # fmt: skip


def tuned_reference(tables_file: Path, sizes: Sizes, tune: dict | None = None) -> dict:
    """Another record's teacher_tuned cells (its paper_tables JSON) for a record that has none: the
    same sizes and tuning recipe `tune` (checked: the H200 record's teacher tuning without warm-up
    reached 0.67 on MPQA where this CPU's with it reached 0.89, so a reference of another recipe
    can decide the target) and, assumed, the same teacher, tasks and splits; other numerics (its
    device). Kept in the record as tuned_reference.json, so that `mean_gain_kept_vs_reference` can
    be computed and says what it used."""
    ref = read_json_or_none(tables_file)
    if not ref or "tasks" not in ref:
        raise SystemExit(f"--tuned-reference: {tables_file} is not a paper_tables JSON")
    for k, v in asdict(sizes).items():
        if ref.get("sizes", {}).get(k) != v:
            raise SystemExit(
                f"--tuned-reference: sizes.{k} is {ref.get('sizes', {}).get(k)} in {tables_file}, "
                f"{v} here: teacher tuning of other sizes is not a reference"
            )
    if tune is not None and ref.get("tune_recipe") != tune:
        raise SystemExit(
            f"--tuned-reference: tune recipe {ref.get('tune_recipe')} in {tables_file}, {tune} "
            "here: teacher tuning of another recipe is not a reference"
        )
    tuned = {t: r["teacher_tuned"] for t, r in ref["tasks"].items() if "teacher_tuned" in r}
    if not tuned:
        raise SystemExit(f"--tuned-reference: {tables_file} has no teacher_tuned cell")
    return {
        "from": str(tables_file), "record_dir": ref.get("record_dir"), "device": ref.get("device"),
        **({"tune_recipe": tune} if tune is not None else {}),  # checked: the same as its own
        "teacher_tuned": tuned,
    }  # fmt: skip


def _gain_ratios(tasks: dict, tuned: dict) -> dict[str, float]:
    """(POST − zero-shot) / (tuned − zero-shot) per task, for tasks with all three means (and a tuned
    mean that differs from zero-shot); `tuned` maps a task to its teacher_tuned mean or None."""
    ratios = {}
    for t, tuned_mean in tuned.items():
        post, zs = (tasks.get(t, {}).get(k, {}).get("mean") for k in ("post", "teacher_zero_shot"))
        if None not in (post, zs, tuned_mean) and tuned_mean != zs:
            ratios[t] = (post - zs) / (tuned_mean - zs)
    return ratios


def _gain_kept_vs(tasks: dict, ref: dict) -> dict:
    """Mean gain kept with the teacher_tuned means of another record (`tuned_reference`)."""
    ratios = _gain_ratios(tasks, {t: r["mean"] for t, r in ref["teacher_tuned"].items()})
    return {
        "value": round(statistics.fmean(ratios.values()), 4) if ratios else None,
        "per_task": {t: round(v, 4) for t, v in ratios.items()},
        "tasks": len(ratios), "target": 0.5,
        "assumes": f"teacher_tuned means of {ref['from']} (device {ref['device']}): same teacher, "
        + (
            f"splits, sizes and tune recipe {ref['tune_recipe']}"
            if "tune_recipe" in ref
            else "splits and sizes; its tune recipe was not checked"
        )
        + ", other numerics",
    }  # fmt: skip


def targets(tasks: dict, ablations: dict | None = None, reference: dict | None = None) -> dict:
    """Issue 14's 'done when' checks over the filled cells (None where a needed cell is missing).
    The distilled-student check reads the non_distilled ablation (first seed only, as it runs);
    with a `reference` (tuned_reference.json) the gain kept is also computed against its tuning."""

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
    ratios = _gain_ratios(tasks, {t: m(t, "teacher_tuned") for t in tasks})
    dp, dp_seeds = _dp_gaps(tasks)
    return {
        "post_beats_zero_shot_and_direct": {
            "tasks": beats, "of_tasks_with_cells": len(complete), "target": "4 of 5",
        },
        "mean_gain_kept": {
            "value": round(statistics.fmean(ratios.values()), 4) if ratios else None,
            "per_task": {t: round(v, 4) for t, v in ratios.items()},
            "tasks": len(ratios), "target": 0.5,
        },
        "dp8_gap_points": {
            "value": round(statistics.fmean(dp.values()), 2) if dp else None,
            "tasks": len(dp), "per_task": dp, "target": "<= 2",
            "seeds_per_task": dp_seeds,  # 0: a task whose gap is the means'
            "assumes": "POST minus POST with DP over the seeds both have (paired by seed; a task "
            "with none in common: the difference of the means), then the plain mean over tasks "
            "whatever each task's number of seeds",
        },
        "distilled_beats_non_distilled": _distilled_beats((ablations or {}).get("non_distilled", {})),
        **({"mean_gain_kept_vs_reference": _gain_kept_vs(tasks, reference)} if reference else {}),
        **_dp_gaps_by_recipe(tasks, (ablations or {}).get("dp_recipe", {})),
        **_gain_kept_by_transfer(tasks, (ablations or {}).get("transfer_budget", {})),
        **_dp_gaps_by_transfer(ablations or {}),
        **_gain_kept_by_depth(tasks, (ablations or {}).get("depth", {}), reference),
    }  # fmt: skip


def _paired_gap(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Mean of a - b in points over the seeds both have (None if they share none): cells of two
    methods often lag each other, and a mean over other seeds would mix seed noise into the gap."""
    seeds = sorted(set(a) & set(b))
    return round(100 * statistics.fmean(a[s] - b[s] for s in seeds), 2) if seeds else None


def _dp_gaps(tasks: dict) -> tuple[dict[str, float], dict[str, int]]:
    """POST minus POST-with-DP in points per task, paired by seed, and the number of seeds each is
    over; tables without per-seed values (or with no seed in common: 0 seeds) fall back to the means."""
    gaps, seeds = {}, {}
    for t, cells in tasks.items():
        post, dp = cells.get("post", {}), cells.get("post_dp8", {})
        if None in (post.get("mean"), dp.get("mean")):
            continue
        a, b = post.get("per_seed", {}), dp.get("per_seed", {})
        gap = _paired_gap(a, b)
        gaps[t] = round(100 * (post["mean"] - dp["mean"]), 2) if gap is None else gap
        seeds[t] = len(set(a) & set(b))
    return gaps, seeds


def _accuracies(variant: dict) -> dict[str, float]:
    """An ablation variant's cells ({seed: cell}) as {seed: accuracy}, for `_paired_gap`."""
    return {s: c["accuracy"] for s, c in variant.items()}


def _gaps_by_variant(dp_cells: dict, post_of) -> dict:
    """For each variant of an ablation's DP cells ({task: {variant: {seed: cell}}}): POST
    (`post_of(task, variant)` -> {seed: accuracy}) minus its POST with DP, paired by seed, per task,
    the seeds each is over, and the mean over its tasks."""
    out = {}
    for v in sorted({v for variants in dp_cells.values() for v in variants}):
        per_task, seeds = {}, {}
        for t, variants in dp_cells.items():
            post, dp = post_of(t, v), _accuracies(variants.get(v, {}))
            gap = _paired_gap(post, dp)
            if gap is not None:
                per_task[t], seeds[t] = gap, sorted(set(post) & set(dp), key=int)
        if per_task:
            value = round(statistics.fmean(per_task.values()), 2)
            out[v] = {"value": value, "per_task": per_task, "seeds": seeds}
    return out


def _dp_gaps_by_recipe(tasks: dict, cells: dict) -> dict:
    """The DP gap of each DP recipe in the dp_recipe ablation (the table's own included, as its
    variant's cells): POST minus that recipe's POST with DP per task, paired by seed, and the mean over
    the tasks it has. Two recipes compare only over the same (task, seed) cells, listed as `seeds`."""
    out = _gaps_by_variant(cells, lambda t, v: tasks.get(t, {}).get("post", {}).get("per_seed", {}))
    if not out:
        return {}
    return {
        "dp8_gap_points_by_dp_recipe": {
            "recipes": out,
            "assumes": "as dp8_gap_points, over each recipe's own cells of the dp_recipe ablation "
            "(POST's per-seed cells of the table); recipes over other tasks or seeds do not compare",
        }
    }


HELDOUT_PICK = "lowest_heldout_loss"


def _variant_means(
    cells: dict,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[str]]]]:
    """An ablation's cells ({task: {variant: {seed: cell}}}) as {variant: {task: mean accuracy}} and
    {variant: {task: its seeds}}."""
    means: dict[str, dict[str, float]] = {}
    seeds_of: dict[str, dict[str, list[str]]] = {}
    for t, variants in cells.items():
        for name, v in variants.items():
            means.setdefault(name, {})[t] = statistics.fmean(c["accuracy"] for c in v.values())
            seeds_of.setdefault(name, {})[t] = sorted(v, key=int)
    return means, seeds_of


def _kept_in_posts_place(
    tasks: dict, by_task: dict[str, float], tuned: dict, seeds: dict[str, list[str]]
) -> dict:
    """An ablation variant's gain kept with its mean accuracies `by_task` in POST's place (`tuned`:
    task -> teacher_tuned mean or None): the mean ratio (None where no task has one), per task, the
    means and the seeds they are over."""
    as_post = {t: {**tasks.get(t, {}), "post": {"mean": a}} for t, a in by_task.items()}
    ratios = _gain_ratios(as_post, tuned)
    return {
        "value": round(statistics.fmean(ratios.values()), 4) if ratios else None,
        "per_task": {t: round(r, 4) for t, r in ratios.items()},
        "post": {t: round(a, 4) for t, a in by_task.items()},
        "seeds": seeds,
    }


def _gain_kept_by_transfer(tasks: dict, cells: dict) -> dict:
    """The gain kept with each transfer of the transfer_budget ablation in POST's place (the mean of
    its cells over its own seeds), and with the provider's pick per (task, seed): among the variants
    that have every seed of the task, the one whose held-out public loss is lowest."""
    from promptport.transfer import lowest_heldout

    means, seeds_of = _variant_means(cells)
    for t, variants in cells.items():
        every = sorted(set().union(*variants.values()), key=int)
        # losses compare between transfers of one target: not across `shift_mean` treatments
        full = {
            n: v for n, v in variants.items() if set(v) == set(every) and "shift_mean=" not in n
        }
        if len(full) > 1:  # the tool's rule (`n_tokens: auto` keeps a length by it too)
            picked = []
            for s in every:
                losses = {n: v[s].get("heldout_loss", math.inf) for n, v in full.items()}
                picked.append(full[lowest_heldout(losses)][s]["accuracy"])
            means.setdefault(HELDOUT_PICK, {})[t] = statistics.fmean(picked)
            seeds_of.setdefault(HELDOUT_PICK, {})[t] = every
    out = {}
    for name, by_task in means.items():
        tuned = {t: tasks.get(t, {}).get("teacher_tuned", {}).get("mean") for t in by_task}
        entry = _kept_in_posts_place(tasks, by_task, tuned, seeds_of[name])
        if entry["value"] is not None:
            out[name] = entry
    if not out:
        return {}
    return {
        "mean_gain_kept_by_transfer": {
            "variants": out,
            "target": 0.5,
            "assumes": "as mean_gain_kept, with the mean of a transfer_budget variant's cells over "
            f"its listed seeds in POST's place; {HELDOUT_PICK}: per task and seed, among the "
            "variants with every seed of the task, the one whose transfer reached the lowest "
            "held-out public loss (what the provider can see); variants over other seeds do not "
            "compare",
        }
    }


def _gain_kept_by_depth(tasks: dict, cells: dict, reference: dict | None = None) -> dict:
    """The gain kept with each transfer of the depth ablation in POST's place (the mean of its cells
    over its seeds), and on which tasks it beats zero-shot and that depth's direct transfer (its
    `layers=K,direct` cells, the same seeds). Zero-shot is the record's; the tuned teacher the
    record's, else the reference's (`tuned_reference`: a probe record with no table of its own)."""
    ref = (reference or {}).get("teacher_tuned", {})
    means, seeds_of = _variant_means(cells)
    out = {}
    for name, by_task in means.items():
        if name.endswith(",direct"):
            continue
        direct_name = name.split(",")[0] + ",direct"
        tuned = {
            t: tasks.get(t, {}).get("teacher_tuned", {}).get("mean", ref.get(t, {}).get("mean"))
            for t in by_task
        }
        zs = {t: tasks.get(t, {}).get("teacher_zero_shot", {}).get("mean") for t in by_task}
        direct = means.get(direct_name, {})
        beats = [
            t for t, a in by_task.items()
            if zs[t] is not None and t in direct and seeds_of[direct_name][t] == seeds_of[name][t]
            and a > zs[t] and a > direct[t]
        ]  # fmt: skip
        out[name] = {
            **_kept_in_posts_place(tasks, by_task, tuned, seeds_of[name]),
            "beats_zero_shot_and_direct": beats,
        }
    if not out:
        return {}
    return {
        "mean_gain_kept_by_depth": {
            "variants": out, "target": 0.5,
            "assumes": "as mean_gain_kept, with the mean of a depth variant's cells over its listed "
            "seeds in POST's place, the record's teacher_zero_shot, and the record's teacher_tuned"
            + (f" or, where it has none, {reference['from']}'s" if reference else "")
            + "; beats_zero_shot_and_direct: the variant's mean above the zero-shot mean and the "
            "mean of that depth's direct cells over the same seeds",
        }
    }  # fmt: skip


def _dp_gaps_by_transfer(ablations: dict) -> dict:
    """The DP gap of each transfer of transfer_budget_dp: POST with that transfer (transfer_budget's
    variant of the same name) minus POST with DP with it, paired by seed, per task and on average."""
    post_cells, dp_cells = (ablations.get(k, {}) for k in ("transfer_budget", "transfer_budget_dp"))
    out = _gaps_by_variant(dp_cells, lambda t, v: _accuracies(post_cells.get(t, {}).get(v, {})))
    if not out:
        return {}
    return {
        "dp8_gap_points_by_transfer": {
            "transfers": out, "target": "<= 2",
            "assumes": "as dp8_gap_points, both prompts transferred the same way (transfer_budget's "
            "and transfer_budget_dp's cells of one variant); transfers over other tasks or seeds "
            "do not compare",
        }
    }  # fmt: skip


def _distilled_beats(cells: dict) -> dict:
    """Tasks where POST from the distilled student beats POST from the same layers untrained, by the
    mean over the seeds both variants have."""
    wins, margins = [], {}
    for task, v in cells.items():
        gap = _paired_gap(
            _accuracies(v.get("distilled", {})), _accuracies(v.get("non_distilled", {}))
        )
        if gap is None:
            continue
        margins[task] = gap
        if margins[task] > 0:
            wins.append(task)
    return {"tasks": wins, "of_tasks_with_cells": len(margins), "margin_points": margins,
            "target": "4 of 5"}  # fmt: skip
