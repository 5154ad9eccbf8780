"""The record's outputs: paper_tables JSON and the markdown table in benchmarks/README.md."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.paper.aggregate import collect, dp_recipe_user_choice, mean_std, targets
from benchmarks.paper.grid import dp_variant_name
from benchmarks.paper.recipes import METHODS, TASKS, Sizes, profile_dp_recipe, read_json_or_none
from promptport.fileio import write_json, write_text

README = Path(__file__).parents[1] / "README.md"
# the project's README, which shows the records' overview (not the tables) to a reader who never
# opens benchmarks/README.md
TOP_README = Path(__file__).parents[2] / "README.md"
BEGIN, END = "<!-- PAPER-TABLE:BEGIN -->", "<!-- PAPER-TABLE:END -->"


def markdown(tables: dict) -> str:
    tasks = tables["tasks"]
    head = "| method | " + " | ".join(TASKS) + " |\n|---|" + "---|" * len(TASKS) + "\n"
    rows = []
    for method in METHODS:
        cells = []
        for t in TASKS:
            r = tasks.get(t, {}).get(method)
            cells.append("–" if r is None else _fmt_cell(r["mean"], r["std"], len(r["per_seed"])))
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
        + ", ".join(f"{k} {v}" for k, v in rec.items() if k not in ("method", "table_transfer"))
        + (
            f"; {rec['table_transfer']}: three times the passes, keeping the step under which the "
            "teacher is most accurate on a labelled public set of the task's kind (ARISE TV, which "
            "has none here: the lowest held-out public loss)"
            if rec.get("table_transfer")
            else ""
        )
        + "."
        if rec
        else ""
    )
    dp = tables.get("dp_recipe") or profile_dp_recipe(z["dp_lr"])
    how += (
        " post_dp8's user prompt: DP-SGD at ε 8, "
        + ", ".join(f"{k} {v}" for k, v in dp.items())
        + "."
    )
    arith = f" ({tables['precision']})" if tables.get("precision") else ""
    note = (
        f"\nProfile `{tables['profile']}`: train {z['train_limit']}, validation {z['val_limit']}, "
        f"test {z['eval_limit']} examples, {z['n_public']} public texts, "
        f"{(tables.get('tune_recipe') or {}).get('n_tokens', '?')} prompt tokens. "
        "Accuracy on each task's test split, mean ± std over seeds (number of seeds); – = not run yet."
        f"{who}{how} "
        f"Device: {tables.get('device', 'cpu')}{arith}. {_commands(tables)} Generated from "
        f"benchmarks/results/{tables.get('tables_file', 'paper_tables.json')}.\n"
    )
    return (
        head
        + "\n".join(rows)
        + "\n"
        + note
        + _commands_block(tables)
        + ablations_markdown(tables)
        + user_side_markdown(tables)
    )


def user_side_markdown(tables: dict) -> str:
    """One table per user-side block: each variant's best validation accuracy of the user's prompt on
    the student, mean ± std over seeds (number), per task."""
    out = []
    for name, by_task in sorted((tables.get("user_side") or {}).items()):
        tasks, variants = _tasks_and_variants(by_task)
        rows = {
            v: [
                [
                    c["user_val_accuracy"]
                    for _, c in sorted(by_task[t].get(v, {}).items())
                    if c.get("user_val_accuracy") is not None
                ]
                for t in tasks
            ]
            for v in variants
        }
        out.append(_seeds_table(f"{name} (user side)", tasks, rows))
    return _tables_block(
        "On the user's side (the user's prompt's best accuracy on the user's validation split, on "
        "the student; no transfer, no test split; mean ± std over seeds (number))",
        out,
    )


def _fmt_cell(mean: float, std: float, n: int) -> str:
    """A cell of the README tables: mean ± std (number of seeds); one seed has no std."""
    return f"{mean:.3f} ± {std:.3f} ({n})" if n > 1 else f"{mean:.3f} (1)"


def _fmt_seeds(vals: list[float]) -> str:
    """The cell of per-seed values, or – when none."""
    return _fmt_cell(*mean_std(vals), len(vals)) if vals else "–"


def _variant_label(variant: str, tables: dict) -> str:
    """A variant's row label: `tool` (the cells' name for the table's own transfer) says which
    transfer that is where the table's POST is not the tool's default (`--table-transfer`)."""
    how = (tables.get("transfer_recipe") or {}).get("table_transfer")
    return f"tool (here the table's POST: {how})" if variant == "tool" and how else variant


def ablations_markdown(tables: dict) -> str:
    """One table per ablation: its variants' accuracy per task, mean ± std over the seeds each cell
    has (number of seeds), under the teacher's zero-shot and the table's POST over the same seeds, so
    that a variant is read against the prompt it changes and not against other seeds' luck."""

    def per_seed(t: str, method: str) -> dict:
        return (tables["tasks"].get(t, {}).get(method) or {}).get("per_seed", {})

    out = []
    for name, by_task in sorted((tables.get("ablations") or {}).items()):
        tasks, variants = _tasks_and_variants(by_task)
        post_same_seeds = []
        for t in tasks:
            post = per_seed(t, "post")
            seeds = sorted({s for cells in by_task[t].values() for s in cells})
            post_same_seeds.append([post[s] for s in seeds if s in post])
        rows = {
            "teacher_zero_shot": [
                list(per_seed(t, "teacher_zero_shot").values())[:1] for t in tasks
            ],
            "post (the table's, same seeds)": post_same_seeds,
        }
        for v in variants:
            rows[_variant_label(v, tables)] = [
                [c["accuracy"] for _, c in sorted(by_task[t].get(v, {}).items())] for t in tasks
            ]
        out.append(_seeds_table(name, tasks, rows))
    return _tables_block(
        "Ablations (accuracy on the test split, mean ± std over seeds (number); – = not run)", out
    )


