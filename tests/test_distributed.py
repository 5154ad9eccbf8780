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


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO / "src"))


def launch_two(*args: str) -> None:
    """`promptport ARGS` on 2 processes (DDP over gloo on CPU), the way users launch it."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", "-m", "promptport.cli", *args]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _prompt(d: Path) -> torch.Tensor:
    return load_file(str(d / "prompt" / "prompt.safetensors"))["prompt_embeddings"]


@pytest.mark.parametrize("dp", [False, True], ids=["sgd", "dp-sgd"])
def test_tune_two_processes_equal_one(tiny_model_dir, tiny_lm, sst_like_dir, tmp_path, dp):
    args = ["tune", "--model", str(tiny_model_dir), "--task", "sst2", "--data", str(sst_like_dir), "--n-tokens", "4",
            "--batch-size", "6", "--max-steps", "4", "--eval-every", "2", "--max-length", "32", "--lr", "0.05",
            "--seed", "3"] + (["--dp", "--epsilon", "8"] if dp else [])
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    launch_two(*args, "--out", str(two))
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    a = [r for r in _jsonl(one / "metrics.jsonl") if r["type"] in ("train", "eval")]
    b = [r for r in _jsonl(two / "metrics.jsonl") if r["type"] in ("train", "eval")]
    assert [(r["type"], r["step"]) for r in a] == [(r["type"], r["step"]) for r in b]
    for x, y in zip(a, b):
        if x["type"] == "train":
            assert x["batch_size"] == y["batch_size"]  # the same batches (DP: the same Poisson draws)
            if x["loss"] is not None:
                assert abs(x["loss"] - y["loss"]) < 1e-4 * max(1.0, abs(x["loss"])), (x, y)
        else:
            assert x["val_accuracy"] == y["val_accuracy"]
    torch.testing.assert_close(_prompt(one), _prompt(two), atol=1e-4, rtol=1e-3)
    # the prompt moved away from its initialisation, so the comparison says something
    init = init_prompt_embeddings(tiny_lm.model, tiny_lm.tokenizer, 4, "text", get_task("sst2").description)
    assert (_prompt(one) - init).abs().max() > 1e-3
