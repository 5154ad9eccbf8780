"""The performance benchmarks run end to end on a tiny model and write every ratio field they promise.

Timings on a tiny model mean nothing; what is checked is that each benchmark measures both sides, that
the two sides compute the same thing (loss / per-example gradients agree), and that the JSON carries
its ratio fields with targets, the machine facts and the load average.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("benchmarks", None)  # a site-packages module of that name must not shadow ours
    import benchmarks.common as common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def _result(results: Path, name: str, capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert res == json.loads((results / f"{name}.json").read_text())
    m = res["machine"]
    assert m["torch_threads"] >= 1 and "versions" in m and "load_average_end" in m
    assert res["peak_rss_mb"] > 0
    return res


def _check_target(t: dict, value: float, goal: float, higher: bool = True):
    assert t["target"] == goal and t["met"] == (value >= goal if higher else value <= goal)


def test_tune_throughput(bench, tiny_model_dir, capsys):
    from benchmarks import tune_throughput

    tune_throughput.main(["--model", str(tiny_model_dir), "--batch-size", "4", "--n-tokens", "3"])
    res = _result(bench, "tune_throughput", capsys)
    for name, goal in (("student_2l", 1.5), ("teacher", 1.1)):
        row = res["results"][name]
        assert row["loss_abs_diff"] < 1e-4  # PEFT's full-logit loss is ours, computed the long way
        assert (
            row["loss_abs_diff_fair"] < 1e-4
        )  # and so is the careful user's (answer position only)
        rounds = 5 if name == "student_2l" else 3
        assert [len(row[k]["times_s"]) for k in ("ours", "peft", "peft_fair")] == [rounds] * 3
        _check_target(row["target"], row["speedup_vs_peft"], goal)
        _check_target(row["target_fair"], row["speedup_vs_peft_fair"], goal)
    s = res["results"]["student_2l"]
    assert res["speedup_vs_peft"] == res["speedup_vs_peft_naive"] == s["speedup_vs_peft"]
    assert res["speedup_vs_peft_fair"] == s["speedup_vs_peft_fair"]
    assert res["speedup_vs_peft_fair_teacher"] == res["results"]["teacher"]["speedup_vs_peft_fair"]


def test_dp_overhead(bench, tiny_model_dir, capsys):
    from benchmarks import dp_overhead

    dp_overhead.main(["--model", str(tiny_model_dir), "--batch-size", "4", "--n-tokens", "3"])
    res = _result(bench, "dp_overhead", capsys)
    row = res["results"]["student_2l"]
    assert row["per_example_grad_rel_max_diff"] < 1e-4  # Opacus's per-sample gradients are ours
    assert row["per_example_grad_rel_max_diff_fair"] < 1e-4  # in the careful user's form too
    assert row["stock_peft_opacus_grad_sample_batch"] in (
        1,
        4,
    )  # 1: stock PEFT hides the batch from Opacus
    assert set(row["timings"]) == {"ours", "ours_dp", "peft", "opacus", "peft_fair", "opacus_fair"}
    _check_target(res["target_dp_overhead"], res["dp_overhead"], 1.15, higher=False)
    _check_target(res["target_speedup_vs_opacus"], res["speedup_vs_opacus"], 2.0)
    _check_target(res["target_speedup_vs_opacus_fair"], res["speedup_vs_opacus_fair"], 2.0)
    assert res["speedup_vs_opacus_fair"] == row["speedup_vs_opacus_fair"]
    assert res["speedup_vs_opacus_naive"] == res["speedup_vs_opacus"] == row["speedup_vs_opacus"]


def _head_rows(model, fn) -> list[int]:
    """Run fn() and return how many positions the LM head projected, per call."""
    seen = []
    h = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: seen.append(int(out.shape[:-1].numel()))
    )
    try:
        fn()
    finally:
        h.remove()
    return seen


def test_fair_baseline_computes_the_naive_numbers_at_the_answer_only(bench, tiny_lm):
    """The fair PEFT baseline (left padding, logits_to_keep=1) must give the naive baseline's answer
    logits, loss and prompt gradient -- the same numbers, only fewer positions through the LM head.
    PEFT's own forward on the left-padded batch (it drops position ids for prompt tuning) is a different
    computation, and this test tells it apart."""
    import torch
    from benchmarks.baselines import (
        fair_answer_logits,
        fair_verbalizer_loss,
        left_pad,
        naive_answer_logits,
        peft_prompt_model,
        prompt_parameters,
        verbalizer_loss,
    )

    from promptport.classify import PromptClassifier
    from promptport.data import TextDataset
    from promptport.tasks import get_task

    task = get_task("sst2")
    texts = ["a gem", "the plot goes nowhere and the actors know it", "fine", "warm and funny film"]
    ds = TextDataset({"text": texts}, [1, 0, 1, 1], "mem", "train")
    clf = PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, task, max_length=32)
    enc = clf.encode(ds)
    ids, mask = clf.batch(enc.input_ids)
    assert len(set(mask.sum(-1).tolist())) > 1  # unequal lengths: padding matters
    ids_l, mask_l = left_pad(ids, mask, tiny_lm.tokenizer.pad_token_id)
    assert bool((mask_l[:, -1] == 1).all()) and torch.equal(mask_l.sum(-1), mask.sum(-1))
    n = 3
    init = torch.randn(
        n, tiny_lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    naive, fair = peft_prompt_model(tiny_lm.model, init), peft_prompt_model(tiny_lm.model, init)
    with torch.no_grad():
        rows_naive = _head_rows(tiny_lm.model, lambda: naive_answer_logits(naive, ids, mask, n))
        rows_fair = _head_rows(tiny_lm.model, lambda: fair_answer_logits(fair, ids_l, mask_l))
        a = naive_answer_logits(naive, ids, mask, n)
        b = fair_answer_logits(fair, ids_l, mask_l)
        peft_own = fair(input_ids=ids_l, attention_mask=mask_l, logits_to_keep=1).logits[:, -1]
        ours = clf.vocab_logits(ids, mask, init)
    assert rows_naive == [len(texts) * (n + ids.shape[1])] and rows_fair == [len(texts)]
    scale = float(a.abs().max())
    assert float((b - a).abs().max()) < 1e-5 * scale  # same numbers ...
    assert float((ours - a).abs().max()) < 1e-5 * scale  # ... as ours
    assert float((peft_own - a).abs().max()) > 1e-4 * scale  # a different computation is caught
    y = enc.labels
    verbalizer_loss(naive, clf.verbalizer, ids, mask, y, n).backward()
    fair_verbalizer_loss(fair, clf.verbalizer, ids_l, mask_l, y).backward()
    g_naive, g_fair = prompt_parameters(naive)[0].grad, prompt_parameters(fair)[0].grad
    assert float((g_fair - g_naive).abs().max()) < 1e-5 * float(g_naive.abs().max())


def test_eval_throughput(bench, tiny_model_dir, capsys):
    from benchmarks import eval_throughput

    eval_throughput.main(["--model", str(tiny_model_dir), "--n", "12", "--batch-size", "4"])
    res = _result(bench, "eval_throughput", capsys)
    for name, rounds in (("student_2l", 3), ("teacher", 2)):
        row = res["results"][name]
        assert row["same_tokens_both_sides"] is True and row["n"] == 12
        assert {k: len(v["times_s"]) for k, v in row["timings"].items()} == {
            "ours": rounds,
            "hf": rounds,
            "hf_fair": rounds,
        }
        assert row["fair_vs_naive_answer_logits_max_abs_diff"] < 1e-4
        assert row["prediction_agreement"] == row["prediction_agreement_fair"] == 1.0
    s = res["results"]["student_2l"]
    assert res["speedup_vs_hf_fair"] == s["speedup_vs_hf_fair"]
    assert res["speedup_vs_hf"] == s["speedup_vs_hf"] == s["speedup_vs_hf_naive"]
    _check_target(res["target_fair_student"], res["speedup_vs_hf_fair"], 2.0)
    _check_target(res["target_student"], res["speedup_vs_hf"], 2.0)


def test_user_vs_teacher(bench, tiny_model_dir, capsys):
    from benchmarks import user_vs_teacher

    user_vs_teacher.main(
        [
            "--model",
            str(tiny_model_dir),
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--n-tokens",
            "3",
            "--n-probe",
            "4",
        ]
    )
    res = _result(bench, "user_vs_teacher", capsys)
    _check_target(res["target_user_speedup"], res["user_speedup"], 8.0)
    x = res["extrapolation"]
    assert x["tune_steps"] == 2500 and x["transfer_steps"] == 34 and "T_post" in x["formula"]
    assert res["post_speedup"] == pytest.approx(x["teacher_tuning_s"] / x["post_s"], rel=0.01)


def test_distill_throughput(bench, tiny_model_dir, capsys):
    from benchmarks import distill_throughput

    distill_throughput.main(["--model", str(tiny_model_dir), "--steps", "3"])
    res = _result(bench, "distill_throughput", capsys)
    assert len(res["training"]["step_times_s"]) == 3 and res["training"]["tokens_per_s"] > 0
    assert (
        res["cache"]["tokens"] > res["cache"]["lm_tokens"] > 0
    )  # LM blocks and task answers both cached
    assert res["matmul_peak_flops"]["float32"] > 0
    _check_target(res["target"], res["mfu"], 0.35)


def test_profile_steps(bench, tiny_model_dir, capsys):
    from benchmarks import profile_steps

    profile_steps.main(
        ["--model", str(tiny_model_dir), "--batch-size", "4", "--n-tokens", "3", "--top", "3"]
    )
    res = _result(bench, "profile_steps", capsys)
    assert set(res["stages"]) - {
        "tune_student_2l",
        "tune_teacher",
        "dp_student_2l",
        "transfer_teacher",
    } == {f"distill_student_{res['distill_layers']}l"}
    for r in res["stages"].values():
        assert 0 < len(r["top"]) <= 3 and sum(e["share"] for e in r["top"]) <= 1.0001


def test_default_run_reads_the_runs_results(bench, tmp_path, tiny_model_dir, sst_like_dir, capsys):
    """benchmarks.default_run runs `promptport run` in a subprocess and reports what its results.json and
    manifests say: every baseline's accuracy with its interval, wall seconds per stage, load, targets."""
    import yaml
    from benchmarks import default_run

    from conftest import build_tiny_llama

    (sst_like_dir / "test.tsv").write_text(
        "sentence\tlabel\n" + "the jokes land\t1\nbad acting\t0\n" * 4
    )
    public = tmp_path / "public.txt"
    public.write_text("\n".join(f"news item {i} about the market" for i in range(40)) + "\n")
    cfg = {
        "teacher": str(tiny_model_dir),
        "student": str(build_tiny_llama(tmp_path / "student", layers=2, seed=1)),
        "task": "sst2",
        "private_data": str(sst_like_dir),
        "public_data": str(public),
        "eval_split": "test",
        "tune": {"n_tokens": 4, "epochs": 1, "batch_size": 4, "lr": 0.05, "max_length": 32},
        "transfer": {"n_public": 30, "steps": 3, "batch_size": 4, "max_length": 32},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    default_run.main(
        ["--config", str(tmp_path / "run.yaml"), "--run-dir", str(tmp_path / "run"), "--name", "dr"]
    )
    res = _result(bench, "dr", capsys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("teacher_zero_shot", "student_prompt", "direct_transfer", "post_transfer"):
        a = res["accuracy"][name]
        assert a["accuracy"] == results["baselines"][name]["accuracy"]
        assert a["ci95"][0] <= a["accuracy"] <= a["ci95"][1]
    w = res["wall_seconds"]
    assert w["total"] > 0 and {"tune", "transfer", "evaluate"} <= set(w)
    assert w["total"] >= w["tune"] + w["transfer"] + w["evaluate"]
    t = res["targets"]["post_at_least_3_points_above_teacher_zero_shot"]
    assert t["met"] == (t["value"] >= 0.03)
    assert res["user_validation_curve"] and "load_during_run" in res


def test_serve_load(bench, tiny_model_dir, capsys):
    """Both servers answer every request with the same probabilities and exit 0 on SIGTERM; the JSON
    carries the speedup with its target, the per-mode latencies and the engine's own ceiling."""
    from benchmarks import serve_load

    args = ["--model", str(tiny_model_dir), "--clients", "4", "--tenants", "2", "--requests", "2"]
    serve_load.main([*args, "--rounds", "1", "--max-batch", "4", "--threads", "1"])
    res = _result(bench, "serve_load", capsys)
    assert res["answers_max_abs_diff"] < 1e-4
    for mode in ("batched", "unbatched"):
        row = res[mode]
        assert row["requests"] == 8 and row["server_exit_codes"] == [0]
        assert 0 < row["latency_p50_s"] <= row["latency_p99_s"]
    assert res["unbatched"]["mean_batch_rows"] == [1.0]
    assert 1.0 <= res["batched"]["mean_batch_rows"][0] <= 4.0
    speedup = res["batched"]["requests_per_s"] / res["unbatched"]["requests_per_s"]
    assert abs(res["batching_speedup"] - speedup) < 1e-2
    _check_target(res["target_batching_speedup"], res["batching_speedup"], 3.0)
    assert res["engine_ceiling"]["rows"] == 16 and res["engine_ceiling"]["speedup"] > 0


def test_audit_ci_coverage(bench, capsys):
    from benchmarks import audit_ci_coverage

    args = ["--shadows", "4", "--repetitions", "3", "--examples", "40", "--n-boot", "20"]
    audit_ci_coverage.main(args)
    res = _result(bench, "audit_ci_coverage", capsys)
    for model in ("plain", "shadow_class_bias"):
        r = res["by_n"]["4"][model]
        assert 0.3 < r["mean_auc"] < 0.7 and r["auc_sd"] >= 0
        for kind in ("examples_only", "two_way"):
            assert 0 <= r[kind]["coverage"] <= 1 and r[kind]["mean_width"] > 0


def test_shift_reference_on_known_log_probs():
    """The reference's combinations on hand-made log-probabilities: a student shift that fixes exactly the
    teacher's errors lifts the shift line to 1.0; a shift that is pure noise of the student's own
    (its errors elsewhere) cannot lift the teacher."""
    import torch
    from benchmarks.shift_reference import shift_reference

    y = torch.tensor([0, 1, 0, 1])
    t0 = torch.log(torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.7, 0.3]]))  # 2 of 4 right
    s0 = torch.log(torch.full((4, 2), 0.5))
    fix = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]]))
    r = shift_reference(t0, s0, fix, y)
    assert r["teacher_zero_shot"] == 0.5 and r["shift_x1"] == 1.0 and r["best_gain_points"] == 50.0
    harm = torch.log(torch.tensor([[0.2, 0.8], [0.8, 0.2], [0.5, 0.5], [0.5, 0.5]]))
    r = shift_reference(t0, s0, harm, y)
    assert r["shift_x1"] <= r["teacher_zero_shot"] and r["prior_shift"] == 0.5


