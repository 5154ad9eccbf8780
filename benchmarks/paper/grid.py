"""The resumable grid: one JSON cell per (task, method, seed) or ablation variant."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.paper import students, tasks
from benchmarks.paper.recipes import SEED_FREE, read_json_or_none
from benchmarks.paper.tasks import read_texts
from promptport.fileio import read_json, write_json


def dp_variant_name(recipe: dict) -> str:
    """A DP recipe as an ablation variant's name: sgd_lr=0.3 (and any other field it sets)."""
    rest = "".join(f",{k}={v}" for k, v in sorted(recipe.items()) if k not in ("optimizer", "lr"))
    return f"{recipe['optimizer']}_lr={recipe['lr']:g}{rest}"


def tune_metrics(prompt: str) -> dict:
    """The metrics.json of the tuning run that made `prompt` ({} where there is none)."""
    return read_json_or_none(Path(prompt).parent / "metrics.json") or {}


def recorded_drift(prompt: str, metrics: dict | None = None) -> dict:
    """{"prompt_drift": how far tuning moved the user's prompt from its start} from its tuning run's
    metrics.json (or `metrics`, already read), where the run recorded it."""
    drift = (tune_metrics(prompt) if metrics is None else metrics).get("prompt_drift") or {}
    return {"prompt_drift": drift["relative_distance"]} if "relative_distance" in drift else {}


