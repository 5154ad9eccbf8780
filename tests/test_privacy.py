"""DP-SGD for the prompt: per-example gradients, clipping, noise, Poisson sampling, accounting, statement."""

import math
import warnings

import pytest
import torch

from promptport.classify import PromptClassifier
from promptport.data import TextDataset
from promptport.errors import BadInput
from promptport.privacy import (
    DPConfig,
    PoissonSampler,
    PrivacyLedger,
    SecureRNG,
    calibrate_sigma,
    clip_and_noise,
    clip_per_example,
    compute_epsilon,
    privacy_statement,
)
from promptport.tasks import get_task
from promptport.tune import (
    TuneConfig,
    dp_gradient,
    mean_gradient,
    per_example_gradients,
    train_prompt,
)

TEXTS = [
    "the movie was great",
    "a terrible boring film with bad acting and a thin plot",
    "ok",
    "i loved every minute of it , the jokes land",
    "worst film of the year",
    "unflinchingly bleak",
]
LABELS = [1, 0, 1, 1, 0, 0]


@pytest.fixture(scope="module")
def clf(tiny_lm):
    tiny_lm.tokenizer.padding_side = "right"
    return PromptClassifier(tiny_lm.model, tiny_lm.tokenizer, get_task("sst2"))


@pytest.fixture(scope="module")
def enc(clf):
    return clf.encode(TextDataset({"text": TEXTS}, LABELS, "mem", "train"))


