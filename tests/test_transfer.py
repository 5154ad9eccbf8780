import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_llama
from promptport.errors import BadInput
from promptport.models import load_model
from promptport.prompt import init_prompt_embeddings, load_prompt, make_metadata, save_prompt
from promptport.tasks import get_task
from promptport.transfer import TransferConfig, transfer, transfer_loss, transfer_many


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    t_p, s_p, s, t = (torch.randn(3, 7) for _ in range(4))
    T, a = 2.0, 0.3

    def kl(p_logits, q_logits):  # KL(softmax(p/T) || softmax(q/T)), written out
        p = torch.exp(p_logits / T) / torch.exp(p_logits / T).sum(-1, keepdim=True)
        q = torch.exp(q_logits / T) / torch.exp(q_logits / T).sum(-1, keepdim=True)
        return (p * torch.log(p / q)).sum(-1)

    want = (a * T**2 * kl(s_p - s, t_p - t) + (1 - a) * T**2 * kl(s_p, t_p)).mean()
    torch.testing.assert_close(transfer_loss(t_p, s_p, s, t, a, T), want)
    # alpha = 0 is the output term only, alpha = 1 the shift term only; identical inputs give zero loss
    torch.testing.assert_close(transfer_loss(t_p, s_p, s, t, 0.0, T), (T**2 * kl(s_p, t_p)).mean())
    torch.testing.assert_close(
        transfer_loss(t_p, s_p, s, t, 1.0, T), (T**2 * kl(s_p - s, t_p - t)).mean()
    )
    assert float(transfer_loss(s_p, s_p, s, s, a, T)) == pytest.approx(0.0, abs=1e-6)
    # and agrees with torch's kl_div
    ref = F.kl_div(
        F.log_softmax(t_p / T, -1), F.log_softmax(s_p / T, -1), log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(transfer_loss(t_p, s_p, s, t, 0.0, T), (T**2 * ref).mean())


def test_gradient_wrt_teacher_prompt_output_is_analytic():
    """d/dt_p of T^2 KL(softmax(a/T) || softmax(b/T)) is T (softmax(b/T) - softmax(a/T)): the output
    term pulls t_p towards s_p, the shift term pulls t_p - t towards s_p - s (batch mean)."""
    torch.manual_seed(1)
    t_p = torch.randn(3, 6, requires_grad=True)
    s_p, s, t = (torch.randn(3, 6) for _ in range(3))
    T, a = 2.0, 0.25
    transfer_loss(t_p, s_p, s, t, a, T).backward()
    sm = lambda x: torch.softmax(x / T, -1)  # noqa: E731
    want = (a * T * (sm(t_p - t) - sm(s_p - s)) + (1 - a) * T * (sm(t_p) - sm(s_p))) / 3
    torch.testing.assert_close(t_p.grad, want.detach())


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_dir):
    """A 'teacher' and a 'student' with the same tokenizer and width (the student has fewer layers)."""
    student_dir = build_tiny_llama(tmp_path_factory.mktemp("student"), layers=2, seed=1)
    return load_model(str(tiny_model_dir)), load_model(str(student_dir))


@pytest.fixture()
def user_prompt(tmp_path, pair):
    _, student = pair
    g = torch.Generator().manual_seed(3)
    emb = init_prompt_embeddings(student.model, student.tokenizer, 4, "random", generator=g) * 5
    meta = make_metadata(model_info=student.info, task=get_task("sst2"), init="random", n_tokens=4)
    return save_prompt(tmp_path / "user_prompt", emb, meta)


@pytest.fixture()
def public_file(tmp_path):
    f = tmp_path / "public.txt"
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
    g = torch.Generator().manual_seed(0)
    lines = [
        " ".join(words[i] for i in torch.randint(len(words), (6,), generator=g).tolist())
        for _ in range(60)
    ]
    f.write_text("\n".join(lines) + "\n")
    return f


