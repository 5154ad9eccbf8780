"""benchmarks.paper: cells resume and skip, artifacts are made once, the JSON and README table have the
shape others read. Stage functions are replaced by a fake that writes tiny artifacts (no model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from benchmarks import paper

from promptport.fileio import read_json


class FakeStages:
    teacher = "T"
    sizes = paper.PROFILES["quick"]
    public = "length_matched"
    table_transfer = "tool"

    def __init__(self, fail_on: str | None = None):
        self.recipe = {"alpha": 1.0, "lr": 0.01}  # the transfer's
        self.tune_recipe = {"n_tokens": 50, "lr": 0.1}
        self.dp_recipe = {"optimizer": "sgd", "lr": 0.3}
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def _write(self, out: Path, tag: str) -> str:
        if self.fail_on and self.fail_on in tag:
            raise RuntimeError(f"killed during {tag}")
        (out / "prompt").mkdir(parents=True)
        (out / "prompt" / "prompt.json").write_text(json.dumps({"tag": tag}))
        return str(out / "prompt")

    def tune(self, model, spec, seed, out, dp, **over):
        tag = f"tune:{model}:{spec['task']}:{seed}:{dp}:{over}"
        self.calls.append(("tune", tag))
        return self._write(out, tag)

    def transfer(self, prompt, student, spec, seed, out, **over):
        tag = f"transfer:{Path(prompt).parent.name}:{student}:{over}"
        self.calls.append(("transfer", tag))
        made = self._write(out, tag)
        if over.get("n_tokens") == "auto":  # what the tool's metrics.json says it chose
            cands = [{"n_tokens": n, "best": {"heldout_loss": 0.1 / n}} for n in (50, 10, 1)]
            sel = {"n_tokens": 1, "candidates": cands}
            (out / "metrics.json").write_text(json.dumps({"teacher_tokens_selection": sel}))
        if "select_data" in over:  # the kept prompt's accuracy on the selection set, made up
            kept = {
                "kept_accuracy": (sum(map(ord, tag)) % 7) / 10,
                "n": over["n_select"],
                "teacher_zero_shot_accuracy": self.evaluate(self.teacher, None, spec, log=False)[
                    "accuracy"
                ],
            }
            best = {"heldout_loss": (sum(map(ord, tag)) % 5) / 10}  # made up too
            m = out / "metrics.json"  # beside the length choice, as the tool's metrics.json has it
            had = json.loads(m.read_text()) if m.is_file() else {}
            m.write_text(json.dumps({**had, "select_data": kept, "best": best}))
        return made

    def non_distilled(self, student, out):
        out.mkdir(parents=True)
        (out / "student.json").write_text("{}")
        return str(out)

    def select_scores(self, model, prompt, task, select_file, n, seed):
        self.calls.append(("select_scores", model, prompt, select_file, n, seed))
        zs = self.evaluate(model, None, None, log=False)["accuracy"]
        return zs, self.evaluate(model, prompt, None, log=False)["accuracy"]

    def evaluate(self, model, prompt, spec, log=True):
        if log:
            self.calls.append(("evaluate", model, prompt))
        tag = (
            "" if prompt is None else json.loads((Path(prompt) / "prompt.json").read_text())["tag"]
        )
        # a deterministic accuracy that depends on what was evaluated
        acc = 0.5 + (sum(map(ord, model + tag)) % 40) / 100
        return {"accuracy": acc, "macro_f1": acc, "n": 10}


SPECS = {t: {"task": t, "data": f"/d/{t}", "public": f"/p/{t}"} for t in ("sst2", "mpqa")}


def run_all(grid: paper.Grid, seeds=(0, 1, 2)):
    for s in seeds:
        for t in SPECS:
            for m in paper.METHODS:
                if (m in paper.SEED_FREE or m in paper.ONE_SEED) and s != seeds[0]:
                    continue
                grid.run_cell(t, m, s)


def test_cells_resume_skip_and_json_shape(tmp_path):
    state = tmp_path / "state"
    stages = FakeStages()
    run_all(paper.Grid(state, stages, "S", SPECS, log=lambda *_: None))
    n_tune = sum(1 for c in stages.calls if c[0] == "tune")
    # per task: 3 user prompts + 3 DP prompts + 1 teacher tuning; each made once although 3 cells use it
    assert n_tune == 2 * (3 + 3 + 1)
    assert sum(1 for c in stages.calls if c[0] == "transfer") == 2 * (3 + 3)

    again = FakeStages()
    grid = paper.Grid(state, again, "S", SPECS, log=lambda *_: None)
    run_all(grid)
    assert again.calls == [] and grid.ran == []  # everything skipped

    sizes = paper.PROFILES["quick"]
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\ntext before\n")
    out = paper.write_outputs(state, "quick", sizes, "cmd", results=tmp_path, readme=readme)
    on_disk = json.loads((tmp_path / "paper_tables.json").read_text())
    assert on_disk["tasks"] == out["tasks"] and on_disk["sizes"]["train_limit"] == sizes.train_limit
    for t in SPECS:
        assert set(out["tasks"][t]) == set(paper.METHODS)
        for m, r in out["tasks"][t].items():
            assert set(r) == {"mean", "std", "per_seed"}
            want = 1 if m in paper.SEED_FREE + paper.ONE_SEED else 3
            assert len(r["per_seed"]) == want
            vals = list(r["per_seed"].values())
            assert r["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-4)
    # the README table is generated from the JSON, between markers, and replaced on the next write
    body = readme.read_text()
    assert "text before" in body and body.count(paper.BEGIN) == 1
    assert f"{out['tasks']['sst2']['post']['mean']:.3f} ±" in body
    # the DP recipe is named: a record from before dp.json used SGD at the profile's dp_lr
    assert out["dp_recipe"] is None and f"DP-SGD at ε 8, optimizer sgd, lr {sizes.dp_lr}." in body
    (state / "dp.json").write_text(json.dumps({"optimizer": "sgd", "lr": 10.0}))
    out = paper.write_outputs(state, "quick", sizes, "cmd", results=tmp_path, readme=readme)
    assert out["dp_recipe"]["lr"] == 10.0 and "optimizer sgd, lr 10.0." in readme.read_text()
    paper.write_outputs(state, "quick", sizes, "cmd", results=tmp_path, readme=readme)
    assert readme.read_text().count(paper.BEGIN) == 1
    # a record filled by several commands names each, once, in order; the latest is `command`
    again = paper.write_outputs(state, "quick", sizes, "cmd2", results=tmp_path, readme=readme)
    assert again["commands"] == ["cmd", "cmd2"] and again["command"] == "cmd2"
    body = readme.read_text()
    assert "The 2 commands that filled the record are listed under the table." in body
    assert "<summary>The 2 commands, in the order they filled the record</summary>" in body
    assert "```bash\ncmd\ncmd2\n```" in body  # one a line, in order, each once
    other = paper.write_outputs(
        tmp_path / "other", "quick", sizes, "c3", results=tmp_path, readme=readme
    )
    assert other["commands"] == ["c3"]  # another record starts its own list
    # the records' overview also goes to the project README (`overviews`), between its markers only
    from benchmarks.paper.tables import RECORDS

    top = tmp_path / "TOP.md"
    top.write_text(f"intro\n{RECORDS[0]}\nstale\n{RECORDS[1]}\n")
    paper.write_outputs(
        state, "quick", sizes, "c4", results=tmp_path, readme=readme, overviews=(top,)
    )
    text = top.read_text()
    assert text.startswith("intro\n") and "stale" not in text and "`paper_tables.json`" in text
    assert paper.BEGIN not in text  # the overview, not the record's table


def test_a_kill_mid_grid_loses_only_the_stage_in_flight(tmp_path):
    state = tmp_path / "state"
    first = FakeStages(fail_on=":8.0:")  # dies while the first DP prompt (epsilon 8) is being made
    grid = paper.Grid(state, first, "S", SPECS, log=lambda *_: None)
    with pytest.raises(RuntimeError):
        run_all(grid)
    done_before = {p: p.read_text() for p in (state / "cells").rglob("*.json")}
    assert done_before  # the cells before the kill were saved
    second = FakeStages()
    run_all(paper.Grid(state, second, "S", SPECS, log=lambda *_: None))
    for p, text in done_before.items():
        assert p.read_text() == text  # untouched
    # the prompts made before the kill were reused: only DP, post-dp8 and later work remains
    assert not any(c[0] == "tune" and c[1].startswith("tune:S:sst2:0:None") for c in second.calls)
    tables = paper.collect(state)
    assert all(set(tables["tasks"][t]) == set(paper.METHODS) for t in SPECS)


def test_ablations_are_cells_too(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setattr(
        paper.tasks, "same_task_public", lambda spec, sizes: f"/p/{spec['task']}-own"
    )
    pubs = tmp_path / "pub"
    pubs.mkdir()

    def length_matched(spec, sizes, cut="sentences"):  # the phrase cut changes SST-2 texts only
        f = pubs / f"{spec['task']}-{cut}.jsonl"
        other = cut == "phrases" and spec["task"] == "sst2"
        f.write_text(json.dumps({"text": "a phrase" if other else "a whole sentence."}) + "\n")
        return str(f)

    monkeypatch.setattr(paper.tasks, "length_matched_public", length_matched)
    import benchmarks.public_label_pick as plp

    monkeypatch.setattr(  # the labelled public set the transfer chooses its step on
        plp, "labelled_public", lambda task, *a: {"task": task, "data": f"/sel/{task}"}
    )
    monkeypatch.setattr(  # labelled texts of the same source that the selection never saw
        plp, "fresh_labelled_public", lambda task, *a: f"/fresh/{task}.jsonl"
    )
    monkeypatch.setattr(paper.students, "student_identity", lambda s: {"sha256": f"sha-{s}"})
    stages = FakeStages()
    made: list[int] = []

    def depth_student(k):  # distilled on demand, once per depth
        made.append(k)
        return f"S{k}"

    grid = paper.Grid(state, stages, "S", SPECS, log=lambda *_: None, depth_student=depth_student)
    for name in paper.ABLATIONS:
        grid.run_ablation(name, "sst2", 0)
    n = len(stages.calls)
    grid2 = paper.Grid(
        state, FakeStages(), "S", SPECS, log=lambda *_: None, depth_student=depth_student
    )
    for name in paper.ABLATIONS:
        grid2.run_ablation(name, "sst2", 0)
    assert grid2.stages.calls == [] and n > 0
    assert made == [2, 8]  # each depth asks once per task and seed; a finished cell never again
    # each depth tunes on its own student and transfers from it
    assert any(c[0] == "tune" and ":S2:" in c[1] for c in stages.calls)
    assert any(c[0] == "transfer" and ":S8:" in c[1] for c in stages.calls)
    # a depth cell names its student and scores it without a prompt too
    cell = read_json(state / "cells" / "ablations" / "depth" / "sst2" / "layers=8" / "seed0.json")
    assert cell["student"] == {"sha256": "sha-S8"}
    assert (
        cell["student_zero_shot"] == FakeStages().evaluate("S8", None, None, log=False)["accuracy"]
    )
    made_cells = paper.collect(state)
    abl = made_cells["ablations"]
    # every ablation made its cells; dp_recipe_user (no transfer, no test) as dp_recipe's user side
    assert set(abl) | {"dp_recipe_user"} == set(paper.ABLATIONS)
    assert set(made_cells["user_side"]) == {"dp_recipe"}
    # the tuning variants: the tool's cells, Adam at a tenth of the recipe's lr, DP's SGD unnoised
    assert set(abl["tune_optimizer"]["sst2"]) == {"adam", "adam_lr=0.01", "sgd"}
    assert any("'lr': 0.01}" in c[1] for c in stages.calls if c[0] == "tune")
    assert any("'optimizer': 'sgd', 'lr': 0.3}" in c[1] for c in stages.calls if c[0] == "tune")
    assert set(abl["tune_budget"]["sst2"]) == {"tool", "epochs=4", "train_limit=2400"}
    assert any("{'epochs': 4}" in c[1] for c in stages.calls if c[0] == "tune")
    assert any("{'train_limit': 2400}" in c[1] for c in stages.calls if c[0] == "tune")
    # the transfer trained harder from the same user prompt; the tool's variant is the table's post
    sel = "epochs=3,select=public"
    assert set(abl["transfer_budget"]["sst2"]) == {
        "tool", "lr=0.03", "epochs=3", "epochs=6,patience=2", sel, f"{sel},shift_mean=drop",
        f"{sel},shift_mean=match", f"{sel},shift_mean=chosen", "epochs=6,select=public,patience=4",
        "epochs=3,schedule=linear", f"{sel},schedule=linear", "epochs=3,average_from=0.67",
        f"{sel},average=chosen", f"{sel},average=chosen_fresh", f"{sel},n_tokens=10",
        f"{sel},n_tokens=chosen", "public_cut=phrases", f"{sel},public_cut=phrases",
    }  # fmt: skip
    # the phrase cut's own public file, in the tool's transfer and the selected one
    phr = str(pubs / "sst2-phrases.jsonl")
    assert any(c[1].endswith(f"{{'public': '{phr}'}}") and "tune-s0" in c[1] for c in stages.calls)
    assert any(
        f"'n_select': 600, 'public': '{phr}'}}" in c[1] and "tune-s0" in c[1] for c in stages.calls
    )
    # where the phrase cut leaves the texts as they were, the cell is the sentence cut's, not rerun
    n_calls = len(grid.stages.calls)
    same = grid.phrase_cut(
        "mpqa", state / "cells/ablations/transfer_budget/mpqa/tool/seed0.json",
        lambda: {"accuracy": 0.7, "seconds": 3},
        lambda pub: pytest.fail("a transfer the sentence cut already made"),
    )  # fmt: skip
    assert same == {"accuracy": 0.7, "same_public_as": "tool"}
    assert len(grid.stages.calls) == n_calls
    # the tail-averaged prompt of the 3-pass transfer
    assert any(
        c[1].endswith(":{'epochs': 3, 'average_from': 0.67}") and "tune-s0" in c[1]
        for c in stages.calls
    )
    # the decaying rate, kept by the loss and by the labelled set
    assert any(
        c[1].endswith(":{'epochs': 3, 'schedule': 'linear'}") and "tune-s0" in c[1]
        for c in stages.calls
    )
    assert any(
        c[1].endswith("'n_select': 600, 'schedule': 'linear'}") and "tune-s0" in c[1]
        for c in stages.calls
    )
    # the longer selected transfer stops by the tool's patience (on the selection checks)
    assert any(
        "'epochs': 6, 'select_data': '/sel/sst2/test.jsonl', 'n_select': 600, 'patience': 4}"
        in c[1]
        and c[1].startswith("transfer:tune-s0:")
        for c in stages.calls
    )
    # the chosen cell is the candidate most accurate on the selection set, with its test scores
    cells = {
        how: read_json(
            state / "cells/ablations/transfer_budget/sst2" / (sel + suffix) / "seed0.json"
        )
        for how, suffix in (
            ("keep", ""),
            ("drop", ",shift_mean=drop"),
            ("match", ",shift_mean=match"),
        )
    }
    chosen = read_json(
        state / f"cells/ablations/transfer_budget/sst2/{sel},shift_mean=chosen/seed0.json"
    )
    scores = {h: c["select"]["kept_accuracy"] for h, c in cells.items()}
    assert len(set(scores.values())) > 1  # the fake gives the candidates different scores
    best = max(scores, key=lambda h: (scores[h], -list(scores).index(h)))
    assert chosen["shift_mean"] == best and chosen["select_accuracy_by_shift_mean"] == scores
    assert chosen["accuracy"] == cells[best]["accuracy"]
    assert any("'shift_mean': 'match'" in c[1] and "'select_data'" in c[1] for c in stages.calls)
    # the selected step or the tail mean: the one more accurate on the labelled set, scored there
    avg = read_json(state / f"cells/ablations/transfer_budget/sst2/{sel},average=chosen/seed0.json")
    tail = stages.evaluate("T", str(state / "art/sst2/post-ep3x-avg-s0/prompt"), None)["accuracy"]
    assert avg["select_accuracy_by_candidate"] == {
        "step": cells["keep"]["select"]["kept_accuracy"], "average": tail,
    }  # fmt: skip
    kept = "average" if tail > cells["keep"]["select"]["kept_accuracy"] else "step"
    assert avg["kept"] == kept and avg["accuracy"] == avg["accuracy_by_candidate"][kept]
    assert any(
        "'epochs': 3, 'select_data': '/sel/sst2/test.jsonl', 'n_select': 600}" in c[1]
        and c[1].startswith("transfer:tune-s0:")
        for c in stages.calls
    )
    # the same choice with both candidates scored on the fresh texts, not the selection's own
    fresh = read_json(
        state / f"cells/ablations/transfer_budget/sst2/{sel},average=chosen_fresh/seed0.json"
    )
    art = state / "art/sst2"
    on_fresh = {
        k: stages.evaluate("T", str(art / f"{kind}-s0/prompt"), None, log=False)["accuracy"]
        for k, kind in (("step", "post-ep3x-sel"), ("average", "post-ep3x-avg"))
    }
    assert on_fresh["step"] != on_fresh["average"]  # the fake tells them apart
    assert fresh["fresh_accuracy_by_candidate"] == on_fresh
    kept = "average" if on_fresh["average"] > on_fresh["step"] else "step"
    assert fresh["kept"] == kept and fresh["accuracy"] == fresh["accuracy_by_candidate"][kept]
    assert {
        c[3] for c in stages.calls if c[0] == "select_scores" and c[3].startswith("/fresh")
    } == {"/fresh/sst2.jsonl"}
    g = paper.Grid(state, FakeStages(), "S", SPECS, log=lambda *_: None)
    for prefer in ("average", "step"):  # whichever scores higher there is kept
        monkeypatch.setattr(
            g.stages, "select_scores",
            lambda m, q, *a, p={"average": "-avg-", "step": "-sel-"}[prefer]: (
                0.5, 0.9 if p in q else 0.6,
            ),
        )  # fmt: skip
        c = g.chosen_average_fresh(
            "sst2", 0, sel, "post-ep3x-sel", "epochs=3,average_from=0.67", "post-ep3x-avg"
        )
        assert c["kept"] == prefer, prefer
    # a candidate's prompt made in another sitting (not in this state) is made again first
    shutil.rmtree(state / "art/sst2/post-ep3x-sel-s0")
    remade: list[str] = []

    def remake_step():  # what the variant's own computation does: the selected transfer again
        remade.append("step")
        grid.selected_transfer("sst2", 0, "post-ep3x", epochs=3)

    g.chosen_average_fresh(
        "sst2", 0, sel, "post-ep3x-sel", "epochs=3,average_from=0.67", "post-ep3x-avg",
        remake={"step": remake_step, "average": lambda: remade.append("average")},
    )  # fmt: skip
    assert remade == ["step"] and paper.cell_done(state / "art/sst2/post-ep3x-sel-s0")
    # the 10-token teacher prompt through the same selection, and the length the tool's rule keeps:
    # the higher accuracy on the labelled set, then the lower held-out loss, then the user's length
    assert any(
        "'select_data': '/sel/sst2/test.jsonl', 'n_select': 600, 'n_tokens': 10}" in c[1]
        and c[1].startswith("transfer:tune-s0:")
        for c in stages.calls
    )
    by_len = {
        n: read_json(state / "cells/ablations/transfer_budget/sst2" / v / "seed0.json")
        for n, v in ((50, sel), (10, f"{sel},n_tokens=10"))
    }
    length = read_json(
        state / f"cells/ablations/transfer_budget/sst2/{sel},n_tokens=chosen/seed0.json"
    )
    acc = {n: c["select"]["kept_accuracy"] for n, c in by_len.items()}
    loss = {n: c["heldout_loss"] for n, c in by_len.items()}
    want = 10 if (acc[10], -loss[10]) > (acc[50], -loss[50]) else 50
    assert length["teacher_tokens"] == want and length["accuracy"] == by_len[want]["accuracy"]
    assert length["accuracy_by_length"] == {str(n): c["accuracy"] for n, c in by_len.items()}
    g = paper.Grid(state, FakeStages(), "S", SPECS, log=lambda *_: None)
    for n, c in by_len.items():  # a tie on the set goes to the lower held-out loss
        c["select"]["kept_accuracy"], c["heldout_loss"] = 0.7, {50: 0.3, 10: 0.2}[n]
    monkeypatch.setattr(g, "budget_cell", lambda t, v, s: by_len[10 if "n_tokens" in v else 50])
    assert g.chosen_length("sst2", 0, {50: sel, 10: f"{sel},n_tokens=10"})["teacher_tokens"] == 10
    for c in by_len.values():  # no labelled set (ARISE TV): the lowest held-out loss alone
        del c["select"]
    assert g.chosen_length("sst2", 0, {50: sel, 10: f"{sel},n_tokens=10"})["teacher_tokens"] == 10
    by_len[50]["heldout_loss"] = 0.1
    assert g.chosen_length("sst2", 0, {50: sel, 10: f"{sel},n_tokens=10"})["teacher_tokens"] == 50
    # a task with no labelled public source keeps the loss's choice: the 3-pass transfer's own
    monkeypatch.setattr(plp, "SOURCES", {})
    calls = len(grid.stages.calls)
    plain = grid.selected_transfer("sst2", 0, "post-ep3x", epochs=3)
    assert [c[0] for c in grid.stages.calls[calls:]] == [
        "evaluate"
    ]  # its prompt, not trained again
    assert plain["accuracy"] == abl["transfer_budget"]["sst2"]["epochs=3"]["0"]["accuracy"]
    # and with patience, the held-out loss's early stop (its own transfer, not the 3-pass one)
    calls = len(grid.stages.calls)
    grid.selected_transfer("sst2", 0, "post-ep6x", epochs=6, patience=4)
    assert any(
        c[0] == "transfer" and c[1].endswith("{'epochs': 6, 'patience': 4}")
        for c in grid.stages.calls[calls:]
    )
    assert any("'epochs': 6, 'patience': 2}" in c[1] for c in stages.calls)
    assert any("'lr': 0.03" in c[1] and ":tune-s0:" in c[1] for c in stages.calls)
    assert any("{'epochs': 3}" in c[1] and ":tune-s0:" in c[1] for c in stages.calls)
    tb = abl["transfer_budget"]["sst2"]["tool"]["0"]["accuracy"]
    assert tb == paper.collect(state)["tasks"]["sst2"]["post"]["per_seed"]["0"]
    # the DP prompt through the same longer transfer; the tool's variant is the table's post_dp8
    assert set(abl["transfer_budget_dp"]["sst2"]) == {"tool", "epochs=3"}
    assert any("{'epochs': 3}" in c[1] and ":tune-dp8-s0:" in c[1] for c in stages.calls)
    tbd = abl["transfer_budget_dp"]["sst2"]["tool"]["0"]["accuracy"]
    assert tbd == paper.collect(state)["tasks"]["sst2"]["post_dp8"]["per_seed"]["0"]
    assert set(abl["alpha"]["sst2"]) == {f"alpha={a:g}" for a in (0, 0.25, 0.5, 0.75, 1)} | {
        "alpha=auto"
    }
    # the tool's setting is the table's post cell; the paper's is a transfer with the paper's fields
    tool = abl["paper_setting"]["sst2"]["tool"]["0"]["accuracy"]
    teacher_tokens = abl["teacher_tokens"]["sst2"]
    assert set(teacher_tokens) == {"tool", "n_tokens=1", "n_tokens=10", "auto"}
    assert teacher_tokens["auto"]["0"]["teacher_tokens"] == 1  # the tool's choice, recorded
    assert any(c[0] == "transfer" and "'n_tokens': 'auto'}" in c[1] for c in stages.calls)
    assert teacher_tokens["tool"]["0"]["accuracy"] == tool
    assert any(c[0] == "transfer" and "'n_tokens': 1}" in c[1] for c in stages.calls)
    assert tool == round(paper.collect(state)["tasks"]["sst2"]["post"]["per_seed"]["0"], 4)
    assert any(c[0] == "transfer" and "'init': 'copy'" in c[1] for c in stages.calls)
    assert set(abl["non_distilled"]["sst2"]) == {"distilled", "non_distilled"}
    shift = abl["shift_mean"]["sst2"]
    assert set(shift) == {"keep", "drop", "match"} and shift["keep"]["0"]["accuracy"] == tool
    for how in ("drop", "match"):
        assert any(c[0] == "transfer" and f"'shift_mean': '{how}'" in c[1] for c in stages.calls)
    base = abl["shift_base"]["sst2"]
    assert set(base) == {"unprompted", "init", "unprompted_dp8", "init_dp8"}
    assert base["unprompted"]["0"]["accuracy"] == tool
    assert any(c[0] == "transfer" and "'shift_base': 'init'" in c[1] for c in stages.calls)
    cal = abl["calibrate"]["sst2"]
    assert set(cal) == {"raw", "calibrated"} and cal["raw"]["0"]["accuracy"] == tool
    assert all("student_prompt" in v["0"] for v in cal.values())
    # the calibrated prompt is tuned with `calibrate` and transferred from its own folder
    assert any(c[0] == "tune" and "'calibrate': True" in c[1] for c in stages.calls)
    assert any(
        c[0] == "transfer" and c[1].startswith("transfer:tune-cal-s0:") for c in stages.calls
    )
    assert "student_prompt" in abl["prompt_length"]["sst2"]["n_tokens=50"]["0"]
    assert set(abl["depth"]["sst2"]) == {
        f"layers={k}{v}" for k in (2, 8) for v in (
            "", ",public_cut=phrases", f",{sel}", f",{sel},public_cut=phrases", ",direct"
        )
    }  # fmt: skip
    # the selected transfer at a depth: that depth's user prompt, from its student, the step chosen
    # on the labelled public set, on sentences and on the phrase file
    sel_over = "{'epochs': 3, 'select_data': '/sel/sst2/test.jsonl', 'n_select': 600"
    for tail in ("}", f", 'public': '{phr}'}}"):
        assert f"transfer:tune-L8-s0:S8:{sel_over}{tail}" in [c[1] for c in stages.calls]
    # direct at a depth: that depth's user prompt on the teacher, as it was tuned
    direct = abl["depth"]["sst2"]["layers=8,direct"]["0"]
    tuned = state / "art/sst2/tune-L8-s0/prompt"
    assert direct["accuracy"] == FakeStages().evaluate("T", str(tuned), None, log=False)["accuracy"]
    # the phrase cut at a depth: that depth's own user prompt, transferred on the phrase file
    assert any(
        c[0] == "transfer" and c[1] == f"transfer:tune-L8-s0:S8:{{'public': '{phr}'}}"
        for c in stages.calls
    )
    # ... and where the phrase cut leaves the texts as they were, the depth's sentence-cut cell
    grid.run_ablation("depth", "mpqa", 0)
    depth = state / "cells/ablations/depth/mpqa"
    shared, plain = (
        {k: v for k, v in read_json(depth / v / "seed0.json").items() if k != "seconds"}
        for v in ("layers=8,public_cut=phrases", "layers=8")
    )
    assert shared == {**plain, "same_public_as": "layers=8"}
    shared, plain = (
        {k: v for k, v in read_json(depth / v / "seed0.json").items() if k != "seconds"}
        for v in (f"layers=8,{sel},public_cut=phrases", f"layers=8,{sel}")
    )
    assert shared == {**plain, "same_public_as": f"layers=8,{sel}"}
    assert not any("post-L8-phr" in c[1] or "mpqa-phrases" in c[1] for c in grid.stages.calls)
    made_here = {p.name for p in (state / "art/mpqa").iterdir()}
    assert "post-L8-ep3x-s0" in made_here  # (no labelled source now: the plain three passes)
    assert not [n for n in made_here if "-phr" in n]  # the sentence transfer, not repeated
    assert set(abl["public_data"]["sst2"]) == {
        "same_task",
        "same_domain",
        "length_matched",
        "cross_domain",
        "generated",
    }
    assert any(c[0] == "transfer" and "'/p/sst2-own'" in c[1] for c in stages.calls)
    recut = str(pubs / "sst2-sentences.jsonl")
    assert any(c[0] == "transfer" and f"'{recut}'" in c[1] for c in stages.calls)
    n_public = paper.PROFILES["quick"].n_public
    assert any(c[0] == "transfer" and f"'generate:{n_public}'" in c[1] for c in stages.calls)
    # the one-setting ablations keep their artifacts' names (a state made before goes on from them)
    # and transfer the prompt they name: the user's, or for init_dp8 the seed's DP prompt
    sst2_art = {p.name for p in (state / "art/sst2").iterdir()}
    for tag in (
        "post-a0.5", "post-aauto", "post-paper", "post-shift-drop", "post-shift-match",
        "post-base-init", "post-dp8-base-init", "post-same_task", "post-generated", "post-t1",
        "post-t10", "post-tauto",
    ):  # fmt: skip
        assert f"{tag}-s0" in sst2_art, tag
    init = [c[1] for c in stages.calls if c[0] == "transfer" and "'shift_base': 'init'" in c[1]]
    assert sorted(c.split(":")[1] for c in init) == ["tune-dp8-s0", "tune-s0"]
    # the DP recipes: the table's own (SGD 0.3) is its post_dp8 cell, the others their own tunings
    dp = abl["dp_recipe"]["sst2"]
    assert set(dp) == {
        "sgd_lr=0.3",
        "sgd_lr=3",
        "adam_lr=0.03",
        "sgd_lr=10,epochs=4,grad_accum=8",
        "sgd_lr=10,epochs=8,grad_accum=16",
    }
    assert dp["sgd_lr=0.3"]["0"]["accuracy"] == round(
        paper.collect(state)["tasks"]["sst2"]["post_dp8"]["per_seed"]["0"], 4
    )
    dp_tunes = [c[1] for c in stages.calls if c[0] == "tune" and ":8.0:" in c[1]]
    assert len(dp_tunes) == 5  # the table's, then SGD 3, Adam 0.03 and the two batches: none twice
    assert any("{'optimizer': 'adam', 'lr': 0.03}" in c for c in dp_tunes)
    assert any(c[1].startswith("transfer:tune-dp8@sgd_lr=3-s0:") for c in stages.calls)


def _recording_stages(monkeypatch, module, profile: str):
    """Stages of a profile whose stage function (`module`'s function of the module's name: tune.tune,
    transfer.transfer) only records the config it is given, and whose models are their names."""
    seen: list = []
    monkeypatch.setattr(
        module, module.__name__.rsplit(".", 1)[1], lambda *a, cfg, **k: seen.append(cfg)
    )
    st = paper.Stages("T", paper.PROFILES[profile])
    monkeypatch.setattr(st, "model", lambda spec: spec)
    return st, seen


def test_post_uses_the_run_default_transfer_setting(monkeypatch, tmp_path):
    """The table's POST is what `promptport run` does (the embedded config's transfer section), sized by
    the profile; the paper's setting is an override, not the default."""
    import promptport.transfer as tr
    from promptport.config import DEFAULT_CONFIG, load_run_config

    st, seen = _recording_stages(monkeypatch, tr, "quick")
    z = st.sizes
    spec = {"task": "sst2", "public": "/p"}
    st.transfer("P", "S", spec, 1, tmp_path)
    st.transfer("P", "S", spec, 1, tmp_path, **paper.PAPER_TRANSFER)
    run = load_run_config(DEFAULT_CONFIG).transfer
    tool, pap = seen
    for k in ("alpha", "space", "init", "lr", "temperature", "batch_size"):
        assert getattr(tool, k) == run[k], k
    assert (tool.n_public, tool.epochs, tool.seed) == (z.n_public, z.transfer_epochs, 1)
    assert (pap.alpha, pap.space, pap.init, pap.lr) == (0.5, "vocab", "copy", 1e-3)


