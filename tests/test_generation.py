"""Generation tasks: task kind, target-masked loss, batched generation, metrics, transfer loss, DP grads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from promptport.errors import BadInput
from promptport.generation import (
    GenDataset,
    PromptGenerator,
    encode_pairs,
    eval_set,
    load_gen_split,
    source_ids,
    split_by_input,
    target_mask,
)
from promptport.tasks import Decoding, get_task, task_from_dict

E2E = get_task("e2e_nlg")


@pytest.fixture(scope="module")
def peaky(tmp_path_factory):
    """A tiny random Llama whose logits are far from uniform (larger init), so generation is not one
    repeated token and batched/unbatched differences would show."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import build_tokenizer

    tok = build_tokenizer(tmp_path_factory.mktemp("peaky"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def _ds(pairs):
    return GenDataset({"mr": [m for m, _ in pairs]}, [r for _, r in pairs], "mem", "train")


PAIRS = [
    ("name[the movie], food[great]", "the movie was great and the acting was wonderful ."),
    ("name[a film], food[bad]", "a terrible , boring film ."),
    ("name[x]", "it was a charming journey ."),
]


# ------------------------------------------------------------------------------------------ task kind


def test_generation_task_needs_target_and_valid_decoding():
    base = {
        "name": "g",
        "description": "d",
        "template": "In: {mr}\nOut:",
        "columns": {"mr": ["mr"], "ref": ["ref"]},
        "kind": "generation",
    }
    with pytest.raises(BadInput, match="target"):
        task_from_dict(base)
    ok = task_from_dict({**base, "target": "ref"})
    assert ok.is_generation and ok.decoding.num_beams == 1
    with pytest.raises(BadInput, match="decoding.max_new_tokens"):
        task_from_dict({**base, "target": "ref", "decoding": {"max_new_tokens": 0}})
    with pytest.raises(BadInput, match="decoding.num_beams"):
        task_from_dict({**base, "target": "ref", "decoding": {"num_beams": 99}})
    with pytest.raises(BadInput, match="metric"):
        task_from_dict({**base, "target": "ref", "metrics": ["meteor"]})
    with pytest.raises(BadInput, match="target"):  # a classification task has no target
        task_from_dict(
            {
                **{k: v for k, v in base.items() if k != "kind"},
                "target": "ref",
                "classes": ["a", "b"],
                "verbalizer": {"a": [" a"], "b": [" b"]},
            }
        )


def test_empty_reference_is_refused_with_its_line(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('mr,ref\n"name[a]",good place\n"name[b]",\n')
    with pytest.raises(BadInput, match=r"train.csv:3: empty reference"):
        load_gen_split(E2E, f, "train")
    g = tmp_path / "other.csv"
    g.write_text("mr,text2\nname[a],x\n")
    with pytest.raises(BadInput, match="target"):
        load_gen_split(E2E, g, "train")


def test_eval_set_groups_references_and_split_keeps_inputs_whole():
    ds = _ds([("a", "r1"), ("b", "r2"), ("a", "r3"), ("c", "r4"), ("b", "r5")])
    es = eval_set(E2E, ds)
    assert es.refs == [["r1", "r3"], ["r2", "r5"], ["r4"]]
    parts = split_by_input(ds, {"x": 0.5, "y": 0.5}, seed=1)
    kx = set(parts["x"].keys())
    ky = set(parts["y"].keys())
    assert not kx & ky and len(parts["x"]) + len(parts["y"]) == len(ds)


def test_target_truncation_warns_with_count(tiny_lm):
    long = _ds([("a", "the movie was great " * 30), ("b", "short .")])
    with pytest.warns(UserWarning, match="1 of 2 targets truncated"):
        enc = encode_pairs(tiny_lm.tokenizer, E2E, long, max_length=48)
    assert max(len(x) for x in enc.input_ids) == 48 and enc.n_truncated == 1


# ------------------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("with_prompt", [False, True])
def test_loss_masks_everything_but_target_tokens(peaky, with_prompt):
    """Hand computation: full-vocabulary logits of the unpadded sequence, cross-entropy at the target
    tokens only, mean per example, mean over the batch."""
    model, tok = peaky
    g = PromptGenerator(model, tok, E2E, 64)
    enc = g.encode(_ds(PAIRS))
    ids, mask = g.batch(enc.input_ids)
    torch.manual_seed(1)
    prompt = torch.randn(3, 64) * 0.3 if with_prompt else None
    got = g.loss(ids, mask, enc.labels, prompt, reduction="none")
    want = []
    for seq, L in zip(enc.input_ids, enc.labels.tolist()):
        x = torch.tensor([seq])
        emb = model.get_input_embeddings()(x)
        n = 0
        if prompt is not None:
            emb, n = torch.cat([prompt[None], emb], 1), prompt.shape[0]
        logits = model(inputs_embeds=emb).logits[0, n:]  # positions of the sequence
        T = len(seq)
        nll = [
            -F.log_softmax(logits[j - 1].float(), -1)[seq[j]] for j in range(T - L, T)
        ]  # token j predicted at j-1
        want.append(torch.stack(nll).mean())
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        g.loss(ids, mask, enc.labels, prompt), torch.stack(want).mean(), rtol=1e-4, atol=1e-5
    )
    # the targets are the tokens of " " + ref followed by end-of-sequence
    L0 = int(enc.labels[0])
    assert enc.input_ids[0][-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[0][-L0:-1]).strip() == PAIRS[0][1]


def test_target_mask_any_padding_side():
    mask_r = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    mask_l = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    L = torch.tensor([2, 3])
    assert target_mask(mask_r, L).int().tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert target_mask(mask_l, L).int().tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]


def test_dp_per_example_gradients_match_single_backward_passes(peaky):
    from promptport.tune import per_example_gradients

    model, tok = peaky
    g = PromptGenerator(model, tok, E2E, 64)
    enc = g.encode(_ds(PAIRS))
    torch.manual_seed(2)
    prompt = torch.randn(4, 64) * 0.3
    grads, losses = per_example_gradients(g, prompt, enc, [0, 1, 2])
    for i in range(3):
        p = prompt.clone().requires_grad_()
        ids, mask = g.batch([enc.input_ids[i]])
        loss = g.loss(ids, mask, enc.labels[[i]], p)
        loss.backward()
        torch.testing.assert_close(grads[i], p.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-5, atol=1e-6)


def test_tuning_lowers_the_target_loss_and_dp_runs(peaky, one_thread):
    from promptport.privacy import DPConfig
    from promptport.tune import TuneConfig, train_prompt

    model, tok = peaky
    g = PromptGenerator(model, tok, E2E, 64)
    enc = g.encode(_ds(PAIRS * 4))
    before = g.evaluate(enc, torch.zeros(4, 64))["loss"]
    cfg = TuneConfig(n_tokens=4, init="random", lr=0.05, batch_size=4, max_steps=15, seed=0)
    res = train_prompt(g, enc, enc, cfg)
    assert res.best["selection"] == "validation target loss"
    assert g.evaluate(enc, res.embeddings)["loss"] < before - 0.5
    dp = TuneConfig(
        n_tokens=4, init="random", batch_size=4, max_steps=3, dp=DPConfig(epsilon=8.0, delta=1e-3)
    )
    r = train_prompt(g, enc, None, dp)
    assert r.privacy is not None and r.privacy["epsilon"] <= 8.0 + 1e-6


# ------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_equals_one_at_a_time(peaky, beams):
    model, tok = peaky
    g = PromptGenerator(model, tok, E2E, 64)
    inputs = [E2E.format(mr=m) for m, _ in PAIRS] + ["review sentiment positive negative . it was"]
    ids, _ = source_ids(tok, inputs, 64)
    d = Decoding(max_new_tokens=10, num_beams=beams)
    torch.manual_seed(3)
    for prompt in (None, torch.randn(3, 64) * 0.5):
        batched = g.generate_ids(ids, prompt, d, batch_size=4)
        single = [g.generate_ids([x], prompt, d, batch_size=1)[0] for x in ids]
        assert batched == single
        assert len({tuple(b) for b in batched}) > 1  # not one degenerate output
    # without a prompt, the same as Hugging Face generation from input ids
    hf = [
        model.generate(
            torch.tensor([x]),
            max_new_tokens=10,
            do_sample=False,
            num_beams=beams,
            eos_token_id=g.stop_ids(),
            pad_token_id=g.pad_id,
        )[0, len(x) :].tolist()
        for x in ids
    ]
    ours = g.generate_ids(ids, None, d, batch_size=4)
    assert [o == h[: len(o)] for o, h in zip(ours, hf)] == [True] * len(ids)


def test_evaluate_generation_metrics(peaky):
    model, tok = peaky
    g = PromptGenerator(model, tok, E2E, 64)
    es = eval_set(E2E, _ds(PAIRS + [(PAIRS[0][0], "another reference .")]))
    m, hyps = g.evaluate_generation(
        es, None, decoding=Decoding(max_new_tokens=6), n_boot=50, batch_size=2
    )
    assert len(hyps) == 3 and m["n"] == 3 and m["n_references"] == 4
    for k in E2E.metrics:
        assert 0.0 <= m[f"{k}_ci"][0] <= m[k] <= m[f"{k}_ci"][1] <= 100.0


def test_metrics_equal_sacrebleu_and_rouge():
    import sacrebleu
    from rouge_score import rouge_scorer

    from promptport.gen_metrics import generation_metrics

    hyps = ["the cat sat on the mat", "a dog runs in the park", "hello world"]
    refs = [
        ["the cat sat on a mat", "a cat is on the mat"],
        ["the dog runs in a park"],
        ["hello there world", "hi world", "hello world !"],
    ]
    m = generation_metrics(hyps, refs, ("bleu", "rougeL", "chrf"), n_boot=100)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(3)]
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = sum(sc.score_multi(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / 3 * 100
    assert m["rougeL"] == pytest.approx(want)
    with pytest.raises(BadInput, match="empty reference"):
        generation_metrics(hyps, [refs[0], [""], refs[2]])


# ------------------------------------------------------------------------------------------ transfer


def _hand_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def test_generation_transfer_loss_equals_hand_computation_top_k():
    """V = 4, k = 2: coarsen each distribution to the 2 kept tokens + one remainder bin by hand."""
    from promptport.gen_transfer import generation_transfer_loss

    T, alpha = 2.0, 0.3
    s = [0.1, 1.0, -0.5, 0.3]
    s_p = [1.5, 0.2, -1.0, 0.0]
    t = [0.0, 0.8, 0.1, -0.2]
    t_p = [1.0, 0.5, -0.3, 0.4]
    kept = [0, 1]

    def tempered(x):
        z = sum(math.exp(v / T) for v in x)
        return [math.exp(v / T) / z for v in x]

    def coarse(x):
        p = tempered(x)
        return [p[0], p[1], 1 - p[0] - p[1]]

    def softmax_ratio(a, b):
        r = [ai / bi for ai, bi in zip(a, b)]
        return [v / sum(r) for v in r]

    out_term = _hand_kl(coarse(s_p), coarse(t_p))
    shift_term = _hand_kl(
        softmax_ratio(coarse(s_p), coarse(s)), softmax_ratio(coarse(t_p), coarse(t))
    )
    want = alpha * T * T * shift_term + (1 - alpha) * T * T * out_term

    def lse(x):
        return torch.logsumexp(torch.tensor([x]) / T, -1)

    got = generation_transfer_loss(
        torch.tensor([t_p]),
        torch.tensor([kept]),
        torch.tensor([[s_p[i] for i in kept]]),
        torch.tensor([[s[i] for i in kept]]),
        torch.tensor([[t[i] for i in kept]]),
        lse(s_p),
        lse(s),
        lse(t),
        alpha,
        T,
    )
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_generation_transfer_loss_with_all_tokens_kept_equals_the_classification_loss():
    from promptport.gen_transfer import compress, generation_transfer_loss
    from promptport.transfer import transfer_loss

    torch.manual_seed(0)
    s, s_p, t, t_p = (torch.randn(5, 11) * 2 for _ in range(4))
    for alpha in (0.0, 0.5, 1.0):
        kept, (vs, vsp, vt), (ls, lsp, lt) = compress(s, s_p, t, k=11, T=2.0)
        got = generation_transfer_loss(t_p, kept, vsp, vs, vt, lsp, ls, lt, alpha, 2.0)
        want = transfer_loss(t_p, s_p, s, t, alpha, 2.0, reduction="none")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # few kept tokens: the output term is a lower bound of the full one (coarsening)
        kept, (vs, vsp, vt), (ls, lsp, lt) = compress(s, s_p, t, k=3, T=2.0)
        if alpha == 0.0:
            low = generation_transfer_loss(t_p, kept, vsp, vs, vt, lsp, ls, lt, alpha, 2.0)
            assert bool((low <= want + 1e-6).all())


def test_generation_transfer_end_to_end(peaky, tmp_path, one_thread):
    """Student = teacher here: p_t starts at p_s, so the loss starts near 0 and the stage runs through
    continuations, cache, training, artifact and manifest."""
    from promptport.gen_transfer import build_gen_cache, continuations, train_gen_transfer
    from promptport.transfer import TransferConfig

    model, tok = peaky
    g = PromptGenerator(
        model, tok, E2E.model_copy(update={"decoding": Decoding(max_new_tokens=8)}), 48
    )
    torch.manual_seed(4)
    p_s = torch.randn(3, 64) * 0.3
    inputs = [E2E.format(mr=f"name[{w}]") for w in ["great", "boring", "charming", "thin", "bleak"]]
    enc = continuations(g, p_s, inputs, 48)
    assert all(0 < int(L) <= 8 for L in enc.labels)
    cache = build_gen_cache(g, g, p_s, enc, k=16, temperature=2.0)
    assert cache.kept.shape == (int(enc.labels.sum()), 16)
    cfg = TransferConfig(steps=3, batch_size=2, heldout_fraction=0.2, lr=1e-2)
    res = train_gen_transfer(g, enc, cache, p_s, cfg, alpha=0.5)
    assert res.history[0]["heldout_loss"] == pytest.approx(0.0, abs=1e-4)
    # a different start is pulled back toward p_s's behaviour
    res2 = train_gen_transfer(g, enc, cache, p_s, cfg, alpha=0.5, init_embeddings=p_s * 0)
    assert res2.history[-1]["heldout_loss"] <= res2.history[0]["heldout_loss"]
    # the rate schedule applies here too: linear decay, step k of 3 at lr * (1 - (k - 1) / 3)
    rates: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    lin = TransferConfig(steps=3, batch_size=2, heldout_fraction=0.2, lr=1e-2, schedule="linear")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.optim.Adam, "step", spy)
        train_gen_transfer(g, enc, cache, p_s, lin, alpha=0.5, init_embeddings=p_s * 0)
    assert rates == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])


