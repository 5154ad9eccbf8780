import pytest
import torch

from promptport.errors import BadInput
from promptport.models import load_model
from promptport.prompt import (
    TENSOR_KEY,
    check_compatible,
    export_peft,
    init_prompt_embeddings,
    load_prompt,
    make_metadata,
    save_prompt,
)
from promptport.tasks import get_task


def _save(tmp_path, lm, n=4):
    emb = init_prompt_embeddings(lm.model, lm.tokenizer, n, "text", "Classify the sentiment.")
    meta = make_metadata(model_info=lm.info, task=get_task("sst2"), init="text", n_tokens=n)
    return emb, save_prompt(tmp_path / "p", emb, meta)


def test_round_trip(tmp_path, tiny_lm):
    emb, d = _save(tmp_path, tiny_lm)
    art = load_prompt(d)
    torch.testing.assert_close(art.embeddings, emb)
    assert art.meta["model"]["hidden_size"] == emb.shape[1] and art.meta["task"]["name"] == "sst2"
    assert load_prompt(d / "prompt.safetensors").n_tokens == 4
    check_compatible(art, tiny_lm.info)


def test_tampered_prompt_is_detected(tmp_path, tiny_lm):
    _, d = _save(tmp_path, tiny_lm)
    f = d / "prompt.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(BadInput, match="checksum"):
        load_prompt(d)


def test_prompt_for_other_width_refused(tmp_path, tiny_lm, tiny_model_dir_wide):
    _, d = _save(tmp_path, tiny_lm)
    wide = load_model(str(tiny_model_dir_wide))
    with pytest.raises(BadInput, match="hidden size"):
        check_compatible(load_prompt(d), wide.info)


def test_inits(tiny_lm):
    g = torch.Generator().manual_seed(0)
    for init in ("text", "vocab", "random"):
        e = init_prompt_embeddings(
            tiny_lm.model, tiny_lm.tokenizer, 7, init, "describe the task", g
        )
        assert e.shape == (7, tiny_lm.info.hidden_size) and torch.isfinite(e).all()
    with pytest.raises(BadInput):
        init_prompt_embeddings(tiny_lm.model, tiny_lm.tokenizer, 7, "zeros")


def test_labels_init_embeds_the_class_label_words(tiny_lm):
    """`init: labels` is the label words of every class in class order, cycled (Lester et al.)."""
    from promptport.prompt import label_text

    task = get_task("sst2")
    assert label_text(task) == " negative positive"
    e = init_prompt_embeddings(tiny_lm.model, tiny_lm.tokenizer, 5, "labels", label_text(task))
    ids = tiny_lm.tokenizer(" negative positive", add_special_tokens=False)["input_ids"]
    want = tiny_lm.model.get_input_embeddings().weight[torch.tensor((ids * 5)[:5])]
    torch.testing.assert_close(e, want.float())
    with pytest.raises(BadInput, match="init"):
        label_text(get_task("e2e_nlg"))


def test_peft_export_loads_and_matches(tmp_path, tiny_lm, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    emb, d = _save(tmp_path, tiny_lm)
    out = export_peft(load_prompt(d), tmp_path / "peft", str(tiny_model_dir), tiny_lm.model.config)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pm = PeftModel.from_pretrained(base, out)
    got = pm.get_prompt_embedding_to_save("default")
    torch.testing.assert_close(got, emb)
    # Same next-token logits as our classifier path for one unpadded input.
    from promptport.classify import PromptClassifier

    clf = PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, get_task("sst2"))
    x = tiny_lm.tokenizer("Review: the movie was great\nSentiment:")["input_ids"]
    with torch.no_grad():
        ours = clf.vocab_logits(*clf.batch([x]), emb)[0]
        theirs = pm(
            input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long)
        ).logits[0, -1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    from safetensors.torch import load_file

    assert TENSOR_KEY in load_file(str(out / "adapter_model.safetensors"))