def test_transfer_budget_changes_only_the_transfers_lr_or_passes(monkeypatch, tmp_path):
    """transfer_budget's variants reach TransferConfig as its learning rate or its passes over the
    public texts; every other field stays the table's."""
    import promptport.transfer as tr

    st, seen = _recording_stages(monkeypatch, tr, "full")
    spec = {"task": "sst2", "public": "/p"}
    st.transfer("P", "S", spec, 0, tmp_path)
    st.transfer("P", "S", spec, 0, tmp_path, lr=3 * st.recipe["lr"])
    st.transfer("P", "S", spec, 0, tmp_path, epochs=3 * st.sizes.transfer_epochs)
    st.transfer("P", "S", spec, 0, tmp_path, epochs=6 * st.sizes.transfer_epochs, patience=2)
    tool, hot, long, stopped = seen
    assert (hot.lr, hot.epochs) == (3 * tool.lr, tool.epochs)
    assert (long.lr, long.epochs) == (tool.lr, 3 * tool.epochs)
    assert (stopped.epochs, stopped.patience, tool.patience) == (6 * tool.epochs, 2, None)
    for k in ("alpha", "space", "init", "n_public", "max_length", "seed", "temperature"):
        assert getattr(hot, k) == getattr(tool, k) == getattr(long, k) == getattr(stopped, k), k