def test_transfer_trains_only_p_t_and_reduces_heldout_loss(
    pair, user_prompt, public_file, tmp_path
):
    teacher, student = pair
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    cfg = TransferConfig(n_public=60, epochs=6, lr=5e-2, batch_size=8, seed=0)
    r = transfer(
        user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "tr", cfg=cfg
    )
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())
    assert all(p.grad is None for p in student.model.parameters())
    assert r["best"]["heldout_loss"] < r["initial_heldout_loss"] * 0.9
    art = load_prompt(tmp_path / "tr" / "prompt")
    assert art.meta["model"]["model_id"] == teacher.info.model_id and art.n_tokens == 4
    assert not torch.equal(art.embeddings, load_prompt(user_prompt).embeddings)
    lines = (tmp_path / "tr" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == r["steps"]


def test_patience_only_cuts_the_transfer_short(
    pair, user_prompt, public_file, tmp_path, monkeypatch
):
    """Early stopping truncates the same trajectory: it stops at the `patience`-th held-out evaluation
    without a lower loss, keeps the best step's prompt (the prompt a run of exactly that many steps
    keeps), and resuming a stopped run (killed before its checkpoint was cleared) does not train on."""
    teacher, student = pair
    common = dict(n_public=60, epochs=40, lr=5e-2, batch_size=8, seed=0, eval_every=1)
    run = dict(student=student, teacher=teacher, public_data=str(public_file))
    import promptport.transfer as tr

    with monkeypatch.context() as m:  # keep OUT/checkpoint/, as a kill after the loop would
        m.setattr(tr.shutil, "rmtree", lambda *a, **k: None)
        r = transfer(
            user_prompt, **run, out=tmp_path / "p", cfg=TransferConfig(**common, patience=2)
        )
    assert (tmp_path / "p" / "checkpoint").is_dir()
    total = 40 * 7  # 54 training examples after the held-out 6: 7 steps a pass
    assert r["stopped_early"] and 2 < r["steps"] < total and r["best"]["step"] > 0
    evals = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert len(evals) == r["steps"] and evals[-1]["step"] == r["steps"]
    after = [e["heldout_loss"] for e in evals if e["step"] > r["best"]["step"]]
    assert len(after) == 2 and min(after) >= r["best"]["heldout_loss"]
    cut = transfer(
        user_prompt, **run, out=tmp_path / "s", cfg=TransferConfig(**common, steps=r["steps"])
    )
    assert not cut["stopped_early"] and cut["best"] == r["best"]
    emb = load_prompt(tmp_path / "p" / "prompt").embeddings
    torch.testing.assert_close(emb, load_prompt(tmp_path / "s" / "prompt").embeddings)
    again = transfer(
        user_prompt,
        **run,
        out=tmp_path / "p",
        cfg=TransferConfig(**common, patience=2),
        resume=True,
    )
    assert again["steps"] == r["steps"] and again["best"] == r["best"]
    torch.testing.assert_close(load_prompt(tmp_path / "p" / "prompt").embeddings, emb)
    with pytest.raises(BadInput, match="patience"):
        TransferConfig(patience=0).validate()


def test_transfer_schedule_sets_each_steps_rate(
    pair, user_prompt, public_file, tmp_path, monkeypatch
):
    """`schedule`: the rate of step k (1-based) of N is lr * (1 - (k - 1) / N) with linear decay,
    lr throughout by default (constant: the loop as before); the schedule changes the prompt."""
    teacher, student = pair
    rates: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    run = dict(student=student, teacher=teacher, public_data=str(public_file))
    common = dict(n_public=60, steps=10, lr=5e-2, batch_size=8, seed=0)
    transfer(user_prompt, **run, out=tmp_path / "c", cfg=TransferConfig(**common))
    assert rates == [5e-2] * 10
    rates.clear()
    cfg = TransferConfig(**common, schedule="linear")
    transfer(user_prompt, **run, out=tmp_path / "l", cfg=cfg)
    assert rates == pytest.approx([5e-2 * (1 - k / 10) for k in range(10)])
    emb = {d: load_prompt(tmp_path / d / "prompt").embeddings for d in ("c", "l")}
    assert not torch.equal(emb["c"], emb["l"])
    with pytest.raises(BadInput, match="schedule"):
        TransferConfig(schedule="step").validate()


def test_average_from_keeps_the_tail_mean_of_the_prompt(
    pair, user_prompt, public_file, tmp_path, monkeypatch
):
    """`average_from`: the kept prompt is the mean of the prompt after each step past that share of
    the run (steps 6-10 of 10 at 0.5), the same trajectory as without it; its held-out loss is the
    run's best. It refuses a share outside [0, 1) and a step-choosing option beside it."""
    teacher, student = pair
    seen: list[torch.Tensor] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        out = step(self, *a, **k)
        seen.append(self.param_groups[0]["params"][0].detach().clone())
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    run = dict(student=student, teacher=teacher, public_data=str(public_file))
    common = dict(n_public=60, steps=10, lr=5e-2, batch_size=8, seed=0)
    plain = transfer(user_prompt, **run, out=tmp_path / "p", cfg=TransferConfig(**common))
    path, seen[:] = list(seen), []
    r = transfer(
        user_prompt, **run, out=tmp_path / "a", cfg=TransferConfig(**common, average_from=0.5)
    )
    assert all(torch.equal(x, y) for x, y in zip(path, seen, strict=True))  # same trajectory
    kept = load_prompt(tmp_path / "a" / "prompt").embeddings
    torch.testing.assert_close(kept.float(), torch.stack(seen[5:]).mean(0).cpu())
    assert not torch.allclose(kept.float(), seen[-1].cpu())
    assert r["best"]["averaged_steps"] == 5 and r["best"]["step"] == 10
    assert r["best"]["heldout_loss"] != plain["best"]["heldout_loss"]
    for bad in (dict(average_from=1.0), dict(average_from=0.5, patience=2)):
        with pytest.raises(BadInput, match="average_from"):
            TransferConfig(**bad).validate()


def test_direct_method_copies_prompt(pair, user_prompt, public_file, tmp_path):
    teacher, student = pair
    transfer(
        user_prompt,
        student,
        teacher,
        public_data=str(public_file),
        out=tmp_path / "d",
        cfg=TransferConfig(method="direct", n_public=10),
    )
    torch.testing.assert_close(
        load_prompt(tmp_path / "d" / "prompt").embeddings, load_prompt(user_prompt).embeddings
    )


def test_firewall_signature_and_manifest(pair, user_prompt, public_file, tmp_path):
    """No parameter through which private data can enter; the manifest lists public inputs only."""
    params = set(inspect.signature(transfer).parameters)
    assert params == {
        "prompt",
        "student",
        "teacher",
        "public_data",
        "out",
        "cfg",
        "task",
        "public_text_column",
        "device",
        "progress",
        "resume",
        "shared",
    }  # shared: the unprompted public-data logits
    assert set(inspect.signature(transfer_many).parameters) == {
        "prompts",
        "student",
        "teacher",
        "public_data",
        "out",
        "cfg",
        "task",
        "public_text_column",
        "device",
        "progress",
    }
    teacher, student = pair
    transfer(
        user_prompt,
        student,
        teacher,
        public_data=str(public_file),
        out=tmp_path / "f",
        cfg=TransferConfig(n_public=20, steps=2, batch_size=4),
    )
    m = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert set(m["inputs"]) == {"prompt", "public_data", "student", "teacher"}
    assert m["inputs"]["public_data"]["source"] == str(public_file)
    assert set(m["outputs"]) >= {"prompt/prompt.safetensors", "metrics.json"}


def test_many_prompts_share_the_public_cache_and_equal_single_runs(
    pair, user_prompt, public_file, tmp_path
):
    teacher, student = pair
    g = torch.Generator().manual_seed(7)
    emb = init_prompt_embeddings(student.model, student.tokenizer, 4, "random", generator=g) * 5
    second = save_prompt(
        tmp_path / "bob",
        emb,
        make_metadata(model_info=student.info, task=get_task("sst2"), init="random", n_tokens=4),
    )
    cfg = TransferConfig(n_public=30, steps=3, batch_size=8, lr=5e-2)
    m = transfer_many(
        [user_prompt, second],
        student,
        teacher,
        public_data=str(public_file),
        out=tmp_path / "many",
        cfg=cfg,
    )
    assert [r["unprompted_cache_shared"] for r in m["runs"]] == [False, True] and m[
        "distinct_public_caches"
    ] == 1
    alone = transfer(
        second, student, teacher, public_data=str(public_file), out=tmp_path / "alone", cfg=cfg
    )
    assert alone["unprompted_cache_shared"] is False
    torch.testing.assert_close(
        load_prompt(tmp_path / "many" / "01-bob" / "prompt").embeddings,
        load_prompt(tmp_path / "alone" / "prompt").embeddings,
    )
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["prompts"] == 2


def _cache(t_right: bool, s_right: bool, labels, confident=4.0):
    """Vocabulary of 5, label words at ids 1 (class 0) and 3 (class 1)."""
    from promptport.transfer import TransferCache

    def logits(right):
        v = torch.zeros(len(labels), 5)
        y = labels if right else 1 - labels
        v[torch.arange(len(labels)), torch.where(y == 1, 3, 1)] = confident
        return v

    return TransferCache(
        s=torch.zeros(len(labels), 5), s_p=logits(s_right), t=logits(t_right), seconds=0.0
    )


def test_auto_alpha_follows_the_stronger_side():
    from promptport.transfer import auto_alpha

    y = torch.tensor([0, 1, 1, 0, 1, 0, 1, 1])
    ids, avg = torch.tensor([1, 3]), torch.eye(2)
    strong_teacher, info = auto_alpha(_cache(True, False, y), ids, avg, y)
    assert strong_teacher == 1.0 and info["teacher_zero_shot_accuracy"] == 1.0
    strong_student, _ = auto_alpha(_cache(False, True, y), ids, avg, y)
    assert strong_student == 0.0
    assert auto_alpha(_cache(True, True, y), ids, avg, y)[0] == 0.5
    # without labels: the proxy compares confidences, and says it is a proxy
    c = _cache(True, True, y)
    c.s_p = c.s_p / 8  # the prompted student is unsure, the teacher confident
    proxy, info = auto_alpha(c, ids, avg, None)
    assert 0.5 < proxy < 1.0 and info["basis"].startswith("proxy")


def test_auto_alpha_reads_public_labels_when_present(pair, user_prompt, tmp_path):
    teacher, student = pair
    f = tmp_path / "public.tsv"
    f.write_text(
        "sentence\tlabel\n" + "".join(f"public text {i} here\t{i % 2}\n" for i in range(30))
    )
    r = transfer(
        user_prompt,
        student,
        teacher,
        public_data=str(f),
        out=tmp_path / "a",
        cfg=TransferConfig(alpha="auto", n_public=20, steps=1, batch_size=4),
    )
    info = r["alpha_auto"]
    assert info["basis"] == "accuracy on labelled public examples" and info["n_labelled"] == 20
    a_t, a_s = info["teacher_zero_shot_accuracy"], info["prompted_student_accuracy"]
    assert r["alpha"] == pytest.approx(a_t / (a_t + a_s) if a_t + a_s else 0.5)


@pytest.mark.parametrize("method,want", [("output", 0.0), ("shift", 1.0)])
def test_reported_alpha_is_the_trained_one(method, want, pair, user_prompt, public_file, tmp_path):
    teacher, student = pair
    r = transfer(
        user_prompt,
        student,
        teacher,
        public_data=str(public_file),
        out=tmp_path / "m",
        cfg=TransferConfig(method=method, alpha=0.7, n_public=20, steps=1, batch_size=4),
    )
    assert r["alpha"] == want
    meta = load_prompt(tmp_path / "m" / "prompt").meta
    assert meta["training"]["alpha_used"] == want


def test_transfer_uses_the_prompt_template_not_the_registry(pair, tmp_path, public_file):
    """A registry entry with the prompt's task name used to replace the stored template."""
    from promptport.transfer import task_from_prompt

    _, student = pair
    own = get_task("sst2")
    meta = make_metadata(model_info=student.info, task=own, init="random", n_tokens=2)
    meta["task"]["template"] = "Text: {text}\nFeeling:"  # tuned with the user's own template
    emb = init_prompt_embeddings(student.model, student.tokenizer, 2, "random")
    art = load_prompt(save_prompt(tmp_path / "p", emb, meta))
    assert task_from_prompt(art).template == "Text: {text}\nFeeling:"
    with pytest.raises(BadInput, match="task"):
        task_from_prompt(art, "sst2")
    assert (
        task_from_prompt(
            load_prompt(
                save_prompt(
                    tmp_path / "q",
                    emb,
                    make_metadata(model_info=student.info, task=own, init="random", n_tokens=2),
                )
            )
        ).template
        == own.template
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"temperature": 0},
        {"method": "mix"},
        {"init": "zeros"},
        {"space": "tokens"},
        {"precision": "fp8"},
    ],
)
def test_bad_config(bad, pair, user_prompt, public_file, tmp_path):
    teacher, student = pair
    with pytest.raises(BadInput):
        transfer(
            user_prompt,
            student,
            teacher,
            public_data=str(public_file),
            out=tmp_path / "b",
            cfg=TransferConfig(**bad),
        )
    assert not (tmp_path / "b").exists()