# ------------------------------------------------------------------------------------------ pipeline


@pytest.fixture()
def gen_private_dir(tmp_path):
    import csv

    d = tmp_path / "e2e-like"
    d.mkdir()
    words = ["great", "boring", "charming", "thin", "bleak", "wonderful", "terrible"]

    def write(name, mrs):
        with open(d / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mr", "ref"])
            for m in mrs:
                w.writerow([f"name[{m}], food[{m}]", f"the {m} film was great ."])
                w.writerow([f"name[{m}], food[{m}]", f"it was a {m} journey ."])

    write("train.csv", [f"{w} {i}" for w in words for i in range(2)])
    write("validation.csv", [f"{w} v" for w in words[:3]])
    write("test.csv", [f"{w} t" for w in words[:4]])
    with open(d / "public.csv", "w") as f:
        f.write("mr\n" + "".join(f'"name[{w} p{i}]"\n' for w in words for i in range(2)))
    return d


def test_run_pipeline_generation_end_to_end(tmp_path, tiny_model_dir, gen_private_dir, one_thread):
    import json

    from conftest import build_tiny_llama
    from promptport.pipeline import load_run_config, run_pipeline

    student = build_tiny_llama(tmp_path / "student", layers=2, seed=1)
    task_file = tmp_path / "gen.yaml"
    task_file.write_text(
        'kind: generation\ndescription: describe the film\ntemplate: "Attributes: {mr}\\n'
        'Description:"\ncolumns: {mr: [mr], ref: [ref]}\ntarget: ref\n'
        "decoding: {max_new_tokens: 6}\nmetrics: [bleu, rougeL]\n"
    )
    cfg = load_run_config(
        None,
        dict(
            run_dir=str(tmp_path / "run"),
            teacher=str(tiny_model_dir),
            student=str(student),
            task=str(task_file),
            private_data=str(gen_private_dir),
            public_data=str(gen_private_dir / "public.csv"),
            public_text_column="mr",
            eval_split="test",
            with_teacher_tuning=True,
            tune={"n_tokens": 4, "epochs": 1, "batch_size": 4, "lr": 0.05, "max_length": 48},
            transfer={"n_public": 10, "steps": 2, "batch_size": 4, "max_length": 48, "top_k": 8},
        ),
    )
    logs: list[str] = []
    r = run_pipeline(cfg, progress=False, log=logs.append)
    names = {
        "teacher_zero_shot",
        "student_zero_shot",
        "student_prompt",
        "direct_transfer",
        "post_transfer",
        "teacher_tuned",
    }
    assert set(r["baselines"]) == names
    for b in r["baselines"].values():
        assert b["n"] == 4 and b["n_references"] == 8
        for k in ("bleu", "rougeL"):
            assert b[f"{k}_ci"][0] <= b[k] <= b[f"{k}_ci"][1]
    run = tmp_path / "run"
    rows = [
        json.loads(x) for x in (run / "evaluate" / "post_transfer.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 4 and len(rows[0]["references"]) == 2
    md = (run / "report.md").read_text()
    assert "Example 1" in md and "ROUGE-L" in md and "references" in md
    assert "rougeL" in r["summary"] or "ROUGE" in r["summary"]
    tm = json.loads((run / "transfer" / "manifest.json").read_text())
    assert str(gen_private_dir / "train.csv") not in json.dumps(tm)
    logs.clear()
    run_pipeline(cfg, progress=False, log=logs.append)
    # tune, teacher-tuning, transfer, evaluate (distill: given); every stage says so the same way
    assert sum("reused" in ln for ln in logs) == 4
    # a stage redone with the same prompts regenerates nothing (per-baseline reuse)
    (run / "evaluate" / "manifest.json").unlink()
    logs.clear()
    run_pipeline(cfg, progress=False, log=logs.append)
    # tune, teacher-tuning, transfer, and each baseline
    assert sum(ln.strip().endswith("reused") for ln in logs) == 3 + len(names)
    # a public MR equal to a private one is refused
    (gen_private_dir / "public.csv").write_text('mr\n"name[great 0], food[great 0]"\n"name[x]"\n')
    cfg2 = cfg.model_copy(update={"run_dir": str(tmp_path / "run2")})
    with pytest.raises(BadInput, match="public_data"):
        run_pipeline(cfg2, progress=False, log=logs.append)


def test_e2e_config_validates():
    from pathlib import Path

    from promptport.pipeline import load_run_config, stage_configs

    cfg = load_run_config(Path(__file__).parents[1] / "configs" / "e2e-smollm2.yaml")
    tcfg, xcfg, dcfg, _ = stage_configs(cfg)
    assert get_task(cfg.task).is_generation and xcfg.top_k > 0 and cfg.eval_limit == 100
    assert xcfg.init == "text"  # a copy of the user's prompt makes the teacher write nothing


# ------------------------------------------------------------------------------------------ audit


def test_lira_audit_on_generation_uses_length_normalised_loglik(
    tmp_path, tiny_model_dir, one_thread
):
    import csv

    import numpy as np

    from promptport.audit import GEN_STATISTIC, AuditSpec, audit, load_shadows, logit_confidence
    from promptport.models import load_model

    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "train.csv"  # a folder of split files: the whole file is the train split
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["mr", "ref"])
        for i in range(12):
            w.writerow([f"name[x{i}]", f"the movie {i} was great ."])
    spec = AuditSpec(
        model=str(tiny_model_dir),
        task="e2e_nlg",
        data=str(f.parent),
        pool_size=8,
        n_shadows=4,
        tune={"n_tokens": 2, "init": "random", "max_steps": 2, "batch_size": 2, "max_length": 48},
    )
    r = audit(tmp_path / "audit", spec, n_boot=20)
    assert r["summary"]["statistic"] == GEN_STATISTIC
    assert 0.0 <= r["summary"]["auc"] <= 1.0
    sh = load_shadows(tmp_path / "audit")
    stat = logit_confidence(sh.logits, sh.labels[None, :])
    assert sh.info[0]["loglik_in"] < 0
    # the statistic is shadow 0's mean token log-prob of each pool target: retrain it the same way
    from dataclasses import replace

    from promptport.audit import tune_config_from_spec
    from promptport.runtime import seed_everything
    from promptport.tune import train_prompt

    lm = load_model(str(tiny_model_dir))
    g = PromptGenerator(lm.model, lm.tokenizer, E2E, 48)
    pool = load_gen_split(E2E, f.parent, "train").select(sh.pool_index.tolist())
    enc = g.encode(pool)
    seed = int(np.random.SeedSequence([spec.seed, 0]).generate_state(1)[0] % (2**31))
    seed_everything(seed)
    members = np.flatnonzero(sh.masks[0]).tolist()
    res = train_prompt(
        g, enc.subset(members), None, replace(tune_config_from_spec(spec), seed=seed)
    )
    ll = g.sequence_logprob(enc, res.embeddings).numpy()
    np.testing.assert_allclose(stat[0], ll, rtol=1e-4, atol=1e-5)
    assert sh.info[0]["loglik_in"] == pytest.approx(ll[sh.masks[0]].mean(), rel=1e-4)


def test_cli_evaluate_generation_and_bad_decoding(
    tmp_path, tiny_model_dir, gen_private_dir, capsys
):
    import json

    from promptport.cli import main

    out = tmp_path / "ev"
    code = main(
        [
            "evaluate", "--model", str(tiny_model_dir), "--task", "e2e_nlg",
            "--data", str(gen_private_dir), "--split", "test", "--limit", "2", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "generation" and m["n"] == 2 and "rougeL_ci" in m
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: generation\ndescription: d\ntemplate: '{mr}'\ncolumns: {mr: [mr], ref: [ref]}\n"
        "target: ref\ndecoding: {max_new_tokens: 5000}\n"
    )
    capsys.readouterr()
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--task", str(bad), "--data", "x"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoding.max_new_tokens" in err[0]


def test_one_generation_file_never_serves_two_splits(tmp_path):
    """As for classification: one file splits by input hash, all references of an MR together."""
    f = tmp_path / "all.csv"
    rows = "".join(f'"name[r{i // 3}]",reference {i}\n' for i in range(300))  # 3 refs per MR
    f.write_text("mr,ref\n" + rows)
    parts = {s: load_gen_split(E2E, f, s) for s in ("train", "validation", "test")}
    keys = {s: set(d.keys()) for s, d in parts.items()}
    assert not (keys["train"] & keys["validation"]) and not (keys["train"] & keys["test"])
    assert not (keys["validation"] & keys["test"])
    assert sum(len(d) for d in parts.values()) == 300
    assert all(len(d) % 3 == 0 for d in parts.values())  # whole MRs
    assert len(load_gen_split(E2E, f, "all")) == 300


def test_generation_split_column_selects_rows(tmp_path):
    """`split_column` names each row's split (the audit and tune pass it for every task kind)."""
    f = tmp_path / "all.csv"
    f.write_text(
        "mr,ref,part\n"
        + "".join(f'"name[r{i}]",reference {i},{"train" if i % 4 else "dev"}\n' for i in range(40))
    )
    train = load_gen_split(E2E, f, "train", split_column="part")
    dev = load_gen_split(E2E, f, "validation", split_column="part")
    assert len(train) == 30 and len(dev) == 10
    assert not set(train.keys()) & set(dev.keys())
    with pytest.raises(BadInput, match="split_column"):
        load_gen_split(E2E, f, "train", split_column="nope")
    with pytest.raises(BadInput, match="split_column"):
        load_gen_split(E2E, f, "test", split_column="part")