def test_user_prompts_use_the_run_default_tune_setting(monkeypatch, tmp_path):
    """The table's user prompt is tuned as `promptport run` tunes it (the embedded config's tune section:
    prompt length, learning rate, precision), sized by the profile with about four validation checks a
    pass; DP tuning keeps the profile's SGD learning rate."""
    import promptport.tune as tu
    from promptport.config import DEFAULT_CONFIG, load_run_config

    st, seen = _recording_stages(monkeypatch, tu, "full")
    z = st.sizes
    spec = {"task": "sst2", "data": "/d"}
    st.tune("S", spec, 2, tmp_path, None)
    st.tune("S", spec, 2, tmp_path, 8.0)
    st.tune("S", spec, 2, tmp_path, None, n_tokens=10)
    run = load_run_config(DEFAULT_CONFIG).tune
    plain, dp, short = seen
    for k in ("n_tokens", "lr", "warmup_steps", "precision"):
        assert getattr(plain, k) == run[k], k
    assert (plain.epochs, plain.seed, plain.max_length) == (z.tune_epochs, 2, z.max_length)
    steps = z.train_limit // z.batch_size
    assert plain.eval_every == -(-steps // paper.CHECKS_PER_EPOCH)
    assert (dp.lr, dp.optimizer, dp.dp.epsilon) == (z.dp_lr, "sgd", 8.0)
    assert dp.n_tokens == run["n_tokens"] and short.n_tokens == 10


def test_the_tune_budget_variants_change_only_the_users_passes_or_examples(monkeypatch, tmp_path):
    """tune_budget's variants reach the tuning stage as its epochs and training-example limit (the
    validation checks follow the larger pass); the recipe and the other sizes stay the profile's."""
    import promptport.tune as tu

    seen: list = []
    monkeypatch.setattr(
        tu, "tune", lambda *a, cfg, train_limit, **k: seen.append((cfg, train_limit))
    )
    st = paper.Stages("T", paper.PROFILES["full"])
    monkeypatch.setattr(st, "model", lambda spec: spec)
    z, spec = st.sizes, {"task": "sst2", "data": "/d"}
    st.tune("S", spec, 0, tmp_path, None)
    st.tune("S", spec, 0, tmp_path, None, epochs=2 * z.tune_epochs)
    st.tune("S", spec, 0, tmp_path, None, train_limit=4 * z.train_limit)
    (tool, n0), (longer, n1), (wider, n2) = seen
    assert (tool.epochs, n0) == (z.tune_epochs, z.train_limit)
    assert (longer.epochs, n1) == (2 * z.tune_epochs, z.train_limit)
    assert (wider.epochs, n2) == (z.tune_epochs, 4 * z.train_limit)
    checks = -(-4 * z.train_limit // z.batch_size // paper.CHECKS_PER_EPOCH)
    assert longer.eval_every == tool.eval_every and wider.eval_every == checks
    assert (wider.lr, wider.n_tokens, wider.max_length) == (tool.lr, tool.n_tokens, tool.max_length)


def test_the_shared_student_is_the_general_one_by_default():
    """benchmarks.paper's student: the general recipe (configs/general-student.yaml, a `promptport
    distill --config` file); a run YAML's distill section is read too."""
    import argparse

    from promptport.config import DEFAULT_CONFIG

    args = argparse.Namespace(student=None, distill_config=str(paper.GENERAL_STUDENT))
    general = paper.student_recipe(args)
    assert general.task_template == "general" and general.layers == 4
    assert "embedded:headlines" in general.task_data
    args.distill_config = str(DEFAULT_CONFIG)
    assert paper.student_recipe(args).task_template == "rt_snippets"


def test_the_larger_general_student_differs_only_in_task_examples():
    """configs/general-student-16k.yaml is the general recipe with more public task examples (the
    cpu-fp32-16k record's student): a drift in any other setting would mix two changes in one
    comparison."""
    import argparse
    import dataclasses

    base = paper.student_recipe(
        argparse.Namespace(student=None, distill_config=str(paper.GENERAL_STUDENT))
    )
    big = paper.student_recipe(
        argparse.Namespace(
            student=None,
            distill_config=str(paper.GENERAL_STUDENT.with_name("general-student-16k.yaml")),
        )
    )
    assert (base.task_examples, big.task_examples) == (6000, 16000)
    assert dataclasses.replace(big, task_examples=base.task_examples) == base


def _made(d: Path) -> Path:
    """A finished prompt artifact (its prompt written), as Grid.artifact leaves one."""
    (d / "prompt").mkdir(parents=True)
    (d / "prompt" / "prompt.json").write_text("{}")
    return d


def test_a_state_keeps_one_transfer_recipe(tmp_path):
    state = tmp_path / "state"
    _made(state / "art" / "sst2" / "post-s0")
    with pytest.raises(SystemExit, match="unrecorded transfer recipe"):
        paper.check_recipe(state, {"alpha": 1.0})
    (state / "art" / "sst2" / "post-s0" / "prompt" / "prompt.json").unlink()
    # a half-made artifact (stopped before its prompt) is made afresh: it holds no recipe
    paper.check_recipe(state, {"alpha": 1.0})
    paper.check_recipe(state, {"alpha": 1.0})  # the same recipe again: fine
    with pytest.raises(SystemExit, match="another transfer recipe"):
        paper.check_recipe(state, {"alpha": 0.5})
    _made(state / "art" / "sst2" / "tune-s0")
    with pytest.raises(SystemExit, match="unrecorded tune recipe"):
        paper.check_recipe(state, {"n_tokens": 50}, "tune")


def test_a_state_keeps_one_dp_recipe_and_older_states_had_the_profiles(tmp_path):
    """DP cells made before dp.json was kept used SGD at the profile's dp_lr: a state (artifacts) or a
    record (cells) holding them takes that recipe and refuses another, which would mix two."""
    z = paper.PROFILES["full"]
    legacy = paper.dp_recipe(z)
    assert legacy == {"optimizer": "sgd", "lr": z.dp_lr}
    state, record = tmp_path / "state", tmp_path / "record"
    _made(state / "art" / "sst2" / "tune-dp8-s0")
    (record / "cells" / "sst2" / "post_dp8").mkdir(parents=True)
    (record / "cells" / "sst2" / "post_dp8" / "seed0.json").write_text("{}")
    new = paper.dp_recipe(z, ["lr=3.0"])
    for d in (state, record):
        with pytest.raises(SystemExit, match="the dp recipe"):
            paper.check_recipe(d, new, "dp", legacy=legacy)
        paper.check_recipe(d, legacy, "dp", legacy=legacy)
        assert json.loads((d / "dp.json").read_text()) == legacy
        with pytest.raises(SystemExit, match="another dp recipe"):
            paper.check_recipe(d, new, "dp", legacy=legacy)
    # a state with no DP artifact takes any recipe; a user prompt's artifacts are not DP ones
    fresh = tmp_path / "fresh"
    _made(fresh / "art" / "sst2" / "tune-s0")
    _made(fresh / "art" / "sst2" / "tune-dp8@adam_lr=0.03-s0")
    (fresh / "art" / "sst2" / "tune-dp8-s1").mkdir(parents=True)  # stopped: no prompt
    paper.check_recipe(fresh, new, "dp", legacy=legacy)
    assert json.loads((fresh / "dp.json").read_text()) == new


def test_dp_set_changes_the_dp_recipe_through_the_config(monkeypatch, tmp_path):
    """--dp-set KEY=VALUE: optimisation fields only, checked by TuneConfig; the DP tuning stage uses
    the recipe over the tune recipe (prompt length, precision kept)."""
    import promptport.tune as tu
    from promptport.errors import BadInput

    z = paper.PROFILES["full"]
    assert paper.dp_recipe(z, ["optimizer=adam", "lr=0.03"]) == {"optimizer": "adam", "lr": 0.03}
    for bad in ("seed=3", "n_tokens=10", "batch_size=8", "lr"):
        with pytest.raises(SystemExit, match="--dp-set"):
            paper.dp_recipe(z, [bad])
    with pytest.raises(BadInput, match="optimizer"):
        paper.dp_recipe(z, ["optimizer=lion"])
    seen: list = []
    monkeypatch.setattr(tu, "tune", lambda *a, cfg, **k: seen.append(cfg))
    st = paper.Stages("T", z, dp={"optimizer": "adam", "lr": 0.03})
    monkeypatch.setattr(st, "model", lambda spec: spec)
    st.tune("S", {"task": "sst2", "data": "/d"}, 0, tmp_path, 8.0)
    st.tune("S", {"task": "sst2", "data": "/d"}, 0, tmp_path, None)
    dp, plain = seen[:2]
    assert (dp.optimizer, dp.lr, dp.dp.epsilon) == ("adam", 0.03, 8.0)
    assert dp.n_tokens == plain.n_tokens and (plain.optimizer, plain.dp) == ("adam", None)
    assert plain.lr == st.tune_recipe["lr"]
    # the DP run's length and expected batch: the profile's unless the recipe sets them
    assert (dp.epochs, dp.grad_accum) == (z.tune_epochs, 4) and plain.grad_accum == 1
    longer = paper.dp_recipe(z, ["epochs=8", "grad_accum=16"])
    with pytest.raises(BadInput, match="grad_accum"):
        paper.dp_recipe(z, ["grad_accum=0"])
    st = paper.Stages("T", z, dp=longer)
    monkeypatch.setattr(st, "model", lambda spec: spec)
    st.tune("S", {"task": "sst2", "data": "/d"}, 0, tmp_path, 8.0)
    st.tune("S", {"task": "sst2", "data": "/d"}, 0, tmp_path, None)
    big, plain = seen[2:]
    assert (big.epochs, big.grad_accum, big.logical_batch) == (8, 16, 16 * z.batch_size)
    # validation four times a pass: a pass is 2000 / 256 = 7 steps here
    assert big.eval_every == 2 and (plain.epochs, plain.grad_accum) == (z.tune_epochs, 1)


def test_targets_from_means():
    tasks = {
        "a": {
            "post": {"mean": 0.8},
            "teacher_zero_shot": {"mean": 0.7},
            "direct": {"mean": 0.6},
            "teacher_tuned": {"mean": 0.9},
            "post_dp8": {"mean": 0.79},
        },
        "b": {"post": {"mean": 0.6}, "teacher_zero_shot": {"mean": 0.7}, "direct": {"mean": 0.5}},
    }
    t = paper.targets(tasks)
    assert t["post_beats_zero_shot_and_direct"]["tasks"] == ["a"]
    assert t["mean_gain_kept"]["value"] == pytest.approx(0.5)
    assert t["mean_gain_kept"]["per_task"] == {"a": pytest.approx(0.5)}  # b: no tuned mean
    assert t["dp8_gap_points"]["value"] == pytest.approx(1.0)
    assert t["distilled_beats_non_distilled"]["of_tasks_with_cells"] == 0


def test_gain_kept_of_each_transfer_and_of_the_held_out_loss_pick():
    """transfer_budget's variants in POST's place, each over its own seeds; the pick takes, per seed,
    among the variants with every seed of the task, the lowest held-out public loss (not accuracy)."""
    zs_tuned = {"teacher_zero_shot": {"mean": 0.5}, "teacher_tuned": {"mean": 0.9}}
    tasks = {"a": dict(zs_tuned), "b": dict(zs_tuned), "c": {"teacher_zero_shot": {"mean": 0.5}}}
    cells = {
        "a": {
            "tool": {"0": {"accuracy": 0.6, "heldout_loss": 0.2}, "1": {"accuracy": 0.7, "heldout_loss": 0.1}},
            "epochs=3": {"0": {"accuracy": 0.8, "heldout_loss": 0.1}, "1": {"accuracy": 0.5, "heldout_loss": 0.3}},
            "lr=0.03": {"0": {"accuracy": 0.9, "heldout_loss": 0.0}},  # one seed: not in the pick
        },
        "b": {"tool": {"0": {"accuracy": 0.7, "heldout_loss": 0.1}},
              "epochs=3": {"0": {"accuracy": 0.9, "heldout_loss": 0.2}},
              # another target (the mean shift dropped): its loss does not compare, never picked
              "epochs=3,shift_mean=drop": {"0": {"accuracy": 0.5, "heldout_loss": 0.01}}},
        "c": {"tool": {"0": {"accuracy": 0.7, "heldout_loss": 0.1}}},  # no tuned mean: no ratio
    }  # fmt: skip
    v = paper.targets(tasks, {"transfer_budget": cells})["mean_gain_kept_by_transfer"]["variants"]
    assert v["tool"]["per_task"] == {"a": pytest.approx(0.375), "b": pytest.approx(0.5)}
    assert v["epochs=3"]["per_task"] == {"a": pytest.approx(0.375), "b": pytest.approx(1.0)}
    assert v["lr=0.03"]["per_task"] == {"a": pytest.approx(1.0)}
    assert v["lr=0.03"]["seeds"] == {"a": ["0"]} and v["tool"]["seeds"]["a"] == ["0", "1"]
    # the pick: a seed 0 epochs=3 (0.8), seed 1 tool (0.7) -> 0.75: 0.625; b tool (0.7): 0.5
    pick = v[paper.HELDOUT_PICK]
    assert pick["per_task"] == {"a": pytest.approx(0.625), "b": pytest.approx(0.5)}
    assert pick["value"] == pytest.approx(0.5625) and pick["post"]["a"] == pytest.approx(0.75)
    assert "mean_gain_kept_by_transfer" not in paper.targets(tasks, {})


def test_dp_gap_of_each_transfer_pairs_the_same_transfers_seeds():
    post = {"a": {"epochs=3": {"0": {"accuracy": 0.80}, "1": {"accuracy": 0.70}}}}
    dp = {
        "a": {"epochs=3": {"0": {"accuracy": 0.77}, "2": {"accuracy": 0.10}}},  # seed 2: no pair
        "b": {"epochs=3": {"0": {"accuracy": 0.5}}},  # no POST cell of that transfer
    }
    abl = {"transfer_budget": post, "transfer_budget_dp": dp}
    by = paper.targets({}, abl)["dp8_gap_points_by_transfer"]["transfers"]
    assert by == {"epochs=3": {"value": pytest.approx(3.0), "per_task": {"a": pytest.approx(3.0)},
                               "seeds": {"a": ["0"]}}}  # fmt: skip
    assert "dp8_gap_points_by_transfer" not in paper.targets({}, {"transfer_budget": post})


def test_dp_gap_compares_the_seeds_both_methods_have():
    # POST has three seeds (mean 0.80), DP one: the gap is that seed's (0.82 - 0.81), not 0.80 - 0.81
    tasks = {
        "a": {
            "post": {"mean": 0.80, "per_seed": {"0": 0.82, "1": 0.76, "2": 0.82}},
            "post_dp8": {"mean": 0.81, "per_seed": {"0": 0.81}},
        },
        "b": {"post": {"mean": 0.7, "per_seed": {"0": 0.7}}, "post_dp8": {"mean": None}},
    }
    gap = paper.targets(tasks)["dp8_gap_points"]
    assert gap["per_task"] == {"a": pytest.approx(1.0)}
    assert gap["value"] == pytest.approx(1.0) and gap["tasks"] == 1
    assert gap["seeds_per_task"] == {"a": 1}


def test_dp_gap_of_each_dp_recipe_is_paired_with_posts_seeds():
    """The dp_recipe ablation's recipes get the DP gap the table's own has, each over its own cells."""
    tasks = {
        "a": {"post": {"mean": 0.8, "per_seed": {"0": 0.82, "1": 0.78}}},
        "b": {"post": {"mean": 0.7, "per_seed": {"0": 0.70}}},
    }
    cells = {
        "a": {
            "sgd": {"0": {"accuracy": 0.80}, "1": {"accuracy": 0.74}},
            "big": {"1": {"accuracy": 0.79}},
        },
        "b": {"sgd": {"0": {"accuracy": 0.71}}},
    }
    by = paper.targets(tasks, {"dp_recipe": cells})["dp8_gap_points_by_dp_recipe"]["recipes"]
    # sgd: a (2 + 4) / 2 = 3, b -1: mean 1; big: a's seed 1 only, -1
    assert by["sgd"]["per_task"] == {"a": pytest.approx(3.0), "b": pytest.approx(-1.0)}
    assert by["sgd"]["value"] == pytest.approx(1.0) and by["sgd"]["seeds"] == {
        "a": ["0", "1"],
        "b": ["0"],
    }
    assert by["big"] == {
        "value": pytest.approx(-1.0),
        "per_task": {"a": pytest.approx(-1.0)},
        "seeds": {"a": ["1"]},
    }
    assert "dp8_gap_points_by_dp_recipe" not in paper.targets(tasks)


def test_distilled_target_compares_the_seeds_both_variants_have():
    def cell(x):
        return {"accuracy": x}

    nd = {
        "a": {"distilled": {"0": cell(0.8)}, "non_distilled": {"0": cell(0.7)}},
        # seed 1 of the distilled student has no non-distilled partner: left out of the mean
        "b": {"distilled": {"0": cell(0.6), "1": cell(0.9)}, "non_distilled": {"0": cell(0.65)}},
        "c": {"distilled": {"0": cell(0.5)}},  # no partner at all: not counted
    }
    t = paper.targets({}, {"non_distilled": nd})["distilled_beats_non_distilled"]
    assert t["tasks"] == ["a"]
    assert t["of_tasks_with_cells"] == 2
    assert t["margin_points"] == {"a": pytest.approx(10.0), "b": pytest.approx(-5.0)}


def test_real_stages_on_tiny_models(tmp_path, tiny_model_dir, sst_like_dir):
    """The real stage functions (tune, DP tune, transfer, evaluate, non-distilled student) through the
    grid on tiny models: every method and two ablations produce a cell with an accuracy."""
    from promptport.distill import extract_student, save_student, select_layers, set_trainable
    from promptport.models import load_model
    from promptport.student import teacher_reference

    (sst_like_dir / "test.tsv").write_text(
        "sentence\tlabel\n" + "the jokes land\t1\nbad acting\t0\n" * 4
    )
    public = tmp_path / "public.jsonl"
    public.write_text(
        "".join(json.dumps({"text": f"news item {i} on markets"}) + "\n" for i in range(40))
    )
    teacher = load_model(str(tiny_model_dir))
    layers = select_layers(4, 2, "first-last")
    s = extract_student(teacher.model, layers)
    student = save_student(
        tmp_path / "student", s, teacher.tokenizer, set_trainable(s),
        {"teacher": teacher_reference(str(tiny_model_dir), teacher.info), "layers": layers},
    )  # fmt: skip
    sizes = paper.Sizes(
        train_limit=8, val_limit=4, eval_limit=8, n_public=20, tune_epochs=1, transfer_epochs=1,
        dp_lr=0.3, max_length=32, batch_size=4,
    )  # fmt: skip
    specs = {"sst2": {"task": "sst2", "data": str(sst_like_dir), "public": str(public)}}
    grid = paper.Grid(
        tmp_path / "state",
        paper.Stages(str(tiny_model_dir), sizes, tune={"n_tokens": 3, "lr": 0.05}),
        str(student), specs,
        log=lambda *_: None,
    )  # fmt: skip
    for m in paper.METHODS:
        r = grid.run_cell("sst2", m, 0)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 8
    grid.run_ablation("non_distilled", "sst2", 0)
    grid.run_ablation("alpha", "sst2", 0)
    tables = paper.collect(tmp_path / "state")
    assert set(tables["tasks"]["sst2"]) == set(paper.METHODS)
    assert set(tables["ablations"]) == {"non_distilled", "alpha"}
    # the class scores the analyses read are the ones the cells are scored from
    logits, labels = grid.stages.class_logits(str(tiny_model_dir), None, specs["sst2"])
    acc = float((logits.argmax(-1) == labels).float().mean())
    zs = grid.stages.evaluate(str(tiny_model_dir), None, specs["sst2"])
    assert logits.shape == (8, 2) and acc == pytest.approx(zs["accuracy"])
    ident = paper.student_identity(str(student))
    assert ident["layers"] == layers and len(ident["sha256"]) == 16


def test_a_state_holds_cells_of_one_student(tmp_path):
    """A second student on the same state is refused (its cells would mix with the first one's in one
    table), and the JSON names the student the table was made with."""
    a = {"path": "/s/a", "sha256": "aaaa", "layers": [0, 1, 28, 29], "distilled": True}
    paper.check_student(tmp_path, a)
    paper.check_student(tmp_path, dict(a, path="/moved/a"))  # same weights elsewhere: same student
    with pytest.raises(SystemExit, match="another student"):
        paper.check_student(tmp_path, dict(a, sha256="bbbb"))
    out = paper.write_outputs(
        tmp_path, "quick", paper.PROFILES["quick"], "cmd",
        results=tmp_path, readme=tmp_path / "README.md",
    )  # fmt: skip
    assert out["student"]["sha256"] == "aaaa"
    assert "4 layers [0, 1, 28, 29], distilled" in (tmp_path / "README.md").read_text()


def test_a_record_holds_cells_of_one_device_and_a_named_table_has_its_own_files(tmp_path):
    """GPU and CPU numerics differ, so a record is one device's; a record from before device.json
    holds CPU cells. A named table (`--name`) writes its own JSON and README block."""
    old = tmp_path / "old"
    (old / "cells" / "sst2" / "post").mkdir(parents=True)
    (old / "cells" / "sst2" / "post" / "seed0.json").write_text('{"accuracy": 0.5}')
    with pytest.raises(SystemExit, match="computed on cpu"):
        paper.check_device(old, "cuda")
    paper.check_device(old, "cpu")
    gpu = tmp_path / "gpu"
    paper.check_device(gpu, "cuda:0")
    paper.check_device(gpu, "cuda")
    with pytest.raises(SystemExit, match="computed on cuda"):
        paper.check_device(gpu, "cpu")
    readme = tmp_path / "README.md"
    for name in ("", "h200"):
        out = paper.write_outputs(
            gpu if name else old, "quick", paper.PROFILES["quick"], "cmd", results=tmp_path,
            readme=readme, name=name,
        )  # fmt: skip
        assert out["device"] == ("cuda" if name else "cpu")
    assert (tmp_path / "paper_tables.json").is_file()
    assert (tmp_path / "paper_tables_h200.json").is_file()
    text = readme.read_text()
    assert text.count(paper.BEGIN) == 1 and text.count("<!-- PAPER-TABLE-H200:BEGIN -->") == 1


def test_a_fresh_sitting_carries_on_from_the_committed_record(tmp_path):
    """Cells live in the record (committed), prompts in the state (scratch): a later sitting with an
    empty state and the same record recomputes nothing that was measured, and a record refuses a
    student whose weights differ even when the state is new."""
    record = tmp_path / "record"
    first = FakeStages()
    grid = paper.Grid(tmp_path / "sitting1", first, "S", SPECS, log=lambda *_: None, record=record)
    run_all(grid, seeds=(0,))
    assert first.calls and not (tmp_path / "sitting1" / "cells").exists()
    assert (record / "cells" / "sst2" / "post" / "seed0.json").is_file()
    assert (tmp_path / "sitting1" / "art" / "sst2" / "tune-s0").is_dir()

    later = FakeStages()
    grid = paper.Grid(tmp_path / "sitting2", later, "S", SPECS, log=lambda *_: None, record=record)
    run_all(grid, seeds=(0, 1))
    # only seed 1 is new work; seed 0's cells are read, their prompts not remade
    assert later.calls and all(":0:" not in c[1] for c in later.calls if c[0] == "tune")
    tables = paper.collect(record)
    assert set(tables["tasks"]["sst2"]["post"]["per_seed"]) == {"0", "1"}

    ident = {"path": "/s", "sha256": "aaaa", "layers": [0, 1], "distilled": True}
    with pytest.raises(SystemExit, match="unrecorded student"):
        paper.check_student(record, ident)  # cells present, no student.json: whose were they?
    paper.check_student(tmp_path / "fresh-record", ident)
    paper.check_student(tmp_path / "fresh-state", dict(ident, sha256="bbbb"))
    with pytest.raises(SystemExit, match="another student"):
        paper.check_student(tmp_path / "fresh-record", dict(ident, sha256="bbbb"))


def test_transfer_set_changes_the_recipe_through_the_config():
    """--transfer-set KEY=VALUE: recipe fields only (values read as YAML), checked by TransferConfig;
    the profile's sizes and unknown fields are refused."""
    from promptport.errors import BadInput

    assert paper.recipe_changes(["n_tokens=auto", "lr=0.02"]) == {"n_tokens": "auto", "lr": 0.02}
    assert paper.recipe_changes(["n_tokens=50,10,1"]) == {"n_tokens": "50,10,1"}
    for bad in ("epochs=3", "nope=1", "n_tokens"):
        with pytest.raises(SystemExit):
            paper.recipe_changes([bad])
    with pytest.raises(BadInput, match="n_tokens"):
        paper.recipe_changes(["n_tokens=0"])


def _public_folder(tmp_path, train_limit: int, n_public: int):
    """An empty task data folder and the tiny sizes the public-data tests use."""
    data = tmp_path / "data"
    data.mkdir()
    sizes = paper.Sizes(
        train_limit=train_limit, val_limit=1, eval_limit=1, n_public=n_public, tune_epochs=1,
        transfer_epochs=1, dp_lr=0.3,
    )  # fmt: skip
    return data, sizes


def _write_texts(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t, "label": "positive"}) + "\n" for t in texts))