def test_width_mismatch_with_copy_init(
    pair, user_prompt, public_file, tmp_path, tiny_model_dir_wide
):
    _, student = pair
    wide = load_model(str(tiny_model_dir_wide))
    with pytest.raises(BadInput, match="hidden size"):
        transfer(user_prompt, student, wide, public_data=str(public_file), out=tmp_path / "w")


def test_transfer_cli(pair, user_prompt, public_file, tmp_path, capsys, tiny_model_dir):
    from promptport.cli import main

    teacher, student = pair
    student_dir = student.model.config._name_or_path or None
    args = [
        "transfer",
        "--prompt",
        str(user_prompt),
        "--student",
        str(student_dir),
        "--teacher",
        str(tiny_model_dir),
        "--public-data",
        str(public_file),
        "--n-public",
        "20",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "cli"),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert "transfer: post alpha=0.500" in capsys.readouterr().out
    assert (tmp_path / "cli" / "prompt" / "prompt.safetensors").is_file()
    assert main(args[:-2] + ["--alpha", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "alpha" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    two = args[:-2] + ["--prompt", str(user_prompt), "--out", str(tmp_path / "two")]
    assert main(two) == 0, capsys.readouterr().err
    assert "2 prompts, 1 reused the shared public-data cache" in capsys.readouterr().out
    assert (tmp_path / "two" / "01-user_prompt" / "prompt" / "prompt.safetensors").is_file()


def test_label_space_compares_class_distributions(pair, user_prompt, public_file, tmp_path):
    """space 'labels': the cached full-vocabulary logits become class scores (the verbalizer's mean
    over each class's label words), the loss compares those, and the transfer still learns."""
    from promptport.classify import PromptClassifier
    from promptport.transfer import TransferCache, label_space

    teacher, student = pair
    clf = PromptClassifier(teacher.model, teacher.tokenizer, get_task("sst2"))
    torch.manual_seed(0)
    V = teacher.model.get_output_embeddings().weight.shape[0]
    s, s_p, t = (torch.randn(5, V) for _ in range(3))
    lab = label_space(TransferCache(s, s_p, t), clf.verbalizer)
    rows = [[int(i) for i in ids] for ids in clf.verbalizer.per_class]
    want = torch.stack([s_p[:, r].mean(-1) for r in rows], -1)
    torch.testing.assert_close(lab.s_p, want)
    assert lab.s.shape == (5, 2) and lab.t.shape == (5, 2)
    cfg = TransferConfig(n_public=60, epochs=6, lr=5e-2, batch_size=8, seed=0, space="labels")
    r = transfer(
        user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "lab", cfg=cfg
    )
    assert r["config"]["space"] == "labels"
    assert r["best"]["heldout_loss"] < r["initial_heldout_loss"] * 0.9


def test_transfer_cli_options_are_the_config_fields():
    """Adding a transfer setting is one edit in TransferConfig: the CLI shows every field marked cli."""
    from promptport.cli import app
    from promptport.options import cli_fields

    names = {p.name for p in app.commands["transfer"].params}
    assert {f.name for f in cli_fields(TransferConfig)} <= names
    assert "space" in names and "alpha" in names


def test_text_init_starts_from_the_task_description(pair, user_prompt, public_file, tmp_path):
    """init 'text': with no steps, the teacher prompt is the description's embeddings (teacher_init)."""
    teacher, student = pair
    cfg = TransferConfig(n_public=20, steps=0, batch_size=4, init="text")
    transfer(
        user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "t", cfg=cfg
    )
    want = init_prompt_embeddings(
        teacher.model, teacher.tokenizer, 4, "text", get_task("sst2").description
    )
    torch.testing.assert_close(load_prompt(tmp_path / "t" / "prompt").embeddings, want.float())


def test_the_teacher_prompt_can_be_shorter_than_the_users(pair, user_prompt, public_file, tmp_path):
    """n_tokens sets the teacher prompt's length (init text: the description cut to it); the transfer
    trains it and the artifact is that long. A copy of the user's prompt cannot change length."""
    teacher, student = pair
    cfg = TransferConfig(n_public=40, epochs=2, lr=5e-2, batch_size=8, init="text", n_tokens=1)
    r = transfer(
        user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "t", cfg=cfg
    )
    art = load_prompt(tmp_path / "t" / "prompt")
    assert art.n_tokens == 1 != load_prompt(user_prompt).n_tokens
    start = init_prompt_embeddings(
        teacher.model, teacher.tokenizer, 1, "text", get_task("sst2").description
    )
    assert not torch.equal(art.embeddings, start.float())  # trained, not the start
    assert r["best"]["heldout_loss"] < r["initial_heldout_loss"]
    with pytest.raises(BadInput, match="n_tokens"):
        transfer(
            user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "c",
            cfg=TransferConfig(n_public=20, steps=0, init="copy", n_tokens=1),
        )  # fmt: skip
    with pytest.raises(BadInput, match="n_tokens"):
        TransferConfig(n_tokens=0).validate()


def test_several_teacher_prompt_lengths_keep_the_lowest_heldout_loss(
    pair, user_prompt, public_file, tmp_path
):
    """n_tokens 'auto' (or 'a,b,c') trains one teacher prompt per length, each exactly as a transfer
    with that one length trains it (same cache, split and batch order), and keeps the one with the
    lowest held-out public loss, whatever its place in the list; the metrics name every candidate."""
    from promptport.transfer_common import teacher_init, teacher_lengths

    teacher, student = pair
    user_n = load_prompt(user_prompt).n_tokens
    lengths = teacher_lengths("auto", user_n)
    assert lengths == list(dict.fromkeys([user_n, 10, 1]))
    base = dict(n_public=40, epochs=2, lr=5e-2, batch_size=8, init="text")
    run = lambda out, n: transfer(  # noqa: E731
        user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / out,
        cfg=TransferConfig(**base, n_tokens=n),
    )  # fmt: skip
    alone = {n: run(f"n{n}", n)["best"]["heldout_loss"] for n in lengths}
    assert len(set(alone.values())) == len(lengths)  # the choice means something
    best_n = min(alone, key=alone.__getitem__)
    for name, spec in (("auto", "auto"), ("rev", ",".join(map(str, reversed(lengths))))):
        r = run(name, spec)
        sel = r["teacher_tokens_selection"]
        assert [c["n_tokens"] for c in sel["candidates"]] == teacher_lengths(spec, user_n)
        for c in sel["candidates"]:
            assert c["best"]["heldout_loss"] == pytest.approx(alone[c["n_tokens"]], rel=1e-5)
        assert sel["n_tokens"] == r["teacher_tokens"] == best_n
        kept = load_prompt(tmp_path / name / "prompt")
        assert torch.allclose(
            kept.embeddings, load_prompt(tmp_path / f"n{best_n}" / "prompt").embeddings
        )
        assert kept.meta["training"]["teacher_tokens_selection"]["n_tokens"] == best_n
        d = tmp_path / name
        assert (d / "metrics.jsonl").read_text() == (d / f"metrics-n{best_n}.jsonl").read_text()
        assert not (d / "checkpoint").exists()
    assert TransferConfig(n_tokens="4").n_tokens == 4  # the command line gives text
    for bad in ("x", "0,1", "", 0):
        with pytest.raises(BadInput, match="n_tokens"):
            TransferConfig(n_tokens=bad).validate()
    with pytest.raises(BadInput, match="n_tokens"):  # a copy keeps the user's length
        transfer(
            user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "copy",
            cfg=TransferConfig(n_public=20, steps=0, init="copy", n_tokens="auto"),
        )  # fmt: skip
    art, task = load_prompt(user_prompt), get_task("sst2")
    with pytest.raises(BadInput, match="n_tokens"):  # generation transfer takes one length
        teacher_init(TransferConfig(init="text", n_tokens="auto"), teacher, art, task)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_of_tune_and_transfer_is_resolved_and_recorded(
    native, pair, user_prompt, public_file, sst_like_dir, tmp_path, monkeypatch
):
    """`precision: auto` is bf16 where the device multiplies bf16 natively, else fp32; the metrics
    and the prompt artifact name what ran, and a bf16 transfer still lowers the held-out loss."""
    import promptport.runtime as rt
    from promptport.privacy import DPConfig
    from promptport.tune import TuneConfig, tune

    monkeypatch.setattr(rt, "native_bf16", lambda device="cpu": native)
    want = "bf16" if native else "fp32"
    teacher, student = pair
    cfg = TransferConfig(n_public=60, epochs=6, lr=5e-2, batch_size=8, precision="auto")
    r = transfer(
        user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "tr", cfg=cfg
    )
    assert r["config"]["precision"] == want
    assert r["best"]["heldout_loss"] < r["initial_heldout_loss"] * 0.9
    tcfg = TuneConfig(
        n_tokens=3,
        max_steps=4,
        batch_size=4,
        precision="auto",
        dp=DPConfig(epsilon=8.0, delta=1e-3),
    )
    m = tune(student, "sst2", data=str(sst_like_dir), out=tmp_path / "tu", cfg=tcfg)
    assert m["config"]["precision"] == want
    assert load_prompt(tmp_path / "tu" / "prompt").meta["training"]["config"]["precision"] == want
    from promptport.config import RunConfig, stage_configs

    run = RunConfig(tune={"precision": "auto"}, transfer={"precision": "auto"}, student="s")
    assert [c.precision for c in stage_configs(run)[:2]] == [want, want]


def test_shift_mean_drop_removes_the_students_mean_prompt_shift():
    """shift_mean drop: the shift term's target keeps how the student's prompt effect varies across
    inputs and drops its mean (a change of the student's label prior); the output term's s_p stays."""
    from promptport.transfer import TransferCache, shift_mean, transfer_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
    bias = torch.tensor([[2.0, -1.0]])
    varying = 0.5 * torch.randn(64, 2, generator=g)
    c = shift_mean(TransferCache(s, s + bias + varying, t), "drop")
    shift = c.s_p - c.s
    assert torch.allclose(shift.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(shift, varying - varying.mean(0), atol=1e-5)
    assert torch.equal(c.s_p, s + bias + varying) and torch.equal(c.t, t)
    # a prompt that only moves the student's prior asks nothing of the teacher once centred ...
    prior = shift_mean(TransferCache(s, s + bias, t), "drop")
    assert float(transfer_loss(t, prior.s_p, prior.s, t, 1.0, 2.0)) == pytest.approx(0, abs=1e-6)
    # ... where kept (the paper) it asks the teacher to move its prior the same way
    kept = shift_mean(TransferCache(s, s + bias, t), "keep")
    assert float(transfer_loss(t, kept.s_p, kept.s, t, 1.0, 2.0)) > 0.1


def test_shift_mean_match_gives_the_teacher_the_prompted_students_prior():
    """shift_mean match: the teacher's target t + s_p - s has the prompted student's mean. A prompt
    that only repairs the student's own bias (the student's prior is off, the teacher's is where the
    prompt takes the student) asks nothing of the teacher; a prior the teacher lacks is copied."""
    from promptport.transfer import TransferCache, shift_mean, transfer_loss

    g = torch.Generator().manual_seed(1)
    t = torch.randn(64, 2, generator=g)
    own_bias = torch.tensor([[1.5, -1.5]])
    varying = 0.5 * torch.randn(64, 2, generator=g)
    # the student: the teacher's scores plus a bias of its own; the prompt removes that bias
    s = t + own_bias
    c = shift_mean(TransferCache(s, t + varying, t), "match")
    target = t + c.s_p - c.s
    assert torch.allclose(target.mean(0), c.s_p.mean(0), atol=1e-5)
    assert torch.equal(c.s_p, t + varying) and torch.equal(c.t, t)
    repair = shift_mean(TransferCache(s, t, t), "match")  # the prompt only repairs the student
    assert float(transfer_loss(t, repair.s_p, repair.s, t, 1.0, 2.0)) == pytest.approx(0, abs=1e-6)
    kept = shift_mean(TransferCache(s, t, t), "keep")  # kept, the repair is pushed onto the teacher
    assert float(transfer_loss(t, kept.s_p, kept.s, t, 1.0, 2.0)) > 0.1
    # a student without a bias of its own whose prompt moves the prior: the teacher gets the move
    prior = torch.tensor([[-1.0, 1.0]])
    moved = shift_mean(TransferCache(t, t + prior, t), "match")
    assert torch.allclose(t + moved.s_p - moved.s, t + prior, atol=1e-5)


def test_shift_mean_is_validated():
    from promptport.transfer import TransferConfig

    with pytest.raises(BadInput, match="shift_mean"):
        TransferConfig(shift_mean="centre").validate()


@pytest.mark.parametrize("init", ["text", "random"])
def test_shift_base_init_copies_only_what_tuning_changed(
    init, pair, public_file, tmp_path, monkeypatch
):
    """shift_base init: the user's starting prompt is rebuilt on the student as `tune` made it, so a
    prompt that learned nothing asks the teacher for no change (shift target = its zero-shot), where
    against the unprompted student it asks for the effect of the start itself."""
    import promptport.transfer as tr
    from promptport.transfer_common import user_init
    from promptport.tune import TuneConfig, tune

    teacher, student = pair
    d = tmp_path / "d"
    d.mkdir()
    (d / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(12))
    )
    cfg = TuneConfig(
        n_tokens=4, init=init, max_steps=1, lr=1e-30, seed=5, max_length=32, batch_size=4
    )
    tune(student, "sst2", data=str(d), out=tmp_path / "u", cfg=cfg, val_split=None)
    art = load_prompt(tmp_path / "u" / "prompt")  # one step of size 1e-30: what it started from
    torch.testing.assert_close(
        user_init(art, student, get_task("sst2")), art.embeddings, atol=0, rtol=0
    )
    caches: dict = {}
    real = tr.train_transfer

    def spy(t_clf, t_enc, cache, p_s, cfg, **kw):
        caches[cfg.shift_base] = cache
        return real(t_clf, t_enc, cache, p_s, cfg, **kw)

    monkeypatch.setattr(tr, "train_transfer", spy)
    for base in ("unprompted", "init"):
        cfg = TransferConfig(n_public=20, steps=0, batch_size=4, shift_base=base)
        tr.transfer(
            art, student, teacher, public_data=str(public_file), out=tmp_path / base, cfg=cfg
        )
    nothing, start = caches["init"], caches["unprompted"]
    torch.testing.assert_close(nothing.s, nothing.s_p)  # nothing learned: nothing to copy
    assert (start.s_p - start.s).abs().max() > 1e-3  # the start's own effect on the student
    torch.testing.assert_close(start.s_p, nothing.s_p)
    torch.testing.assert_close(start.t, nothing.t)


def test_shift_base_init_needs_the_tuning_config(pair, user_prompt, public_file, tmp_path):
    teacher, student = pair
    with pytest.raises(BadInput, match="shift_base"):
        transfer(
            user_prompt, student, teacher, public_data=str(public_file), out=tmp_path / "o",
            cfg=TransferConfig(n_public=20, steps=0, batch_size=4, shift_base="init"),
        )  # fmt: skip


def test_public_texts_recut_to_the_users_length():
    """`public_chars`: whole sentences packed in order to at least N characters (documents cut,
    one-liners joined, a short tail dropped); the transfer's public set is drawn from the pieces."""
    from promptport.transfer_common import public_dataset, recut_texts

    docs = ["One two. Three four five! Six?", "Seven eight nine ten.", "Eleven."]
    assert recut_texts(docs, 8) == ["One two.", "Three four five!", "Six? Seven eight nine ten."]
    assert recut_texts(docs, 30) == ["One two. Three four five! Six?"]  # 29-char tail dropped
    assert recut_texts(["a  b\n c"], 1) == ["a b c"]  # whitespace collapsed
    pub = public_dataset(get_task("sst2"), docs, 10, 0, chars=8)
    assert sorted(next(iter(pub.fields.values()))) == sorted(recut_texts(docs, 8))
    with pytest.raises(BadInput, match="public_chars"):
        TransferConfig(public_chars=0).validate()
    # a length no two pieces reach is the length's fault, and the error names it
    with pytest.raises(BadInput, match="public_chars.*1 distinct pieces"):
        public_dataset(get_task("sst2"), docs, 10, 0, chars=30)
    # a length that gives pieces enough is not blamed when n_public itself asks for one
    with pytest.raises(BadInput, match="public_data"):
        public_dataset(get_task("sst2"), docs, 1, 0, chars=8)


def test_public_texts_cut_into_phrases_for_phrase_inputs():
    """`public_cut: phrases`: a sentence at least twice `public_chars` long becomes runs of whole
    words (its short tail joined to the last run); shorter sentences are packed as whole sentences,
    so for inputs of sentence length the two cuts give the same pieces."""
    from promptport.transfer_common import public_dataset, recut_texts

    long = "a stirring , funny and finally transporting re-imagining of the beast ."
    docs = [long, "Short one. Another short one."]
    assert recut_texts(docs, 14, "phrases") == [
        "a stirring , funny", "and finally transporting", "re-imagining of the beast .",
        "Short one. Another short one.",
    ]  # fmt: skip
    assert recut_texts(docs, 14) == [long, "Short one. Another short one."]
    assert recut_texts(docs, 40, "phrases") == recut_texts(docs, 40)  # no sentence of 80
    pub = public_dataset(get_task("sst2"), docs, 10, 0, chars=14, cut="phrases")
    assert sorted(next(iter(pub.fields.values()))) == sorted(recut_texts(docs, 14, "phrases"))
    with pytest.raises(BadInput, match="public_cut"):
        recut_texts(docs, 14, "words")
    with pytest.raises(BadInput, match="public_cut"):
        TransferConfig(public_cut="words").validate()


@pytest.fixture()
def select_file(tmp_path):
    """Labelled public examples in the task's format (not the user's data)."""
    rows = [
        ("the acting was wonderful", 1),
        ("a boring film with bad acting", 0),
        ("great movie", 1),
        ("terrible and boring", 0),
    ] * 6
    f = tmp_path / "select.jsonl"
    f.write_text("".join(json.dumps({"sentence": t, "label": y}) + "\n" for t, y in rows))
    return f


def test_select_data_keeps_the_most_accurate_step(
    pair, user_prompt, public_file, select_file, tmp_path, monkeypatch
):
    """With `select_data` the kept step is the one with the highest accuracy on the labelled public
    set, not the lowest held-out loss: a scorer whose accuracy peaks at step 3 must keep step 3 (the
    prompt of a 3-step run) although the loss falls on; the real scorer's numbers are the teacher's
    accuracy with and without the kept prompt, recomputed here."""
    teacher, student = pair
    common = dict(n_public=60, lr=5e-2, batch_size=8, seed=0, eval_every=1)
    run = dict(student=student, teacher=teacher, public_data=str(public_file))
    import promptport.transfer as tr
    from promptport.transfer_select import Selector

    peaks = iter([0.5, 0.6, 0.7, 0.9, 0.8, 0.85, 0.6, 0.7, 0.5])  # step 0, 1, ... 8
    with monkeypatch.context() as m:
        m.setattr(
            tr,
            "transfer_selector",
            lambda *a: Selector(lambda p: next(peaks), {"teacher_zero_shot_accuracy": 0.95}),
        )
        r = transfer(
            user_prompt,
            **run,
            out=tmp_path / "k",
            cfg=TransferConfig(**common, steps=8, select_data=str(select_file)),
        )
    losses = [
        json.loads(x)["heldout_loss"]
        for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()
    ]
    assert 1 + min(range(8), key=losses.__getitem__) != 3  # the loss would keep another step
    assert r["best"]["step"] == 3 and r["best"]["select_accuracy"] == 0.9
    assert r["select_data"]["kept_accuracy"] == 0.9 and r["select_data"]["below_zero_shot"]
    three = transfer(user_prompt, **run, out=tmp_path / "3", cfg=TransferConfig(**common, steps=3))
    torch.testing.assert_close(
        load_prompt(tmp_path / "k" / "prompt").embeddings,
        load_prompt(tmp_path / "3" / "prompt").embeddings,
    )
    assert three["select_data"] is None

    real = transfer(
        user_prompt,
        **run,
        out=tmp_path / "r",
        cfg=TransferConfig(**common, steps=4, select_data=str(select_file), n_select=20),
    )
    from promptport.classify import PromptClassifier, encode
    from promptport.transfer_select import load_select_data

    task = get_task("sst2")
    ds = load_select_data(task, str(select_file), 20, 0)
    assert len(ds) == 20 and real["select_data"]["n"] == 20
    clf = PromptClassifier(teacher.model, teacher.tokenizer, task, 128)
    enc = encode(teacher.tokenizer, task, ds, 128)

    def acc(p):
        return float((clf.predict_logits(enc, p).argmax(-1) == enc.labels).float().mean())

    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["inputs"]["select_data"]["fingerprint"] == ds.meta["fingerprint"]
    kept = load_prompt(tmp_path / "r" / "prompt").embeddings
    assert real["select_data"]["kept_accuracy"] == pytest.approx(acc(kept), abs=1e-4)
    assert real["select_data"]["teacher_zero_shot_accuracy"] == pytest.approx(acc(None), abs=1e-4)
    with pytest.raises(BadInput, match="select_data"):
        transfer(
            user_prompt,
            **run,
            out=tmp_path / "x",
            cfg=TransferConfig(**common, steps=1, select_data=str(tmp_path / "none.jsonl")),
        )


def test_selection_ties_keep_the_lower_loss_then_the_first():
    from promptport.transfer import lowest_heldout
    from promptport.transfer_select import best_of, better

    a = {"step": 2, "heldout_loss": 0.5, "select_accuracy": 0.8}
    assert better({"step": 4, "heldout_loss": 0.4, "select_accuracy": 0.8}, a)  # same, lower loss
    assert not better({"step": 4, "heldout_loss": 0.4, "select_accuracy": 0.7}, a)
    assert not better(dict(a, step=4), a)  # a full tie keeps the earlier step
    assert best_of({10: a, 1: dict(a, heldout_loss=0.3), 50: dict(a, heldout_loss=0.3)}) == 1
    assert lowest_heldout({50: 0.2, 10: 0.1, 1: 0.1}) == 10
