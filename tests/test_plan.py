"""`promptport plan`: parameter counts and memory estimates from model configs only; the GPU presets
validate with locally written config.json files; the CPU estimate matches measured peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_embedded_teacher
from promptport.cli import main
from promptport.plan import GiB, estimate_run, format_plan

REPO = Path(__file__).resolve().parents[1]


def _write_config(path: Path, cfg) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(path)  # config.json only: no weights, no tokenizer
    return path


@pytest.fixture(scope="module")
def paper_configs(tmp_path_factory):
    """config.json of the paper's teachers, written locally (the published architecture hyper-parameters)."""
    from transformers import GPT2Config, LlamaConfig, RobertaConfig

    d = tmp_path_factory.mktemp("configs")
    gpt2xl = GPT2Config(
        n_embd=1600,
        n_layer=48,
        n_head=25,
        vocab_size=50257,
        n_positions=1024,
        architectures=["GPT2LMHeadModel"],
    )
    llama = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    roberta = RobertaConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        architectures=["RobertaForMaskedLM"],
    )
    return {
        "gpt2xl": _write_config(d / "gpt2-xl", gpt2xl),
        "llama": _write_config(d / "llama-2-7b", llama),
        "roberta": _write_config(d / "roberta-large", roberta),
    }


@pytest.mark.parametrize(
    "preset,teacher,params,layers",
    [
        ("sst2-gpt2xl.yaml", "gpt2xl", 1_557_611_200, 4),
        ("sst2-llama2-7b.yaml", "llama", 6_738_415_616, 2),
        ("sst2-roberta-large.yaml", "roberta", 355_412_057, 6),
    ],
)
def test_gpu_presets_validate_with_plan(paper_configs, capsys, preset, teacher, params, layers):
    rc = main(
        [
            "plan",
            "--config",
            str(REPO / "configs" / preset),
            "--teacher",
            str(paper_configs[teacher]),
            "--device",
            "cuda",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    p = json.loads(captured.out)
    assert p["parameters"]["teacher"] == params
    assert p["parameters"]["student_layers"] == layers
    assert set(p["stages"]) == {"distill", "tune", "transfer", "evaluate"}
    t_w = params * 4
    for name, st in p["stages"].items():
        assert st["peak_bytes"] > 0 and st["parts"]["runtime"] > 0, name
    assert p["stages"]["transfer"]["peak_bytes"] > t_w  # the teacher is resident
    assert (
        p["stages"]["tune"]["peak_bytes"] < p["stages"]["transfer"]["peak_bytes"]
    )  # the user side is lighter
    if teacher == "roberta":
        assert p["shapes"]["teacher"]["masked_lm"]


def test_warns_when_the_teacher_does_not_fit(paper_configs, monkeypatch):
    import promptport.plan as P

    monkeypatch.setattr(P, "available_bytes", lambda device: 16 * GiB)
    p = estimate_run(
        REPO / "configs" / "sst2-llama2-7b.yaml", teacher=str(paper_configs["llama"]), device="cuda"
    )
    assert any("teacher alone" in w for w in p["warnings"])
    assert "warning: the teacher alone" in format_plan(p)
    monkeypatch.setattr(P, "available_bytes", lambda device: 2000 * GiB)
    p = estimate_run(
        REPO / "configs" / "sst2-llama2-7b.yaml", teacher=str(paper_configs["llama"]), device="cuda"
    )
    assert p["warnings"] == []


def test_plan_bad_input(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("teacher: /nonexistent/model\n")
    assert main(["plan", "--config", str(f)]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["plan", "--layers", "99"]) == 2


# ---------------------------------------------------------------- calibration against measured peak RSS

_MEASURE = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
stage, student, out = sys.argv[1], sys.argv[2], sys.argv[3]
if stage == "tune":
    from promptport.tune import TuneConfig, tune
    tune(student, "sst2", data=sys.argv[4], out=out, val_split=None, train_eval_limit=32,
         cfg=TuneConfig(n_tokens=20, max_steps=2, batch_size=16, max_length=96, eval_batch_size=32))
else:
    from promptport.transfer import TransferConfig, transfer
    transfer(sys.argv[4], student, "smollm2-135m-instruct", public_data=sys.argv[5], out=out,
             cfg=TransferConfig(n_public=32, steps=1, batch_size=16, max_length=96))
# VmHWM is this process's own high-water mark; ru_maxrss is not: Linux carries the parent's peak RSS
# across fork/vfork + exec, so under a big pytest process it reports the parent's peak.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss": hwm * 1024, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _measure(*args: str) -> int:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO / "src"),
    )
    p = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_rss"]


@pytest.mark.slow
@needs_embedded_teacher()
def test_cpu_estimate_within_20_percent_of_measured_peak(tmp_path):
    """Short real tune and transfer stages on a 4-layer student of the default teacher, full-length inputs."""
    from promptport.distill import (
        extract_student,
        save_student,
        select_layers,
        set_trainable,
        teacher_reference,
    )
    from promptport.models import load_model

    t = load_model("smollm2-135m-instruct")
    layers = select_layers(t.info.num_layers, 4)
    s = extract_student(t.model, layers)
    save_student(
        tmp_path / "student",
        s,
        t.tokenizer,
        set_trainable(s),
        {"teacher": teacher_reference("smollm2-135m-instruct", t.info), "layers": layers},
    )
    del t, s
    # long inputs, so every batch is at max_length (the plan's assumption)
    long = " ".join(
        ["the movie was a charming and often affecting journey through a long bleak winter"] * 12
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{i} {long}\t{i % 2}\n" for i in range(64))
    )
    public = tmp_path / "public.txt"
    public.write_text("".join(f"{i} {long}\n" for i in range(64)))
    cfg = {
        "teacher": "smollm2-135m-instruct",
        "student": str(tmp_path / "student"),
        "task": "sst2",
        "tune": {"n_tokens": 20, "batch_size": 16, "max_length": 96, "eval_batch_size": 32},
        "transfer": {"n_public": 32, "batch_size": 16, "max_length": 96},
    }
    plan = estimate_run(cfg, device="cpu")
    measured = {
        "tune": _measure("tune", str(tmp_path / "student"), str(tmp_path / "tune"), str(data))
    }
    measured["transfer"] = _measure(
        "transfer",
        str(tmp_path / "student"),
        str(tmp_path / "xfer"),
        str(tmp_path / "tune" / "prompt"),
        str(public),
    )
    report = {k: (plan["stages"][k]["peak_bytes"] / 2**20, v / 2**20) for k, v in measured.items()}
    print("estimate vs measured MiB:", report)
    for stage, (est, got) in report.items():
        assert abs(est - got) <= 0.2 * got, (stage, est, got, plan["stages"][stage])
