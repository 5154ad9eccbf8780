"""LiRA audit: statistic, attacks (checked against an independent TF Privacy-semantics reference), metrics,
empirical epsilon, storage/resume, report, and end-to-end leakage on a tiny model (leaky vs. DP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from promptport import audit as A
from promptport import lira

# ------------------------------------------------------------------ reference (TF Privacy semantics)
# An independent, loop-based re-implementation of tensorflow_privacy advanced_mia.compute_score_lira
# (read from tensorflow/privacy, privacy_tests/membership_inference_attack/advanced_mia.py): per-example
# median over shadows, np.std (ddof 0) per example or over all residuals (fix_variance), Gaussian
# log-pdf with std + 1e-30; option 'both' returns -(log_pr_in - log_pr_out), 'out' returns log_pr_out,
# i.e. members score *low* there. TF Privacy's options are 'both'/'in'/'out' (there is no 'offset' or
# 'online' option name): online LiRA = 'both', offline = 'out'.


def tfp_compute_score_lira(stat_target, stat_in, stat_out, option="both", fix_variance=False):
    avg_in = np.array([np.median(s) for s in stat_in])
    avg_out = np.array([np.median(s) for s in stat_out])
    if fix_variance:
        std_in = np.std(np.concatenate([s - m for s, m in zip(stat_in, avg_in)]))
        std_out = np.std(np.concatenate([s - m for s, m in zip(stat_out, avg_out)]))
    else:
        std_in = np.array([np.std(s) for s in stat_in])
        std_out = np.array([np.std(s) for s in stat_out])
    out = []
    for i, t in enumerate(stat_target):
        si = std_in if np.ndim(std_in) == 0 else std_in[i]
        so = std_out if np.ndim(std_out) == 0 else std_out[i]
        lp_in = stats.norm.logpdf(t, avg_in[i], si + 1e-30)
        lp_out = stats.norm.logpdf(t, avg_out[i], so + 1e-30)
        out.append(-(lp_in - lp_out) if option == "both" else lp_out)
    return np.array(out)


def tfp_logit_statistic(logits, labels, small_value=1e-45):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(labels)
    p_true = p[range(n), labels].copy()
    p[range(n), labels] = 0
    return np.log(p_true + small_value) - np.log(p.sum(1) + small_value)


@pytest.fixture()
def fixture_stats():
    """8 references, 30 examples, irregular IN/OUT counts (>= 2 each), IN shifted up."""
    rng = np.random.default_rng(7)
    r, p = 8, 30
    masks = rng.random((r, p)) < 0.5
    masks[:2], masks[2:4] = True, False  # guarantee >= 2 of each per example
    ref = rng.normal(0, 1, (r, p)) + 1.5 * masks + rng.normal(0, 2, p)
    target = rng.normal(0, 1.5, p)
    return target, ref, masks


@pytest.mark.parametrize(
    "attack,variance,option,fix",
    [
        ("online", "per-example", "both", False),
        ("online", "global", "both", True),
        ("offline-logpdf", "per-example", "out", False),
        ("offline-logpdf", "global", "out", True),
    ],
)
def test_lira_matches_tf_privacy_reference(fixture_stats, attack, variance, option, fix):
    target, ref, masks = fixture_stats
    stat_in = [ref[masks[:, j], j] for j in range(ref.shape[1])]
    stat_out = [ref[~masks[:, j], j] for j in range(ref.shape[1])]
    want = -tfp_compute_score_lira(
        target, stat_in, stat_out, option, fix
    )  # ours: members score high
    got = A.lira_scores(target, ref, masks, attack, variance)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_lira_hand_computed_values():
    # IN refs 2, 4, 3 (median 3), OUT refs 0, -1, 1 (median 0); both std sqrt(2/3); target 1.
    ref = np.array([[2.0], [4.0], [3.0], [0.0], [-1.0], [1.0]])
    m = np.array([[1], [1], [1], [0], [0], [0]], dtype=bool)
    t = np.array([1.0])
    s2 = 2 / 3
    assert A.lira_scores(t, ref, m, "online", "per-example")[0] == pytest.approx(
        -(4 - 1) / (2 * s2), abs=1e-12
    )
    want_lp = -0.5 * np.log(2 * np.pi * s2) - 1 / (2 * s2)
    assert A.lira_scores(t, ref, m, "offline-logpdf", "per-example")[0] == pytest.approx(
        -want_lp, abs=1e-12
    )
    assert np.exp(A.lira_scores(t, ref, m, "offline-cdf", "per-example")[0]) == pytest.approx(
        stats.norm.cdf(1 / np.sqrt(s2)), abs=1e-12
    )
    assert A.lira_scores(t, ref, m, "global-threshold")[0] == 1.0


def test_offline_variants_differ_on_the_low_side():
    """logpdf is two-sided (a far-too-low statistic looks like a member), cdf is one-sided."""
    ref = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [5.0, 5.0]])
    m = np.array([[0, 0], [0, 0], [0, 0], [1, 1]], dtype=bool)
    t = np.array([-6.0, 6.0])
    lp = A.lira_scores(t, ref, m, "offline-logpdf", "per-example")
    cdf = A.lira_scores(t, ref, m, "offline-cdf", "per-example")
    assert lp[0] == pytest.approx(lp[1])
    assert cdf[1] > cdf[0] + 10


def test_logit_confidence_matches_reference_and_is_stable():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (50, 4))
    labels = rng.integers(0, 4, 50)
    np.testing.assert_allclose(
        A.logit_confidence(logits, labels),
        tfp_logit_statistic(logits, labels),
        rtol=1e-9,
        atol=1e-9,
    )
    extreme = np.array([[800.0, 0.0], [0.0, 800.0], [30.0, 29.0]], dtype=np.float32)
    got = A.logit_confidence(extreme, np.array([0, 0, 0]))
    np.testing.assert_allclose(got, [800.0, -800.0, 1.0], atol=1e-9)
    # [N, P, C] logits with [1, P] labels broadcast over shadows
    three = rng.normal(size=(3, 5, 2))
    y = rng.integers(0, 2, 5)
    np.testing.assert_allclose(
        A.logit_confidence(three, y[None]),
        three[..., :][np.arange(3)[:, None], np.arange(5), y]
        - three[np.arange(3)[:, None], np.arange(5), 1 - y],
    )


def test_masks_balanced_and_deterministic():
    m = A.make_masks(16, 101, seed=3)
    assert m.shape == (16, 101) and (m.sum(0) == 8).all()
    assert np.array_equal(m, A.make_masks(16, 101, seed=3))
    assert not np.array_equal(m, A.make_masks(16, 101, seed=4))
    assert 30 < m.sum(1).mean() < 70


def test_parse_shadow_ids():
    assert A.parse_shadow_ids("0-3,7", 8) == [0, 1, 2, 3, 7]
    assert A.parse_shadow_ids(None, 3) == [0, 1, 2]
    for bad in ("3-1", "x", "0-8"):
        with pytest.raises(A.BadInput, match="shadow_ids"):
            A.parse_shadow_ids(bad, 8)


# ------------------------------------------------------------------ metrics and epsilon


def synthetic(n=16, p=200, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    masks = A.make_masks(n, p, seed=seed)
    difficulty = rng.normal(0, 2, p)
    stat = difficulty + rng.normal(0, 1, (n, p)) + shift * masks
    return stat, masks


def test_leave_one_out_finds_leak():
    stat, masks = synthetic(shift=2.0)
    for attack in ("online", "offline-cdf", "offline-logpdf", "rmia"):
        s = A.leave_one_out(stat, masks, attack, "global")
        assert A.roc_metrics(s, masks)["auc"] > 0.8, attack
    # per-example calibration beats the global threshold when examples differ in difficulty
    online = A.roc_metrics(A.leave_one_out(stat, masks, "online", "global"), masks)["auc"]
    assert (
        online
        > A.roc_metrics(A.leave_one_out(stat, masks, "global-threshold"), masks)["auc"] + 0.05
    )


def test_reference_counts_do_not_depend_on_the_target_membership():
    """The bias the review found: with N/2 IN per example, dropping the target leaves N/2-1 IN refs
    for a member and N/2 for a non-member. After equalisation both counts are constant per example."""
    from promptport.lira import _equal_reference_selection

    masks = A.make_masks(8, 300, seed=2)
    sel_in, sel_out = _equal_reference_selection(masks)
    n_in = np.stack([x.sum(0) for x in sel_in])  # [N, P]
    n_out = np.stack([x.sum(0) for x in sel_out])
    assert (n_in == 3).all() and (n_out == 3).all()
    for s in range(8):  # selected references are real references of the right side
        ref = masks[np.arange(8) != s]
        assert (sel_in[s] <= ref).all() and (sel_out[s] <= ~ref).all()


@pytest.mark.parametrize("n_shadows", [4, 8, 16])
def test_null_audits_are_at_chance_and_bound_nothing(n_shadows):
    """Membership has no effect: every attack's AUC averages 0.5 over 20 audits (the biased
    leave-one-out gave 0.458 at N = 8) and the 95% bound is 0 in at least 95% of them."""
    r = lira.null_study(n_shadows, n_examples=600, repetitions=20)
    for key, a in r["attacks"].items():
        assert abs(a["mean_auc"] - 0.5) < 0.01, (key, a["mean_auc"])
    assert r["bound_zero_fraction"] >= 0.95, r["bounds"]


def _collapsed_shadows_null(r, n=8, p=100):
    """Null data shaped like real no-DP audits on a weak student: each shadow's prompt favours one
    class strongly (its own), whatever its IN set; membership has no effect."""
    rng = np.random.default_rng([n, r, 5])
    masks = A.make_masks(n, p, seed=r)
    y = rng.integers(0, 2, p)
    mode = 3.0 * rng.choice([-1.0, 1.0], (n, 1))
    stat = rng.normal(0, 2, p) + mode * (2 * y - 1) + rng.normal(0, 1, (n, p))
    return stat, masks


def test_auc_interval_covers_chance_when_shadows_differ():
    """The audit's interval must account for the shadows' own randomness: on null audits whose shadows
    collapse to a class each, the examples-only interval (what the audit printed) covers 0.5 less
    often than its nominal 95% (benchmarks/audit_ci_coverage.json); the two-way interval covers it."""
    hits = {"two_way": [], "examples": []}
    for r in range(40):
        stat, masks = _collapsed_shadows_null(r)
        sc = A.leave_one_out(stat, masks, "online", "global", seed=r)
        for unit in hits:
            lo, hi = lira.bootstrap_intervals(sc, masks, 150, seed=r, unit=unit)["auc"]
            hits[unit].append(lo <= 0.5 <= hi)
    assert np.mean(hits["two_way"]) >= 0.95, np.mean(hits["two_way"])
    assert np.mean(hits["examples"]) < np.mean(hits["two_way"])
    with pytest.raises(A.BadInput, match="unit"):
        lira.bootstrap_intervals(sc, masks, 10, unit="pairs")


def test_membership_test_is_exact_on_null_data_and_finds_a_leak():
    """p-values of the randomisation test are uniform when membership has no effect, whatever the
    shadows' structure (here: each collapsed to a class), and minimal on a clear leak."""
    n, p, draws = 8, 100, 19

    def design(i):
        return A.make_masks(n, p, seed=50_000 + i)

    ps = []
    for r in range(60):
        stat, masks = _collapsed_shadows_null(r, n, p)
        t = lira.membership_test(stat, masks, design, draws=draws, seed=r)
        assert t["auc"] == pytest.approx(
            A.roc_metrics(A.leave_one_out(stat, masks, "online", "global", seed=r), masks)["auc"]
        )
        ps.append(t["p_value"])
    ps = np.array(ps)
    # P(p <= k/20) = k/20 exactly under the null; 60 draws, binomial 99.9% bounds
    assert 0.0 <= (ps <= 0.1).mean() <= 0.27 and 0.3 <= (ps <= 0.5).mean() <= 0.7, np.sort(ps)
    stat, masks = synthetic(n=8, p=100, shift=1.0)
    leak = lira.membership_test(stat, masks, design, draws=draws)
    assert leak["p_value"] == pytest.approx(1 / (draws + 1))
    assert leak["null_auc_95"][1] < leak["auc"]


