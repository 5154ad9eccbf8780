"""The ablations: each a function that fills its cells of one task and seed on a Grid from the grid's
building blocks (the user's prompt, transfers, selections), so that a new ablation is one function and
one line of RUNNERS, not a branch of one long method."""

from __future__ import annotations

from pathlib import Path

from benchmarks.paper import tasks
from benchmarks.paper.grid import Grid, dp_user_side, dp_variant_name
from benchmarks.paper.recipes import DP_VARIANTS, PAPER_TRANSFER
from promptport.fileio import read_json


def run_non_distilled(g: Grid, task: str, seed: int) -> None:
    """The table's POST cell against the same layers cut from the teacher with no training: the
    user's prompt tuned on that cut and moved by the table's transfer."""
    nd = g.state / "non-distilled-student"

    def non_distilled():
        if not (nd / "student.json").is_file():
            g.stages.non_distilled(g.student, nd)  # cut only when its cell is made
        p = g.user_prompt(task, seed, str(nd), "tune-nd")
        return g.table_transfer_scores(task, seed, p, "post-nd", str(nd))

    g.variant_cells(
        "non_distilled", task, seed,
        {"distilled": lambda: g.table_post(task, seed), "non_distilled": non_distilled},
    )  # fmt: skip


def run_alpha(g: Grid, task: str, seed: int) -> None:
    """POST with the transfer's alpha (the weight of the prompt-change term) from 0 to 1, and `auto`."""
    for a in (0.0, 0.25, 0.5, 0.75, 1.0, "auto"):
        tag = a if a == "auto" else f"{a:g}"
        g.cell(
            g.ablation_path("alpha", task, f"alpha={tag}", seed),
            lambda a=a, tag=tag: g.post_scores(task, seed, f"post-a{tag}", alpha=a),
        )


def run_paper_setting(g: Grid, task: str, seed: int) -> None:
    """The table's POST against the paper's transfer setting (alpha 0.5 over the full vocabulary
    from a copy of the user's prompt, lr 1e-3)."""
    g.variant_cells(
        "paper_setting", task, seed,
        {
            "tool": lambda: g.table_post(task, seed),
            "paper": lambda: g.post_scores(task, seed, "post-paper", **PAPER_TRANSFER),
        },
    )  # fmt: skip


def run_shift_mean(g: Grid, task: str, seed: int) -> None:
    """The student's mean prompt shift kept (the tool's POST cell), dropped or matched."""
    g.cell(g.ablation_path("shift_mean", task, "keep", seed), lambda: g.table_post(task, seed))
    for how in ("drop", "match"):
        g.cell(
            g.ablation_path("shift_mean", task, how, seed),
            lambda how=how: g.post_scores(task, seed, f"post-shift-{how}", shift_mean=how),
        )


def run_shift_base(g: Grid, task: str, seed: int) -> None:
    """The shift measured against the unprompted student (the tool's POST cell) or the user's
    starting prompt, from the user's prompt, then from the DP-SGD one (epsilon 8)."""
    dp = lambda: g.dp_prompt(task, seed)  # noqa: E731
    g.variant_cells(
        "shift_base", task, seed,
        {
            "unprompted": lambda: g.table_post(task, seed),
            "init": lambda: g.post_scores(task, seed, "post-base-init", shift_base="init"),
            "unprompted_dp8": lambda: dict(g.run_cell(task, "post_dp8", seed)),
            "init_dp8": lambda: g.post_scores(
                task, seed, "post-dp8-base-init", prompt=dp, shift_base="init"
            ),
        },
    )  # fmt: skip


def run_calibrate(g: Grid, task: str, seed: int) -> None:
    """The user's prompt tuned against the student's raw class scores (the tool's cells) or against
    them calibrated on the training inputs (`tune.calibrate`), and its POST transfer."""
    variants = {
        "raw": lambda: g.tool_scores(task, seed),
        "calibrated": lambda: g.variant_scores(task, seed, "-cal", calibrate=True),
    }
    g.variant_cells("calibrate", task, seed, variants)


