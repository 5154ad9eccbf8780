"""`promptport run` end to end on tiny models: stages, manifests, reuse, report, bad config."""

import json

import pytest

from conftest import build_tiny_llama
from promptport import pipeline
from promptport.cli import main
from promptport.errors import BadInput
from promptport.pipeline import check_overlap, load_run_config, run_pipeline


@pytest.fixture()
def private_dir(sst_like_dir):
    (sst_like_dir / "test.tsv").write_text(
        "sentence\tlabel\n" + "the jokes land\t1\nbad acting\t0\n" * 4
    )
    return sst_like_dir


@pytest.fixture()
def public_file(tmp_path):
    f = tmp_path / "public.txt"
    f.write_text(
        "\n".join(f"news item {i} about the market and the weather" for i in range(40)) + "\n"
    )
    return f


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("student"), layers=2, seed=1)


def _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file, **kw):
    base = dict(
        run_dir=str(tmp_path / "run"),
        teacher=str(tiny_model_dir),
        student=str(student_dir),
        task="sst2",
        private_data=str(private_dir),
        public_data=str(public_file),
        eval_split="test",
        tune={"n_tokens": 4, "epochs": 1, "batch_size": 4, "lr": 0.05, "max_length": 32},
        transfer={"n_public": 30, "steps": 3, "batch_size": 4, "max_length": 32},
    )
    base.update(kw)
    return load_run_config(None, base)


def test_run_end_to_end_and_reuse(tmp_path, tiny_model_dir, student_dir, private_dir, public_file):
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file)
    logs = []
    r = run_pipeline(cfg, progress=False, log=logs.append)
    run = tmp_path / "run"
    for stage in ("tune", "transfer", "evaluate"):
        m = json.loads((run / stage / "manifest.json").read_text())
        assert m["status"] == "complete" and m["outputs"]
    assert set(r["baselines"]) == {
        "teacher_zero_shot",
        "student_zero_shot",
        "student_prompt",
        "direct_transfer",
        "post_transfer",
    }
    for b in r["baselines"].values():
        assert b["n"] == 8 and b["accuracy_ci"][0] <= b["accuracy"] <= b["accuracy_ci"][1]
    html = (run / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "POST" in html
    assert (run / "report.md").read_text().startswith("# promptport run")
    # the transfer stage's manifest names only public inputs and the prompt artifact
    tm = json.loads((run / "transfer" / "manifest.json").read_text())
    assert str(private_dir) not in json.dumps(tm)
    # second run: every stage reused
    logs.clear()
    run_pipeline(cfg, progress=False, log=logs.append)
    assert sum("reused" in ln for ln in logs) == 3


def test_run_refuses_overlapping_public_data(tmp_path, tiny_model_dir, student_dir, private_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, private_dir / "train.tsv")
    with pytest.raises(BadInput, match="exact duplicates"):
        run_pipeline(cfg, progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()
    assert check_overlap(["A  b"], ["a b"], allow=True) == 1


def test_unknown_keys_named_with_closest(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("tune:\n  learning_rate: 0.1\n")
    with pytest.raises(BadInput, match=r"tune.learning_rate: unknown key"):
        run_pipeline(load_run_config(f), progress=False, log=lambda m: None)
    f.write_text("trasnfer: {}\n")
    rc = main(["run", "--config", str(f)])
    assert rc == 2 and "did you mean 'transfer'" in capsys.readouterr().err


def test_report_command_rebuilds(
    tmp_path, tiny_model_dir, student_dir, private_dir, public_file, capsys
):
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file)
    run_pipeline(cfg, progress=False, log=lambda m: None)
    (tmp_path / "run" / "report.html").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").is_file()
    # the user's own validation curve (tune/metrics.jsonl evaluations) is in the report
    assert "User's validation curve" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "plots" / "user_validation.png").stat().st_size > 1000


def test_sweep_alpha_adds_curve(
    tmp_path, tiny_model_dir, student_dir, private_dir, public_file, capsys
):
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file)
    run_pipeline(cfg, progress=False, log=lambda m: None)
    assert main(["sweep-alpha", str(tmp_path / "run"), "--alphas", "0,1"]) == 0
    res = json.loads((tmp_path / "run" / "sweep-alpha" / "results.json").read_text())
    assert [r["alpha"] for r in res["results"]] == [0.0, 1.0]
    assert "Alpha sweep" in (tmp_path / "run" / "report.html").read_text()
    assert main(["sweep-alpha", str(tmp_path / "run"), "--alphas", "2"]) == 2


