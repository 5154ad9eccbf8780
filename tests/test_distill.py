"""Distillation: student extraction, losses, corpus, trainer (exact resume, DDP), artifact, CLI."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, needs_embedded_teacher
from promptport.cli import main
from promptport.distill import (
    DistillConfig,
    build_corpus,
    distill,
    distill_loss,
    extract_student,
    kd_kl,
    load_student,
    pack_blocks,
    select_layers,
    set_trainable,
    shared_parameter_names,
)
from promptport.errors import BadInput
from promptport.models import load_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    words = CORPUS.split()
    rng = random.Random(0)
    p = tmp_path_factory.mktemp("corpus") / "public.txt"
    p.write_text(
        "\n".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + " ."
            for _ in range(300)
        )
    )
    return p


def tiny_cfg(text_file: Path, **kw) -> DistillConfig:
    base = dict(
        layers=2,
        corpus=[str(text_file)],
        max_tokens=1536,
        block_size=32,
        heldout_blocks=4,
        precision="fp32",
        alpha_task=1.0,
        task_template="sst2",
        task_data=[str(text_file)],
        task_examples=48,
        task_heldout=16,
        max_steps=6,
        batch_size=4,
        task_batch_size=8,
        save_every=2,
        lr=2e-3,
    )
    base.update(kw)
    return DistillConfig(**base)


def student_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "student.safetensors"))


# ---------------------------------------------------------------- extraction


def test_select_layers_strategies_and_bad_counts():
    assert select_layers(48, 4, "first-last") == [0, 1, 46, 47]  # GPT2-XL -> first 2 + last 2
    assert select_layers(30, 2, "first-last") == [0, 29]
    assert select_layers(30, 3, "first-last") == [0, 1, 29]
    assert select_layers(12, 6, "uniform") == [0, 2, 4, 7, 9, 11]
    assert select_layers(30, 30, "uniform") == list(range(30))
    for n in (0, -1):
        with pytest.raises(BadInput, match="layers"):
            select_layers(30, n)
    with pytest.raises(BadInput, match="only 30"):
        select_layers(30, 31)
    with pytest.raises(BadInput, match="strategy"):
        select_layers(30, 2, "random")


def test_full_depth_student_equals_teacher_and_cut_copies_layers(tiny_lm):
    t = tiny_lm.model
    ids = torch.tensor([[5, 17, 33, 2, 90, 41]])
    full = extract_student(t, [0, 1, 2, 3])
    with torch.no_grad():
        torch.testing.assert_close(full(input_ids=ids).logits, t(input_ids=ids).logits)
    cut = extract_student(t, [0, 3])
    assert cut.config.num_hidden_layers == 2 and t.config.num_hidden_layers == 4
    torch.testing.assert_close(
        cut.model.layers[1].mlp.up_proj.weight, t.model.layers[3].mlp.up_proj.weight
    )
    torch.testing.assert_close(cut.model.norm.weight, t.model.norm.weight)
    torch.testing.assert_close(cut.get_input_embeddings().weight, t.get_input_embeddings().weight)
    own = set_trainable(cut, freeze_embeddings=True)
    assert not any("embed_tokens" in n or "lm_head" in n for n in own)
    assert "model.embed_tokens.weight" in shared_parameter_names(cut)
    assert not cut.get_input_embeddings().weight.requires_grad


def test_gpt2_students_and_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    g = GPT2LMHeadModel(
        GPT2Config(vocab_size=120, n_positions=64, n_embd=32, n_layer=4, n_head=4)
    ).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(
            extract_student(g, [0, 1, 2, 3])(input_ids=ids).logits, g(input_ids=ids).logits
        )
    s = extract_student(g, select_layers(4, 2, "first-last"))
    assert s.config.n_layer == 2
    torch.testing.assert_close(
        s.transformer.h[1].attn.c_attn.weight, g.transformer.h[3].attn.c_attn.weight
    )
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=120,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=2,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
    )
    with pytest.raises(BadInput, match="architecture 'opt'"):
        extract_student(opt, [0])


def test_layer_types_are_filtered_for_gemma_like_configs():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    )
    torch.manual_seed(0)
    s = extract_student(Gemma3ForCausalLM(cfg).eval(), [0, 5])
    assert s.config.layer_types == ["sliding_attention", "full_attention"]


# ---------------------------------------------------------------- loss


def test_kd_kl_full_topk_and_masking():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 50), torch.randn(2, 5, 50) * 3
    T = 2.0
    ref = (
        (
            torch.softmax(t / T, -1) * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))
        ).sum(-1)
        * T
        * T
    )
    torch.testing.assert_close(kd_kl(s, t, T), ref)
    assert kd_kl(t, t, T).abs().max() < 1e-5
    logp = torch.log_softmax(t / T, -1)  # what the teacher cache holds: exact top-k log-probs at T
    v, i = logp.topk(50, -1)
    torch.testing.assert_close(kd_kl(s, v, T, i), ref, atol=1e-4, rtol=1e-4)  # k = V: exact
    v, i = logp.topk(8, -1)
    approx = kd_kl(s, v, T, i)
    assert (approx >= -1e-6).all() and (
        approx <= ref + 1e-4
    ).all()  # a lower bound, exact in the top k

    cfg = DistillConfig(alpha_ce=1.0, alpha_lm=0.5, alpha_cos=1.0)
    ids = torch.randint(0, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    h_s, h_t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    kw = dict(t_top_logp=v, t_topi=i, input_ids=ids, mask=mask, t_hidden=h_t)
    a = distill_loss(cfg, s_logits=s, s_hidden=h_s, **kw)
    s2, h2 = s.clone(), h_s.clone()
    s2[1, 3:] += 100 * torch.randn(2, 50)  # padding positions: must not matter
    h2[1, 3:] = -h2[1, 3:]
    b = distill_loss(cfg, s_logits=s2, s_hidden=h2, **kw)
    for k in ("ce", "lm", "cos", "total"):
        torch.testing.assert_close(a[k], b[k])
    s3 = s.clone()
    s3[0, 2] += 5 * torch.randn(50)  # a real position: must matter
    assert not torch.allclose(distill_loss(cfg, s_logits=s3, s_hidden=h_s, **kw)["ce"], a["ce"])


def test_teacher_cache_holds_exact_float32_top_k_log_probs(tiny_lm):
    """issue 13 defect 9: the cache held top-k logits in bf16 (errors ~1e-2) while the KL called
    them exact; it must hold the teacher's float32 log-probabilities at temperature T."""
    from promptport.classify import project
    from promptport.distill import cache_lm

    torch.manual_seed(0)
    blocks = torch.randint(0, tiny_lm.model.config.vocab_size, (3, 16))
    T, k = 2.0, 8
    c = cache_lm(tiny_lm.model, blocks, k, keep_hidden=False, precision="fp32", temperature=T)
    with torch.no_grad():
        out = tiny_lm.model.base_model(input_ids=blocks, attention_mask=torch.ones_like(blocks))
        exact = torch.log_softmax(project(tiny_lm.model, out.last_hidden_state).float() / T, -1)
    v, i = exact.topk(k, -1)
    assert c["lm_top_logp"].dtype == torch.float32
    assert torch.equal(c["lm_topi"].long(), i)
    torch.testing.assert_close(c["lm_top_logp"], v, atol=1e-6, rtol=0)