def run_public_data(g: Grid, task: str, seed: int) -> None:
    """POST with public data of the same task (its training texts, labels dropped), the same
    domain (as given, or re-cut to the user's length), another domain, or written by the teacher."""
    spec, st = g.specs[task], g.stages
    cross = {"arisetv": "sst2"}.get(task, "arisetv")
    srcs = {  # made only when their cell runs
        "same_task": lambda: tasks.same_task_public(spec, st.sizes),
        "same_domain": lambda: spec["public"],
        # the same_domain texts re-cut to the user's text length: their shape, not source
        "length_matched": lambda: tasks.length_matched_public(spec, st.sizes),
        "cross_domain": lambda: g.specs[cross]["public"] if cross in g.specs else spec["public"],
        # texts the teacher writes from the task's description and class names alone
        "generated": lambda: f"generate:{st.sizes.n_public}",
    }
    for variant, src in srcs.items():
        g.cell(
            g.ablation_path("public_data", task, variant, seed),
            lambda v=variant, src=src: g.post_scores(task, seed, f"post-{v}", public=src()),
        )


def run_prompt_length(g: Grid, task: str, seed: int) -> None:
    """The user's prompt at 10, 50 and 100 tokens, tuned and transferred."""
    for n in (10, 50, 100):
        g.cell(
            g.ablation_path("prompt_length", task, f"n_tokens={n}", seed),
            lambda n=n: g.variant_scores(task, seed, f"-n{n}", n_tokens=n),
        )


def run_tune_optimizer(g: Grid, task: str, seed: int) -> None:
    """How far the user's tuning moves the prompt: the tool's Adam (lr from the run config), Adam at
    a tenth of it, and DP tuning's plain SGD (lr dp_lr) without clipping or noise."""
    st = g.stages
    lr = float(st.tune_recipe.get("lr", 0.1))
    variants = {
        "adam": lambda: g.tool_scores(task, seed),
        f"adam_lr={lr / 10:g}": lambda: g.variant_scores(task, seed, "-adam-lr10", lr=lr / 10),
        "sgd": lambda: g.variant_scores(task, seed, "-sgd", optimizer="sgd", lr=st.sizes.dp_lr),
    }
    g.variant_cells("tune_optimizer", task, seed, variants)


def dp_recipes(own: dict) -> list[tuple[str, dict]]:
    """The dp_recipe ablation's recipes as (variant name, recipe): DP_VARIANTS, then the table's own
    recipe `own` where it is none of them."""
    return [
        (dp_variant_name(r), r) for r in list(DP_VARIANTS) + ([] if own in DP_VARIANTS else [own])
    ]


def dp_tuned(g: Grid, task: str, seed: int, name: str, recipe: dict) -> str:
    """The seed's DP prompt (epsilon 8) tuned with DP recipe `recipe` (variant `name`): the table's
    own recipe is the table's DP prompt, another its artifact tune-dp8@<name>."""
    if recipe == dict(g.stages.dp_recipe):
        return g.dp_prompt(task, seed)
    st, spec = g.stages, g.specs[task]
    return g.artifact(
        f"tune-dp8@{name}", task, seed, lambda d: st.tune(g.student, spec, seed, d, 8.0, **recipe)
    )


def run_dp_recipe(g: Grid, task: str, seed: int) -> None:
    """POST with DP (epsilon 8, the table's batch and steps) from DP prompts tuned with other
    optimisations, each transferred by the table's POST: whether a DP gap is the noise's or the
    learning rate's. Cells carry the DP prompt's best validation accuracy on the student (the user's
    own split: how a user would choose) and how far it moved; the table's own recipe is its cell."""
    st = g.stages

    def table():
        return {
            **g.run_cell(task, "post_dp8", seed),
            **dp_user_side(g.dp_prompt(task, seed)),
        }

    def variant(recipe: dict, name: str):
        def compute():
            p = dp_tuned(g, task, seed, name, recipe)
            # the table's transfer, as post_dp8's (a selected record's too: same passes and rule)
            scores = g.table_transfer_scores(task, seed, p, f"post-dp8@{name}")
            return {**scores, **dp_user_side(p)}

        return compute

    own = dict(st.dp_recipe)
    for name, recipe in dp_recipes(own):
        compute = table if recipe == own else variant(recipe, name)
        g.cell(g.ablation_path("dp_recipe", task, name, seed), compute)


def run_dp_recipe_user(g: Grid, task: str, seed: int) -> None:
    """The dp_recipe ablation's DP prompts on the user's side only: each recipe's prompt tuned on the
    student (the same artifacts dp_recipe transfers, so a later dp_recipe cell only transfers) and
    its best validation accuracy on the user's own split. That is how a user chooses a DP recipe:
    before, and without, any transfer or test split; it costs the tunings alone. Cells:
    RECORD/cells/user_side/dp_recipe/<task>/<variant>/seed<seed>.json (no test accuracy)."""
    for name, recipe in dp_recipes(dict(g.stages.dp_recipe)):
        g.cell(
            g.cell_path("user_side", "dp_recipe", task, name, f"seed{seed}"),
            lambda name=name, recipe=recipe: dp_user_side(dp_tuned(g, task, seed, name, recipe)),
        )