def test_shift_reference_grid_scores_on_known_log_probs():
    """The grid's scores: a prompt that changes nothing leaves every scale at the teacher's zero-shot;
    one whose change fixes the teacher's errors at scale 1 is undone at 0; a change that only moves
    every input the same way counts in `prior` and vanishes from `x1_nomean`."""
    import torch
    from benchmarks.shift_reference_grid import SCALES, scores

    y = torch.tensor([0, 1, 0, 1])
    t0 = torch.log(torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.7, 0.3]]))  # 2 of 4 right
    s0 = torch.log(torch.full((4, 2), 0.5))
    same = scores(t0, s0, s0, y)
    assert {same[f"x{c:g}"] for c in SCALES} == {0.5} and same["prior"] == 0.5
    fix = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]]))
    r = scores(t0, s0, fix, y)
    assert r["x0"] == 0.5 and r["x1"] == 1.0 and r["student_prompt"] == 0.75
    bias = torch.log(torch.tensor([[0.1, 0.9]] * 4))  # all inputs pushed to class 1
    r = scores(t0, s0, bias, y)
    assert r["prior"] == r["x1"] == 0.5 and r["x1_nomean"] == same["x1"]


def test_shift_reference_from_a_run_directory(tmp_path):
    """`--run-dir` reads the evaluate stage's saved logits: the same figures as `shift_reference` on them, POST
    placed against shift_x1, and a refusal when a needed method or the examples differ."""
    import numpy as np
    import pytest
    import torch
    from benchmarks.shift_reference import from_run, shift_reference

    y = np.array([0, 1, 0, 1])
    logits = {
        "teacher_zero_shot": [[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.7, 0.3]],
        "student_zero_shot": [[0.5, 0.5]] * 4,
        "student_prompt": [[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]],
        "post_transfer": [[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.7, 0.3]],  # 3 of 4
    }
    ev = tmp_path / "evaluate"
    ev.mkdir()
    for m, p in list(logits.items())[:3]:
        np.savez(ev / f"{m}.npz", y_true=y, logits=np.log(p))
    r = from_run(tmp_path)
    lp = {m: torch.log_softmax(torch.log(torch.tensor(p)).double(), -1) for m, p in logits.items()}
    want = shift_reference(
        lp["teacher_zero_shot"], lp["student_zero_shot"], lp["student_prompt"], torch.tensor(y)
    )
    assert {k: r[k] for k in want} == want and "post_transfer" not in r and r["n"] == 4
    np.savez(ev / "post_transfer.npz", y_true=y, logits=np.log(logits["post_transfer"]))
    r = from_run(tmp_path)
    assert r["post_transfer"] == 0.75 and r["shift_x1"] == 1.0
    assert r["post_minus_shift_x1_points"] == -25.0
    np.savez(ev / "post_transfer.npz", y_true=y[::-1], logits=np.log(logits["post_transfer"]))
    with pytest.raises(SystemExit, match="other examples"):
        from_run(tmp_path)
    (ev / "student_prompt.npz").unlink()
    with pytest.raises(SystemExit, match="student_prompt"):
        from_run(tmp_path)