def test_autocast_follows_the_model_device(tiny_lm, monkeypatch):
    """issue 13 defect 8: distillation hard-coded torch.autocast("cpu"), so bf16 did nothing on CUDA.
    The autocast device type must be the model's device type, in the cache and the evaluation."""
    import promptport.distill as distill_mod
    from promptport.runtime import autocast

    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        ctx = autocast(torch.device("cuda", 0), "bf16")
    assert ctx.device == "cuda"
    assert autocast("cpu", "bf16").fast_dtype == torch.bfloat16
    with autocast("cpu", "fp32"):  # off: no autocast region at all (also on devices it refuses)
        assert not torch.is_autocast_enabled("cpu")

    seen = []

    def recorder(device, precision):
        seen.append(torch.device(device).type)
        return autocast(device, precision)

    monkeypatch.setattr(distill_mod, "autocast", recorder)
    blocks = torch.randint(0, tiny_lm.model.config.vocab_size, (2, 8))
    distill_mod.cache_lm(tiny_lm.model, blocks, 4, False, "bf16", 1.0)
    distill_mod.evaluate_student(tiny_lm.model, tiny_lm.model, blocks, None, 0, "bf16")
    model_type = next(tiny_lm.model.parameters()).device.type
    assert seen and set(seen) == {model_type}
    src = Path(distill_mod.__file__).parent
    assert not any('autocast("cpu"' in f.read_text() for f in src.glob("*.py"))