def test_same_task_public_data_is_the_tasks_text_the_user_never_holds(tmp_path):
    """`same_task` public data: training texts past the user's `train_limit`, labels dropped, and no
    text the user trains on or that validation or test holds (a duplicate of one is removed)."""
    data, sizes = _public_folder(tmp_path, train_limit=4, n_public=3)

    def write(split, texts):
        _write_texts(data / f"{split}.jsonl", texts)

    users = ["u0", "u1", "u2", "u3"]
    write("train", users + ["p0", "U1 ", "p1", "v0", "p2", "t0", "p0", "p3"])
    write("validation", ["v0", "v1"])
    write("test", ["t0", "t1"])
    spec = {"task": "sst2", "data": str(data), "public": "/p"}
    path = paper.same_task_public(spec, sizes)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert rows == [{"text": t} for t in ("p0", "p1", "p2", "p3")]  # in order, once, no labels
    assert paper.same_task_public(spec, sizes) == path  # written once
    with pytest.raises(SystemExit, match="n_public=5"):
        paper.same_task_public(
            spec, paper.Sizes(**{**vars(sizes), "train_limit": 6, "n_public": 5})
        )


def test_length_matched_public_data_recuts_the_same_texts_to_the_users_length(tmp_path):
    """`length_matched`: the table's public texts in sentences packed to the median length of the
    user's training texts; long documents become short pieces and one-liners paragraphs, nothing is
    made up and no piece equal to a private text survives."""
    data, sizes = _public_folder(tmp_path, train_limit=3, n_public=2)

    def write(name, texts):
        _write_texts(data / name, texts)

    write("train.jsonl", ["a" * 10, "b" * 12, "c" * 14, "x" * 500])  # median of the first 3: 12
    write("validation.jsonl", ["Llll mmmm nn."])
    write("test.jsonl", ["t"])
    long = "Aaaa bbbb cc. Dddd eeee ff! Gg hh. Iiii jjjj kk? Llll mmmm nn."
    write("public.jsonl", [long, "Oooo pppp qq. Rr."])
    spec = {"task": "sst2", "data": str(data), "public": str(data / "public.jsonl")}

    def pieces(path):
        return [json.loads(line)["text"] for line in Path(path).read_text().splitlines()]

    path = paper.length_matched_public(spec, sizes)
    assert pieces(path) == [
        "Aaaa bbbb cc.",
        "Dddd eeee ff!",
        "Gg hh. Iiii jjjj kk?",
        "Oooo pppp qq.",
    ]
    assert paper.length_matched_public(spec, sizes) == path  # written once
    with pytest.raises(SystemExit, match="n_public=5"):  # max_length caps the length: 4 x 2
        paper.length_matched_public(
            spec, paper.Sizes(**{**vars(sizes), "n_public": 5, "max_length": 2})
        )
    # one-liners joined up to a longer user text (the table's IMDB case)
    write("train.jsonl", ["a" * 30] * 3)
    write(
        "public.jsonl",
        ["Short one.", "Short two.", "Short three.", "Four is longer than that.", "Five."],
    )
    assert pieces(paper.length_matched_public(spec, sizes)) == [
        "Short one. Short two. Short three.",
        "Four is longer than that. Five.",
    ]


