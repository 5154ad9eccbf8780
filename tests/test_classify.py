import torch

from promptport.classify import PromptClassifier, answer_hidden, collate, project
from promptport.data import TextDataset
from promptport.tasks import get_task

TEXTS = [
    "the movie was great",
    "a terrible boring film with bad acting and a thin plot",
    "ok",
    "i loved every minute of it , the jokes land",
]


def _clf(lm, padding_side="right"):
    lm.tokenizer.padding_side = padding_side
    return PromptClassifier(lm.model, lm.tokenizer, get_task("sst2"))


def _ds(texts=TEXTS):
    return TextDataset({"text": list(texts)}, [1, 0, 1, 1][: len(texts)], "mem", "validation")


def test_batched_equals_unbatched_both_padding_sides(tiny_lm):
    prompt = torch.randn(5, lm_hidden(tiny_lm)) * 0.1
    results = []
    for side in ("right", "left"):
        clf = _clf(tiny_lm, side)
        enc = clf.encode(_ds())
        with torch.no_grad():
            for p in (None, prompt):
                batched = clf.class_logits(*clf.batch(enc.input_ids), p)
                single = torch.cat([clf.class_logits(*clf.batch([x]), p) for x in enc.input_ids])
                torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
                results.append(batched)
    torch.testing.assert_close(
        results[0], results[2], atol=1e-5, rtol=1e-5
    )  # right vs left, no prompt
    torch.testing.assert_close(
        results[1], results[3], atol=1e-5, rtol=1e-5
    )  # right vs left, prompt
    tiny_lm.tokenizer.padding_side = "right"


def lm_hidden(lm):
    return lm.model.get_input_embeddings().weight.shape[1]


def test_answer_logits_match_full_forward(tiny_lm):
    """Our restricted projection equals the model's own full logits at the last real token."""
    clf = _clf(tiny_lm)
    enc = clf.encode(_ds())
    ids, mask = clf.batch(enc.input_ids)
    with torch.no_grad():
        ours = clf.vocab_logits(ids, mask)
        for i, x in enumerate(enc.input_ids):
            full = tiny_lm.model(input_ids=torch.tensor([x])).logits[0, -1]
            torch.testing.assert_close(ours[i], full, atol=1e-5, rtol=1e-5)
        words = project(
            tiny_lm.model, answer_hidden(tiny_lm.model, ids, mask), clf.verbalizer.token_ids
        )
        torch.testing.assert_close(words, ours[:, clf.verbalizer.token_ids])


def test_per_example_prompt_copies_equal_shared(tiny_lm):
    clf = _clf(tiny_lm)
    enc = clf.encode(_ds())
    ids, mask = clf.batch(enc.input_ids)
    p = torch.randn(3, lm_hidden(tiny_lm))
    with torch.no_grad():
        a = clf.class_logits(ids, mask, p)
        b = clf.class_logits(ids, mask, p.unsqueeze(0).expand(len(enc), -1, -1).clone())
    torch.testing.assert_close(a, b)


def test_truncation_keeps_template_and_counts(tiny_lm):
    clf = PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, get_task("sst2"), max_length=20)
    long = " ".join(["great"] * 50) + " ending"
    enc = clf.encode(_ds([long, "ok"]))
    assert enc.n_truncated == 1 and len(enc.input_ids[0]) <= 20
    text = tiny_lm.tokenizer.decode(enc.input_ids[0])
    assert text.startswith("Review:") and text.endswith("ending\nSentiment:")