def test_rmia_matches_privacy_meter_reference():
    """privacy_meter's `run_rmia` (offline_a = 0.3, gamma 1), restated here on a fixed input: each
    example OUT for exactly half of the references, a population that is OUT everywhere."""
    rng = np.random.default_rng(11)
    p, r, z = 40, 6, 25
    mem = np.zeros((p, r), bool)
    for j in range(p):
        mem[j, rng.permutation(r)[: r // 2]] = True
    ref = rng.uniform(0.05, 0.95, (p, r))
    tgt = rng.uniform(0.05, 0.95, p)
    z_tgt, z_ref = rng.uniform(0.05, 0.95, z), rng.uniform(0.05, 0.95, (z, r))
    a = 0.3
    out_sig = -np.sort(-(ref * ~mem), axis=1)[:, : r // 2]  # their "keep the OUT signals"
    mean_x = (1 + a) / 2 * out_sig.mean(1) + (1 - a) / 2
    z_out = -np.sort(-z_ref, axis=1)[:, : r // 2]
    mean_z = (1 + a) / 2 * z_out.mean(1) + (1 - a) / 2
    want = np.average((tgt / mean_x)[:, None] / (z_tgt / mean_z) > 1.0, axis=1)
    # their population uses the top half of its (all OUT) signals; give ours the same references
    z_sel = np.zeros((z, r), bool)
    for i in range(z):
        z_sel[i, np.argsort(-z_ref[i])[: r // 2]] = True
    got = A.rmia_scores(tgt, ref.T, ~mem.T, z_tgt, z_ref.T, z_sel.T)
    np.testing.assert_allclose(got, want)


def test_roc_metrics_perfect_and_inverted():
    members = np.array([0, 0, 1, 1], dtype=bool)
    m = A.roc_metrics(np.array([0.0, 1.0, 2.0, np.inf]), members)
    assert m["auc"] == 1.0 and m["balanced_accuracy"] == 1.0 and m[A.tpr_key(0.001)] == 1.0
    assert A.roc_metrics(np.array([3.0, 2.0, 1.0, 0.0]), members)["auc"] == 0.0


def test_fast_roc_matches_sklearn():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=500), 1)  # many ties
    members = rng.random(500) < 0.4
    fpr, tpr, _ = roc_curve(members, scores, drop_intermediate=False)
    f2, t2 = A.roc_curve_fast(scores, members)
    np.testing.assert_allclose(f2, fpr)
    np.testing.assert_allclose(t2, tpr)
    fast, slow = A.roc_metrics(scores, members, fast=True), A.roc_metrics(scores, members)
    assert fast == pytest.approx(slow) and slow["auc"] == pytest.approx(
        roc_auc_score(members, scores)
    )


def test_epsilon_from_rates():
    assert A.epsilon_from_rates([0.1], [0.5], 0.0)[0] == pytest.approx(np.log(5))
    assert A.epsilon_from_rates([0.5], [0.95], 0.0)[0] == pytest.approx(np.log(0.5 / 0.05))
    assert (A.epsilon_from_rates([0.0, 0.3, 1.0], [0.0, 0.3, 1.0], 1e-5) == 0.0).all()  # chance
    assert (A.epsilon_from_rates([0.0, 1.0], [1.0, 1.0], 1e-5) == 0.0).all()  # 0/0 shows nothing


def test_epsilon_bound_chooses_on_other_shadows_and_counts_once():
    stat, masks = synthetic(n=16, p=400, shift=3.0, seed=4)
    scores = A.all_attack_scores(stat, masks)
    b = A.epsilon_lower_bound(scores, masks, 1e-5)
    assert not set(b["selection_shadows"]) & set(b["counting_shadows"])
    assert len(b["selection_shadows"]) + len(b["counting_shadows"]) == 16
    assert b["value"] > 1.0 and b["attack"] in scores
    # the value is the Clopper-Pearson bound of one test on the counting shadows, recomputed here
    cnt = np.array(b["counting_shadows"])
    guess = scores[b["attack"]][cnt] >= b["threshold"]
    m = masks[cnt]
    fpr_hi = A.clopper_pearson((guess & ~m).sum(), (~m).sum(), 0.975, "upper")
    tpr_lo = A.clopper_pearson((guess & m).sum(), m.sum(), 0.975, "lower")
    assert b["value"] == pytest.approx(float(A.epsilon_from_rates(fpr_hi, tpr_lo, 1e-5)))
    # a bound never exceeds the point estimate of the same test on the same guesses
    pt = A.epsilon_from_rates((guess & ~m).sum() / (~m).sum(), (guess & m).sum() / m.sum(), 1e-5)
    assert b["value"] <= float(pt)


# ------------------------------------------------------------------ storage, report, summary


def _spec(sst_like_dir, **kw):
    d = dict(
        model="unused-for-this-test",
        task="sst2",
        data=str(sst_like_dir),
        split="train",
        pool_size=20,
        n_shadows=6,
        tune={"n_tokens": 4, "epochs": 1.0, "dp": None},
    )
    d.update(kw)
    return A.AuditSpec(**d)


def test_prepare_masks_resume_and_report(sst_like_dir, tmp_path):
    out = tmp_path / "aud"
    spec = _spec(sst_like_dir)
    task, pool, masks, labels = A.prepare(out, spec)
    assert len(pool) == 20 and masks.shape == (6, 20) and (masks.sum(0) == 3).all()
    assert np.array_equal(A.prepare(out, spec)[2], masks)  # re-opening is idempotent
    with pytest.raises(A.BadInput, match="another configuration"):
        A.prepare(out, _spec(sst_like_dir, pool_size=16))
    rng = np.random.default_rng(0)
    for s in range(4):  # a leaky fake: members get a confident correct logit
        logits = rng.normal(0, 0.3, (20, 2))
        logits[np.arange(20), labels] += 2.0 * masks[s]
        A.save_shadow(out, s, logits, masks[s], {"seconds": 1.0})
    assert A.finished_shadows(out, 6) == [0, 1, 2, 3]
    r = A.audit(out, None, shadow_ids="0-3", resume=True)  # nothing to train: all four are finished
    assert r["trained"] == [] and r["skipped"] == [0, 1, 2, 3] and r["summary"] is None
    with pytest.raises(A.BadInput, match="--resume"):
        A.train_shadows(out, spec, shadow_ids=[2])
    bad = np.zeros((20, 2))
    A.save_shadow(out, 4, bad, ~masks[4], {})
    with pytest.raises(A.PromptportError, match="does not belong"):
        A.load_shadows(out)
    A.shadow_path(out, 4).unlink()
    summary = A.audit_report(out, n_boot=50)
    assert (
        summary["n_shadows"] == 4
        and summary["auc"] > 0.9
        and summary["theoretical_epsilon"] is None
    )
    assert set(summary["attacks"]) == {A.attack_key(a, v) for a, v in A.REPORT_ATTACKS}
    for key, rel in summary["files"].items():
        assert (out / rel).is_file(), key
    assert (out / "report" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "report" / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 20
    assert A.audit_summary(out) == json.loads((out / "report" / "report.json").read_text())
    assert not (out / "manifest.json").exists()  # only a complete audit gets a stage manifest
    assert "AUC" in A.format_summary(summary) and "p = " in A.format_summary(summary)
    assert summary["bootstrap"]["unit"] == lira.BOOTSTRAP_UNIT["two_way"]
    t = summary["membership_test"]  # the leaky fake: the observed AUC beats every fresh mask
    assert t["auc"] == pytest.approx(summary["auc"]) and t["p_value"] == pytest.approx(1 / 200)


# ------------------------------------------------------------------ end to end on a tiny model


def _random_label_data(root, n=40, seed=0):
    """Distinct random word strings with random labels: only memorisation can fit them."""
    from conftest import CORPUS

    words = sorted(set(CORPUS.split()))
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = {" ".join(rng.choice(words, 6)): int(rng.integers(0, 2)) for _ in range(n)}
    (root / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows.items())
    )
    return root


def test_cli_audit_slices_resume_report(tiny_model_dir, tmp_path, capsys, one_thread):
    from promptport.cli import main

    data = _random_label_data(tmp_path / "d", n=16)
    out = tmp_path / "aud"
    base = [
        "audit",
        "--model",
        tiny_model_dir,
        "--task",
        "sst2",
        "--data",
        data,
        "--pool-size",
        12,
        "--shadows",
        4,
        "--n-tokens",
        2,
        "--max-steps",
        2,
        "--batch-size",
        4,
        "--n-boot",
        20,
        "--out",
        out,
    ]
    assert main([str(a) for a in base + ["--shadow-ids", "0-1"]]) == 0
    text = capsys.readouterr().out
    assert "2/4 finished" in text and not (out / "report").exists()
    assert (
        main([str(a) for a in base + ["--shadow-ids", "1-2"]]) == 2
    )  # shadow 1 exists: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert (
        main([str(a) for a in base + ["--lr", "0.5", "--resume"]]) == 2
    )  # another configuration, same OUT
    assert "another configuration" in capsys.readouterr().err
    assert (
        main(["audit", "--out", str(out), "--resume", "--n-boot", "20"]) == 0
    )  # settings come from OUT
    text = capsys.readouterr().out
    assert text.startswith("audit: online/global AUC"), text
    summary = A.audit_summary(out)
    assert summary["n_shadows"] == 4 and summary["shadow_ids"] == [0, 1, 2, 3]
    assert (out / "manifest.json").is_file() and A.roc_plot_path(out).is_file()
    assert main(["audit", "--out", str(out), "--report-only", "--n-boot", "10"]) == 0
    assert main(["audit", "--out", str(tmp_path / "nothing"), "--report-only"]) == 2
    assert main([str(a) for a in base[:-2] + ["--epsilon", "1", "--out", tmp_path / "x"]]) == 2
    assert "add --dp" in capsys.readouterr().err


@pytest.fixture(scope="module")
def memorising_model(tmp_path_factory):
    """A 2-layer random Llama with larger initial weights (initializer_range 0.2): unlike the conftest model,
    whose answer states are nearly identical across inputs, a 16-token prompt can memorise random labels."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import build_tokenizer

    path = tmp_path_factory.mktemp("memorising-llama")
    tok = build_tokenizer(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        initializer_range=0.2,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _leak_audit(model_dir, tmp_path, dp):
    data = _random_label_data(tmp_path / "d", n=24, seed=1)
    tune = {
        "n_tokens": 16,
        "init": "random",
        "lr": 0.1,
        "epochs": 30.0,
        "batch_size": 6,
        "schedule": "constant",
        "max_length": 64,
        "dp": dp,
    }
    spec = A.AuditSpec(
        model=str(model_dir), task="sst2", data=str(data), pool_size=24, n_shadows=6, tune=tune
    )
    return A.audit(tmp_path / "aud", spec, n_boot=200)["summary"]


def test_leaky_configuration_is_detected(memorising_model, tmp_path, one_thread):
    s = _leak_audit(memorising_model, tmp_path, None)
    assert s["shadow_accuracy_in"] > 0.95  # it memorised its (random) training labels ...
    assert s["shadow_accuracy_out"] < 0.75  # ... which cannot generalise
    assert s["auc_ci"][0] > 0.65, s["auc_ci"]
    assert s["theoretical_epsilon"] is None and s["empirical_epsilon_lower_bound"] > 0.0


def test_transferred_prompt_audit_side_by_side(
    memorising_model, tiny_model_dir, tmp_path, one_thread
):
    """Every shadow prompt transferred to a teacher; the same attacks on the teacher's scores."""
    from promptport.audit_transfer import compare_sides, transfer_shadows
    from promptport.transfer import TransferConfig

    own = _leak_audit(memorising_model, tmp_path, None)
    pub = tmp_path / "public.txt"
    pub.write_text("".join(f"public line {i} about the weather today\n" for i in range(40)))
    cfg = TransferConfig(n_public=20, steps=2, batch_size=4)
    aud = tmp_path / "aud"
    r = transfer_shadows(aud, str(tiny_model_dir), public_data=str(pub), cfg=cfg)
    assert sorted(r["transferred"]) == list(range(6))
    again = transfer_shadows(aud, str(tiny_model_dir), public_data=str(pub), cfg=cfg)
    assert again["transferred"] == [] and len(again["skipped"]) == 6  # resumable
    with pytest.raises(A.BadInput, match="other settings"):
        transfer_shadows(
            aud,
            str(tiny_model_dir),
            public_data=str(pub),
            cfg=TransferConfig(n_public=21, steps=2, batch_size=4),
        )
    rep = compare_sides(aud, n_boot=100)
    # the student side is the audit itself: same shadows, masks and attack
    assert rep["student_auc"] == pytest.approx(own["auc"])
    t_logits = A._load_tensors(aud / "transferred" / "shadows" / "shadow_000.safetensors")[0]
    s_logits = A._load_tensors(A.shadow_path(aud, 0))[0]
    assert t_logits["logits"].shape == s_logits["logits"].shape
    assert not np.allclose(t_logits["logits"], s_logits["logits"])
    assert rep["teacher_auc_ci"][0] <= rep["teacher_auc"] <= rep["teacher_auc_ci"][1]
    assert {"student_tpr_at_1%fpr", "teacher_tpr_at_1%fpr"} <= set(rep)


def test_dp_at_small_epsilon_is_not_detected(memorising_model, tmp_path, one_thread):
    # RDP: calibrating sigma with the PRV accountant takes seconds per shadow; the audit is the same
    s = _leak_audit(
        memorising_model, tmp_path, {"epsilon": 1.0, "delta": 1e-3, "accountant": "rdp"}
    )
    assert s["auc_ci"][0] <= 0.5 <= s["auc_ci"][1], s["auc_ci"]
    assert s["theoretical_epsilon"] == pytest.approx(1.0, rel=0.05) and s["delta"] == 1e-3
    assert s["empirical_epsilon_lower_bound"] <= s["theoretical_epsilon"]


def test_tune_settings_from_a_prompt_and_the_command_line(tmp_path):
    import torch

    from promptport.prompt import save_prompt

    cfg = {
        "n_tokens": 7,
        "lr": 0.5,
        "epochs": 3.0,
        "batch_size": 4,
        "patience": 2,
        "dp": {
            "epsilon": 2.0,
            "delta": None,
            "max_grad_norm": 0.5,
            "accountant": "rdp",
            "secure_rng": False,
        },
    }
    save_prompt(tmp_path / "p", torch.zeros(7, 4), {"training": {"config": cfg}})
    values = {
        "n_tokens": 20,
        "lr": 0.03,
        "epochs": 1.0,
        "batch_size": 16,
        "dp": False,
        "epsilon": None,
        "delta": None,
        "max_grad_norm": 1.0,
        "accountant": "prv",
        "seed": 3,
    }
    t = A.tune_settings(values, given={"lr"}, like=tmp_path / "p")
    assert (t["n_tokens"], t["epochs"], t["batch_size"], t["lr"], t["seed"]) == (7, 3.0, 4, 0.03, 3)
    assert t["dp"]["epsilon"] == 2.0 and t["dp"]["max_grad_norm"] == 0.5 and "patience" not in t
    t = A.tune_settings(
        dict(values, dp=True, epsilon=8.0), given={"dp", "epsilon"}, like=tmp_path / "p"
    )
    assert t["dp"]["epsilon"] == 8.0 and t["dp"]["accountant"] == "rdp"
    plain = A.tune_settings(values)
    assert plain["dp"] is None and plain["n_tokens"] == 20
    with pytest.raises(A.BadInput, match="epsilon"):
        A.tune_settings(dict(values, dp=True))
    save_prompt(tmp_path / "q", torch.zeros(2, 4), {})
    with pytest.raises(A.BadInput, match="like"):
        A.tune_settings(values, like=tmp_path / "q")