def test_label_term_is_kl_between_class_distributions():
    torch.manual_seed(1)
    s, t = torch.randn(3, 50), torch.randn(3, 50) * 2
    m = torch.zeros(2, 50)
    m[0, [4, 7]] = 0.5  # class 0: mean of two label words
    m[1, 9] = 1.0
    cfg = DistillConfig(alpha_ce=0, alpha_cos=0, alpha_task=0, alpha_label=2.0)
    terms = distill_loss(cfg, s_answer=s, t_answer=t, class_scores=lambda v: v @ m.T)
    sc, tc = s @ m.T, t @ m.T
    ref = (torch.softmax(tc, -1) * (torch.log_softmax(tc, -1) - torch.log_softmax(sc, -1))).sum(
        -1
    ).mean() * 2.0
    torch.testing.assert_close(terms["label"], ref)
    assert "task" not in terms
    s2 = s.clone()
    s2[:, 20:] += 10 * torch.randn(
        3, 30
    )  # tokens that are no label word: no effect on the label term
    torch.testing.assert_close(
        distill_loss(cfg, s_answer=s2, t_answer=t, class_scores=lambda v: v @ m.T)["label"], ref
    )
    with pytest.raises(BadInput, match="task_template"):
        DistillConfig(alpha_ce=0, alpha_cos=0, alpha_label=1.0, task_template=None).check()


def test_the_default_recipe_is_the_general_student():
    """No task options: the task terms run over the mixture of templates, on the LM corpus's texts
    (one student for every user); --task-data or a task template change only what they name."""
    cfg = DistillConfig()
    cfg.check()
    assert cfg.uses_task and cfg.task_template == "general"
    assert cfg.task_sources == list(cfg.corpus)
    assert DistillConfig(corpus=["a.txt"]).task_sources == ["a.txt"]
    assert DistillConfig(corpus=["a.txt"], task_data=["b.txt"]).task_sources == ["b.txt"]
    assert not DistillConfig(alpha_task=0, alpha_label=0).uses_task  # plain LM distillation


# ---------------------------------------------------------------- corpus


def test_corpus_packing_and_bad_corpora(tiny_lm, tmp_path, text_file):
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, 0, None)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    c = build_corpus(
        tiny_lm.tokenizer, [str(text_file)], block_size=16, max_tokens=500, heldout_blocks=2
    )
    assert (
        c.train.shape[1] == 16 and len(c.heldout) == 2 and c.meta["train_tokens"] == c.train.numel()
    )
    assert c.meta["sources"] == [str(text_file)] and c.meta["documents_used"][str(text_file)] > 0
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(BadInput, match="corpus"):
        build_corpus(tiny_lm.tokenizer, [str(empty)], block_size=16)
    short = tmp_path / "short.txt"
    short.write_text("the movie was great\n")
    with pytest.raises(BadInput, match="block"):
        build_corpus(tiny_lm.tokenizer, [str(short)], block_size=64, heldout_blocks=0)
    with pytest.raises(BadInput, match="embedded"):
        build_corpus(tiny_lm.tokenizer, ["embedded:nope"], block_size=16)


# ---------------------------------------------------------------- trainer + artifact


def test_distill_trains_saves_and_reloads(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "run"
    r = distill(str(tiny_model_dir), out, tiny_cfg(text_file, max_steps=12, alpha_label=1.0))
    assert r["after"]["kl_per_token"] < r["before"]["kl_per_token"]
    assert r["after"]["answer_kl"] < r["before"]["answer_kl"]
    assert 0 <= r["after"]["answer_class_agreement"] <= 1
    for key in ("student_ppl", "teacher_ppl", "kl_per_token", "top1_agreement"):
        assert key in r["before"] and key in r["after"]
    assert r["parameters"]["own"] < r["parameters"]["total"] < r["parameters"]["teacher_total"]
    assert r["tokens_trained"] > 0 and r["steps"] == 12
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 13)) and all(
        "task" in x and "ce" in x and "label" in x for x in lines
    )
    w = student_weights(out / "student")
    assert not any("embed" in k or "lm_head" in k for k in w)
    assert sum(v.numel() for v in w.values()) == r["parameters"]["own"]

    s = load_model(str(out / "student"))  # a student folder loads by path like any model
    teacher = load_model(str(tiny_model_dir))
    assert (
        s.info.num_layers == 2
        and s.info.embedding_fingerprint == teacher.info.embedding_fingerprint
    )
    fresh = extract_student(teacher.model, r["layers"])
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(s.model(input_ids=ids).logits, fresh(input_ids=ids).logits)
    assert all(not p.requires_grad for p in s.model.parameters())

    # the teacher reference is checked: another teacher (other embeddings) is refused
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    from conftest import build_tiny_llama

    build_tiny_llama(other, seed=1)
    with pytest.raises(BadInput, match="not the student's teacher"):
        load_student(out / "student", teacher=load_model(str(other)))
    (out / "student" / "student.safetensors").write_bytes(b"garbage")
    with pytest.raises(BadInput, match="checksum"):
        load_model(str(out / "student"))


