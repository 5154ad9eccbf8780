"""Reliability checks that need no training: writes stay inside the run directory, the resource pre-flight
check, resuming only the same attempt of a stage, and streaming of large corpora."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_llama
from promptport.errors import BadInput
from promptport.fileio import inside


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("student"), layers=2, seed=1)


def _cfg(tmp_path, teacher, student, sst_like_dir, **kw):
    from promptport.pipeline import load_run_config

    base = dict(
        run_dir=str(tmp_path / "run"),
        teacher=str(teacher),
        student=student and str(student),
        task="sst2",
        private_data=str(sst_like_dir),
        public_data=str(sst_like_dir / "dev.tsv"),
        allow_overlap=True,
        tune={"n_tokens": 2, "max_steps": 2, "batch_size": 4, "max_length": 32},
        transfer={"n_public": 8, "steps": 2, "batch_size": 4, "max_length": 32},
    )
    base.update(kw)
    return load_run_config(None, base)


# ------------------------------------------------------------------ writes stay inside the run directory


@pytest.mark.parametrize(
    "path", ["../elsewhere", "tune/../../elsewhere", "/tmp/elsewhere", "~/elsewhere"]
)
def test_paths_escaping_the_run_dir_are_refused(tmp_path, path):
    with pytest.raises(BadInput, match="outside the run directory") as e:
        inside(tmp_path / "run", path, "run_dir/tune")
    assert e.value.field == "run_dir/tune"


def test_paths_inside_the_run_dir_are_allowed(tmp_path):
    run = tmp_path / "run"
    assert inside(run, "tune", "f") == (run / "tune").resolve()
    assert inside(run, "tune/../evaluate/x", "f") == (run / "evaluate" / "x").resolve()
    assert inside(run, str(run / "audit"), "f") == (run / "audit").resolve()  # absolute, but inside


def test_run_refuses_a_stage_dir_that_is_a_symlink_out(
    tmp_path, tiny_model_dir, student_dir, sst_like_dir
):
    from promptport.pipeline import run_pipeline

    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "tune").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInput, match="outside the run directory") as e:
        run_pipeline(
            _cfg(tmp_path, tiny_model_dir, student_dir, sst_like_dir),
            progress=False,
            log=lambda m: None,
        )
    assert e.value.field == "run_dir/tune"
    assert list(outside.iterdir()) == [] and sorted(p.name for p in run.iterdir()) == ["tune"]


# ------------------------------------------------------------------ resuming a stage


def test_only_the_same_attempt_resumes(tmp_path):
    from promptport.pipeline import _attempt

    stage = tmp_path / "tune"
    (stage / "checkpoint").mkdir(parents=True)
    (stage / "checkpoint" / "checkpoint.pt").write_bytes(b"x")
    assert (
        _attempt(stage, "tune", {"lr": 1}, {"data": "a"}) is False
    )  # no running manifest: fresh start
    assert not (stage / "checkpoint").exists()  # a checkpoint of unknown origin is not resumed
    assert json.loads((stage / "manifest.json").read_text())["status"] == "running"
    (stage / "checkpoint").mkdir()
    assert (
        _attempt(stage, "tune", {"lr": 1}, {"data": "a"}) is True
    )  # interrupted: same config resumes
    assert (stage / "checkpoint").exists()
    assert (
        _attempt(stage, "tune", {"lr": 2}, {"data": "a"}) is False
    )  # config changed: start afresh
    assert not (stage / "checkpoint").exists()


# ------------------------------------------------------------------ resource pre-flight


def test_memory_comes_from_plan_and_disk_grows_with_the_distillation_cache(
    tmp_path, tiny_model_dir, sst_like_dir
):
    from promptport import plan
    from promptport.resources import estimate_resources

    # plain LM distillation: the cache below is the LM part alone (the task terms add their own rows)
    base = dict(layers=2, max_tokens=10_000, topk=8, alpha_cos=1.0, alpha_task=0.0, alpha_label=0.0)
    cfg = _cfg(tmp_path, tiny_model_dir, None, sst_like_dir, distill=base)
    small = estimate_resources(cfg)
    assert small.memory == {
        k: v["peak_bytes"] for k, v in plan.estimate_run(cfg)["stages"].items()
    }  # reused
    big = estimate_resources(
        _cfg(tmp_path, tiny_model_dir, None, sst_like_dir, distill=dict(base, max_tokens=20_000))
    )
    hidden = plan.model_shape(str(tiny_model_dir)).hidden
    per_token = (
        8 * (2 + 4) + 4 + 2 * hidden
    )  # top-k values (bf16) and ids (int32), log-sum-exp, hidden (bf16)
    cache = "distill: teacher cache"
    assert small.disk[cache] == 10_000 * per_token and big.disk[cache] == 20_000 * per_token
    assert big.memory["distill"] > small.memory["distill"]
    # a complete stage costs nothing more
    (tmp_path / "run" / "distill").mkdir(parents=True)
    (tmp_path / "run" / "distill" / "manifest.json").write_text(json.dumps({"status": "complete"}))
    again = estimate_resources(cfg)
    assert "distill" not in again.memory and cache not in again.disk


def test_preflight_refuses_runs_that_do_not_fit(
    tmp_path, monkeypatch, tiny_model_dir, student_dir, sst_like_dir
):
    from promptport import resources
    from promptport.pipeline import run_pipeline

    cfg = _cfg(tmp_path, tiny_model_dir, student_dir, sst_like_dir)
    monkeypatch.setattr(resources, "available", lambda path: (1024**2, 1024**4))
    with pytest.raises(BadInput, match=r"needs about .* of memory but 0\.0 GiB is available") as e:
        resources.preflight(cfg)
    assert e.value.field == "resources" and resources.SKIP_ENV in str(e.value)
    with pytest.raises(BadInput, match="resources"):  # `run` refuses before creating anything
        run_pipeline(cfg, progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(resources, "available", lambda path: (1024**4, 1024))
    with pytest.raises(BadInput, match=r"writes about .* free"):
        resources.preflight(cfg)
    monkeypatch.setenv(resources.SKIP_ENV, "1")  # the override
    assert resources.preflight(cfg) is None
    monkeypatch.delenv(resources.SKIP_ENV)
    assert (
        resources.preflight(
            _cfg(tmp_path, tiny_model_dir, student_dir, sst_like_dir, check_resources=False)
        )
        is None
    )
    monkeypatch.setattr(resources, "available", lambda path: (1024**4, 1024**4))
    assert resources.preflight(cfg).peak_memory[1] > 0


def test_available_reads_the_machine(tmp_path):
    from promptport.resources import available

    mem, disk = available(tmp_path / "not" / "yet")
    assert mem > 0 and disk > 0


# ------------------------------------------------------------------ streaming corpora


def test_big_corpus_is_read_only_until_enough_text(tmp_path, monkeypatch, tiny_lm):
    from promptport import corpus, data

    lines = [f"line {i} the movie was great and the acting was wonderful ." for i in range(5000)]
    big = tmp_path / "big.txt"
    big.write_text("\n".join(lines) + "\n")
    read = []
    real = data.read_rows

    def counting(path):
        for row in real(path):
            read.append(row)
            yield row

    monkeypatch.setattr(data, "read_rows", counting)
    c = corpus.build_corpus(
        tiny_lm.tokenizer, [str(big)], block_size=16, max_tokens=480, heldout_blocks=2
    )
    assert (
        len(read) == 5000
    )  # under the default budget (256M characters) a file is read whole, as before
    full = c.train.clone()

    monkeypatch.setattr(corpus, "CORPUS_READ_CHARS", 0)  # budget: 64 characters per needed token
    read.clear()
    c2 = corpus.build_corpus(
        tiny_lm.tokenizer, [str(big)], block_size=16, max_tokens=480, heldout_blocks=2
    )
    need_chars = 64 * (480 + 2 * 16)
    assert len(read) < 5000 and sum(len(r[1]["text"]) for r in read[:-1]) < need_chars
    assert c2.train.shape == full.shape and c2.meta["train_tokens"] == 480  # still enough tokens