def test_prompt_inits_starts_are_prompts_of_the_asked_length(tiny_lm):
    """Every candidate start of the init screen is an [n, hidden] prompt; the 'first token' starts begin
    with the embedding of the template's first token, the zeros start is all zeros."""
    import torch
    from benchmarks.prompt_inits import starts

    from promptport.tasks import get_task

    task = get_task("sst2")
    got = starts(tiny_lm, task, 5)
    hidden = tiny_lm.model.get_input_embeddings().weight.shape[1]
    assert len(got) == 9
    for name, p in got.items():
        assert p.shape == (5, hidden), name
    assert not got["zeros"].any()
    first = got["template's first token, then zeros"]
    assert torch.equal(first[0], got["template's first token, repeated"][3]) and not first[1:].any()


def test_post_e2e_collect_reads_the_run_and_its_supplied_student(bench, tmp_path, capsys):
    """`--collect-only` reports the settings the run recorded (its config.json, not today's YAML) and,
    when the run was given a student, that student's own distillation instead of the unused YAML
    section; missing baselines are listed."""
    import argparse

    from benchmarks import post_e2e

    from promptport.config import load_run_config
    from promptport.fileio import write_json

    student = tmp_path / "distill" / "student"
    student.mkdir(parents=True)
    write_json(student / "student.json", {"layers": [0, 1, 28, 29]})
    write_json(
        tmp_path / "distill" / "metrics.json",
        {"stage": "distill", "config": {"layers": 4, "max_tokens": 999}, "wall_seconds": 12.0},
    )
    run = tmp_path / "run"
    cfg = load_run_config(
        ROOT / "configs" / "e2e-smollm2.yaml",
        {"run_dir": str(run), "student": str(student), "eval_limit": 7},
    )
    (run / "evaluate").mkdir(parents=True)
    write_json(run / "config.json", cfg.model_dump())
    m = {"bleu": 20.0, "rougeL": 40.0, "bleu_ci": [18, 22], "rougeL_ci": [38, 42], "n": 7}
    m |= {"mean_output_words": 15.0, "seconds": 3.0}
    write_json(run / "evaluate" / "post_transfer.metrics.json", {"metrics": m})
    z = m | {"bleu": 12.0, "rougeL": 27.0}
    write_json(run / "evaluate" / "teacher_zero_shot.metrics.json", {"metrics": z})
    post_e2e.collect(argparse.Namespace(config="configs/e2e-smollm2.yaml", run_dir=str(run)))
    res = _result(bench, "post_e2e", capsys)
    assert res["config"]["eval_limit"] == 7  # the run's, not the YAML's 100
    assert res["student"]["layers"] == [0, 1, 28, 29]
    assert res["student"]["config"]["max_tokens"] == 999 and res["student"]["wall_seconds"] == 12.0
    assert res["differences"]["post_minus_zero_shot_bleu"] == 8.0
    assert not res["complete"] and "teacher_tuned" in res["missing"]