def test_a_continued_student_records_the_students_it_continued(tiny_model_dir, text_file, tmp_path):
    """A student distilled in two runs says so: its student.json and metrics.json name the first
    run's weights (checksum) and training, and a third run nests the chain, newest first."""
    from promptport.student import read_student_meta

    first = distill(str(tiny_model_dir), tmp_path / "a", tiny_cfg(text_file, max_steps=2))
    assert first["continued_from"] is None
    a = read_student_meta(tmp_path / "a" / "student")
    assert "continued_from" not in a

    cfg = tiny_cfg(text_file, max_steps=2, seed=1)
    second = distill(
        str(tiny_model_dir), tmp_path / "b", cfg, student=str(tmp_path / "a" / "student")
    )
    b = read_student_meta(tmp_path / "b" / "student")
    assert b["strategy"] == "continued" and b["layers"] == a["layers"]
    assert b["continued_from"] == second["continued_from"]
    assert b["continued_from"]["sha256"] == a["sha256"] != b["sha256"]
    assert b["continued_from"]["training"] == a["training"] and b["training"]["seed"] == 1

    distill(str(tiny_model_dir), tmp_path / "c", cfg, student=str(tmp_path / "b" / "student"))
    c = read_student_meta(tmp_path / "c" / "student")
    assert c["continued_from"]["sha256"] == b["sha256"]
    assert c["continued_from"]["continued_from"]["sha256"] == a["sha256"]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "promptport.cli", "distill", *args]


def _env(**kw) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO / "src"),
    )
    env.update(kw)
    return env


def _tiny_args(teacher: Path, text_file: Path, out: Path, steps: int = 8) -> list[str]:
    return [
        "--teacher",
        str(teacher),
        "--layers",
        "2",
        "--corpus",
        str(text_file),
        "--max-tokens",
        "1536",
        "--block-size",
        "32",
        "--heldout-blocks",
        "4",
        "--precision",
        "fp32",
        "--alpha-task",
        "1",
        "--task-template",
        "sst2",
        "--task-data",
        str(text_file),
        "--task-examples",
        "48",
        "--max-steps",
        str(steps),
        "--batch-size",
        "4",
        "--task-batch-size",
        "8",
        "--lr",
        "2e-3",
        "--save-every",
        "2",
        "--out",
        str(out),
    ]


def test_sigkill_then_resume_equals_uninterrupted(tiny_model_dir, text_file, tmp_path):
    steps = 10
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(
        _cli(*_tiny_args(tiny_model_dir, text_file, ref, steps)),
        env=_env(),
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        _cli(*_tiny_args(tiny_model_dir, text_file, cut, steps)),
        env=_env(PROMPTPORT_STEP_DELAY="0.4"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = cut / "checkpoint" / "checkpoint.pt"

    def saved_step() -> int:
        return int(torch.load(state, weights_only=True)["step"]) if state.is_file() else 0

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if saved_step() >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "metrics.json").exists()
    done = saved_step()
    assert 4 <= done < steps
    subprocess.run(
        _cli(*_tiny_args(tiny_model_dir, text_file, cut, steps), "--resume"),
        env=_env(),
        check=True,
        capture_output=True,
    )
    a = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in b] == list(range(1, steps + 1))
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)
    wa, wb = student_weights(ref / "student"), student_weights(cut / "student")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)


