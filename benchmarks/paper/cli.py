"""`python -m benchmarks.paper`: the options, and the cells run in order until the budget is spent."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import RESULTS, load_average
from benchmarks.paper import students
from benchmarks.paper.ablations import ABLATIONS
from benchmarks.paper.aggregate import tuned_reference
from benchmarks.paper.grid import Grid
from benchmarks.paper.recipes import (
    DP_FIELDS,
    GENERAL_STUDENT,
    METHODS,
    ONE_SEED,
    PROFILES,
    SEED_FREE,
    TABLE_PUBLIC,
    TABLE_TRANSFER,
    TASKS,
    dp_recipe,
    read_json_or_none,
    recipe_changes,
    transfer_recipe,
    tune_recipe,
)
from benchmarks.paper.record import (
    adopt_dp_recipe,
    check_device,
    check_recipe,
    check_student,
    import_depth_cells,
    table_recipe,
)
from benchmarks.paper.stages import Stages
from benchmarks.paper.students import depth_student_of, shared_student
from benchmarks.paper.tables import TOP_README, write_outputs
from benchmarks.paper.tasks import prepare_task
from promptport.fileio import read_json, write_json


def parser() -> argparse.ArgumentParser:
    """The options (their help is the package docstring and each option's own)."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.paper",
        description=sys.modules["benchmarks.paper"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="the quick profile (small sizes)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ablations", nargs="*", default=[], choices=ABLATIONS)
    ap.add_argument("--ablation-tasks", nargs="+", default=["sst2"], choices=TASKS)
    ap.add_argument(
        "--variants", nargs="+", default=[], metavar="VARIANT",
        help="make only these variants of the ablations (their cell names, e.g. same_task); "
        "default: every variant",
    )  # fmt: skip
    ap.add_argument(
        "--depths", nargs="+", type=int, default=[2, 8],
        help="student depths of the depth ablation (the shared student's recipe, distilled on demand)",
    )  # fmt: skip
    ap.add_argument(
        "--depth-students", nargs="+", default=[], metavar="LAYERS=FOLDER",
        help="the depth ablation's students made elsewhere (e.g. 8=runs/general-16k-L8/student) "
        "instead of the store's recipe distilled at that depth (which differs from a --student made "
        "by hand); each must have that many layers, and its cells record its identity",
    )  # fmt: skip
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--student", default=None, help="a student folder (default: distil one)")
    ap.add_argument(
        "--device", default="cpu",
        help="cpu, cuda or auto: where every stage runs (a record holds cells of one device's numerics: "
        "give a GPU run its own --record)",
    )  # fmt: skip
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
    ap.add_argument(
        "--transfer-set", nargs="+", default=[], metavar="KEY=VALUE",
        help="change the table's transfer recipe (a `transfer:` field of the run config, e.g. "
        "n_tokens=auto): a state and record hold one recipe, so this starts new ones",
    )  # fmt: skip
    ap.add_argument(
        "--dp-set", nargs="+", default=[], metavar="KEY=VALUE",
        help="change the table's DP tuning recipe (default: SGD at the profile's dp_lr; fields "
        f"{', '.join(DP_FIELDS)}), e.g. lr=3.0: a state and record hold one, so the post_dp8 cells "
        "of another start new ones",
    )  # fmt: skip
    ap.add_argument(
        "--table-public", default="given", choices=TABLE_PUBLIC,
        help="the public data of the table's POST and POST with DP: each task's public texts as "
        "given, length_matched (re-cut to the median length of the user's training texts, the "
        "tool's --public-chars) or phrases (that cut into phrases, the tool's --public-cut "
        "phrases): a state and record hold one, so this starts new ones",
    )  # fmt: skip
    ap.add_argument(
        "--table-transfer", default="tool", choices=TABLE_TRANSFER,
        help="how the table's POST, POST with DP and non-distilled transfers keep their step: the "
        "tool's one pass, or three passes keeping the step chosen on a labelled public set of the "
        "task's kind (where one exists): a state and record hold one, so this starts new ones",
    )  # fmt: skip
    ap.add_argument(
        "--import-depth-cells", default=None, metavar="RECORD",
        help="fill this record's table from another record's depth ablation at this student's depth "
        "(the same student, sizes, device and recipes, checked): its zero-shot, student, direct and "
        "POST cells (the variant this record's transfer is), each marked imported_from",
    )  # fmt: skip
    ap.add_argument(
        "--tuned-reference", default=None, metavar="PAPER_TABLES_JSON",
        help="another record's tables whose teacher_tuned cells this record's gain kept is also "
        "measured against (same sizes and tune recipe; kept in RECORD/tuned_reference.json)",
    )  # fmt: skip
    ap.add_argument("--budget-min", type=float, default=None, help="stop starting cells after this")
    ap.add_argument("--table-only", action="store_true", help="only rebuild JSON and README table")
    ap.add_argument(
        "--adopt-dp-recipe", default=None, metavar="VARIANT",
        help="make a dp_recipe ablation variant (e.g. sgd_lr=10,epochs=4,grad_accum=8) the table's DP "
        "recipe, its cells the post_dp8 cells and the old recipe's cells its variant; then rebuild",
    )  # fmt: skip
    ap.add_argument(
        "--name", default="",
        help="a second table (another record: e.g. a GPU run): paper_tables_NAME.json and its own "
        "README block",
    )  # fmt: skip
    return ap


def table_stages(args, sizes) -> Stages:
    """The stages a record's options (`parser()`'s) describe: teacher, transfer and DP recipes, the
    table's public data and transfer; also for analyses that score a record's prompts again."""
    recipe = {**transfer_recipe(), **recipe_changes(args.transfer_set)}
    return Stages(
        args.teacher, sizes, device=args.device, recipe=recipe, public=args.table_public,
        dp=dp_recipe(sizes, args.dp_set), table_transfer=args.table_transfer,
    )  # fmt: skip


def main(argv=None) -> dict:
    """Check the record against this run's student and recipes, then make the cells asked for, in
    order, until the budget is spent; the JSON and README table are rebuilt after each cell."""
    args = parser().parse_args(argv)
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
    if args.tuned_reference:
        tune = read_json_or_none(record / "tune.json") or tune_recipe()
        ref = tuned_reference(Path(args.tuned_reference), sizes, tune)
        write_json(record / "tuned_reference.json", ref)
    command = "python -m benchmarks.paper " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = load_average()
    docs = (TOP_README,)  # the project README's overview of the records, kept with this one
    if args.adopt_dp_recipe:
        adopt_dp_recipe(state, record, args.adopt_dp_recipe)
    if not args.table_only and not args.adopt_dp_recipe:
        import torch

        from promptport.runtime import quiet_libraries, resolve_device

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        quiet_libraries()
        # before the (possibly long) distillation: a record of another device is refused at once
        check_device(record, str(resolve_device(args.device)))
        specs = {t: prepare_task(t, state / "data") for t in TASKS}
        student = shared_student(args, state, print)
        stages = table_stages(args, sizes)
        ident = students.student_identity(student)
        legacy_dp = dp_recipe(sizes)  # what DP cells made before dp.json was kept used
        for d in folders:
            check_student(d, ident)
            check_recipe(d, table_recipe(stages))
            check_recipe(d, stages.tune_recipe, "tune")
            check_recipe(d, stages.dp_recipe, "dp", legacy=legacy_dp)
        if args.import_depth_cells:
            import_depth_cells(record, Path(args.import_depth_cells), stages, ident)
        grid = Grid(
            state, stages, student, specs, record=record,
            depth_student=depth_student_of(args, state), depths=tuple(args.depths),
            variants=tuple(args.variants),
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
            write_outputs(record, profile, sizes, command, name=args.name, overviews=docs)
        for name in args.ablations:
            for t in args.ablation_tasks:
                if time.perf_counter() > deadline:
                    break
                grid.run_ablation(name, t, args.seeds[0])
                write_outputs(record, profile, sizes, command, name=args.name, overviews=docs)
        unknown = sorted(set(args.variants) - grid.seen_variants)
        if unknown and args.ablations and time.perf_counter() <= deadline:
            print(
                f"error: --variants: no variant named {', '.join(unknown)} in "
                f"{', '.join(args.ablations)} (theirs: {', '.join(sorted(grid.seen_variants))})",
                file=sys.stderr,
            )
            sys.exit(2)
    out = write_outputs(
        record, profile, sizes, command,
        extra={"load_average_start": load_start, "load_average_end": load_average()}, name=args.name,
        overviews=docs,
    )  # fmt: skip
    print(json.dumps(out["targets"]))
    return out