def test_prompt_prefix_times_both_paths_and_they_agree(bench, tiny_model_dir, capsys):
    from benchmarks import prompt_prefix

    prompt_prefix.main(["--model", str(tiny_model_dir), "--batch", "4", "--n-tokens", "5"])
    res = _result(bench, "prompt_prefix", capsys)
    assert res["max_abs_logit_difference"] < 1e-4
    assert res["max_abs_gradient_difference"] < 1e-4 * max(1.0, res["gradient_scale"])
    assert res["gradient_scale"] > 0
    assert all(len(res["timings"][k]["times_s"]) == 3 for k in res["timings"])
    assert res["step_speedup"] > 0 and res["eval_speedup"] > 0


def test_teacher_tokens_rule_applies_the_tools_choice_to_a_record(tmp_path):
    """benchmarks.teacher_tokens_rule keeps, per task, the length whose transfer recorded the lowest
    held-out loss (the tool's `lowest_heldout`), and says whether it was the best on test; a task
    missing a variant is left out."""
    from benchmarks.teacher_tokens_rule import rule_on_record

    state, record = tmp_path / "state", tmp_path / "record"
    (record).mkdir()
    (record / "tune.json").write_text(json.dumps({"n_tokens": 50}))
    runs = {  # task -> variant -> (held-out loss, test accuracy)
        "a": {"tool": (0.3, 0.70), "n_tokens=10": (0.2, 0.75), "n_tokens=1": (0.4, 0.72)},
        "b": {"tool": (0.1, 0.60), "n_tokens=10": (0.2, 0.65), "n_tokens=1": (0.3, 0.50)},
        "c": {"tool": (0.1, 0.60)},  # incomplete
    }
    arts = {"tool": "post", "n_tokens=10": "post-t10", "n_tokens=1": "post-t1"}
    for task, variants in runs.items():
        for v, (loss, acc) in variants.items():
            cell = record / "cells" / "ablations" / "teacher_tokens" / task / v / "seed0.json"
            cell.parent.mkdir(parents=True)
            cell.write_text(json.dumps({"accuracy": acc}))
            m = state / "art" / task / f"{arts[v]}-s0" / "metrics.json"
            m.parent.mkdir(parents=True)
            m.write_text(json.dumps({"best": {"heldout_loss": loss}}))
    r = rule_on_record(state, record)
    assert set(r["tasks"]) == {"a", "b"}
    assert r["tasks"]["a"]["chosen"] == 10 and r["tasks"]["a"]["picked_best"]
    assert r["tasks"]["b"]["chosen"] == 50 and not r["tasks"]["b"]["picked_best"]
    assert r["picked_best"] == 1 and r["of_tasks"] == 2
    assert r["mean_accuracy_chosen"] == pytest.approx((0.75 + 0.60) / 2)