def run_tune_budget(g: Grid, task: str, seed: int) -> None:
    """More passes over the profile's training examples, or more of the task's examples (the user
    has them: SST-2's training split is 67k): the transfer and evaluation unchanged."""
    st = g.stages
    z = st.sizes
    variants = {
        "tool": lambda: g.tool_scores(task, seed),
        f"epochs={2 * z.tune_epochs:g}": lambda: g.variant_scores(
            task, seed, "-ep2x", epochs=2 * z.tune_epochs
        ),
        f"train_limit={4 * z.train_limit}": lambda: g.variant_scores(
            task, seed, "-train4x", train_limit=4 * z.train_limit
        ),
    }
    g.variant_cells("tune_budget", task, seed, variants)


def run_transfer_budget(g: Grid, task: str, seed: int) -> None:
    """The same user prompt, the transfer trained harder: its best held-out public loss (what the
    provider sees) is in each cell beside the test accuracy."""
    st = g.stages
    lr, passes = float(st.recipe.get("lr", 0.01)), st.sizes.transfer_epochs
    variants = {
        "tool": lambda: g.transfer_scores(task, seed, "post"),
        f"lr={3 * lr:g}": lambda: g.transfer_scores(task, seed, "post-lr3x", lr=3 * lr),
        f"epochs={3 * passes:g}": lambda: g.transfer_scores(
            task, seed, "post-ep3x", epochs=3 * passes
        ),
        # twice as long again, stopped by the tool once a pass brings no lower public loss
        f"epochs={6 * passes:g},patience=2": lambda: g.transfer_scores(
            task, seed, "post-ep6x-p2", epochs=6 * passes, patience=2
        ),
        # 3 passes, the kept step chosen by the teacher's accuracy on labelled public data
        f"epochs={3 * passes:g},select=public": lambda: g.selected_transfer(
            task, seed, "post-ep3x", epochs=3 * passes
        ),
        # up to 6 passes, the same choice, stopped once two passes (4 checks) bring no step
        # more accurate on the labelled set: its first 3 passes are the run above (constant
        # learning rate, same order), so it checks that run's steps (but its last) and more
        f"epochs={6 * passes:g},select=public,patience=4": lambda: g.selected_transfer(
            task, seed, "post-ep6x", epochs=6 * passes, patience=4
        ),
        # 3 passes with the rate decaying linearly to 0 (`transfer.schedule`), kept by the
        # loss and by the labelled set (ARISE TV: both the loss's, one transfer)
        f"epochs={3 * passes:g},schedule=linear": lambda: g.transfer_scores(
            task, seed, "post-ep3x-lin", epochs=3 * passes, schedule="linear"
        ),
        f"epochs={3 * passes:g},select=public,schedule=linear": lambda: g.selected_transfer(
            task, seed, "post-ep3x-lin", epochs=3 * passes, schedule="linear"
        ),
        # 3 passes, the kept prompt the mean over the last third's steps
        # (`transfer.average_from`): the same trajectory as epochs=3, not one step of it
        f"epochs={3 * passes:g},average_from=0.67": lambda: g.transfer_scores(
            task, seed, "post-ep3x-avg", epochs=3 * passes, average_from=0.67
        ),
    }
    # the same, the student's mean shift dropped or matched (`transfer.shift_mean`), then the
    # one of the three the labelled public set prefers
    from benchmarks.public_label_pick import SOURCES

    sel = f"epochs={3 * passes:g},select=public"
    hows = ("keep", "drop", "match") if task in SOURCES else ("keep",)
    for how in hows[1:]:
        variants[f"{sel},shift_mean={how}"] = lambda how=how: g.selected_transfer(
            task, seed, "post-ep3x", epochs=3 * passes, shift_mean=how
        )
    variants[f"{sel},shift_mean=chosen"] = lambda: g.chosen_shift_mean(task, seed, sel, hows)
    # the selected step or the 3-pass run's tail mean, whichever the labelled set prefers
    avg = f"epochs={3 * passes:g},average_from=0.67"
    variants[f"{sel},average=chosen"] = lambda: g.chosen_average(
        task, seed, sel, avg, "post-ep3x-avg"
    )
    # the same choice, both candidates scored on labelled texts the selection never saw
    variants[f"{sel},average=chosen_fresh"] = lambda: g.chosen_average_fresh(
        task, seed, sel, "post-ep3x-sel", avg, "post-ep3x-avg",
        remake={"step": variants[sel], "average": variants[avg]},
    )  # fmt: skip

    # the public texts cut into phrases where the user's inputs are phrases
    # (`transfer.public_cut`); a task whose pieces the phrase cut leaves as they were
    # shares the sentence cut's cell instead of repeating its transfer
    def budget(v: str) -> Path:
        return g.ablation_path("transfer_budget", task, v, seed)

    variants["public_cut=phrases"] = lambda: g.phrase_cut(
        task, budget("tool"), variants["tool"],
        lambda pub: g.transfer_scores(task, seed, "post-phr", public=pub),
    )  # fmt: skip
    variants[f"{sel},public_cut=phrases"] = lambda: g.phrase_cut(
        task, budget(sel), variants[sel], lambda pub: g.selected_transfer(
            task, seed, "post-ep3x-phr", epochs=3 * passes, public=pub
        ),
    )  # fmt: skip
    # the same at a 10-token teacher prompt, then the length the tool's rule keeps of the two
    n_user = int(st.tune_recipe.get("n_tokens", 50))
    variants[f"{sel},n_tokens=10"] = lambda: g.selected_transfer(
        task, seed, "post-ep3x-t10", epochs=3 * passes, n_tokens=10
    )
    variants[f"{sel},n_tokens=chosen"] = lambda: g.chosen_length(
        task, seed, {n_user: sel, 10: f"{sel},n_tokens=10"}
    )
    g.variant_cells("transfer_budget", task, seed, variants)