def test_variants_make_only_the_ablation_cells_asked_for(tmp_path, monkeypatch):
    """`--variants same_task`: one new cell of an ablation without the others' transfers; a later run
    without the filter makes the rest, and method cells are never filtered."""
    monkeypatch.setattr(paper.tasks, "same_task_public", lambda spec, sizes: "/p/own")
    monkeypatch.setattr(paper.tasks, "length_matched_public", lambda spec, sizes: "/p/recut")
    state, stages = tmp_path / "state", FakeStages()
    grid = paper.Grid(state, stages, "S", SPECS, log=lambda *_: None, variants=("same_task",))
    grid.run_ablation("public_data", "sst2", 0)
    grid.run_cell("sst2", "teacher_zero_shot", 0)
    made = {p.parent.name for p in (state / "cells" / "ablations").rglob("*.json")}
    assert made == {"same_task"}
    # every variant met is known, made or not: a misspelt --variants name is reported
    assert grid.seen_variants == {
        "same_task", "same_domain", "length_matched", "cross_domain", "generated"
    }  # fmt: skip
    assert [c[1] for c in stages.calls if c[0] == "transfer"] == [
        "transfer:tune-s0:S:{'public': '/p/own'}"
    ]
    assert (state / "cells" / "sst2" / "teacher_zero_shot" / "seed0.json").is_file()
    paper.Grid(state, FakeStages(), "S", SPECS, log=lambda *_: None).run_ablation(
        "public_data", "sst2", 0
    )
    made = {p.parent.name for p in (state / "cells" / "ablations").rglob("*.json")}
    assert made == {"same_task", "same_domain", "length_matched", "cross_domain", "generated"}