def _tasks_and_variants(by_task: dict) -> tuple[list[str], list[str]]:
    """A block's tasks (the table's order, then any other) and its variants in first-seen order."""
    tasks = [t for t in TASKS if t in by_task] + sorted(set(by_task) - set(TASKS))
    return tasks, list(dict.fromkeys(v for t in tasks for v in by_task[t]))


def _seeds_table(title: str, tasks: list[str], rows: dict[str, list[list[float]]]) -> str:
    """A markdown table: one row per {label: per task, its per-seed values}, one column per task."""
    lines = [f"| {title} | {' | '.join(tasks)} |", "|---|" + "---|" * len(tasks)]
    lines += [f"| {k} | {' | '.join(map(_fmt_seeds, v))} |" for k, v in rows.items()]
    return "\n".join(lines)


def _tables_block(intro: str, tables: list[str]) -> str:
    """`intro` and the tables under it, or nothing where there is no table."""
    return f"\n{intro}:\n\n" + "\n\n".join(tables) + "\n" if tables else ""


def markers(name: str = "") -> tuple[str, str]:
    """The README block of a table: the main one, or a named one (`--name`: another record)."""
    if not name:
        return BEGIN, END
    tag = "PAPER-TABLE-" + name.upper()
    return f"<!-- {tag}:BEGIN -->", f"<!-- {tag}:END -->"


def _record_commands(tables: dict) -> list[str]:
    """The commands that filled the record, in order (older records kept only the last one)."""
    return tables.get("commands") or [tables["command"]]


def _commands(tables: dict) -> str:
    cmds = _record_commands(tables)
    if len(cmds) == 1:
        return f"Command: `{cmds[0]}`."
    return f"The {len(cmds)} commands that filled the record are listed under the table."


def _commands_block(tables: dict) -> str:
    """A record filled by several commands lists them one a line, in order, folded away (a record
    may hold dozens: inline they buried the table's own note)."""
    cmds = _record_commands(tables)
    if len(cmds) == 1:
        return ""
    listing = "\n".join(cmds)
    return (
        f"\n<details><summary>The {len(cmds)} commands, in the order they filled the record"
        f"</summary>\n\n```bash\n{listing}\n```\n\n</details>\n"
    )


def _has_block(body: str, begin: str, end: str) -> bool:
    return begin in body and end in body


def _replace_block(body: str, begin: str, end: str, text: str) -> str:
    """`body` with `text` between its `begin` and `end` markers (which it has: `_has_block`)."""
    block = f"{begin}\n{text}{end}"
    return re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, body, flags=re.S)


def write_readme_table(text: str, readme: Path = README, name: str = "") -> None:
    begin, end = markers(name)
    body = readme.read_text() if readme.is_file() else ""
    if _has_block(body, begin, end):
        body = _replace_block(body, begin, end, text)
    else:  # a new record: its own section at the end
        title = "Paper table" + (f" ({name})" if name else "")
        block = f"{begin}\n{text}{end}"
        body = (
            body.rstrip("\n") + f"\n\n## {title} (`python -m benchmarks.paper`)\n\n" + block + "\n"
        )
    write_text(readme, body)


RECORDS = "<!-- PAPER-RECORDS:BEGIN -->", "<!-- PAPER-RECORDS:END -->"


def _seeds(counts: list[int]) -> str:
    return (
        "–"
        if not counts
        else f"{min(counts)}"
        if min(counts) == max(counts)
        else (f"{min(counts)}–{max(counts)}")
    )