def test_patience_replay_on_a_known_curve(bench, tmp_path, capsys):
    """A curve that falls, rises twice, then falls lower: patience 2 stops at the second rise and
    keeps the earlier best (another prompt than the full run's), patience 3 runs on to the true best."""
    from benchmarks.patience_replay import main, replay

    losses = [1.0, 0.5, 0.6, 0.7, 0.4, 0.45]
    hist = [{"step": 10 * i, "heldout_loss": x} for i, x in enumerate(losses)]
    assert replay(hist, 2) == {"stop": 30, "best_step": 10, "best_loss": 0.5}
    assert replay(hist, 3) == {"stop": 50, "best_step": 40, "best_loss": 0.4}
    run = tmp_path / "state" / "art" / "sst2" / "post-ep3x-s0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"initial_heldout_loss": 1.0, "steps": 50}))
    lines = [{"step": s, "loss": 0.0} for s in range(1, 51)]
    for h in hist[1:]:
        lines[h["step"] - 1]["heldout_loss"] = h["heldout_loss"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    main(["--state", str(tmp_path / "state"), "--patience", "2", "3"])
    res = _result(bench, "patience_replay", capsys)
    assert res["of_runs"] == 1
    assert res["summary"]["2"] == {"same_prompt": 0, "steps_saved": 0.4}
    assert res["summary"]["3"] == {"same_prompt": 1, "steps_saved": 0.0}


def test_public_label_pick_sources_and_gain_kept(bench, tmp_path):
    """The labelled public texts are drawn once from the task family's source (labels parsed from
    Financial PhraseBank's `text@label` lines), and the gain kept reads the record's own cells."""
    from benchmarks.public_label_pick import gain_kept, labelled_public

    shared = tmp_path / "shared"
    (shared / "financial_phrasebank").mkdir(parents=True)
    lines = [f"sentence {i} , with @ sign .@{y}" for i, y in enumerate(["neutral", "negative"] * 5)]
    (shared / "financial_phrasebank" / "Sentences_50Agree.txt").write_text("\n".join(lines))
    spec = labelled_public("tweet_eval", tmp_path / "out", shared, tmp_path, n=4)
    rows = [json.loads(x) for x in (Path(spec["data"]) / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["label"] in ("neutral", "negative") for r in rows)
    assert all(r["text"].endswith("with @ sign .") for r in rows)
    record = tmp_path / "record"
    for m, a in (("teacher_zero_shot", 0.5), ("teacher_tuned", 0.9)):
        (record / "cells" / "mpqa" / m).mkdir(parents=True)
        (record / "cells" / "mpqa" / m / "seed0.json").write_text(json.dumps({"accuracy": a}))
    assert gain_kept({"mpqa": 0.7}, record) == {"mpqa": 0.5}


def test_public_label_pick_end_to_end_with_scores_known(bench, tmp_path, monkeypatch, capsys):
    """With the teacher's scores faked: the public pick follows public accuracy, the loss pick the
    held-out loss, and the summary's gain kept is computed from the picked cells' test accuracy."""
    import benchmarks.paper as paper
    from benchmarks.public_label_pick import SOURCES, main

    shared, state, record = tmp_path / "shared", tmp_path / "state", tmp_path / "record"
    (shared / "rotten_tomatoes").mkdir(parents=True)
    for f in ("rt-polarity.neg", "rt-polarity.pos"):
        (shared / "rotten_tomatoes" / f).write_text("a line\nanother line\n")
    (shared / "financial_phrasebank").mkdir()
    (shared / "financial_phrasebank" / "Sentences_50Agree.txt").write_text("up .@positive\n")
    (state / "data" / "imdb").mkdir(parents=True)
    rows = [json.dumps({"text": f"r{i}", "label": "positive"}) for i in range(3005)]
    (state / "data" / "imdb" / "train.jsonl").write_text("\n".join(rows))
    public = {"post": 0.7, "post-ep3x": 0.6}  # the table's transfer wins on public data
    for task in SOURCES:
        for m, a in (("teacher_zero_shot", 0.5), ("teacher_tuned", 0.9)):
            (record / "cells" / task / m).mkdir(parents=True)
            (record / "cells" / task / m / "seed0.json").write_text(json.dumps({"accuracy": a}))
        for v, acc, loss in (("tool", 0.6, 0.2), ("epochs=3", 0.7, 0.1)):
            d = record / "cells" / "ablations" / "transfer_budget" / task / v
            d.mkdir(parents=True)
            (d / "seed0.json").write_text(json.dumps({"accuracy": acc, "heldout_loss": loss}))

    def fake_evaluate(self, model, prompt, spec):
        return {"accuracy": 0.5 if prompt is None else public[Path(prompt).parent.name[:-3]]}

    monkeypatch.setattr(paper.Stages, "evaluate", fake_evaluate)
    args = ["--state", str(state), "--record", str(record), "--shared", str(shared), "--seeds", "0"]
    main(args)
    res = _result(bench, "public_label_pick", capsys)
    assert res["of_cases"] == 4 and res["public_pick_is_test_best"] == 0
    assert res["loss_pick_is_test_best"] == 4
    assert res["summary"]["public_pick"]["mean_gain_kept_over_these_tasks"] == 0.25
    assert res["summary"]["loss_pick"]["mean_gain_kept_over_these_tasks"] == 0.5
    assert res["tasks"]["sst2"]["seeds"]["0"]["public_pick"] == "tool"
