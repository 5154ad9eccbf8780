"""Prompt tuning: the loop, best-prompt selection, early stopping, exact resume (in-process and after
SIGKILL), the stage's outputs, and the CLI's bad-input handling."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from promptport.classify import PromptClassifier, prompt_class_offset
from promptport.cli import main
from promptport.data import TextDataset
from promptport.errors import BadInput
from promptport.privacy import DPConfig
from promptport.prompt import load_prompt
from promptport.tasks import get_task
from promptport.tune import CHECKPOINT_FILE, TuneConfig, _Run, prompt_drift, train_prompt, tune

POS = [
    "the movie was great",
    "i loved every minute of it",
    "a charming and often affecting journey",
    "the jokes land",
    "wonderful acting",
]
NEG = [
    "a terrible boring film",
    "worst film of the year",
    "unflinchingly bleak and desperate",
    "bad acting",
    "the plot is thin",
]


@pytest.fixture(scope="module")
def clf(tiny_lm):
    tiny_lm.tokenizer.padding_side = "right"
    return PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, get_task("sst2"))


@pytest.fixture(scope="module")
def data(clf):
    texts, labels = POS * 2 + NEG * 2, [1] * 10 + [0] * 10
    train = clf.encode(TextDataset({"text": texts}, labels, "mem", "train"))
    val = clf.encode(
        TextDataset({"text": POS[:3] + NEG[:3]}, [1] * 3 + [0] * 3, "mem", "validation")
    )
    return train, val


def test_training_lowers_loss_and_touches_only_the_prompt(clf):
    # one class only: a random tiny model cannot read sentiment, but a prompt can learn the prior
    train = clf.encode(TextDataset({"text": POS * 2 + NEG * 2}, [1] * 20, "mem", "train"))
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    init = (
        torch.randn(4, clf.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        * 0.1
    )
    loss0 = float(clf.loss(*clf.batch(train.input_ids), train.labels, init))
    r = train_prompt(
        clf,
        train,
        None,
        TuneConfig(n_tokens=4, lr=0.1, epochs=10, batch_size=5),
        init_embeddings=init,
    )
    loss1 = float(clf.loss(*clf.batch(train.input_ids), train.labels, r.embeddings))
    assert loss1 < loss0 - 0.1
    assert (
        r.steps == 40
        and r.best["selection"] == "last"
        and r.privacy is None
        and r.examples_per_s > 0
    )
    assert all(torch.equal(before[k], v) for k, v in clf.model.state_dict().items())
    assert not any(p.requires_grad for p in clf.model.parameters())
    moved = r.extra["drift"]
    assert moved["relative_distance"] == pytest.approx(
        float((r.embeddings - init).norm() / init.norm()), abs=1e-4
    )
    assert moved["relative_distance"] > 0.05 and moved["norm_ratio"] > 0
    # a prompt that did not move: distance 0, norms unchanged
    assert prompt_drift(init, init.clone()) == {"relative_distance": 0.0, "norm_ratio": 1.0}


def test_unfrozen_model_is_bad_input(clf, data):
    w = clf.model.get_input_embeddings().weight
    w.requires_grad_(True)
    try:
        with pytest.raises(BadInput, match="trainable parameter") as e:
            train_prompt(clf, data[0], None, TuneConfig(n_tokens=2, max_steps=1, batch_size=2))
        assert e.value.field == "model"
    finally:
        w.requires_grad_(False)


def test_best_prompt_by_validation_and_early_stopping(clf, data):
    train, val = data
    cfg = TuneConfig(
        n_tokens=3,
        lr=0.3,
        optimizer="sgd",
        schedule="constant",
        max_steps=30,
        batch_size=4,
        eval_every=2,
        patience=3,
    )
    r = train_prompt(clf, train, val, dataclasses.replace(cfg, patience=None))
    evals = [h for h in r.history if h["type"] == "eval"]
    best = max(evals, key=lambda h: h["val_accuracy"])
    assert r.best["val_accuracy"] == best["val_accuracy"]
    assert r.best["step"] == min(
        h["step"] for h in evals if h["val_accuracy"] == best["val_accuracy"]
    )
    assert clf.evaluate(val, r.embeddings)["accuracy"] == pytest.approx(r.best["val_accuracy"])
    assert r.steps == 30 and not r.stopped_early  # no patience: never stops early
    assert evals[0]["step"] == 0  # the initial prompt is evaluated and is a candidate
    # a prompt that cannot improve (lr ~ 0): the initial prompt (step 0) stays best, and training
    # stops after `patience` evaluations without improvement
    flat = train_prompt(clf, train, val, dataclasses.replace(cfg, lr=1e-12))
    assert flat.stopped_early and flat.best["step"] == 0 and flat.steps == 3 * 2
    assert any(h["type"] == "early_stop" for h in flat.history)
    # without the start evaluation, the first evaluation (step 2) is the first candidate
    late = train_prompt(clf, train, val, dataclasses.replace(cfg, lr=1e-12, eval_on_start=False))
    assert late.best["step"] == 2 and late.steps == 2 + 3 * 2


def test_grad_accum_equals_bigger_batch(clf, data):
    train, _ = data
    a = train_prompt(
        clf, train, None, TuneConfig(n_tokens=2, max_steps=4, batch_size=4, grad_accum=1)
    )
    b = train_prompt(
        clf, train, None, TuneConfig(n_tokens=2, max_steps=4, batch_size=2, grad_accum=2)
    )
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-5, rtol=1e-5)


def test_same_seed_same_prompt_dp_included(clf, data):
    train, _ = data
    cfg = TuneConfig(
        n_tokens=2,
        max_steps=5,
        batch_size=4,
        seed=3,
        dp=DPConfig(epsilon=4.0, delta=1e-3, accountant="rdp"),
    )
    a, b = train_prompt(clf, train, None, cfg), train_prompt(clf, train, None, cfg)
    assert torch.equal(a.embeddings, b.embeddings)
    cfg2 = TuneConfig(**{**cfg.__dict__, "seed": 4})
    assert not torch.equal(a.embeddings, train_prompt(clf, train, None, cfg2).embeddings)


@pytest.mark.parametrize("dp", [False, True])
def test_resume_after_interruption_is_exact(clf, data, tmp_path, monkeypatch, dp):
    train, val = data
    cfg = TuneConfig(
        n_tokens=3,
        max_steps=12,
        batch_size=4,
        eval_every=4,
        checkpoint_every=3,
        dp=DPConfig(epsilon=6.0, delta=1e-3, accountant="rdp") if dp else None,
    )
    full = train_prompt(
        clf, train, val, cfg, checkpoint_dir=tmp_path / "a", metrics_path=tmp_path / "a.jsonl"
    )

    real_step = _Run.train_step

    def crashing_step(self):
        if self.step == 7:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self)

    monkeypatch.setattr(_Run, "train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_prompt(
            clf, train, val, cfg, checkpoint_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl"
        )
    monkeypatch.setattr(_Run, "train_step", real_step)
    with pytest.raises(
        BadInput, match="resume"
    ):  # an existing checkpoint is never silently overwritten
        train_prompt(clf, train, val, cfg, checkpoint_dir=tmp_path / "b")
    res = train_prompt(
        clf,
        train,
        val,
        cfg,
        checkpoint_dir=tmp_path / "b",
        metrics_path=tmp_path / "b.jsonl",
        resume=True,
    )
    assert res.extra["resumed_from"] == 6
    assert torch.equal(res.embeddings, full.embeddings) and torch.equal(
        res.last_embeddings, full.last_embeddings
    )
    assert res.best == full.best and res.steps == full.steps == 12
    lines = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if x["type"] == "train"]
    assert steps == list(range(1, 13))  # lines after the checkpoint were dropped, none repeated
    if dp:
        assert res.privacy["steps"] == full.privacy["steps"] == 12
        assert res.privacy["epsilon"] == full.privacy["epsilon"]
        assert res.privacy["history"] == full.privacy["history"]
    # a different command on the same checkpoint is refused
    with pytest.raises(BadInput, match="different run"):
        train_prompt(
            clf,
            train,
            val,
            TuneConfig(**{**cfg.__dict__, "lr": 0.5}),
            checkpoint_dir=tmp_path / "b",
            resume=True,
        )


def test_tune_stage_outputs(tiny_lm, sst_like_dir, tmp_path):
    cfg = TuneConfig(
        n_tokens=3,
        max_steps=6,
        batch_size=4,
        eval_every=3,
        dp=DPConfig(epsilon=8.0, delta=1e-3, accountant="rdp"),
    )
    m = tune(tiny_lm, "sst2", data=str(sst_like_dir), out=tmp_path / "run", cfg=cfg)
    for f in (
        "metrics.json",
        "metrics.jsonl",
        "checkpoint/" + CHECKPOINT_FILE,
        "prompt/prompt.safetensors",
        "prompt/prompt.json",
    ):
        assert (tmp_path / "run" / f).is_file(), f
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train_accuracy"] is not None and saved["val_accuracy"] is not None
    assert saved["test_accuracy"] is None  # never evaluated on test unless asked
    assert saved["examples_per_s"] > 0 and saved["wall_seconds"] > 0 and m["steps"] == 6
    art = load_prompt(tmp_path / "run" / "prompt")
    assert art.n_tokens == 3 and art.meta["privacy"]["epsilon"] <= 8.0
    assert (
        art.meta["privacy"]["sampling"].startswith("Poisson") and art.meta["privacy"]["steps"] == 6
    )
    assert "calibration" not in art.meta  # only a calibrated prompt carries its offset
    assert set(saved["prompt_drift"]) == {"relative_distance", "norm_ratio"}
    with pytest.raises(BadInput, match="test split"):
        tune(
            tiny_lm,
            "sst2",
            data=str(sst_like_dir),
            out=tmp_path / "r2",
            cfg=cfg,
            val_split="dev",
            test_split="validation",
        )


def test_calibrate_tunes_against_a_uniform_prior_and_scores_the_prompt_as_tuned(
    tiny_lm, sst_like_dir, tmp_path
):
    from promptport.data import load_split
    from promptport.evaluate import evaluate, evaluate_baselines

    tiny_lm.tokenizer.padding_side = "right"
    cfg = TuneConfig(n_tokens=3, max_steps=4, batch_size=4, eval_every=2, calibrate=True)
    m = tune(tiny_lm, "sst2", data=str(sst_like_dir), out=tmp_path / "cal", cfg=cfg)
    art = load_prompt(tmp_path / "cal" / "prompt")
    b = torch.tensor(art.meta["calibration"]["class_offset"])
    assert (
        b.shape == (2,)
        and m["calibration"]["class_offset"] == art.meta["calibration"]["class_offset"]
    )
    # the offset makes the unprompted model's mean class probability over the training inputs uniform,
    # where this random model's own mean is not
    task = get_task("sst2")
    clf = PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, task, max_length=cfg.max_length)
    z = clf.predict_logits(clf.encode(load_split(task, str(sst_like_dir), "train")))
    raw, calibrated = z.softmax(-1).mean(0), (z + b).softmax(-1).mean(0)
    assert float((raw - 0.5).abs().max()) > 0.01
    assert torch.allclose(calibrated, torch.full((2,), 0.5), atol=1e-3)
    # scored with its offset on the model it was tuned on (evaluate reproduces the tune stage's
    # validation figures, the run's evaluate stage saves the offset's logits), and on no other model
    ev = evaluate(tiny_lm, "sst2", data=str(sst_like_dir), prompt=str(tmp_path / "cal" / "prompt"))
    assert ev["accuracy"] == m["evaluations"]["validation"]["accuracy"]
    assert ev["macro_f1"] == m["evaluations"]["validation"]["macro_f1"]
    out = tmp_path / "ev"
    out.mkdir()
    prompts = {"user": ("m", tmp_path / "cal" / "prompt"), "zs": ("m", None)}
    evaluate_baselines({"m": tiny_lm}, "sst2", prompts, out, data=str(sst_like_dir), split="train")
    saved = {k: torch.as_tensor(np.load(out / f"{k}.npz")["logits"]) for k in prompts}
    enc = clf.encode(load_split(task, str(sst_like_dir), "train"))
    assert torch.allclose(saved["user"], clf.predict_logits(enc, art.embeddings) + b, atol=1e-4)
    assert torch.allclose(saved["zs"], z, atol=1e-4)  # no prompt, no offset
    assert torch.equal(prompt_class_offset(art.meta, tiny_lm.info), b)
    other = dataclasses.replace(tiny_lm.info, num_layers=tiny_lm.info.num_layers + 1)
    assert prompt_class_offset(art.meta, other) is None
    with pytest.raises(BadInput, match="calibrate"):
        dataclasses.replace(cfg, dp=DPConfig(epsilon=8.0, delta=1e-3)).validate(20)


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def test_cli_tune_dp_prints_statement(tiny_model_dir, sst_like_dir, tmp_path, capsys):
    out = tmp_path / "dp"
    rc, text = run_cli(
        [
            "tune",
            "--model",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data",
            sst_like_dir,
            "--out",
            out,
            "--n-tokens",
            2,
            "--max-steps",
            3,
            "--batch-size",
            4,
            "--dp",
            "--epsilon",
            8,
            "--delta",
            1e-3,
            "--accountant",
            "rdp",
            "--test-split",
            "train",
        ],
        capsys,
    )
    assert rc == 2 and "train_split" in text  # test split must differ from the training split
    rc, text = run_cli(
        [
            "tune",
            "--model",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data",
            sst_like_dir,
            "--out",
            out,
            "--n-tokens",
            2,
            "--max-steps",
            3,
            "--batch-size",
            4,
            "--dp",
            "--epsilon",
            8,
            "--delta",
            1e-3,
            "--accountant",
            "rdp",
        ],
        capsys,
    )
    assert rc == 0, text
    assert (
        "privacy: (" in text
        and "-DP" in text
        and "not covered" in text
        and "tune: sst2 accuracy" in text
    )
    meta = json.loads((out / "prompt" / "prompt.json").read_text())
    assert meta["privacy"]["delta"] == 1e-3 and meta["privacy"]["dataset_size"] == 20
    rc, text = run_cli(
        [
            "tune",
            "--model",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data",
            sst_like_dir,
            "--out",
            out,
            "--n-tokens",
            2,
            "--max-steps",
            3,
            "--batch-size",
            4,
        ],
        capsys,
    )
    assert (
        rc == 2 and "--resume" in text
    )  # the finished run's checkpoint is not overwritten silently


@pytest.mark.parametrize(
    "extra,field",
    [
        (["--dp", "--epsilon", 0], "epsilon"),
        (["--dp", "--epsilon", -2], "epsilon"),
        (["--dp"], "epsilon"),
        (["--dp", "--epsilon", 8, "--delta", 0.05], "delta"),  # N = 20, so delta must be < 0.05
        (["--dp", "--epsilon", 8, "--delta", 0], "delta"),
        (["--dp", "--epsilon", 8, "--delta", 1e-3, "--max-grad-norm", 0], "max_grad_norm"),
        (["--dp", "--epsilon", 8, "--delta", 1e-3, "--batch-size", 21], "batch_size"),
        (["--batch-size", 50], "batch_size"),
        (
            ["--dp", "--epsilon", 1e-3, "--delta", 1e-3, "--accountant", "rdp", "--max-steps", 500],
            "epsilon",
        ),
        (["--epsilon", 8], "epsilon"),
        (["--lr", 0], "lr"),
        (["--train-limit", 0], "train_limit"),
    ],
)
def test_cli_tune_bad_input_exit_2(extra, field, tiny_model_dir, sst_like_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    rc, text = run_cli(
        [
            "tune",
            "--model",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data",
            sst_like_dir,
            "--out",
            out,
            "--n-tokens",
            2,
            "--max-steps",
            2,
            "--batch-size",
            4,
            *extra,
        ],
        capsys,
    )
    assert rc == 2, text
    first = [ln for ln in text.splitlines() if ln.strip()][0]
    assert first.startswith(f"error: {field}") and "Traceback" not in text
    assert not (out / "prompt").exists() and not (out / "metrics.json").exists()


def _cli_cmd(model_dir, data_dir, out):
    return [
        sys.executable,
        "-m",
        "promptport.cli",
        "tune",
        "--model",
        str(model_dir),
        "--task",
        "sst2",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--n-tokens",
        "2",
        "--batch-size",
        "2",
        "--max-steps",
        "400",
        "--checkpoint-every",
        "10",
        "--val-split",
        "none",
        "--dp",
        "--epsilon",
        "8",
        "--delta",
        "1e-3",
        "--accountant",
        "rdp",
        "--lr",
        "0.05",
    ]


def test_sigkill_and_resume_matches_uninterrupted_run(tiny_model_dir, sst_like_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = subprocess.run(
        _cli_cmd(tiny_model_dir, sst_like_dir, full), env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]

    proc = subprocess.Popen(
        _cli_cmd(tiny_model_dir, sst_like_dir, cut),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = cut / "checkpoint" / CHECKPOINT_FILE
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before a checkpoint could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < 400 and not (cut / "prompt").exists()

    r = subprocess.run(
        _cli_cmd(tiny_model_dir, sst_like_dir, cut) + ["--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_prompt(full / "prompt"), load_prompt(cut / "prompt")
    assert torch.equal(a.embeddings, b.embeddings)
    assert a.meta["privacy"]["epsilon"] == b.meta["privacy"]["epsilon"]
    assert a.meta["privacy"]["steps"] == b.meta["privacy"]["steps"] == 400
    m = json.loads((cut / "metrics.json").read_text())
    assert m["resumed_from_step"] == step


def test_warm_up_ramps_the_rate_then_the_schedule_decays_it():
    """`warmup_steps` (the run default: 25): the first optimizer steps take a linearly growing share of
    lr, reaching all of it at the end of the warm-up, then the linear schedule decays over the rest."""
    from promptport.config import DEFAULT_CONFIG, load_run_config
    from promptport.schedules import lr_factor

    got = [lr_factor(s, 250, "linear", 25) for s in range(250)]
    assert got[0] == pytest.approx(1 / 25) and got[12] == pytest.approx(13 / 25)
    assert got[24] == pytest.approx(1.0) and got[25] == pytest.approx(1.0)
    assert got[25 + 112] == pytest.approx(0.5, abs=0.01) and got[-1] < 0.01
    assert all(got[i] < got[i + 1] for i in range(24))  # rises through the warm-up
    assert lr_factor(0, 250, "linear", 0) == 1.0  # none: full rate at once
    assert load_run_config(DEFAULT_CONFIG).tune["warmup_steps"] == 25