def _prompt(clf, n=3, seed=0):
    h = clf.model.get_input_embeddings().weight.shape[1]
    return torch.randn(n, h, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_per_example_gradients_match_one_at_a_time(clf, enc):
    prompt = _prompt(clf)
    idx = list(range(len(TEXTS)))
    g, losses = per_example_gradients(clf, prompt, enc, idx)
    assert g.shape == (len(idx), *prompt.shape)
    for i in idx:  # reference: a separate forward/backward of example i alone, on the shared prompt
        p = prompt.clone().requires_grad_()
        ids, mask = clf.batch([enc.input_ids[i]])
        loss = clf.loss(ids, mask, enc.labels[i : i + 1], p, reduction="sum")
        (ref,) = torch.autograd.grad(loss, p)
        torch.testing.assert_close(g[i], ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(losses[i], loss.detach(), atol=1e-6, rtol=1e-5)
    assert g.reshape(len(idx), -1).norm(dim=1).min() > 1e-4  # the comparison is not between zeros


def test_per_example_gradients_match_batched_reference(clf, enc):
    """Second reference, in the same padded batch: the gradient of example i's loss alone w.r.t. a shared
    prompt (so padding and batch context are identical, and no example leaks into another's gradient)."""
    prompt = _prompt(clf, seed=1)
    idx = [0, 1, 2, 4]
    g, _ = per_example_gradients(clf, prompt, enc, idx)
    ids, mask = clf.batch([enc.input_ids[i] for i in idx])
    for row in range(len(idx)):
        p = prompt.clone().requires_grad_()
        losses = clf.loss(ids, mask, enc.labels[idx], p, reduction="none")
        (ref,) = torch.autograd.grad(losses[row], p)
        torch.testing.assert_close(g[row], ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-4, 0.3, 1.0, 7.0, 1e4])
def test_clipped_norms_never_exceed_bound(scale):
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(32, 5, 7, generator=gen) * scale * torch.rand(32, 1, 1, generator=gen)
    for c in (1e-3, 0.5, 1.0, 10.0):
        total, norms = clip_per_example(grads, c)
        torch.testing.assert_close(norms, grads.reshape(32, -1).norm(dim=1))
        singles = [clip_per_example(grads[i : i + 1], c)[0] for i in range(32)]
        for s in singles:
            assert s.norm() <= c * (1 + 1e-6)
        torch.testing.assert_close(total, torch.stack(singles).sum(0), atol=1e-5 * c, rtol=1e-5)
        small = norms <= c  # unclipped examples pass through unchanged
        if small.any():
            torch.testing.assert_close(clip_per_example(grads[small], c)[0], grads[small].sum(0))


def test_dp_gradient_norm_bounded_without_noise(clf, enc):
    idx = list(range(len(TEXTS)))
    for c in (1e-3, 0.05):
        g, stats = dp_gradient(
            clf,
            _prompt(clf),
            enc,
            idx,
            4,
            max_grad_norm=c,
            sigma=0.0,
            expected_batch_size=len(idx),
            generator=torch.Generator(),
        )
        assert g.norm() <= c * (1 + 1e-6)
        assert stats["clipped_fraction"] == 1.0 and stats["batch_size"] == len(idx)


def test_dp_step_equals_non_dp_step_without_noise_or_clipping(clf, enc):
    """sigma = 0 and a huge clip bound: DP-SGD is plain SGD on the mean loss (same batch)."""
    prompt = _prompt(clf)
    idx = [0, 2, 3, 5]
    g_plain, loss = mean_gradient(clf, prompt, enc, idx, batch_size=2)
    g_dp, stats = dp_gradient(
        clf,
        prompt,
        enc,
        idx,
        3,
        max_grad_norm=1e9,
        sigma=0.0,
        expected_batch_size=len(idx),
        generator=torch.Generator(),
    )
    torch.testing.assert_close(g_dp, g_plain, atol=1e-6, rtol=1e-5)
    assert stats["loss"] == pytest.approx(loss, abs=1e-6)
    steps = []
    for g in (g_plain, g_dp):  # and so is the optimizer step built on it
        p = torch.nn.Parameter(prompt.clone())
        opt = torch.optim.Adam([p], lr=0.1)
        p.grad = g.clone()
        opt.step()
        steps.append(p.detach())
    torch.testing.assert_close(steps[0], steps[1], atol=1e-6, rtol=1e-5)


def test_empty_poisson_batch_gives_pure_noise(clf, enc):
    prompt = _prompt(clf)
    g, stats = dp_gradient(
        clf,
        prompt,
        enc,
        [],
        4,
        max_grad_norm=1.0,
        sigma=2.0,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["batch_size"] == 0 and stats["loss"] is None
    assert g.shape == prompt.shape and g.abs().sum() > 0
    # noise std is sigma * C / L per coordinate
    assert g.std().item() == pytest.approx(2.0 / 4, rel=0.2)
    g0 = clip_and_noise(torch.zeros(0, *prompt.shape), 1.0, 0.0, 4, torch.Generator())
    assert torch.equal(g0, torch.zeros_like(prompt))


def test_noise_scale_and_reproducibility():
    summed = torch.zeros(200, 50)
    a = clip_and_noise(summed.unsqueeze(0), 1.0, 1.5, 10, torch.Generator().manual_seed(1))
    b = clip_and_noise(summed.unsqueeze(0), 1.0, 1.5, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.std().item() == pytest.approx(0.15, rel=0.05) and abs(a.mean().item()) < 0.01


def test_secure_rng_gaussian_and_bernoulli():
    rng = SecureRNG()
    z = rng.normal((100_000,))
    assert abs(z.mean().item()) < 0.02 and z.std().item() == pytest.approx(1.0, rel=0.02)
    assert not torch.equal(rng.normal((10,)), rng.normal((10,)))
    assert rng.bernoulli(100_000, 0.1).mean() == pytest.approx(0.1, abs=0.01)
    s = PoissonSampler(1000, 0.05, secure=True)
    sizes = [len(s.sample()) for _ in range(200)]
    assert sum(sizes) / len(sizes) == pytest.approx(50, rel=0.1)
    assert s.state_dict()["rng"] is None and s.steps == 200


def test_poisson_sampler_variable_batches_and_exact_resume():
    s = PoissonSampler(500, 0.02, seed=5)
    sizes = [len(s.sample()) for _ in range(300)]
    assert (len(set(sizes)) > 3 and 0 in set(sizes)) or min(
        sizes
    ) < 10  # variable size, small ones occur
    assert sum(sizes) / len(sizes) == pytest.approx(10, rel=0.15)
    state = s.state_dict()
    ahead = [s.sample() for _ in range(5)]
    t = PoissonSampler(500, 0.02, seed=999)
    t.load_state_dict(state)
    assert [t.sample() for _ in range(5)] == ahead and t.steps == s.steps
    with pytest.raises(BadInput):
        PoissonSampler(400, 0.02).load_state_dict(state)


def test_empty_batches_in_training(clf, enc):
    """A sampling rate so low that most batches are empty: training still steps and accounts every step."""
    cfg = TuneConfig(
        n_tokens=2,
        batch_size=1,
        max_steps=12,
        lr=0.01,
        dp=DPConfig(epsilon=50.0, delta=1e-2, accountant="rdp"),
    )
    r = train_prompt(clf, enc, None, cfg)
    sizes = [h["batch_size"] for h in r.history if h["type"] == "train"]
    assert len(sizes) == 12 and 0 in sizes
    assert r.privacy["steps"] == 12 and torch.isfinite(r.embeddings).all()


@pytest.mark.parametrize(
    "accountant,eps,q,steps",
    [
        ("rdp", 8.0, 0.01, 1000),
        ("rdp", 1.0, 0.05, 200),
        ("rdp", 3.0, 0.2, 30),
        ("prv", 8.0, 0.01, 500),
        ("prv", 1.0, 0.05, 100),
    ],
)
def test_calibrated_sigma_gives_requested_epsilon(accountant, eps, q, steps):
    from opacus.accountants import create_accountant

    sigma, used = calibrate_sigma(eps, 1e-5, q, steps, accountant)
    assert used == accountant
    acc = create_accountant(mechanism=accountant)  # fed back to Opacus's own accountant
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = acc.get_epsilon(delta=1e-5)
    assert got <= eps * (1 + 1e-9) and got == pytest.approx(eps, rel=0.01)
    assert compute_epsilon(sigma, q, steps, 1e-5, accountant) == pytest.approx(got)


def test_prv_failure_falls_back_to_rdp_with_warning(monkeypatch):
    from opacus.accountants.prv import PRVAccountant

    def broken(self, *a, **k):
        raise ValueError("Discrete mean differs from continuous mean significantly")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", broken)
    with pytest.warns(RuntimeWarning, match="RDP"):
        sigma, used = calibrate_sigma(20.0, 1e-5, 0.1, 50, "prv")
    assert used == "rdp" and compute_epsilon(sigma, 0.1, 50, 1e-5, "rdp") == pytest.approx(
        20.0, rel=0.01
    )


def test_unreachable_epsilon_is_bad_input():
    with pytest.raises(BadInput, match="cannot be reached"):
        calibrate_sigma(0.01, 1e-5, 1.0, 10_000, "rdp")


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"epsilon": 0}, "epsilon"),
        ({"epsilon": -1}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 0.01}, "delta"),
        ({"delta": -1e-5}, "delta"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_dp_config_rejects_bad_values(kw, field):
    cfg = DPConfig(**{"epsilon": 8.0, "delta": 1e-5, **kw})
    with pytest.raises(BadInput) as e:
        cfg.validate(100)  # delta must be < 1/100
    assert e.value.field == field


def test_default_delta_is_one_over_ten_n():
    cfg = DPConfig(epsilon=8.0)
    assert cfg.resolved_delta(2000) == pytest.approx(5e-5)
    cfg.validate(2000)


def test_ledger_resume_and_statement():
    a = PrivacyLedger("rdp")
    for _ in range(30):
        a.step(1.1, 0.05)
    b = PrivacyLedger("rdp")
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        a.step(1.1, 0.05)
        b.step(1.1, 0.05)
    assert a.history == b.history == [(1.1, 0.05, 50)] and b.steps == 50
    assert b.epsilon(1e-5) == pytest.approx(compute_epsilon(1.1, 0.05, 50, 1e-5, "rdp"))
    s = privacy_statement(
        dp=DPConfig(epsilon=8.0, delta=1e-5, accountant="rdp"),
        n_train=1000,
        sigma=1.1,
        sample_rate=0.05,
        ledger=b,
        planned_steps=60,
        accountant_used="rdp",
        expected_batch_size=50,
        model_selection_on_validation=True,
        n_validation=100,
    )
    for key in (
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "epochs",
        "max_grad_norm",
        "dataset_size",
        "sampling",
        "protected",
        "not_protected",
        "library_versions",
        "accountant",
    ):
        assert key in s
    assert s["steps"] == 50 and s["planned_steps"] == 60 and s["epochs"] == pytest.approx(2.5)
    assert (
        "prv" in s["epsilon_other_accountant"]
        and s["epsilon_other_accountant"]["prv"] < s["epsilon"]
    )
    assert "Poisson" in s["sampling"] and s["library_versions"]["opacus"]
    assert any("validation" in x and "NOT" in x for x in s["not_protected"])
    assert math.isfinite(s["epsilon"])