def test_variants_skip_the_set_up_of_cells_not_asked_for(tmp_path):
    """`--variants distilled` makes the distilled cell without cutting the non-distilled student
    (the cut is the set-up of the other variant only); asking for it later cuts it."""
    state, stages = tmp_path / "state", FakeStages()
    cut: list[str] = []
    stages.non_distilled = lambda student, out: (
        cut.append(str(out)) or FakeStages.non_distilled(stages, student, out)
    )
    grid = paper.Grid(state, stages, "S", SPECS, log=lambda *_: None, variants=("distilled",))
    grid.run_ablation("non_distilled", "sst2", 0)
    made = {p.parent.name for p in (state / "cells" / "ablations").rglob("*.json")}
    assert made == {"distilled"} and cut == []
    grid = paper.Grid(state, stages, "S", SPECS, log=lambda *_: None, variants=("non_distilled",))
    grid.run_ablation("non_distilled", "sst2", 0)
    made = {p.parent.name for p in (state / "cells" / "ablations").rglob("*.json")}
    assert made == {"distilled", "non_distilled"} and len(cut) == 1


def test_gain_kept_against_another_records_teacher_tuning(tmp_path):
    """A record without teacher_tuned cells measures its gain kept against another record's (same
    sizes, checked), named in the result; its own mean_gain_kept stays unmeasured."""
    sizes = paper.PROFILES["quick"]
    ref_file = tmp_path / "paper_tables_ref.json"
    ref = {
        "sizes": vars(sizes), "device": "cuda", "record_dir": "r",
        "tasks": {
            "sst2": {"teacher_tuned": {"mean": 0.9, "std": 0.0, "per_seed": {"0": 0.9}}},
            "imdb": {"teacher_tuned": {"mean": 0.8, "std": 0.0, "per_seed": {"0": 0.8}}},
            "mpqa": {"post": {"mean": 0.7}},
        },
    }  # fmt: skip
    ref_file.write_text(json.dumps(ref))
    kept = paper.tuned_reference(ref_file, sizes)
    assert set(kept["teacher_tuned"]) == {"sst2", "imdb"} and kept["device"] == "cuda"

    def cells(post, zs):
        return {"post": {"mean": post}, "teacher_zero_shot": {"mean": zs}}

    # sst2 keeps half of the 0.2 tuning gains; imdb loses: -0.05 / 0.1 = -0.5; mpqa has no reference
    tasks = {"sst2": cells(0.8, 0.7), "imdb": cells(0.65, 0.7), "mpqa": cells(0.9, 0.5)}
    out = paper.targets(tasks, None, kept)
    assert out["mean_gain_kept"]["value"] is None
    vs = out["mean_gain_kept_vs_reference"]
    assert vs["per_task"] == {"sst2": 0.5, "imdb": -0.5} and vs["value"] == 0.0
    assert str(ref_file) in vs["assumes"] and "not checked" in vs["assumes"]
    assert "mean_gain_kept_vs_reference" not in paper.targets(tasks)
    # a reference tuned with another recipe is refused; with the same one the assumption names it
    recipe = {"n_tokens": 50, "lr": 0.1, "warmup_steps": 25, "precision": "auto"}
    ref_file.write_text(json.dumps({**ref, "tune_recipe": {**recipe, "warmup_steps": 0}}))
    with pytest.raises(SystemExit, match="tune recipe"):
        paper.tuned_reference(ref_file, sizes, recipe)
    ref_file.write_text(json.dumps({**ref, "tune_recipe": recipe}))
    same = paper.targets(tasks, None, paper.tuned_reference(ref_file, sizes, recipe))
    assert "tune recipe" in same["mean_gain_kept_vs_reference"]["assumes"]
    other = paper.Sizes(**{**vars(sizes), "n_public": sizes.n_public + 1})
    with pytest.raises(SystemExit, match="sizes.n_public"):
        paper.tuned_reference(ref_file, other)
    ref["tasks"] = {"mpqa": {"post": {"mean": 0.7}}}
    ref_file.write_text(json.dumps(ref))
    with pytest.raises(SystemExit, match="no teacher_tuned"):
        paper.tuned_reference(ref_file, sizes)


def test_seed_free_cells_are_made_once_whatever_the_first_seed(tmp_path):
    """A sitting that starts at seed 1 (its own state folder) reuses the zero-shot cells seed 0 made:
    no seed enters them, so a second cell would be a duplicate counted as another seed."""
    state = tmp_path / "state"
    paper.Grid(state, FakeStages(), "S", SPECS, log=lambda *_: None).run_cell(
        "sst2", "teacher_zero_shot", 0
    )
    stages = FakeStages()
    grid = paper.Grid(state, stages, "S", SPECS, log=lambda *_: None)
    for m in paper.SEED_FREE:
        grid.run_cell("sst2", m, 1)
    assert not (state / "cells" / "sst2" / "teacher_zero_shot" / "seed1.json").is_file()
    assert (state / "cells" / "sst2" / "student_zero_shot" / "seed1.json").is_file()
    assert [c for c in stages.calls if c[0] == "evaluate"] == [("evaluate", "S", None)]


def test_ablation_tables_in_the_readme_read_each_variant_against_the_same_seeds_post():
    """The README's ablation table: a variant's mean ± std (seeds) beside the teacher's zero-shot and
    the table's POST over the seeds the ablation has (seed 2's POST is left out when no variant has
    seed 2), with – where a task has no cell of a variant."""
    tables = {
        "tasks": {
            "sst2": {
                "teacher_zero_shot": {"per_seed": {"0": 0.8}},
                "post": {"per_seed": {"0": 0.7, "1": 0.9, "2": 0.1}},
            },
            "imdb": {"teacher_zero_shot": {"per_seed": {"0": 0.6}}},
        },
        "ablations": {
            "public_data": {
                "sst2": {"same_task": {"0": {"accuracy": 0.84}, "1": {"accuracy": 0.86}}},
                "imdb": {"generated": {"0": {"accuracy": 0.5}}},
            }
        },
    }
    md = paper.ablations_markdown(tables)
    assert "| public_data | sst2 | imdb |" in md
    assert "| teacher_zero_shot | 0.800 (1) | 0.600 (1) |" in md
    assert "| post (the table's, same seeds) | 0.800 ± 0.141 (2) | – |" in md
    assert "| same_task | 0.850 ± 0.014 (2) | – |" in md
    assert "| generated | – | 0.500 (1) |" in md
    assert paper.ablations_markdown({"tasks": {}}) == ""
    # `tool` is the cells' name for the table's transfer: said where that is not the tool's default
    tables["ablations"]["public_data"]["sst2"]["tool"] = {"0": {"accuracy": 0.7}}
    assert "| tool | 0.700 (1) | – |" in paper.ablations_markdown(tables)
    tables["transfer_recipe"] = {"lr": 0.01, "table_transfer": "epochs=3,select=public"}
    md = paper.ablations_markdown(tables)
    assert "| tool (here the table's POST: epochs=3,select=public) | 0.700 (1) | – |" in md
    assert "| tool |" not in md


def test_the_tables_own_transfers_can_use_length_matched_public_data(monkeypatch, tmp_path):
    """`--table-public length_matched`: the table's POST transfers over the task's public texts re-cut
    to the user's length (the `length_matched` file), while an ablation that names its own public
    data keeps it; the default stays the texts as given, and an unknown choice is refused."""
    import promptport.transfer as tr

    data, sizes = _public_folder(tmp_path, train_limit=2, n_public=1)
    _write_texts(data / "train.jsonl", ["a" * 12, "b" * 12])
    _write_texts(data / "validation.jsonl", ["v"])
    _write_texts(data / "test.jsonl", ["t"])
    _write_texts(data / "public.jsonl", ["Aaaa bbbb cc. Dddd eeee ff! Gg hh."])
    spec = {"task": "sst2", "data": str(data), "public": str(data / "public.jsonl")}
    seen: list = []
    monkeypatch.setattr(tr, "transfer", lambda *a, public_data, **k: seen.append(public_data))
    for public in ("given", "length_matched", "phrases"):
        st = paper.Stages("T", sizes, public=public)
        monkeypatch.setattr(st, "model", lambda spec: spec)
        st.transfer("P", "S", spec, 0, tmp_path / public)
        st.transfer("P", "S", spec, 0, tmp_path / public, public="/own")
    given, given_own, matched, matched_own, phrases, phrases_own = seen
    assert given == spec["public"] and given_own == matched_own == phrases_own == "/own"
    assert matched == paper.length_matched_public(spec, sizes) != spec["public"]
    pieces = [json.loads(x)["text"] for x in Path(matched).read_text().splitlines()]
    assert pieces[:2] == ["Aaaa bbbb cc.", "Dddd eeee ff!"]
    # `phrases`: the same re-cut public texts cut into phrases (the tool's --public-cut phrases)
    assert phrases == paper.length_matched_public(spec, sizes, cut="phrases") != matched
    with pytest.raises(SystemExit, match="length_matched"):
        paper.Stages("T", sizes, public="recut")
    with pytest.raises(SystemExit, match="table transfer"):
        paper.Stages("T", sizes, table_transfer="epochs=3")


def test_the_tables_selected_transfer_moves_post_dp_and_the_non_distilled_prompt(
    tmp_path, monkeypatch
):
    """`--table-transfer epochs=3,select=public`: the table's POST, POST with DP and the
    non-distilled student's transfer all run three times the profile's passes and keep the step
    chosen on the labelled public set of the task's kind -- the same transfer call as the depth
    ablation's selected cell (what importing its cells rests on); a task with no labelled set keeps
    the lowest held-out loss; the distilled cell of non_distilled is the table's POST cell."""
    import benchmarks.public_label_pick as plp

    monkeypatch.setattr(plp, "labelled_public", lambda task, *a: {"data": f"/sel/{task}"})
    specs = {**SPECS, "arisetv": {"task": "arisetv", "data": "/d/a", "public": "/p/a"}}
    stages = FakeStages()
    stages.table_transfer = "epochs=3,select=public"
    grid = paper.Grid(tmp_path, stages, "S", specs, log=lambda *_: None)
    for task in specs:
        for method in ("post", "post_dp8"):
            grid.run_cell(task, method, 0)
        grid.run_ablation("non_distilled", task, 0)
    transfers = [c[1] for c in stages.calls if c[0] == "transfer"]
    sel = "{'epochs': 3, 'select_data': '/sel/sst2/test.jsonl', 'n_select': 600}"
    nd = str(tmp_path / "non-distilled-student")
    assert f"transfer:tune-s0:S:{sel}" in transfers
    assert f"transfer:tune-dp8-s0:S:{sel}" in transfers
    assert f"transfer:tune-nd-s0:{nd}:{sel}" in transfers
    assert "transfer:tune-s0:S:{'epochs': 3}" in transfers  # arisetv: no labelled set
    assert len(transfers) == 9  # three a task: the distilled cell made no transfer of its own
    nd_cells = tmp_path / "cells/ablations/non_distilled/sst2"
    post = read_json(tmp_path / "cells/sst2/post/seed0.json")
    assert read_json(nd_cells / "distilled/seed0.json")["accuracy"] == post["accuracy"]
    assert post["select"]["n"] == 600 and "heldout_loss" in post  # the cell says what it kept
    assert read_json(nd_cells / "non_distilled/seed0.json")["select"]["n"] == 600
    # a DP recipe's prompt moves by the same transfer as post_dp8's (its cell says what it kept)
    v = "sgd_lr=10,epochs=8,grad_accum=16"
    paper.Grid(
        tmp_path, stages, "S", specs, log=lambda *_: None, variants=(v,)
    ).run_ablation("dp_recipe", "sst2", 0)  # fmt: skip
    moved = [c[1] for c in stages.calls if c[0] == "transfer"][9:]
    assert moved == [f"transfer:tune-dp8@{v}-s0:S:{sel}"]
    dp_cell = read_json(tmp_path / "cells/ablations/dp_recipe/sst2" / v / "seed0.json")
    assert dp_cell["select"]["n"] == 600 and "user_val_accuracy" in dp_cell
    # the depth ablation's selected transfer from the same student and prompt is the same call
    depth = paper.Grid(
        tmp_path / "d", FakeStages(), "X", specs, log=lambda *_: None,
        depth_student=lambda k: "S", depths=(8,),
    )  # fmt: skip
    depth.selected_transfer("sst2", 0, "post-L8-ep3x", epochs=3, student="S", user_tag="tune")
    assert depth.stages.calls[-2][1] == f"transfer:tune-s0:S:{sel}"
    # the tool's table transfer is unchanged: one pass, no selection
    tool = FakeStages()
    paper.Grid(tmp_path / "t", tool, "S", specs, log=lambda *_: None).run_cell("sst2", "post", 0)
    assert [c[1] for c in tool.calls if c[0] == "transfer"] == ["transfer:tune-s0:S:{}"]
    # the ablations that change one setting (of the transfer or of the user's tuning) move their
    # variants by the table's transfer with that setting changed, as their `tool` row (the table's
    # POST) was moved; the tool's own record keeps its one-pass transfer for them
    for record, st in ((tmp_path / "abl", FakeStages()), (tmp_path / "abl-tool", FakeStages())):
        st.table_transfer = "epochs=3,select=public" if record.name == "abl" else "tool"
        g = paper.Grid(record, st, "S", specs, log=lambda *_: None)
        for name in ("alpha", "shift_base", "prompt_length", "calibrate", "teacher_tokens"):
            g.run_ablation(name, "sst2", 0)
        moved = [c[1] for c in st.calls if c[0] == "transfer"]
        assert len(moved) >= 8 and any("'n_tokens': 'auto'" in c for c in moved)
        assert any(c.startswith("transfer:tune-n") for c in moved)  # a tuning variant's prompt
        assert any("'alpha'" in c for c in moved) and any("'shift_base'" in c for c in moved)
        want = sel[1:-1] if st.table_transfer != "tool" else None
        for call in moved:
            assert (want in call) if want else ("epochs" not in call and "select" not in call), call