def test_two_processes_under_accelerate_equal_one(tiny_model_dir, text_file, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = _tiny_args(tiny_model_dir, text_file, one, 6)
    subprocess.run(_cli(*args), env=_env(), check=True, capture_output=True)
    launcher = [
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
        "distill",
    ]
    p = subprocess.run(
        launcher + _tiny_args(tiny_model_dir, text_file, two, 6),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["processes"] == 2
    a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-4 * max(1.0, abs(x["loss"])), (x, y)
    wa, wb = student_weights(one / "student"), student_weights(two / "student")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- CLI and bad input


def test_cli_writes_metrics_and_bad_inputs_exit_2(
    tiny_model_dir, tiny_model_dir_wide, text_file, tmp_path, capsys
):
    out = tmp_path / "cli"
    assert main(["distill", *_tiny_args(tiny_model_dir, text_file, out, 4)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "before",
        "after",
        "parameters",
        "tokens_trained",
        "wall_seconds",
        "tokens_per_s",
        "corpus",
        "task_aware",
    ):
        assert key in m
    assert m["corpus"]["sources"] == [str(text_file)]
    assert "distill: 2-layer student" in capsys.readouterr().out

    def bad(*extra, args=None):
        rc = main(
            [
                "distill",
                *(args or _tiny_args(tiny_model_dir, text_file, tmp_path / "bad", 2)),
                *extra,
            ]
        )
        return rc, capsys.readouterr().err

    rc, e = bad("--layers", "0")
    assert rc == 2 and "layers" in e
    rc, e = bad("--layers", "9")
    assert rc == 2 and "only 4" in e
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, e = bad(
        "--corpus",
        str(empty),
        args=[
            a if a != str(text_file) else str(empty)
            for a in _tiny_args(tiny_model_dir, text_file, tmp_path / "b2", 2)
        ],
    )
    assert rc == 2 and ("corpus" in e or "task_data" in e or "data" in e)
    short = tmp_path / "short.txt"
    short.write_text("the movie was great\n")
    args = _tiny_args(tiny_model_dir, text_file, tmp_path / "b3", 2)
    args[args.index("--corpus") + 1] = str(short)
    rc, e = bad(args=args)
    assert rc == 2 and "block" in e
    # resume from a checkpoint of another teacher (same tokenizer, other weights)
    args = _tiny_args(tiny_model_dir_wide, text_file, out, 4)
    rc, e = bad("--resume", args=args)
    assert rc == 2 and "resume" in e
    # a student of another teacher whose tokenizer differs
    other = tmp_path / "other_tok"
    shutil.copytree(tiny_model_dir, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzqx"])
    tok.save_pretrained(other)
    args = _tiny_args(other, text_file, tmp_path / "b4", 2)
    rc, e = bad("--student", str(out / "student"), args=args)
    assert rc == 2 and "tokenizer" in e


@pytest.mark.slow
@needs_embedded_teacher()
def test_default_teacher_two_layer_student_has_7_1m_own_parameters():
    t = load_model("smollm2-135m-instruct")
    s = extract_student(t.model, select_layers(t.info.num_layers, 2, "first-last"))
    own = set_trainable(s, freeze_embeddings=True)
    n_own = sum(p.numel() for n, p in s.named_parameters() if n in own)
    assert t.info.num_layers == 30 and round(n_own / 1e6, 1) == 7.1
    assert (
        s.get_input_embeddings().weight.data_ptr()
        != t.model.get_input_embeddings().weight.data_ptr()
    )
    torch.testing.assert_close(
        s.get_input_embeddings().weight, t.model.get_input_embeddings().weight
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_resolves_before_the_run_and_is_recorded(
    native, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    """`precision: auto` is bf16 where the device multiplies bf16 natively and fp32 elsewhere; what
    ran (never 'auto') is what the metrics, the run's stage config and so the student store key say."""
    import promptport.runtime as rt
    from promptport.config import RunConfig, stage_configs

    monkeypatch.setattr(rt, "native_bf16", lambda device="cpu": native)
    want = "bf16" if native else "fp32"
    assert rt.resolve_precision("auto") == want
    assert rt.resolve_precision("fp32") == "fp32" and rt.resolve_precision("bf16") == "bf16"
    r = distill(str(tiny_model_dir), tmp_path / "run", tiny_cfg(text_file, precision="auto"))
    assert r["config"]["precision"] == want
    dcfg = stage_configs(RunConfig(distill={"precision": "auto"}))[2]
    assert dcfg.precision == want
    assert DistillConfig(precision="auto").resolved("cpu").precision == want
    assert DistillConfig(precision="fp32").resolved("cpu").precision == "fp32"
    with pytest.raises(BadInput, match="precision"):
        DistillConfig(precision="fp8").check()