def dp_user_side(prompt: str) -> dict:
    """What the user saw of a DP tuning (the dp_recipe ablation's cells carry it): the DP prompt's best
    validation accuracy on the student, its noisy steps and noise multiplier, the tuning's wall time
    and how far the prompt moved."""
    m = tune_metrics(prompt)
    privacy = m.get("privacy") or {}
    return {
        "user_val_accuracy": (m.get("best") or {}).get("val_accuracy"),
        "user_val_macro_f1": (m.get("best") or {}).get("val_macro_f1"),
        "dp_steps": privacy.get("steps"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "user_tune_seconds": m.get("wall_seconds"),
        **recorded_drift(prompt, m),
    }


def transfer_facts(prompt: str) -> dict:
    """A transferred prompt's best held-out public loss, its step and the steps run, and the labelled
    public set its step was chosen on (from the stage's metrics.json, where it wrote one)."""
    m = read_json_or_none(Path(prompt).parent / "metrics.json") or {}
    best = m.get("best") or {}
    out = {
        "heldout_loss": best.get("heldout_loss"),
        "best_step": best.get("step"),
        "steps": m.get("steps"),
    }
    if m.get("select_data"):  # the labelled public set the kept step was chosen on
        out["select"] = m["select_data"]
    return out


def cell_done(path: Path) -> bool:
    return (path / "prompt.json").is_file() or (path / "prompt" / "prompt.json").is_file()


class Grid:
    """The (task, method, seed) cells and the ablations over them. Cells live under `record` (default:
    `state`), the prompt artifacts they need under `state`."""

    def __init__(
        self, state: Path, stages, student: str, specs: dict, log=print, depth_student=None,
        depths: tuple[int, ...] = (2, 8), record: Path | None = None,
        variants: tuple[str, ...] = (),
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
        self.variants = set(variants)  # ablation cells to make (empty: all of an ablation's)
        self.seen_variants: set[str] = set()  # the ablation variants met, made or not

    def cell_path(self, *parts) -> Path:
        return self.record.joinpath("cells", *map(str, parts[:-1]), f"{parts[-1]}.json")

    def ablation_path(self, name: str, task: str, variant: str, seed: int) -> Path:
        """An ablation's cell: RECORD/cells/ablations/<name>/<task>/<variant>/seed<seed>.json."""
        return self.cell_path("ablations", name, task, variant, f"seed{seed}")

    def artifact(self, kind: str, task: str, seed: int, make) -> str:
        """A prompt artifact (tuned or transferred), made once: STATE/art/<task>/<kind>-s<seed>/."""
        d = self.state / "art" / task / f"{kind}-s{seed}"
        if not cell_done(d):
            import shutil

            shutil.rmtree(d, ignore_errors=True)  # a half-made attempt starts afresh
            t0 = time.perf_counter()
            make(d)
            self.log(f"  [{task}] {kind} seed {seed}: {time.perf_counter() - t0:.0f} s")
        return str(d / "prompt")

    def cell(self, path: Path, compute) -> dict | None:
        """The cell at `path`, computed (and written) where missing; an ablation's (or a user-side)
        cell of a variant other than `variants` is left for a later run (None)."""
        parts = path.relative_to(self.record).parts
        ablation_variant = path.parent.name if {"ablations", "user_side"} & set(parts) else None
        if ablation_variant:
            self.seen_variants.add(ablation_variant)
        if path.is_file():
            return read_json(path)
        if self.variants and ablation_variant not in (None, *self.variants):
            return None  # another variant than the ones asked for: left for a later run
        t0 = time.perf_counter()
        r = compute()
        r["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, r)
        self.ran.append(str(path.relative_to(self.record)))
        score = r.get("accuracy", r.get("user_val_accuracy"))  # a user-side cell: validation
        self.log(
            f"  {path.relative_to(self.record)}: " + ("–" if score is None else f"{score:.4f}")
        )
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
        self, task: str, seed: int, suffix: str, student: str | None = None,
        tool_transfer: bool = False, **tune_over,
    ) -> tuple[str, str]:  # fmt: skip
        """(user prompt, POST prompt) of a variant: tuned on `student` (default the shared one) with
        `tune_over`, moved from it by the table's transfer (`tool_transfer`: the tool's, one pass);
        artifacts tune<suffix> and post<suffix>."""
        p = self.user_prompt(task, seed, student, "tune" + suffix, **tune_over)
        over = {} if tool_transfer else self.table_over(task)
        return p, self.post_prompt(task, seed, p, "post" + suffix, student, **over)

    def variant_scores(
        self, task: str, seed: int, suffix: str, student: str | None = None,
        tool_transfer: bool = False, **tune_over,
    ) -> dict:  # fmt: skip
        """The teacher's scores with a variant's POST prompt (`tuned_and_transferred`), and the
        variant's user prompt's accuracy on its own student as `student_prompt`."""
        st, spec = self.stages, self.specs[task]
        p, q = self.tuned_and_transferred(task, seed, suffix, student, tool_transfer, **tune_over)
        r = st.evaluate(st.teacher, q, spec)
        r["student_prompt"] = st.evaluate(student or self.student, p, spec)["accuracy"]
        return {**r, **recorded_drift(p)}

    def post_scores(self, task: str, seed: int, tag: str, prompt=None, **over) -> dict:
        """The teacher's scores with a prompt (`prompt()`, else the seed's user prompt) transferred as
        `tag` by the table's transfer with `over` changed: the cells of the ablations that change one
        setting, so that each differs from the table's POST (their `tool` row) in that setting only."""
        user = self.user_prompt(task, seed) if prompt is None else prompt()
        q = self.post_prompt(task, seed, user, tag, **{**self.table_over(task), **over})
        return self.stages.evaluate(self.stages.teacher, q, self.specs[task])

    def table_post(self, task: str, seed: int) -> dict:
        """The table's own POST cell: the tool's variant in ablations that change the transfer."""
        return dict(self.run_cell(task, "post", seed))

    def tool_scores(self, task: str, seed: int) -> dict:
        """The table's own POST cell with its user prompt's accuracy on the student (and how far its
        tuning moved it): the tool's variant in ablations that change the user's tuning."""
        r = self.table_post(task, seed)
        r["student_prompt"] = self.run_cell(task, "student_prompt", seed)["accuracy"]
        return {**r, **recorded_drift(self.user_prompt(task, seed))}

    def variant_cells(self, name: str, task: str, seed: int, variants: dict) -> None:
        """An ablation's cells, one per {variant: compute} (made where missing, in order)."""
        for variant, compute in variants.items():
            self.cell(self.ablation_path(name, task, variant, seed), compute)

    def transfer_scores(
        self, task: str, seed: int, tag: str, dp: bool = False, student: str | None = None,
        user_tag: str = "tune", **over,
    ) -> dict:  # fmt: skip
        """The teacher's scores with the seed's user prompt (`dp`: its DP prompt; `student`: the one
        tuned on that student as `user_tag`, transferred from it) transferred as `tag` (`over`:
        changes to the transfer; none: the table's POST or POST-with-DP prompt, whose scores are its
        cell's, not evaluated again), with the transfer's best held-out public loss, its step and
        the steps it ran (from its metrics.json, where the stage wrote one)."""
        if student is not None:
            user = self.user_prompt(task, seed, student, user_tag)
        else:
            user = self.dp_prompt(task, seed) if dp else self.user_prompt(task, seed)
        q = self.post_prompt(task, seed, user, tag, student, **over)
        if over or student is not None:
            r = self.stages.evaluate(self.stages.teacher, q, self.specs[task])
        else:
            r = dict(self.run_cell(task, "post_dp8" if dp else "post", seed))
        return {**r, **transfer_facts(q)}

    def selected_transfer(
        self,
        task: str,
        seed: int,
        tag: str,
        epochs: float,
        shift_mean: str = "keep",
        patience: int | None = None,
        **extra,
    ) -> dict:
        """The transfer `tag` (`epochs` passes) keeping the step under which the teacher is most accurate
        on the task family's labelled public set (`transfer.select_data`; the sources of
        benchmarks.public_label_pick, never the task's own data, 600 texts). A task with no such set
        here (ARISE TV) keeps the tool's default, the lowest held-out loss: the plain transfer `tag`,
        as a provider without labelled data would. `patience`: stop after that many checks with no
        better step (the checks' selection accuracy; ARISE TV's, the held-out loss). `extra`: other
        changes to the transfer (a schedule, a public file), which `tag` names, or the student and
        its user prompt (`transfer_scores`)."""
        stop = {} if patience is None else {"patience": patience}
        p_tag = "" if patience is None else f"-p{patience}"
        select = self.selection(task)
        if not select:
            return self.transfer_scores(task, seed, tag + p_tag, epochs=epochs, **stop, **extra)
        over = {} if shift_mean == "keep" else {"shift_mean": shift_mean}
        return self.transfer_scores(
            task, seed, f"{tag}-sel" + (f"-{shift_mean}" if over else "") + p_tag, epochs=epochs,
            **select, **over, **stop, **extra,
        )  # fmt: skip

    def selection(self, task: str) -> dict:
        """The transfer fields that keep the step chosen on the task family's labelled public set
        (the sources of benchmarks.public_label_pick, never the task's own data, 600 texts); none for
        a task with no such set here (ARISE TV), which keeps the lowest held-out loss."""
        from benchmarks.public_label_pick import SHARED, SOURCES, labelled_public

        if task not in SOURCES:
            return {}
        spec = labelled_public(task, self.state / "labelled-public", SHARED, self.state, 600)
        return {"select_data": str(Path(spec["data"]) / "test.jsonl"), "n_select": 600}

    def table_over(self, task: str) -> dict:
        """The transfer fields of the table's transfer: none for the tool's; three times its passes
        keeping the step `selection` chooses (`--table-transfer epochs=3,select=public`), as
        selected_transfer does."""
        if self.stages.table_transfer == "tool":
            return {}
        return {"epochs": 3 * self.stages.sizes.transfer_epochs, **self.selection(task)}

    def table_transfer(self, task: str, seed: int, user: str, tag: str, student=None) -> str:
        """The table's transfer (`table_over`) of the prompt `user` (POST, POST with DP, the
        non-distilled student's) as artifact `tag`."""
        return self.post_prompt(task, seed, user, tag, student, **self.table_over(task))

    def table_transfer_scores(
        self, task: str, seed: int, user: str, tag: str, student=None
    ) -> dict:
        """The teacher's test scores with `table_transfer`'s prompt, and (a selected transfer) the
        step it kept and what that step was chosen on."""
        p = self.table_transfer(task, seed, user, tag, student)
        facts = {} if self.stages.table_transfer == "tool" else transfer_facts(p)
        return {**self.stages.evaluate(self.stages.teacher, p, self.specs[task]), **facts}

    def phrase_public(self, task: str) -> str:
        """The table's `length_matched` public texts cut into phrases (the variants that compare the
        two cuts need the table's own public data to be the sentence cut)."""
        if self.stages.public != "length_matched":
            raise SystemExit("public_cut=phrases re-cuts length_matched public data: give "
                             "--table-public length_matched")  # fmt: skip
        return tasks.length_matched_public(self.specs[task], self.stages.sizes, cut="phrases")

    def phrase_cut(self, task: str, base: Path, base_compute, compute) -> dict:
        """A cell with the table's public texts cut into phrases (`phrase_public`):
        `compute(public file)`; or, where the phrase cut gives the texts the sentence cut gave
        (inputs of sentence length or more), the sentence cut's cell `base` (made by `base_compute`
        if missing), marked `same_public_as` with its variant: the transfer would repeat it."""
        spec, sizes = self.specs[task], self.stages.sizes
        pub = self.phrase_public(task)
        if read_texts(Path(pub)) != read_texts(Path(tasks.length_matched_public(spec, sizes))):
            return compute(pub)
        r = read_json(base) if base.is_file() else base_compute()
        return {
            **{k: v for k, v in r.items() if k != "seconds"},
            "same_public_as": base.parent.name,
        }

    def depth_cells(self, task: str, seed: int, k: int) -> None:
        """The depth ablation's cells at `k` layers: the user prompt tuned on that student and
        transferred from it (the tool's one-pass transfer; on public phrases; selected three-pass, as
        transfer_budget's, on sentences and on phrases), and the same prompt on the teacher (direct)."""
        if self.depth_student is None:
            raise SystemExit("the depth ablation needs students of other depths (depth_student)")
        spec, st = self.specs[task], self.stages

        def path(variant: str) -> Path:
            return self.ablation_path("depth", task, variant, seed)

        made: list[str] = []

        def student() -> str:  # distilled only for a cell not yet done, asked for once
            if not made:
                made.append(self.depth_student(k))
            return made[0]

        def user() -> str:
            return self.user_prompt(task, seed, student(), f"tune-L{k}")

        def at_depth():
            r = self.variant_scores(task, seed, f"-L{k}", student(), tool_transfer=True)
            r["student_zero_shot"] = st.evaluate(student(), None, spec)["accuracy"]
            return {**r, "student": students.student_identity(student())}

        def on_teacher(prompt: str) -> dict:  # the teacher's scores, the cell naming its student
            return {
                **st.evaluate(st.teacher, prompt, spec),
                "student": students.student_identity(student()),
            }

        def phrases(pub: str):  # the same user prompt, public phrases
            return on_teacher(
                self.post_prompt(task, seed, user(), f"post-L{k}-phr", student(), public=pub)
            )

        passes = st.sizes.transfer_epochs
        one, sel = (depth_variant_name(k, passes, selected=s) for s in (False, True))

        def selected(tag: str = f"post-L{k}-ep3x", **over):
            r = self.selected_transfer(
                task, seed, tag, epochs=3 * passes, student=student(), user_tag=f"tune-L{k}", **over
            )
            return {**r, "student": students.student_identity(student())}

        self.cell(path(one), at_depth)
        self.cell(
            path(depth_variant_name(k, passes, phrases=True)),
            lambda: self.phrase_cut(task, path(one), at_depth, phrases),
        )
        self.cell(path(sel), selected)
        self.cell(
            path(depth_variant_name(k, passes, selected=True, phrases=True)),
            lambda: self.phrase_cut(
                task, path(sel), selected, lambda pub: selected(f"post-L{k}-ep3x-phr", public=pub)
            ),
        )
        self.cell(path(f"layers={k},direct"), lambda: on_teacher(user()))

    def budget_cell(self, task: str, variant: str, seed: int) -> dict:
        """A finished cell of the transfer_budget ablation (what the `chosen` variants choose from)."""
        return read_json(self.ablation_path("transfer_budget", task, variant, seed))

    def chosen_shift_mean(self, task: str, seed: int, variant: str, hows: tuple[str, ...]) -> dict:
        """Of the selected transfers with the student's mean shift treated each way of `hows` (the
        cells `variant` + `,shift_mean=<how>`; keep: `variant` itself), the one whose kept prompt makes
        the teacher most accurate on the labelled public set (ties: the first in `hows`; the held-out
        losses of different targets do not compare). What a provider with the labelled set can
        choose; the cell records which and every candidate's selection accuracy. A task with no
        labelled set has only keep, the tool's default."""

        def cell(how: str) -> dict:
            v = variant if how == "keep" else f"{variant},shift_mean={how}"
            return self.budget_cell(task, v, seed)

        cells = {how: cell(how) for how in hows}
        scores = {
            h: c["select"]["kept_accuracy"] if "select" in c else 0.0 for h, c in cells.items()
        }
        chosen = next(h for h in hows if scores[h] == max(scores.values()))
        return {
            **{k: v for k, v in cells[chosen].items() if k != "seconds"},
            "shift_mean": chosen,
            "select_accuracy_by_shift_mean": scores,
            "accuracy_by_shift_mean": {h: c["accuracy"] for h, c in cells.items()},
        }

    def chosen_length(self, task: str, seed: int, variants: dict[int, str]) -> dict:
        """Of the selected transfers at several teacher prompt lengths (`variants`: length -> its
        transfer_budget cell, in the tool's order), the one the tool's own rule keeps when given
        those lengths (`transfer.n_tokens: 50,10` with `select_data`; `transfer_select.best_of`):
        the highest accuracy on the labelled public set, then the lower held-out loss, then the
        first listed; a task with no labelled set (ARISE TV), the lowest held-out loss. Each
        candidate is the tool's run at that length (same targets, seed and batch order), so the
        cell is what the tool would return, without training the candidates again."""
        from promptport.transfer_select import best_of

        cells = {n: self.budget_cell(task, v, seed) for n, v in variants.items()}

        def key(c: dict) -> dict:
            rec = {"heldout_loss": c["heldout_loss"]}
            if "select" in c:
                rec["select_accuracy"] = c["select"]["kept_accuracy"]
            return rec

        chosen = best_of({n: key(c) for n, c in cells.items()})
        return {
            **{k: v for k, v in cells[chosen].items() if k != "seconds"},
            "teacher_tokens": chosen,
            "accuracy_by_length": {str(n): c["accuracy"] for n, c in cells.items()},
            "selection_by_length": {str(n): key(c) for n, c in cells.items()},
        }

    def chosen_average(self, task: str, seed: int, sel: str, avg: str, avg_kind: str) -> dict:
        """Of the selected step (cell `sel`) and the same run's tail mean (cell `avg`, artifact
        `avg_kind`), the one the task's rule prefers: the teacher's accuracy on the labelled public
        set (ties: the step), or where there is none (ARISE TV) the lower held-out public loss.
        The tail mean's accuracy on the set is scored here as the selection scored the steps
        (`Stages.select_scores`), beside the teacher's zero-shot there, which must equal the one the
        selection recorded: the two candidates are then scored alike."""
        from benchmarks.public_label_pick import SHARED, SOURCES, labelled_public

        cells = {
            "step": self.budget_cell(task, sel, seed),
            "average": self.budget_cell(task, avg, seed),
        }
        out: dict = {"accuracy_by_candidate": {k: c["accuracy"] for k, c in cells.items()}}
        if task in SOURCES:
            spec = labelled_public(task, self.state / "labelled-public", SHARED, self.state, 600)
            st, kept = self.stages, cells["step"]["select"]
            q = self.state / "art" / task / f"{avg_kind}-s{seed}" / "prompt"
            zs, tail = st.select_scores(
                st.teacher, str(q), task, str(Path(spec["data"]) / "test.jsonl"), 600, seed
            )
            if zs != kept["teacher_zero_shot_accuracy"]:
                raise RuntimeError(f"{task}: zero-shot {zs} on the set, not the selection's")
            scores = {"step": kept["kept_accuracy"], "average": tail}
            chosen = "average" if tail > scores["step"] else "step"
            out["select_accuracy_by_candidate"] = scores
        else:
            losses = {k: c["heldout_loss"] for k, c in cells.items()}
            chosen = "average" if losses["average"] < losses["step"] else "step"
            out["heldout_loss_by_candidate"] = losses
        return {**{k: v for k, v in cells[chosen].items() if k != "seconds"}, "kept": chosen, **out}

    def chosen_average_fresh(
        self, task: str, seed: int, sel: str, step_kind: str, avg: str, avg_kind: str,
        remake: dict | None = None,
    ) -> dict:  # fmt: skip
        """As `chosen_average`, with both candidates scored on 600 labelled public texts the
        selection never saw (`fresh_labelled_public`): the step's accuracy on the selection's own
        set is the best of the steps it was chosen among, biased upwards against the mean's. A task
        with no set keeps `chosen_average`'s rule (the held-out loss, which chose nothing). A
        candidate's prompt missing from this state (its cell made in another sitting) is made again
        by `remake[candidate]` (its variant's computation; the transfer is deterministic)."""
        from benchmarks.public_label_pick import SHARED, SOURCES, fresh_labelled_public

        if task not in SOURCES:
            return self.chosen_average(task, seed, sel, avg, avg_kind)
        cells = {
            "step": self.budget_cell(task, sel, seed),
            "average": self.budget_cell(task, avg, seed),
        }
        f = fresh_labelled_public(task, self.state / "labelled-public", SHARED, self.state, 600)
        st, art = self.stages, self.state / "art" / task
        fresh = {}
        for k, kind in (("step", step_kind), ("average", avg_kind)):
            if not cell_done(art / f"{kind}-s{seed}") and remake:
                remake[k]()
            q = str(art / f"{kind}-s{seed}" / "prompt")
            fresh[k] = st.select_scores(st.teacher, q, task, f, 600, seed)[1]
        chosen = "average" if fresh["average"] > fresh["step"] else "step"
        return {
            **{k: v for k, v in cells[chosen].items() if k != "seconds"}, "kept": chosen,
            "accuracy_by_candidate": {k: c["accuracy"] for k, c in cells.items()},
            "fresh_accuracy_by_candidate": fresh, "fresh_set": f,
        }  # fmt: skip

    # -- cells
    def run_cell(self, task: str, method: str, seed: int) -> dict:
        spec, st, teacher = self.specs[task], self.stages, self.stages.teacher
        path = self.cell_path(task, method, f"seed{seed}")
        if method in SEED_FREE and not path.is_file():
            made = sorted(path.parent.glob("seed*.json"))
            if made:  # no seed enters these cells: another seed's (or sitting's) is this one
                return read_json(made[0])

        def compute():
            if method == "teacher_zero_shot":
                return st.evaluate(teacher, None, spec)
            if method == "student_zero_shot":
                return st.evaluate(self.student, None, spec)
            if method == "student_prompt":
                return st.evaluate(self.student, self.user_prompt(task, seed), spec)
            if method == "direct":
                return st.evaluate(teacher, self.user_prompt(task, seed), spec)
            if method in ("post", "post_dp8"):
                user = (
                    self.user_prompt(task, seed) if method == "post" else self.dp_prompt(task, seed)
                )
                return self.table_transfer_scores(
                    task, seed, user, "post" if method == "post" else "post-dp8"
                )
            if method == "teacher_tuned":
                p = self.artifact(
                    "teacher-tune", task, seed, lambda d: st.tune(teacher, spec, seed, d, None)
                )
                return st.evaluate(teacher, p, spec)
            raise SystemExit(f"unknown method {method}")

        return self.cell(path, compute)

    def run_ablation(self, name: str, task: str, seed: int) -> None:
        """Fill ablation NAME's cells of one task and seed (its function in `ablations.RUNNERS`)."""
        from benchmarks.paper.ablations import RUNNERS  # that module builds on this one

        if name not in RUNNERS:
            raise SystemExit(f"unknown ablation {name}")
        RUNNERS[name](self, task, seed)


def depth_variant(recipe: dict, layers: int, passes: float) -> str:
    """The depth ablation's variant at `layers` whose transfer is the table recipe `recipe` (over a
    `length_matched` probe record's): the tool's or the selected three-pass one, on sentences or
    phrases."""
    if recipe.get("public") not in ("length_matched", "phrases"):
        raise SystemExit("depth cells transfer on length_matched public data (or its phrases)")
    return depth_variant_name(
        layers, passes, selected="table_transfer" in recipe, phrases=recipe["public"] == "phrases"
    )


def depth_variant_name(layers: int, passes: float, selected=False, phrases=False) -> str:
    """The name of a depth ablation cell's transfer variant (`Grid.depth_cells` makes them, an import
    reads them): the table's one pass or the selected three-pass transfer, on sentences or phrases."""
    v = f"layers={layers}" + (f",epochs={3 * passes:g},select=public" if selected else "")
    return v + (",public_cut=phrases" if phrases else "")
