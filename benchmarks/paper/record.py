"""What a record and its state hold (the student's identity, the recipes, the device), checked on
every run; cells imported from another record; a DP recipe adopted in place of the table's."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from benchmarks.paper.grid import cell_done, depth_variant, dp_user_side, dp_variant_name
from benchmarks.paper.recipes import DP_VARIANTS, SEED_FREE, TASKS, read_json_or_none
from promptport.fileio import read_json, write_json


def _task_seed(cell: Path) -> tuple[str, str]:
    """The task and seed of a cell file .../<task>/<method or variant>/seed<S>.json."""
    return cell.parent.parent.name, cell.stem.removeprefix("seed")


def adopt_dp_recipe(state: Path, record: Path, name: str, log=print) -> dict:
    """Make the dp_recipe ablation's variant NAME the table's DP recipe, keeping the old one as a
    variant: each post_dp8 cell (and its state artifacts tune-dp8-sS, post-dp8-sS) becomes the old
    recipe's ablation cell (tune-dp8@OLD-sS, ...), each of NAME's cells and artifacts the table's, and
    dp.json names NAME's recipe. Seeds NAME has no cell for are left for the table's next run to make
    under the new recipe. The cells are the same computation either way (the table's DP tuning is the
    variant's tuning with the recipe as the table's), so nothing is remade. Every rename is checked
    before the first is made, so a refused move leaves the state as it was."""
    new = next((r for r in DP_VARIANTS if dp_variant_name(r) == name), None)
    if new is None:
        names = ", ".join(dp_variant_name(r) for r in DP_VARIANTS)
        raise SystemExit(f"--adopt-dp-recipe {name}: not a dp_recipe variant ({names})")
    old = read_json_or_none(state / "dp.json")
    if old is None or old == new:
        raise SystemExit(f"{state} has no other recorded DP recipe (dp.json) to replace")
    was = dp_variant_name(old)
    abl = record / "cells" / "ablations" / "dp_recipe"
    adopted = sorted(abl.glob(f"*/{name}/seed*.json"))
    # every artifact of the old recipe goes (with or without a cell), then the variant's come
    renames = [
        (d, d.with_name(f"{m[1]}@{was}-s{m[2]}"))
        for d in sorted((state / "art").glob("*/*-dp8-s*"))
        if (m := re.fullmatch(r"(tune-dp8|post-dp8)-s(\d+)", d.name))
    ]
    freed = {src for src, _ in renames}
    for cell in adopted:
        task, seed = _task_seed(cell)
        art = state / "art" / task
        renames += [
            (art / f"{k}@{name}-s{seed}", art / f"{k}-s{seed}") for k in ("tune-dp8", "post-dp8")
        ]
    for src, dst in renames:
        if src.is_dir() and dst.exists() and dst not in freed:
            raise SystemExit(f"{dst} exists: the DP recipes' artifacts would mix; nothing moved")
    for src, dst in renames:
        if src.is_dir():
            src.rename(dst)
    moved = 0
    for cell in sorted((record / "cells").glob("*/post_dp8/seed*.json")):
        task, seed = _task_seed(cell)
        kept = abl / task / was / cell.name
        if not kept.is_file():  # the ablation's copy of the table's cell, with the user's side
            prompt = state / "art" / task / f"tune-dp8@{was}-s{seed}" / "prompt"
            write_json(kept, {**read_json(cell), **dp_user_side(str(prompt))})
        cell.unlink()
        moved += 1
    for cell in adopted:
        write_json(record / "cells" / _task_seed(cell)[0] / "post_dp8" / cell.name, read_json(cell))
    for d in dict.fromkeys([state, record]):
        write_json(d / "dp.json", new)
    log(f"[paper] DP recipe {was} -> {name}: {moved} cells kept as {was}, {len(adopted)} adopted")
    return new


# The artifacts each recipe makes (STATE/art/<task>/<kind>-s<seed>/).
RECIPE_ARTIFACTS = {
    "transfer": ("*/post*",),
    "tune": ("*/tune*", "*/teacher-tune*"),
    "dp": ("*/tune-dp8-s*",),
}
# The cells a recipe makes, in RECORD (where a record's artifacts are not kept)
RECIPE_CELLS = {"dp": ("*/post_dp8/*.json",)}


def check_recipe(state: Path, recipe: dict, kind: str = "transfer", legacy: dict | None = None):
    """One transfer, one tuning and one DP tuning recipe per state: a state whose artifacts were made
    before the recipe was recorded (or with another) is refused, so cells of two settings never mix in
    one table. `legacy`: the recipe every artifact made before this kind was recorded used (so its
    artifacts are that recipe's)."""
    f = state / f"{kind}.json"
    if f.is_file():
        had = read_json(f)
        if had != recipe:
            raise SystemExit(
                f"{state} holds cells of another {kind} recipe ({had}); "
                "use another --state/--record"
            )
        return
    # a half-made artifact (no prompt yet) holds no recipe: `Grid.artifact` makes it afresh
    made = any(
        cell_done(d) for g in RECIPE_ARTIFACTS[kind] for d in (state / "art").glob(g)
    ) or any(any((state / "cells").glob(g)) for g in RECIPE_CELLS.get(kind, ()))
    if made and recipe != legacy:
        what = (
            f"the {kind} recipe {legacy}" if legacy is not None else f"an unrecorded {kind} recipe"
        )
        raise SystemExit(f"{state} holds artifacts of {what}; use another --state/--record")
    write_json(f, recipe)


def table_recipe(stages) -> dict:
    """What the state's transfer.json records of the table's transfer: the recipe, and the public
    data and step choice where they are not the defaults (so records from before those options keep
    their recipe)."""
    public = {} if stages.public == "given" else {"public": stages.public}
    how = stages.table_transfer
    return {**stages.recipe, **public, **({} if how == "tool" else {"table_transfer": how})}


def import_depth_cells(record: Path, source: Path, stages, ident: dict, log=print) -> list[str]:
    """Fill `record`'s table from `source`'s depth ablation at this student's depth: cells made by
    that very student (its weights' checksum in each cell), with the same sizes, device, tuning and
    transfer recipe (the source's table recipe plus the depth variant's changes), are this record's
    cells -- teacher and student zero-shot, student + prompt, direct, POST -- and are not made
    twice. Each keeps its source in `imported_from`; a cell this record has is left as it is."""
    k = len(ident.get("layers") or [])
    mine, theirs = table_recipe(stages), read_json(source / "transfer.json")
    base = {key: v for key, v in mine.items() if key not in ("public", "table_transfer")}
    checks = {
        "sizes": (read_json(source / "sizes.json"), asdict(stages.sizes)),
        "device": (read_json(source / "device.json"), read_json(record / "device.json")),
        "tune recipe": (read_json(source / "tune.json"), stages.tune_recipe),
        "transfer recipe": (theirs, {**base, "public": "length_matched"}),
    }
    for what, (a, b) in checks.items():
        if a != b:
            raise SystemExit(f"--import-depth-cells: {source} has another {what} ({a} != {b})")
    post_variant = depth_variant(mine, k, stages.sizes.transfer_epochs)
    root = source / "cells"
    made: list[str] = []

    def put(task: str, method: str, seed: str, cell: dict, src: Path) -> None:
        out = record / "cells" / task / method / f"seed{seed}.json"
        if out.is_file() or (method in SEED_FREE and any(out.parent.glob("seed*.json"))):
            return  # a cell the record has; a seed-free cell is one cell
        write_json(out, {**cell, "imported_from": str(src)})
        made.append(str(out.relative_to(record)))

    for task in TASKS:
        for src in sorted((root / task / "teacher_zero_shot").glob("seed*.json")):
            put(task, "teacher_zero_shot", src.stem.removeprefix("seed"), read_json(src), src)
        depth = root / "ablations" / "depth" / task
        for src in sorted((depth / f"layers={k}").glob("seed*.json")):
            seed, at = src.stem.removeprefix("seed"), read_json(src)
            cells = {f"layers={k}": at}
            for v in (f"layers={k},direct", post_variant):
                cells[v] = read_json_or_none(depth / v / src.name)
            for v, c in cells.items():
                if c is not None and (c.get("student") or {}).get("sha256") != ident["sha256"]:
                    raise SystemExit(
                        f"--import-depth-cells: {depth / v / src.name} is another student's "
                        f"({(c.get('student') or {}).get('sha256')}, not {ident['sha256']})"
                    )
            put(task, "student_zero_shot", seed, {"accuracy": at["student_zero_shot"]}, src)
            put(task, "student_prompt", seed,
                {"accuracy": at["student_prompt"], "prompt_drift": at.get("prompt_drift")}, src)  # fmt: skip
            for method, v in (("direct", f"layers={k},direct"), ("post", post_variant)):
                if cells[v] is not None:
                    put(task, method, seed, cells[v], depth / v / src.name)
    log(f"[paper] imported {len(made)} cells from {source}")
    return made


def check_device(record: Path, device: str) -> None:
    """One device and one arithmetic per record: GPU and CPU numerics differ (the same recipe and seed
    give other weights and prompts), and so do bf16 and fp32 (`precision: auto` resolves to bf16 on a
    CPU with AVX512-BF16 or AMX, to fp32 on an AVX2-only one), so their cells never mix in one table.
    A record from before device.json was kept holds CPU cells; one from before it named the
    arithmetic takes this machine's."""
    import torch

    from promptport.runtime import resolve_precision

    kind = torch.device(device).type
    precision = resolve_precision("auto", device)
    f = record / "device.json"
    had = read_json_or_none(f) or {}
    if had.get("device") is None and any((record / "cells").rglob("*.json")):
        had["device"] = "cpu"
    if had.get("device") not in (None, kind):
        raise SystemExit(
            f"{record} holds cells computed on {had['device']}; give --device {device} its own --record"
        )
    if had.get("precision") not in (None, precision):
        raise SystemExit(
            f"{record} holds cells computed in {had['precision']} (precision auto on that machine); "
            f"this {kind} computes in {precision}: give it its own --record"
        )
    write_json(f, {"device": kind, "precision": precision})


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