def test_report_html_renders_in_headless_chromium(
    tmp_path, tiny_model_dir, student_dir, private_dir, public_file
):
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file)
    run_pipeline(cfg, progress=False, log=lambda m: None)
    page = tmp_path / "run" / "report.html"
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'prof'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0 and "<table>" in dom.stdout and "Teacher zero-shot" in dom.stdout
    page_errors = [
        ln
        for ln in dom.stderr.splitlines()
        if "CONSOLE" in ln or "Uncaught" in ln or "Failed to load resource" in ln
    ]
    assert not page_errors, (
        page_errors
    )  # the page's own errors; dbus noise of a headless box is not the page's
    assert (
        "<img" in dom.stdout and 'src="http' not in dom.stdout
    )  # self-contained: plots inline, nothing fetched
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.parametrize("name", ["default", "sst2-smollm2", "sst2-gpt2xl", "sst2-llama2-7b"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    from promptport.pipeline import stage_configs

    cfg = load_run_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    tcfg, xcfg, dcfg, dp = stage_configs(cfg)
    assert tcfg.n_tokens > 0 and xcfg.method == "post"
    if "gpt2xl" in name or "llama" in name:
        assert tcfg.n_tokens == 100 and xcfg.steps == 6000 and dp.epsilon == 8


def test_second_process_on_same_run_dir_refuses(tmp_path):
    import subprocess
    import sys

    from promptport.errors import PromptportError
    from promptport.fileio import dir_lock

    d = tmp_path / "run"
    with dir_lock(d):
        with pytest.raises(
            PromptportError, match=r"in use by another promptport process \(pid \d+\)"
        ):
            with dir_lock(d):
                pass
        code = (
            "import sys\nfrom promptport.fileio import dir_lock\n"
            f"try:\n    dir_lock({str(d)!r}).__enter__()\nexcept Exception as e:\n    print(e); sys.exit(3)\n"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode == 3 and "in use" in p.stdout
    with dir_lock(d):  # released: usable again
        pass


def test_run_with_audit_section(tmp_path, tiny_model_dir, student_dir, private_dir, public_file):
    # a bigger private train split so the audit pool has room
    rows = "".join(
        f"review number {i} {'great' if i % 2 else 'terrible'}\t{i % 2}\n" for i in range(40)
    )
    (private_dir / "train.tsv").write_text("sentence\tlabel\n" + rows)
    cfg = _cfg(
        tmp_path,
        tiny_model_dir,
        student_dir,
        private_dir,
        public_file,
        audit={"pool_size": 12, "n_shadows": 4, "transferred": True},
    )
    r = run_pipeline(cfg, progress=False, log=lambda m: None)
    moved = r["audit"]["transferred"]
    assert moved["n_shadows"] == 4 and moved["student_auc"] == r["audit"]["auc"]
    assert "Audit of the transferred prompt" in (tmp_path / "run" / "report.md").read_text()
    a = r["audit"]
    assert a["n_shadows"] == 4 and a["n_examples"] == 12 and a["n_guesses"] == 48
    assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1]
    assert a["empirical_epsilon_lower_bound"] >= 0.0 and a["theoretical_epsilon"] is None
    assert "Membership-inference" in (tmp_path / "run" / "report.html").read_text()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "p-value, membership has no effect" in md and "two-way bootstrap" in md
    assert 0.0 < moved["teacher"]["membership_p_value"] <= 1.0
    bad = _cfg(
        tmp_path, tiny_model_dir, student_dir, private_dir, public_file, audit={"shadowz": 3}
    )
    with pytest.raises(BadInput, match="audit.shadowz"):
        run_pipeline(bad, progress=False, log=lambda m: None)


def test_bootstrap_ci_equals_a_per_resample_sklearn_loop():
    import numpy as np
    from sklearn.metrics import f1_score

    from promptport.report import bootstrap_ci

    rng = np.random.default_rng(3)
    for n_classes, n in ((2, 40), (4, 25)):  # 4 classes, 25 examples: some resamples miss a class
        y, yhat = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)
        got = bootstrap_ci(y, yhat, n_classes, n_boot=200, seed=5)
        idx = np.random.default_rng(5).integers(0, n, size=(200, n))
        f1s = [
            f1_score(y[i], yhat[i], labels=list(range(n_classes)), average="macro", zero_division=0)
            for i in idx
        ]
        accs = [(y[i] == yhat[i]).mean() for i in idx]
        np.testing.assert_allclose(
            got["macro_f1_ci"], [np.percentile(f1s, 2.5), np.percentile(f1s, 97.5)], rtol=1e-12
        )
        np.testing.assert_allclose(
            got["accuracy_ci"], [np.percentile(accs, 2.5), np.percentile(accs, 97.5)]
        )


def test_student_store_reuses_a_student_across_runs(
    tmp_path, monkeypatch, tiny_model_dir, private_dir, public_file
):
    """A second run (another run directory) with the same teacher and recipe takes the stored student
    instead of distilling; another recipe distils afresh."""
    monkeypatch.setenv("PROMPTPORT_STUDENT_STORE", str(tmp_path / "cache" / "students"))
    distill_cfg = dict(
        layers=2,
        corpus=[str(public_file)],
        max_tokens=512,
        block_size=32,
        heldout_blocks=2,
        precision="fp32",
        max_steps=2,
        batch_size=4,
        alpha_task=0.0,  # plain LM distillation: this test is about the store, not the recipe
        alpha_label=0.0,
    )

    def run(name, **d):
        logs = []
        cfg = _cfg(
            tmp_path, tiny_model_dir, None, private_dir, public_file,
            run_dir=str(tmp_path / name), distill={**distill_cfg, **d}, student=None,
            reuse_student=True,
        )  # fmt: skip
        run_pipeline(cfg, progress=False, log=logs.append)
        return logs, tmp_path / name / "distill"

    logs1, d1 = run("a")
    assert not any("student store" in line for line in logs1)
    logs2, d2 = run("b")
    assert any("reused from the student store" in line for line in logs2)
    w = "student/student.safetensors"
    assert (d1 / w).read_bytes() == (d2 / w).read_bytes()
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert "student store" in results["costs"][0]["notes"]
    logs3, _ = run("c", lr=1e-3)
    assert not any("student store" in line for line in logs3)


def test_overlap_check_sees_the_recut_public_pieces(
    tmp_path, tiny_model_dir, student_dir, private_dir
):
    """With `transfer.public_chars` the transfer uses sentence runs (or phrases) of the public texts: a
    piece equal to a private text is refused even when no whole public text is one."""
    doc = tmp_path / "public.txt"
    doc.write_text("A long document begins here, one of several. Worst film of the year\n" * 3)
    kw = {"transfer": {"n_public": 30, "steps": 3, "batch_size": 4, "max_length": 32}}
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, doc, **kw)
    _, n = pipeline._prepare(cfg, progress=False, log=lambda m: None)
    assert n == 0  # whole documents: no private text among them
    kw["transfer"]["public_chars"] = 10
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, doc, **kw)
    with pytest.raises(BadInput, match="exact duplicates"):
        pipeline._prepare(cfg, progress=False, log=lambda m: None)
    # `public_cut: phrases` cuts a long sentence into word runs: a run equal to a private text is
    # refused, though the sentence cut of the same text gives none
    doc.write_text("Worst film of the year and then more words follow it here\n" * 3)
    kw["transfer"]["public_chars"] = 22
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, doc, **kw)
    assert pipeline._prepare(cfg, progress=False, log=lambda m: None)[1] == 0
    kw["transfer"]["public_cut"] = "phrases"
    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, doc, **kw)
    with pytest.raises(BadInput, match="exact duplicates"):
        pipeline._prepare(cfg, progress=False, log=lambda m: None)


