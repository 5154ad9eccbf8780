"""Other teacher families through the whole pipeline (distil -> tune -> transfer -> evaluate -> report):
a masked LM (RoBERTa: the answer is read at the template's <mask> token) and GPT-2 (learned position
embeddings, Conv1D layers), both tiny random models built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, build_tokenizer
from promptport.pipeline import load_run_config, run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def build_tiny_roberta(path: Path, layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS.split("\n"),
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe.save_model(str(path))
    tok = RobertaTokenizerFast.from_pretrained(str(path))  # reads vocab.json + merges.txt
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=300,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=0.2,
    )
    RobertaForMaskedLM(cfg).save_pretrained(path)
    return path


def build_tiny_gpt2(path: Path, layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


@pytest.fixture()
def data(tmp_path):
    rows = [
        ("the movie was great", 1),
        ("a terrible boring film", 0),
        ("i loved every minute of it", 1),
        ("worst film of the year", 0),
    ] * 4
    d = tmp_path / "private"
    d.mkdir()
    for split, r in (("train", rows), ("dev", rows[:8]), ("test", rows[2:10])):
        (d / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in r))
    public = tmp_path / "public.txt"
    public.write_text(
        "\n".join(f"news item {i} about the market and the weather today" for i in range(60)) + "\n"
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 4)
    mlm_task = tmp_path / "review_mlm.yaml"
    mlm_task.write_text(
        'description: "Is the review positive or negative?"\n'
        'template: "{text} It was <mask>."\n'
        "columns: {text: [sentence]}\n"
        "classes: [negative, positive]\n"
        'verbalizer: {negative: [" terrible"], positive: [" great"]}\n'
        'label_map: {"0": negative, "1": positive}\n'
    )
    return {"private": d, "public": public, "corpus": corpus, "mlm_task": mlm_task}


def _run(tmp_path, teacher: Path, task: str, data: dict) -> dict:
    cfg = load_run_config(
        None,
        dict(
            run_dir=str(tmp_path / "run"),
            teacher=str(teacher),
            task=task,
            private_data=str(data["private"]),
            public_data=str(data["public"]),
            eval_split="test",
            distill={
                "layers": 2,
                "corpus": [str(data["corpus"])],
                "max_tokens": 1024,
                "block_size": 32,
                "heldout_blocks": 2,
                "precision": "fp32",
                "max_steps": 2,
                "batch_size": 4,
                "alpha_ce": 1.0,
                "alpha_cos": 1.0,
                "alpha_lm": 0.0,
                "alpha_task": 1.0,
                "task_template": task,
                "task_data": [str(data["corpus"])],
                "task_examples": 24,
                "task_heldout": 4,
                "task_batch_size": 8,
                "save_every": 0,
            },
            tune={"n_tokens": 4, "max_steps": 3, "batch_size": 4, "lr": 0.05, "max_length": 32},
            transfer={"n_public": 24, "steps": 2, "batch_size": 4, "max_length": 32},
        ),
    )
    return run_pipeline(cfg, progress=False, log=lambda m: None)


def _check_run(tmp_path, r: dict) -> None:
    run = tmp_path / "run"
    for stage in ("distill", "tune", "transfer", "evaluate"):
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "complete", (
            stage
        )
    assert set(r["baselines"]) >= {
        "teacher_zero_shot",
        "student_zero_shot",
        "student_prompt",
        "direct_transfer",
        "post_transfer",
    }
    for b in r["baselines"].values():
        assert b["n"] == 8 and 0.0 <= b["accuracy"] <= 1.0
    assert (run / "report.html").is_file()
    xm = json.loads((run / "transfer" / "metrics.json").read_text())
    assert xm["steps"] == 2 and xm["initial_heldout_loss"] > 0


def test_roberta_masked_lm_whole_pipeline(tmp_path, data):
    from promptport.classify import PromptClassifier
    from promptport.models import load_model
    from promptport.tasks import get_task

    teacher = build_tiny_roberta(tmp_path / "roberta")
    lm = load_model(str(teacher))
    assert type(lm.model).__name__ == "RobertaForMaskedLM"
    clf = PromptClassifier(lm.model, lm.tokenizer, get_task(str(data["mlm_task"])))
    ids, mask = clf.batch([clf.tokenizer("a fine film It was <mask>.")["input_ids"]])
    # the answer is read at the mask token, not at the last token ('</s>')
    from promptport.classify import answer_index

    assert int(answer_index(lm.model, ids, mask)[0]) == ids[0].tolist().index(
        lm.tokenizer.mask_token_id
    )
    # ... and equals the model's own MLM logits there (head transform included), with right or left padding
    with torch.no_grad():
        full = lm.model(input_ids=ids, attention_mask=mask).logits[
            0, answer_index(lm.model, ids, mask)[0]
        ]
    torch.testing.assert_close(clf.vocab_logits(ids, mask)[0], full, atol=1e-4, rtol=1e-4)
    # a built-in causal template gets a mask slot appended
    assert PromptClassifier(lm.model, lm.tokenizer, get_task("sst2")).task.template.endswith(
        "Sentiment: <mask>"
    )
    r = _run(tmp_path, teacher, str(data["mlm_task"]), data)
    _check_run(tmp_path, r)
    student = json.loads((tmp_path / "run" / "distill" / "student" / "student.json").read_text())
    assert student["layers"] == [0, 3]  # first k + last k


def test_gpt2_whole_pipeline(tmp_path, data):
    from promptport.models import load_model

    teacher = build_tiny_gpt2(tmp_path / "gpt2")
    assert type(load_model(str(teacher)).model).__name__ == "GPT2LMHeadModel"
    r = _run(tmp_path, teacher, "sst2", data)
    _check_run(tmp_path, r)
