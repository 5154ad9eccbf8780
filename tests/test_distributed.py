"""Two processes under `accelerate launch` (gloo on CPU) give the single-process result for tune, transfer
and audit (distillation has its own test in test_distill.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from promptport.cli import main
from promptport.prompt import init_prompt_embeddings
from promptport.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def _env() -> dict:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO / "src"),
    )


def launch_two(*args: str) -> None:
    """`promptport ARGS` on 2 processes (DDP over gloo on CPU), the way users launch it."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "-m",
        "promptport.cli",
        *args,
    ]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _prompt(d: Path) -> torch.Tensor:
    return load_file(str(d / "prompt" / "prompt.safetensors"))["prompt_embeddings"]


@pytest.mark.parametrize("dp", [False, True], ids=["sgd", "dp-sgd"])
def test_tune_two_processes_equal_one(tiny_model_dir, tiny_lm, sst_like_dir, tmp_path, dp):
    args = [
        "tune",
        "--model",
        str(tiny_model_dir),
        "--task",
        "sst2",
        "--data",
        str(sst_like_dir),
        "--n-tokens",
        "4",
        "--batch-size",
        "6",
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--max-length",
        "32",
        "--lr",
        "0.05",
        "--seed",
        "3",
    ] + (["--dp", "--epsilon", "8"] if dp else [])
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    launch_two(*args, "--out", str(two))
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    a = [r for r in _jsonl(one / "metrics.jsonl") if r["type"] in ("train", "eval")]
    b = [r for r in _jsonl(two / "metrics.jsonl") if r["type"] in ("train", "eval")]
    assert [(r["type"], r["step"]) for r in a] == [(r["type"], r["step"]) for r in b]
    for x, y in zip(a, b):
        if x["type"] == "train":
            assert (
                x["batch_size"] == y["batch_size"]
            )  # the same batches (DP: the same Poisson draws)
            if x["loss"] is not None:
                assert abs(x["loss"] - y["loss"]) < 1e-4 * max(1.0, abs(x["loss"])), (x, y)
        else:
            assert x["val_accuracy"] == y["val_accuracy"]
    torch.testing.assert_close(_prompt(one), _prompt(two), atol=1e-4, rtol=1e-3)
    # the prompt moved away from its initialisation, so the comparison says something
    init = init_prompt_embeddings(
        tiny_lm.model, tiny_lm.tokenizer, 4, "text", get_task("sst2").description
    )
    assert (_prompt(one) - init).abs().max() > 1e-3


@pytest.fixture(scope="module")
def student_and_prompt(tmp_path_factory):
    """A 2-layer 'student' sharing the tiny teacher's tokenizer and width, and a user prompt made on it."""
    from conftest import build_tiny_llama
    from promptport.models import load_model
    from promptport.prompt import make_metadata, save_prompt

    d = tmp_path_factory.mktemp("dist-transfer")
    student_dir = build_tiny_llama(d / "student", layers=2, seed=1)
    student = load_model(str(student_dir))
    g = torch.Generator().manual_seed(3)
    emb = init_prompt_embeddings(student.model, student.tokenizer, 4, "random", generator=g) * 5
    meta = make_metadata(model_info=student.info, task=get_task("sst2"), init="random", n_tokens=4)
    words = [
        "the",
        "movie",
        "was",
        "great",
        "and",
        "the",
        "acting",
        "was",
        "wonderful",
        "a",
        "terrible",
        "boring",
        "film",
        "with",
        "bad",
        "acting",
    ]
    lines = [
        " ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist())
        for _ in range(60)
    ]
    (d / "public.txt").write_text("\n".join(lines) + "\n")
    return student_dir, save_prompt(d / "user_prompt", emb, meta), d / "public.txt"


def test_transfer_two_processes_equal_one(tiny_model_dir, student_and_prompt, tmp_path):
    student_dir, prompt, public = student_and_prompt
    args = [
        "transfer",
        "--prompt",
        str(prompt),
        "--student",
        str(student_dir),
        "--teacher",
        str(tiny_model_dir),
        "--public-data",
        str(public),
        "--n-public",
        "30",
        "--steps",
        "4",
        "--batch-size",
        "6",
        "--lr",
        "0.01",
        "--max-length",
        "32",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    launch_two(*args, "--out", str(two))
    a, b = _jsonl(one / "metrics.jsonl"), _jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for k in ("loss", "heldout_loss"):
            assert (k in x) == (k in y)
            if k in x:
                assert abs(x[k] - y[k]) < 1e-4 * max(1.0, abs(x[k])), (k, x, y)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert ma["tokens"] == mb["tokens"] and ma["best"]["step"] == mb["best"]["step"]
    torch.testing.assert_close(_prompt(one), _prompt(two), atol=1e-5, rtol=1e-4)
    assert (
        _prompt(one) - load_file(str(prompt / "prompt.safetensors"))["prompt_embeddings"]
    ).abs().max() > 1e-4


def test_audit_two_processes_equal_one(tiny_model_dir, sst_like_dir, tmp_path):
    args = [
        "audit",
        "--model",
        str(tiny_model_dir),
        "--task",
        "sst2",
        "--data",
        str(sst_like_dir),
        "--pool-size",
        "12",
        "--shadows",
        "4",
        "--n-tokens",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "3",
        "--max-length",
        "32",
        "--n-boot",
        "20",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    launch_two(*args, "--out", str(two))
    for s in range(4):
        la = load_file(str(one / "shadows" / f"shadow_{s:03d}.safetensors"))
        lb = load_file(str(two / "shadows" / f"shadow_{s:03d}.safetensors"))
        assert set(la) == set(lb)
        for k in la:
            torch.testing.assert_close(la[k], lb[k], atol=1e-5, rtol=1e-4)
    ra, rb = (json.loads((d / "report" / "report.json").read_text()) for d in (one, two))
    assert ra["n_shadows"] == rb["n_shadows"] == 4
    assert ra["auc"] == pytest.approx(rb["auc"], abs=1e-6)
    # the shadows differ from one another (each trained on its own half), so equality is not trivial
    l0, l1 = (load_file(str(one / "shadows" / f"shadow_{s:03d}.safetensors")) for s in (0, 1))
    assert not np.allclose(l0["logits"].numpy(), l1["logits"].numpy())