def test_selection_data_may_not_hold_the_users_examples(
    tmp_path, tiny_model_dir, student_dir, private_dir, public_file
):
    """`transfer.select_data` chooses the kept prompt by accuracy: a selection set holding one of the
    user's training or test texts is refused before any stage runs; one that holds none passes."""
    kw = {"transfer": {"n_public": 30, "steps": 3, "batch_size": 4, "max_length": 32}}
    for name, text in (("train", "worst film of the year"), ("test", "the jokes land")):
        sel = tmp_path / f"sel-{name}.jsonl"
        rows = [{"sentence": text, "label": 0}] + [
            {"sentence": f"public review number {i}", "label": i % 2} for i in range(9)
        ]
        sel.write_text("".join(json.dumps(r) + "\n" for r in rows))
        kw["transfer"]["select_data"] = str(sel)
        cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file, **kw)
        with pytest.raises(BadInput, match="transfer.select_data: 1 selection examples"):
            pipeline._prepare(cfg, progress=False, log=lambda m: None)
        sel.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
        pipeline._prepare(cfg, progress=False, log=lambda m: None)


def test_report_says_which_transfer_step_was_kept(
    tmp_path, tiny_model_dir, student_dir, private_dir, public_file
):
    """The report names the rule the transfer kept its prompt by and the kept step, as the transfer's
    metrics.json has them; with `select_data` also the teacher's accuracy on the selection set with
    and without the kept prompt (from metrics.json, not recomputed) and its curve in the plot."""
    from promptport.report import _transfer_rows
    from promptport.transfer_select import ACCURACY_RULE, LOSS_RULE

    sel = tmp_path / "sel.jsonl"
    rows = [{"sentence": f"public review number {i}", "label": i % 2} for i in range(10)]
    sel.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for select in (None, str(sel)):
        kw = {"transfer": {"n_public": 30, "steps": 4, "eval_every": 1, "batch_size": 4}}
        kw["transfer"]["max_length"] = 32
        if select:
            kw["transfer"]["select_data"] = select
        kw["run_dir"] = str(tmp_path / f"run-{bool(select)}")
        cfg = _cfg(tmp_path, tiny_model_dir, student_dir, private_dir, public_file, **kw)
        run_pipeline(cfg, progress=False, log=lambda m: None)
        run = tmp_path / f"run-{bool(select)}"
        m = json.loads((run / "transfer" / "metrics.json").read_text())
        md = (run / "report.md").read_text()
        assert "## Transfer: which teacher prompt was kept" in md
        assert f"| kept step | {m['best']['step']} of {m['steps']} |" in md
        assert f"| rule | {ACCURACY_RULE if select else LOSS_RULE} |" in md
        assert f"{m['best']['heldout_loss']:.4f} kept" in md
        if select:
            s = m["select_data"]
            assert s["n"] == 10 and f"10 labelled public examples from {select}" in md
            assert (
                f"{s['teacher_zero_shot_accuracy']:.4f} without a prompt, "
                f"{s['kept_accuracy']:.4f} with the kept prompt" in md
            )
            logged = [
                json.loads(ln)
                for ln in (run / "transfer" / "metrics.jsonl").read_text().splitlines()
            ]
            accs = {r["step"]: r["select_accuracy"] for r in logged if "select_accuracy" in r}
            assert len(accs) == 4 and s["kept_accuracy"] >= max(accs.values())
            assert m["best"]["step"] == 0 or accs[m["best"]["step"]] == s["kept_accuracy"]
        else:
            assert "selection set" not in md
    assert _transfer_rows({}) == [] and _transfer_rows({"best": None}) == []  # direct: nothing kept
    # a metrics.json without the last loss (as a resumed loop may leave) still renders
    rows = dict(_transfer_rows({"best": {"step": 2, "heldout_loss": 0.5}, "steps": 3}))
    assert rows["held-out public transfer loss"] == "– at the start, 0.5000 kept, – last"