def test_import_depth_cells_fills_the_table_of_the_same_student(tmp_path):
    """A record whose student is another record's depth-ablation student takes that record's cells
    for its table -- the POST cell of the variant its transfer recipe is -- marked imported_from,
    only where student, sizes, device and recipes are the same."""
    sizes = paper.PROFILES["quick"]
    src, rec = tmp_path / "probe", tmp_path / "l8"
    base = {"method": "post", "alpha": 1.0}
    for d in (src, rec):
        d.mkdir()
        (d / "device.json").write_text(json.dumps({"device": "cpu", "precision": "bf16"}))
    for name, data in (("sizes", vars(sizes)), ("tune", {"lr": 0.1}),
                       ("transfer", {**base, "public": "length_matched"})):  # fmt: skip
        (src / f"{name}.json").write_text(json.dumps(data))
    sel = "layers=8,epochs=3,select=public,public_cut=phrases"
    acc = {"layers=8": 0.1, "layers=8,direct": 0.2, "layers=8,public_cut=phrases": 0.3, sel: 0.4}

    def cell(task, variant, seed, sha="abc"):
        f = src / "cells/ablations/depth" / task / variant / f"seed{seed}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        extra = {"student_zero_shot": 0.05, "student_prompt": 0.15} if variant == "layers=8" else {}
        f.write_text(json.dumps({"accuracy": acc[variant] + seed / 100, "student": {"sha256": sha},
                                 **extra}))  # fmt: skip

    for seed in (0, 1):
        for v in acc:
            cell("sst2", v, seed)
    zs = src / "cells/sst2/teacher_zero_shot/seed0.json"
    zs.parent.mkdir(parents=True)
    zs.write_text(json.dumps({"accuracy": 0.6}))

    St = SimpleNamespace(  # the stages' recipes, as main sets them
        recipe=base, public="phrases", table_transfer="epochs=3,select=public",
        tune_recipe={"lr": 0.1}, sizes=sizes,
    )  # fmt: skip
    ident = {"sha256": "abc", "layers": list(range(8))}
    own = rec / "cells/sst2/direct/seed1.json"
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps({"accuracy": 0.99}))  # a cell the record has stays its own
    made = paper.import_depth_cells(rec, src, St, ident, log=lambda *_: None)
    assert len(made) == 1 + 1 + 2 * 3 - 1  # student zero-shot is seed-free: one cell
    table = paper.collect(rec)["tasks"]["sst2"]
    assert table["post"]["per_seed"] == {"0": 0.4, "1": 0.41}
    assert table["direct"]["per_seed"] == {"0": 0.2, "1": 0.99}
    assert table["student_prompt"]["mean"] == 0.15 and table["teacher_zero_shot"]["mean"] == 0.6
    assert table["student_zero_shot"]["per_seed"] == {"0": 0.05}
    assert read_json(rec / "cells/sst2/post/seed0.json")["imported_from"].endswith(
        f"{sel}/seed0.json"
    )
    assert paper.import_depth_cells(rec, src, St, ident, log=lambda *_: None) == []
    # the sentence cut's one-pass transfer is another variant: another POST
    St.public, St.table_transfer = "length_matched", "tool"
    assert paper.depth_variant(paper.table_recipe(St), 8, 1) == "layers=8"
    St.public = "phrases"
    assert paper.depth_variant(paper.table_recipe(St), 8, 1) == "layers=8,public_cut=phrases"
    # refused: another student's cell, another tuning recipe, another transfer recipe
    cell("sst2", "layers=8,direct", 2, sha="zzz")
    cell("sst2", "layers=8", 2)
    with pytest.raises(SystemExit, match="another student"):
        paper.import_depth_cells(rec, src, St, ident, log=lambda *_: None)
    St.tune_recipe = {"lr": 0.3}
    with pytest.raises(SystemExit, match="tune recipe"):
        paper.import_depth_cells(rec, src, St, ident, log=lambda *_: None)
    St.tune_recipe, St.recipe = {"lr": 0.1}, {**base, "alpha": 0.5}
    with pytest.raises(SystemExit, match="transfer recipe"):
        paper.import_depth_cells(rec, src, St, ident, log=lambda *_: None)


def test_a_cpu_record_holds_cells_of_one_arithmetic(monkeypatch, tmp_path):
    """`precision: auto` is bf16 on an AVX512-BF16/AMX CPU and fp32 on an AVX2-only one: the same
    recipe and seed compute other numbers, so a record made in one refuses the other; a record from
    before the arithmetic was kept takes the machine's, and the table names it."""
    import promptport.runtime as rt

    flags: set = {"avx512_bf16"}
    monkeypatch.setattr(rt, "cpu_flags", lambda: flags)
    rec = tmp_path / "rec"
    (rec / "cells" / "sst2" / "post").mkdir(parents=True)
    (rec / "cells" / "sst2" / "post" / "seed0.json").write_text('{"accuracy": 0.5}')
    (rec / "device.json").write_text('{"device": "cpu"}')  # kept before the arithmetic was
    paper.check_device(rec, "cpu")
    assert json.loads((rec / "device.json").read_text()) == {"device": "cpu", "precision": "bf16"}
    flags.clear()  # the same record on an AVX2-only machine
    with pytest.raises(SystemExit, match="computed in bf16.*computes in fp32"):
        paper.check_device(rec, "cpu")
    flags.add("amx_bf16")
    paper.check_device(rec, "cpu")
    out = paper.write_outputs(
        rec, "quick", paper.PROFILES["quick"], "cmd", results=tmp_path,
        readme=tmp_path / "README.md", name="x",
    )  # fmt: skip
    assert (
        out["precision"] == "bf16" and "Device: cpu (bf16)." in (tmp_path / "README.md").read_text()
    )


def test_adopt_dp_recipe_swaps_the_tables_cells_and_artifacts_with_a_variants(tmp_path):
    """--adopt-dp-recipe: a variant's cells become post_dp8's, the old recipe's its variant; seeds the
    variant lacks are left for the table's next run; dp.json names the new recipe in state and record."""
    state, record = tmp_path / "state", tmp_path / "record"
    old, new = {"optimizer": "sgd", "lr": 10.0}, paper.DP_VARIANTS[-2]
    name, was = paper.dp_variant_name(new), paper.dp_variant_name(old)
    art, abl = state / "art" / "sst2", record / "cells" / "ablations" / "dp_recipe" / "sst2"
    for d in (state, record):
        d.mkdir(parents=True, exist_ok=True)
        (d / "dp.json").write_text(json.dumps(old))

    def made(kind: str, seed: int, val: float) -> None:
        d = _made(art / f"{kind}-s{seed}")
        (d / "metrics.json").write_text(json.dumps({"best": {"val_accuracy": val}}))

    for s in (0, 1, 2):
        made("tune-dp8", s, 0.7)
        made("post-dp8", s, 0.0)
        cell = record / "cells" / "sst2" / "post_dp8" / f"seed{s}.json"
        cell.parent.mkdir(parents=True, exist_ok=True)
        cell.write_text(json.dumps({"accuracy": 0.70 + s / 100}))
    for s in (0, 1):
        made(f"tune-dp8@{name}", s, 0.8)
        made(f"post-dp8@{name}", s, 0.0)
        (abl / name).mkdir(parents=True, exist_ok=True)
        (abl / name / f"seed{s}.json").write_text(json.dumps({"accuracy": 0.80 + s / 100}))
    (abl / was).mkdir(parents=True)
    (abl / was / "seed0.json").write_text(json.dumps({"accuracy": 0.70, "user_val_accuracy": 0.7}))

    with pytest.raises(SystemExit, match="not a dp_recipe variant"):
        paper.adopt_dp_recipe(state, record, "sgd_lr=99")
    # a move that would mix two recipes' artifacts is refused before anything moves
    (art / f"post-dp8@{was}-s1").mkdir()
    before = sorted(p.name for p in art.iterdir())
    with pytest.raises(SystemExit, match="nothing moved"):
        paper.adopt_dp_recipe(state, record, name)
    assert sorted(p.name for p in art.iterdir()) == before
    (art / f"post-dp8@{was}-s1").rmdir()
    made("tune-dp8", 3, 0.7)  # an old-recipe artifact with no cell goes with the others
    assert paper.adopt_dp_recipe(state, record, name, log=lambda m: None) == new
    table = record / "cells" / "sst2" / "post_dp8"
    assert sorted(p.name for p in table.iterdir()) == ["seed0.json", "seed1.json"]
    assert json.loads((table / "seed1.json").read_text())["accuracy"] == pytest.approx(0.81)
    # the old recipe's three cells are its variant's, with what the user saw where not already there
    assert sorted(p.name for p in (abl / was).iterdir()) == [
        "seed0.json",
        "seed1.json",
        "seed2.json",
    ]
    kept = json.loads((abl / was / "seed2.json").read_text())
    assert kept["accuracy"] == pytest.approx(0.72) and kept["user_val_accuracy"] == 0.7
    assert sorted(p.name for p in art.iterdir()) == sorted(
        [f"tune-dp8-s{s}" for s in (0, 1)] + [f"post-dp8-s{s}" for s in (0, 1)]
        + [f"{k}@{was}-s{s}" for k in ("tune-dp8", "post-dp8") for s in (0, 1, 2)]
        + [f"tune-dp8@{was}-s3"]
    )  # fmt: skip
    assert (
        json.loads((art / "tune-dp8-s0" / "metrics.json").read_text())["best"]["val_accuracy"]
        == 0.8
    )
    for d in (state, record):
        assert json.loads((d / "dp.json").read_text()) == new
        paper.check_recipe(d, new, "dp", legacy=old)  # the table goes on under the new recipe
    with pytest.raises(SystemExit, match="no other recorded DP recipe"):
        paper.adopt_dp_recipe(state, record, name)


def test_gain_kept_over_the_same_seeds(tmp_path):
    """benchmarks.gain_kept_seeds: each variant's gain kept over exactly the seeds asked for; a
    variant lacking one of them on a task is left out there."""
    from benchmarks.gain_kept_seeds import by_seeds

    tables = {
        "tasks": {
            t: {"teacher_zero_shot": {"mean": 0.5}, "teacher_tuned": {"mean": 0.9}}
            for t in ("a", "b")
        }
    }
    acc = {("a", "x", "0"): 0.7, ("a", "x", "1"): 0.9, ("a", "x", "2"): 0.5,
           ("b", "x", "0"): 0.5, ("b", "x", "1"): 0.7, ("a", "y", "0"): 0.9}  # fmt: skip
    for (t, v, s), a in acc.items():
        f = tmp_path / "cells/ablations/transfer_budget" / t / v / f"seed{s}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"accuracy": a}))
    out = by_seeds(tables, tmp_path, ["0", "1"])
    # x: task a (0.7 + 0.9) / 2 = 0.8 -> 0.75, task b 0.6 -> 0.25; seed 2 of a left out
    assert out["x"]["per_task"] == {"a": 0.75, "b": 0.25} and out["x"]["value"] == 0.5
    assert "y" not in out  # seed 1 missing


def test_depth_students_given_as_folders_are_checked_for_their_depth(monkeypatch, tmp_path):
    import argparse

    import promptport.student as student

    layers = {"a": [0, 1, 2, 3, 26, 27, 28, 29], "b": [0, 29]}
    monkeypatch.setattr(student, "read_student_meta", lambda f: {"layers": layers[f]})
    distilled: list[int] = []
    monkeypatch.setattr(
        paper.students, "shared_student", lambda a, s, log, layers: distilled.append(layers) or "D"
    )

    def args(*given):
        return argparse.Namespace(depth_students=list(given))

    pick = paper.depth_student_of(args("8=a"), tmp_path)
    assert (pick(8), distilled) == ("a", [])  # the given folder, nothing distilled
    assert (pick(2), distilled) == ("D", [2])  # another depth: the shared recipe, distilled
    with pytest.raises(SystemExit, match="2 layers, not 8"):
        paper.depth_student_of(args("8=b"), tmp_path)
    with pytest.raises(SystemExit, match="LAYERS=FOLDER"):
        paper.depth_student_of(args("a"), tmp_path)