def run_transfer_budget_dp(g: Grid, task: str, seed: int) -> None:
    """The seed's DP prompt through transfer_budget's longer transfer: the DP gap of that transfer
    (POST with it minus POST with DP with it), beside the table's."""
    st = g.stages
    passes = st.sizes.transfer_epochs
    variants = {
        "tool": lambda: g.transfer_scores(task, seed, "post-dp8", dp=True),
        f"epochs={3 * passes:g}": lambda: g.transfer_scores(
            task, seed, "post-dp8-ep3x", dp=True, epochs=3 * passes
        ),
    }
    g.variant_cells("transfer_budget_dp", task, seed, variants)


def run_teacher_tokens(g: Grid, task: str, seed: int) -> None:
    """The same user prompt and transfer, only the teacher prompt's length changed."""
    g.cell(g.ablation_path("teacher_tokens", task, "tool", seed), lambda: g.table_post(task, seed))
    for n in (1, 10):
        g.cell(
            g.ablation_path("teacher_tokens", task, f"n_tokens={n}", seed),
            lambda n=n: g.post_scores(task, seed, f"post-t{n}", n_tokens=n),
        )

    def selected():  # the tool chooses between the three (held-out loss; selection accuracy if set)
        user = g.user_prompt(task, seed)
        q = g.post_prompt(task, seed, user, "post-tauto", n_tokens="auto", **g.table_over(task))
        sel = read_json(Path(q).parent / "metrics.json")["teacher_tokens_selection"]
        losses = {str(c["n_tokens"]): c["best"]["heldout_loss"] for c in sel["candidates"]}
        r = g.stages.evaluate(g.stages.teacher, q, g.specs[task])
        return {**r, "teacher_tokens": sel["n_tokens"], "heldout_loss": losses}

    g.cell(g.ablation_path("teacher_tokens", task, "auto", seed), selected)


def run_depth(g: Grid, task: str, seed: int) -> None:
    """The shared student's recipe at other depths (`--depths`), each with its own cells."""
    for k in g.depths:
        g.depth_cells(task, seed, k)


# name -> the function that makes its cells, in the order `--ablations` lists and a run makes them
RUNNERS = {
    "non_distilled": run_non_distilled,
    "alpha": run_alpha,
    "paper_setting": run_paper_setting,
    "shift_mean": run_shift_mean,
    "shift_base": run_shift_base,
    "calibrate": run_calibrate,
    "public_data": run_public_data,
    "prompt_length": run_prompt_length,
    "depth": run_depth,
    "tune_optimizer": run_tune_optimizer,
    "tune_budget": run_tune_budget,
    "teacher_tokens": run_teacher_tokens,
    "dp_recipe": run_dp_recipe,
    "dp_recipe_user": run_dp_recipe_user,
    "transfer_budget": run_transfer_budget,
    "transfer_budget_dp": run_transfer_budget_dp,
}
ABLATIONS = tuple(RUNNERS)