def _of(target: dict | None) -> str:
    """ "k of n" of a count target (the tasks where it holds, of the tasks with cells)."""
    if not target or not target.get("of_tasks_with_cells"):
        return "–"
    return f"{len(target['tasks'])} of {target['of_tasks_with_cells']}"


def records_overview(results: Path = RESULTS) -> str:
    """One row per paper_tables*.json under `results`: which student and transfer each record used and
    where it stands on issue 14's four checks, so a reader finds the record that answers a check
    without opening every JSON. Each figure is the record's own `targets` entry, not recomputed."""
    rows = [
        "| record | student | device | public data, table transfer | seeds of POST | POST > zero-shot"
        " and direct (≥ 4 of 5) | gain kept (≥ 0.5) | DP gap, points (≤ 2; seeds) | distilled >"
        " non-distilled (≥ 4 of 5) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(results.glob("paper_tables*.json")):
        t = read_json_or_none(f) or {}
        if t.get("benchmark") != "paper":
            continue
        student = t.get("student") or {}
        layers = len(student.get("layers") or [])
        who = f"{layers} layers" + ("" if student.get("distilled", True) else ", cut only")
        device = t.get("device") or "–"
        device += f" ({t['precision']})" if t.get("precision") else ""
        recipe = t.get("transfer_recipe") or {}
        transfer = f"{recipe.get('public', 'given')}, {recipe.get('table_transfer', 'tool')}"
        seeds = _seeds(
            [len(m["post"]["per_seed"]) for m in t.get("tasks", {}).values() if "post" in m]
        )
        goals = t.get("targets") or {}
        own, ref = goals.get("mean_gain_kept") or {}, goals.get("mean_gain_kept_vs_reference") or {}
        if own.get("value") is not None:
            kept = f"{own['value']:.3f}"
        elif ref.get("value") is not None:
            other = re.search(r"paper_tables\w*\.json", ref.get("assumes", ""))
            kept = (
                f"{ref['value']:.3f} (teacher tuning of {other[0] if other else 'another record'})"
            )
        else:
            kept = "–"
        dp = goals.get("dp8_gap_points") or {}
        gap = "–" if dp.get("value") is None else f"{dp['value']:.2f}"
        if dp.get("seeds_per_task"):
            gap += f" ({_seeds(list(dp['seeds_per_task'].values()))})"
        rows.append(
            f"| `{f.name}` | {who} | {device} | {transfer} | {seeds} | "
            f"{_of(goals.get('post_beats_zero_shot_and_direct'))} | {kept} | {gap} | "
            f"{_of(goals.get('distilled_beats_non_distilled'))} |"
        )
    return "\n".join(rows) + "\n"


def write_records_overview(results: Path = RESULTS, readme: Path = README) -> None:
    """The overview between the PAPER-RECORDS markers of `readme` (left alone where it has none), and
    each PAPER-HEADLINE block's comparison of the records it names (`headline`)."""
    body = readme.read_text() if readme.is_file() else ""
    new = body
    if _has_block(new, *RECORDS):  # the overview is read from every record only where it goes
        new = _replace_block(new, *RECORDS, records_overview(results))
    new = HEADLINE.sub(lambda m: m[1] + headline(results, m[2].split(",")) + m[3], new)
    if new != body:
        write_text(readme, new)


# <!-- PAPER-HEADLINE:BEGIN name1,name2 --> ... <!-- PAPER-HEADLINE:END -->: records by their --name
HEADLINE = re.compile(
    r"(<!-- PAPER-HEADLINE:BEGIN ([\w,]+) -->\n).*?(<!-- PAPER-HEADLINE:END -->)", flags=re.S
)
TASK_TITLES = {
    "sst2": "SST-2", "imdb": "IMDB", "tweet_eval": "TweetEval", "arisetv": "ARISE TV", "mpqa": "MPQA",
}  # fmt: skip


def headline(results: Path, names: list[str]) -> str:
    """Per task, the teacher's zero-shot, each named record's direct transfer / POST / POST with DP
    (means over the record's seeds; the higher POST in bold) and prompt tuning on the teacher (the
    first record that has it): the few numbers a reader of the project README looks for, rebuilt
    from the records so that they cannot go stale. A name with no record is said so, not skipped."""
    recs = {n: read_json_or_none(results / f"paper_tables_{n}.json") or {} for n in names}

    def mean(t: dict, task: str, method: str) -> float | None:
        r = (t.get("tasks") or {}).get(task, {}).get(method)
        return None if r is None else r["mean"]

    def first(method: str) -> tuple[str, dict] | tuple[None, None]:
        return next(((n, t) for n, t in recs.items() if t.get("tasks") and any(
            mean(t, task, method) is not None for task in TASKS)), (None, None))  # fmt: skip

    head = ["task", "teacher zero-shot"]
    for n, t in recs.items():
        if t.get("benchmark") != "paper":
            head.append(f"`{n}`: no record")
            continue
        layers = len((t.get("student") or {}).get("layers") or [])
        recipe = t.get("transfer_recipe") or {}
        how = recipe.get("table_transfer") or "tool"
        transfer = "the tool's transfer" if how == "tool" else f"transfer {how}"
        seeds = _seeds([len(m["post"]["per_seed"]) for m in t["tasks"].values() if "post" in m])
        head.append(
            f"{layers} layers, {transfer}, public {recipe.get('public', 'given')} ({seeds} seeds): "
            "direct / POST / POST, DP ε 8"
        )
    tuned_name, tuned = first("teacher_tuned")
    if tuned:
        n_tuned = _seeds([len(m["teacher_tuned"]["per_seed"]) for m in tuned["tasks"].values()
                          if "teacher_tuned" in m])  # fmt: skip
        head.append(f"prompt tuning on the teacher (`{tuned_name}`, {n_tuned} seed)")
    else:
        head.append("prompt tuning on the teacher")
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    _, zs = first("teacher_zero_shot")
    for task in TASKS:
        posts = [mean(t, task, "post") for t in recs.values()]
        best = max((p for p in posts if p is not None), default=None)
        cells = [
            TASK_TITLES.get(task, task),
            fmt(mean(zs, task, "teacher_zero_shot") if zs else None),
        ]
        for t, post in zip(recs.values(), posts):
            if t.get("benchmark") != "paper":
                cells.append("–")
                continue
            p = fmt(post) if post is None or post != best or len(recs) == 1 else f"**{post:.3f}**"
            cells.append(f"{fmt(mean(t, task, 'direct'))} / {p} / {fmt(mean(t, task, 'post_dp8'))}")
        cells.append(fmt(mean(tuned, task, "teacher_tuned") if tuned else None))
        rows.append("| " + " | ".join(cells) + " |")
    files = ", ".join(f"`benchmarks/results/paper_tables_{n}.json`" for n in recs)
    rows.append(
        f"\nTest accuracy, means over each record's seeds; generated from {files} by `python -m "
        "benchmarks.paper` (each record's per-seed values, spread and commands: "
        "`benchmarks/README.md`)."
    )
    return "\n".join(rows) + "\n"


def _user_choice(tables: dict, dp: dict | None) -> dict:
    """`dp_recipe_user_choice` where the record has user-side DP cells and its own DP recipe."""
    cells = (tables.get("user_side") or {}).get("dp_recipe")
    if not cells or not dp:
        return {}
    return {"dp_recipe_user_choice": dp_recipe_user_choice(cells, dp_variant_name(dp))}


def write_outputs(record: Path, profile: str, sizes: Sizes, command: str, extra: dict | None = None,
                  results: Path = RESULTS, readme: Path = README, name: str = "",
                  overviews: tuple[Path, ...] = ()) -> dict:  # fmt: skip
    """paper_tables.json (paper_tables_<name>.json) and the README table from the cells under
    `record`; the records' overview in `readme` and in each of `overviews` (where it has markers)."""
    tables = collect(record)
    tables_file = f"paper_tables_{name}.json" if name else "paper_tables.json"
    # a record fills over several commands (tasks, then ablations): keep every one that added to it
    before = read_json_or_none(results / tables_file) or {}
    if before.get("record_dir") != str(record):
        before = {}  # another record's tables: its commands did not fill this one
    commands = before.get("commands") or ([before["command"]] if "command" in before else [])
    device = read_json_or_none(record / "device.json") or {}
    out = {
        "benchmark": "paper",
        "profile": profile,
        "sizes": asdict(sizes),
        "command": command,
        "commands": [c for c in commands if c != command] + [command],
        "record_dir": str(record),
        "student": read_json_or_none(record / "student.json"),
        "transfer_recipe": read_json_or_none(record / "transfer.json"),
        "tune_recipe": read_json_or_none(record / "tune.json"),
        # absent: a record from before it was kept, whose DP cells used SGD at sizes.dp_lr
        "dp_recipe": read_json_or_none(record / "dp.json"),
        "device": device.get("device", "cpu"),
        # the arithmetic `precision: auto` resolved to (absent in records from before it was kept)
        "precision": device.get("precision"),
        **tables,
        "targets": targets(
            tables["tasks"],
            tables.get("ablations"),
            read_json_or_none(record / "tuned_reference.json"),
        ),
        **_user_choice(tables, read_json_or_none(record / "dp.json")),
        **(extra or {}),
    }
    out["tables_file"] = tables_file
    write_json(results / out["tables_file"], out)
    write_readme_table(markdown(out), readme, name)
    for doc in dict.fromkeys((readme, *overviews)):
        write_records_overview(results, doc)
    return out