def test_gain_kept_by_depth_on_hand_made_cells():
    """Each depth transfer in POST's place: the record's zero-shot, the record's tuned teacher where it
    has one (else the reference's), and the tasks where it beats zero-shot and its depth's direct."""

    def cells(*accs):
        return {str(s): {"accuracy": a} for s, a in enumerate(accs)}

    tasks = {
        "sst2": {"teacher_zero_shot": {"mean": 0.8}},
        "mpqa": {"teacher_zero_shot": {"mean": 0.5}, "teacher_tuned": {"mean": 0.9}},
    }
    ref = {
        "from": "main.json",
        "device": "cpu",
        "teacher_tuned": {"sst2": {"mean": 0.9}, "mpqa": {"mean": 0.7}},
    }
    depth = {
        "sst2": {"layers=8,x": cells(0.85, 0.87), "layers=8,direct": cells(0.7, 0.7)},
        "mpqa": {"layers=8,x": cells(0.7), "layers=8,direct": cells(0.75)},
    }
    out = paper.targets(tasks, {"depth": depth}, ref)["mean_gain_kept_by_depth"]
    x = out["variants"]["layers=8,x"]
    # sst2 (0.86 - 0.8) / (0.9 - 0.8) by the reference; mpqa (0.7 - 0.5) / (0.9 - 0.5), its own
    assert x["per_task"] == {"sst2": pytest.approx(0.6), "mpqa": pytest.approx(0.5)}
    assert x["value"] == pytest.approx(0.55)
    assert x["beats_zero_shot_and_direct"] == ["sst2"]  # mpqa: below its direct transfer
    assert "layers=8,direct" not in out["variants"] and "main.json" in out["assumes"]
    # a direct transfer over other seeds does not compare; no tuned teacher anywhere: no ratio
    depth["sst2"]["layers=8,direct"] = cells(0.7)
    x = paper.targets(tasks, {"depth": depth})["mean_gain_kept_by_depth"]["variants"]["layers=8,x"]
    assert x["beats_zero_shot_and_direct"] == [] and set(x["per_task"]) == {"mpqa"}


def test_every_listed_ablation_has_one_function_that_makes_its_cells():
    """`--ablations` offers exactly the ablations of ablations.RUNNERS, in its order (a name in one
    place only would be an option that fails at run time, or a function no option reaches)."""
    from benchmarks.paper.ablations import RUNNERS
    from benchmarks.paper.cli import parser

    option = next(a for a in parser()._actions if a.dest == "ablations")
    assert tuple(option.choices) == tuple(RUNNERS) == paper.ABLATIONS
    grid = paper.Grid(Path("/nonexistent"), FakeStages(), "S", {}, log=lambda *_: None)
    with pytest.raises(SystemExit, match="unknown ablation nope"):
        grid.run_ablation("nope", "sst2", 0)


def test_records_overview_reads_each_records_own_targets(tmp_path):
    """One row per paper_tables*.json: the student, the transfer, the seeds of POST and the four checks
    as the record's own targets give them (own gain kept, else the reference's, named); a file of
    another benchmark is skipped; the README block is rewritten between its markers only."""
    from benchmarks.paper.tables import RECORDS, records_overview, write_records_overview

    def tables(layers, post_seeds, goals, **more):
        tasks = {t: {"post": {"per_seed": {str(s): 0.5 for s in range(n)}}} for t, n in post_seeds}
        return {"benchmark": "paper", "student": {"layers": list(range(layers)), "distilled": True},
                "tasks": tasks, "targets": goals, **more}  # fmt: skip

    count = lambda k, n: {"tasks": ["t"] * k, "of_tasks_with_cells": n}  # noqa: E731
    (tmp_path / "paper_tables.json").write_text(json.dumps(tables(
        4, [("a", 3), ("b", 2)],
        {"post_beats_zero_shot_and_direct": count(4, 5), "mean_gain_kept": {"value": 0.3166},
         "dp8_gap_points": {"value": 1.756, "seeds_per_task": {"a": 3, "b": 2}},
         "distilled_beats_non_distilled": count(0, 0)},
        device="cpu", precision="bf16",
    )))  # fmt: skip
    (tmp_path / "paper_tables_x.json").write_text(json.dumps(tables(
        8, [("a", 3)],
        {"mean_gain_kept": {"value": None},
         "mean_gain_kept_vs_reference": {"value": 0.5868, "assumes": "of results/paper_tables_r.json"},
         "distilled_beats_non_distilled": count(5, 5)},
        transfer_recipe={"public": "phrases", "table_transfer": "epochs=3,select=public"},
    )))  # fmt: skip
    (tmp_path / "paper_tables_junk.json").write_text(json.dumps({"benchmark": "other"}))
    rows = records_overview(tmp_path).splitlines()
    assert len(rows) == 4  # header, rule, two records
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]
    assert cells[0] == [
        "`paper_tables.json`", "4 layers", "cpu (bf16)", "given, tool", "2–3", "4 of 5", "0.317",
        "1.76 (2–3)", "–",
    ]  # fmt: skip
    assert cells[1] == [
        "`paper_tables_x.json`", "8 layers", "–", "phrases, epochs=3,select=public", "3", "–",
        "0.587 (teacher tuning of paper_tables_r.json)", "–", "5 of 5",
    ]  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{RECORDS[0]}\nold rows\n{RECORDS[1]}\nafter\n")
    write_records_overview(tmp_path, readme)
    text = readme.read_text()
    assert "old rows" not in text and "`paper_tables_x.json`" in text
    assert text.startswith("before\n") and text.endswith(f"{RECORDS[1]}\nafter\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    write_records_overview(tmp_path, plain)
    assert plain.read_text() == "no markers\n"


def test_the_readme_headline_compares_the_records_it_names(tmp_path):
    """A PAPER-HEADLINE block names records by --name; it is rebuilt from them: per task the
    teacher's zero-shot, each record's direct / POST / POST with DP means (the higher POST in bold)
    and the first record's teacher tuning; a name with no record says so; text outside is kept."""
    from benchmarks.paper.tables import write_records_overview

    def rec(post, direct, dp, more=None, layers=4, how=None):
        tasks = {t: {"post": {"mean": post, "per_seed": {"0": post, "1": post}},
                     "direct": {"mean": direct, "per_seed": {"0": direct}},
                     "post_dp8": {"mean": dp, "per_seed": {"0": dp}}, **(more or {})}
                 for t in ("sst2", "mpqa")}  # fmt: skip
        return {"benchmark": "paper", "student": {"layers": list(range(layers))}, "tasks": tasks,
                "transfer_recipe": {"public": "phrases", "table_transfer": how}}  # fmt: skip

    zs = {"teacher_zero_shot": {"mean": 0.5, "per_seed": {"0": 0.5}},
          "teacher_tuned": {"mean": 0.9, "per_seed": {"0": 0.9}}}  # fmt: skip
    (tmp_path / "paper_tables_a.json").write_text(json.dumps(rec(0.7, 0.6, 0.65, zs)))
    (tmp_path / "paper_tables_b.json").write_text(json.dumps(rec(0.8, 0.55, 0.75, None, 8, "x=1")))
    readme = tmp_path / "README.md"
    begin, end = "<!-- PAPER-HEADLINE:BEGIN a,b,gone -->", "<!-- PAPER-HEADLINE:END -->"
    readme.write_text(f"intro\n{begin}\nstale\n{end}\noutro\n")
    write_records_overview(tmp_path, readme)
    text = readme.read_text()
    assert text.startswith(f"intro\n{begin}\n") and text.endswith(f"{end}\noutro\n")
    assert "stale" not in text
    assert "4 layers, the tool's transfer, public phrases (2 seeds)" in text
    assert (
        "8 layers, transfer x=1, public phrases (2 seeds)" in text and "`gone`: no record" in text
    )
    assert "prompt tuning on the teacher (`a`, 1 seed)" in text
    assert (
        "| SST-2 | 0.500 | 0.600 / 0.700 / 0.650 | 0.550 / **0.800** / 0.750 | – | 0.900 |" in text
    )
    assert "| MPQA | 0.500 |" in text and "| IMDB | – | – / – / – |" in text
    again = text
    write_records_overview(tmp_path, readme)
    assert readme.read_text() == again  # rebuilt the same, idempotent


class ValidatingStages(FakeStages):
    """FakeStages whose tunings leave a metrics.json with a best validation accuracy (made up, from
    the recipe: more steps' worth of batch validates higher) and DP facts, as the tool's tune does."""

    def tune(self, model, spec, seed, out, dp, **over):
        made = super().tune(model, spec, seed, out, dp, **over)
        val = 0.6 + 0.01 * seed + (0.05 if over.get("grad_accum") else 0.0) + len(over) / 100
        best = {"val_accuracy": round(val, 4), "val_macro_f1": round(val - 0.1, 4)}
        metrics = {"best": best, "wall_seconds": 1.0}
        if dp:
            metrics["privacy"] = {"steps": 7, "noise_multiplier": 0.6}
        (Path(out) / "metrics.json").write_text(json.dumps(metrics))
        return made


def test_dp_recipes_on_the_users_side_tune_once_and_compare_by_validation(tmp_path):
    """dp_recipe_user makes each DP recipe's prompt and its validation accuracy on the student, with
    no transfer and no test evaluation; dp_recipe later transfers the same prompts (no tuning again);
    the record compares each recipe with the table's own over the (task, seed) cells both have."""
    state = tmp_path / "state"
    stages = ValidatingStages()
    grid = paper.Grid(state, stages, "S", SPECS, log=lambda *_: None)
    for task, seed in (("sst2", 0), ("sst2", 1), ("mpqa", 0)):
        grid.run_ablation("dp_recipe_user", task, seed)
    assert {c[0] for c in stages.calls} == {"tune"}  # the user's side only
    assert len(stages.calls) == 3 * len(paper.DP_VARIANTS)  # one tuning per recipe and cell
    user = paper.collect(state)["user_side"]["dp_recipe"]
    names = [paper.dp_variant_name(r) for r in paper.DP_VARIANTS]
    assert set(user["sst2"]) == set(names) and set(user["sst2"][names[0]]) == {"0", "1"}
    big = "sgd_lr=10,epochs=8,grad_accum=16"
    assert user["sst2"][big]["1"] == {
        "user_val_accuracy": pytest.approx(0.6 + 0.01 + 0.05 + 0.04), "dp_steps": 7,
        "user_val_macro_f1": pytest.approx(0.6), "noise_multiplier": 0.6, "user_tune_seconds": 1.0,
    }  # fmt: skip
    # the same prompts transferred by dp_recipe: transfers and evaluations, no tuning
    n = len(stages.calls)
    grid.run_ablation("dp_recipe", "sst2", 0)
    assert not [c for c in stages.calls[n:] if c[0] == "tune"]
    assert any(c[1].startswith(f"transfer:tune-dp8@{big}-s0:") for c in stages.calls[n:])
    # against the table's own recipe (sgd_lr=0.3: its tuning has no overrides, 0.6 + seed / 100)
    (state / "dp.json").write_text(json.dumps(stages.dp_recipe))
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    out = paper.write_outputs(state, "quick", paper.PROFILES["quick"], "cmd", results=tmp_path,
                              readme=readme)  # fmt: skip
    choice = out["dp_recipe_user_choice"]
    assert choice["own"] == "sgd_lr=0.3" and set(choice["recipes"]) == set(names) - {"sgd_lr=0.3"}
    r = choice["recipes"][big]
    assert r["cells"] == 3 and r["difference_points"] == pytest.approx(9.0)  # +0.05, 4 fields
    assert r["per_task_points"] == {"sst2": pytest.approx(9.0), "mpqa": pytest.approx(9.0)}
    assert choice["recipes"]["sgd_lr=3"]["difference_points"] == pytest.approx(2.0)
    assert "not covered by that epsilon" in choice["assumes"]
    body = readme.read_text()
    assert "| dp_recipe (user side) | sst2 | mpqa |" in body
    assert f"| {big} | 0.695 ± 0.007 (2) | 0.690 (1) |" in body
    # a variant asked for alone is the only one made
    later = ValidatingStages()
    only = paper.Grid(state, later, "S", SPECS, log=lambda *_: None, variants=(big,))
    only.run_ablation("dp_recipe_user", "mpqa", 1)
    assert [c[1] for c in later.calls] == [f"tune:S:mpqa:1:8.0:{paper.DP_VARIANTS[-1]}"]
    assert (state / f"cells/user_side/dp_recipe/mpqa/{big}/seed1.json").is_file()
    assert not (state / "cells/user_side/dp_recipe/mpqa/sgd_lr=0.3/seed1.json").exists()