def test_collate_padding_sides():
    ids, mask = collate([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_evaluate_sorted_batches_return_input_order(tiny_lm):
    clf = _clf(tiny_lm)
    enc = clf.encode(_ds())
    a = clf.predict_logits(enc, batch_size=3)
    with torch.no_grad():
        b = torch.cat([clf.class_logits(*clf.batch([x])) for x in enc.input_ids])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    m = clf.evaluate(enc, batch_size=2)
    assert m["n"] == 4 and 0 <= m["accuracy"] <= 1 and "macro_f1" in m


def test_bf16_runs_the_body_in_bf16_and_the_answer_projection_in_fp32(tiny_lm):
    """`precision='bf16'`: the decoder layers compute in bf16 (autocast), the label-word logits come
    from an fp32 projection, stay close to fp32's, and the prompt still gets a finite gradient."""
    from promptport.runtime import at_precision

    clf = _clf(tiny_lm)
    enc = clf.encode(_ds())
    ids, mask = clf.batch(enc.input_ids)
    seen = []
    hook = tiny_lm.model.base_model.layers[0].mlp.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    prompt = torch.nn.Parameter(torch.randn(3, lm_hidden(tiny_lm)) * 0.1)
    try:
        bf = at_precision(clf, "bf16")
        logits = bf.class_logits(ids, mask, prompt)
        in_bf16, seen[:] = list(seen), []
        with torch.no_grad():
            ref = clf.class_logits(ids, mask, prompt)
    finally:
        hook.remove()
    assert set(in_bf16) == {torch.bfloat16} and set(seen) == {torch.float32}
    assert logits.dtype == torch.float32 and bf.precision == "bf16" and clf.precision == "fp32"
    torch.testing.assert_close(logits.detach(), ref, atol=0.05, rtol=0.05)
    assert not torch.equal(logits.detach(), ref)  # it did compute in bf16
    logits.sum().backward()
    assert (
        prompt.grad is not None
        and torch.isfinite(prompt.grad).all()
        and prompt.grad.abs().sum() > 0
    )


def test_a_shared_prompt_runs_once_per_batch_with_the_same_logits_and_gradient(tiny_lm):
    """The prefix path (the prompt's keys and values computed once, shared by the batch) gives the
    logits and the prompt gradient of running the prompt in front of every input, both padding
    sides, and the prompt's positions really run once (1 row) rather than once per input."""
    from promptport.classify import shares_prefix

    assert shares_prefix(tiny_lm.model)
    for side in ("right", "left"):
        clf = _clf(tiny_lm, side)
        ids, mask = clf.batch(clf.encode(_ds()).input_ids)
        p = torch.nn.Parameter(torch.randn(5, lm_hidden(tiny_lm)) * 0.1)
        rows = []
        hook = tiny_lm.model.base_model.layers[0].register_forward_pre_hook(
            lambda m, a, kw, rows=rows: rows.append(
                tuple((a[0] if a else kw["hidden_states"]).shape[:2])
            ),
            with_kwargs=True,
        )
        try:
            shared = clf.class_logits(ids, mask, p)
        finally:
            hook.remove()
        assert rows == [(1, 5), (len(TEXTS), ids.shape[1])]
        shared.square().sum().backward()
        g_shared, p.grad = p.grad.clone(), None
        copies = p.unsqueeze(0).expand(len(TEXTS), -1, -1)  # the per-example path: concatenation
        full = clf.class_logits(ids, mask, copies)
        full.square().sum().backward()
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_shared, p.grad, atol=1e-5, rtol=1e-4)
    tiny_lm.tokenizer.padding_side = "right"


class NoDeviceMix(torch.overrides.TorchFunctionMode):
    """Raise where one torch call takes tensors of two devices, as CUDA does; the meta device alone
    accepts CPU operands silently. 0-dim CPU tensors pass, as they do on CUDA."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
        devices = {t.device.type for t in flat if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes devices {sorted(devices)}")
        return func(*args, **kwargs)


def test_class_scores_stay_on_the_models_device(tiny_lm):
    """Every tensor the classifier builds (verbalizer averages, offsets, positions) follows the model
    to its device: a CPU-only suite would miss a CPU tensor meeting CUDA activations (the H200 run
    met one in Verbalizer.scores), so the model runs here on the meta device under NoDeviceMix."""
    import copy

    model = copy.deepcopy(tiny_lm.model).to("meta")
    clf = PromptClassifier(model, tiny_lm.tokenizer, get_task("sst2"))
    enc = clf.encode(_ds())
    ids, mask = collate(enc.input_ids, tiny_lm.tokenizer.pad_token_id, clf.tokenizer.padding_side)
    prompt = torch.zeros(5, lm_hidden(tiny_lm), device="meta")
    with torch.no_grad(), NoDeviceMix():
        z = clf.class_logits(ids.to("meta"), mask.to("meta"), prompt)
    assert z.device.type == "meta" and tuple(z.shape) == (len(TEXTS), 2)
