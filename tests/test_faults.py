"""Fault injection: every stage is killed with SIGKILL at seeded random points and resumed; the result must
equal an uninterrupted run (weights and prompts to 1e-6, the same sha256 for deterministic outputs and, for
DP, the same privacy spent and accountant history).

Kill points are I/O events counted inside the stage's process: before and after every rename of an atomic
write, before every tensor/checkpoint save, JSONL append and npz write. A kill therefore lands where a crash
is dangerous (between a temp file and its rename, between the two renames of a checkpoint swap, between a
stage's work and its manifest), and the same seed gives the same kill points. Each stage runs a chain of
segments: killed at a random event, resumed, killed again, ..., then resumed to the end. Segments are forked
from a forkserver that imported torch once, so a kill and a resume cost milliseconds of start-up.
`PROMPTPORT_FAULT_SEED` picks other kill points.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPUS, build_tiny_llama

SEED = int(os.environ.get("PROMPTPORT_FAULT_SEED", "0"))
TIMEOUT_S = 600
BOUNDARY_FILES = (
    "config.json",
    "manifest.json",
    "results.json",
)  # `promptport run` stage boundaries
KILLS = []  # (stage, kill points) of every chain, checked by the last test


# ------------------------------------------------------------------ the kill hook (runs in the child)


class _Events:
    """Counts I/O events and SIGKILLs its own process at event number `kill_at` (no cleanup can run)."""

    def __init__(self, kill_at: int | None, only: tuple[str, ...] | None):
        self.n, self.kill_at, self.only = 0, kill_at, only

    def __call__(self, path) -> None:
        if self.only is not None and Path(str(path)).name not in self.only:
            return
        self.n += 1
        if self.kill_at is not None and self.n >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _install(events: _Events) -> None:
    import sys

    import safetensors.numpy
    import safetensors.torch

    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        events(dst)
        real_replace(src, dst, *a, **kw)
        events(dst)

    def before(fn, arg=0):
        def wrapped(*a, **kw):
            events(a[arg] if len(a) > arg else next(iter(kw.values())))
            return fn(*a, **kw)

        wrapped.__wrapped_by_faults__ = True
        return wrapped

    os.replace = replace
    torch.save = before(torch.save, 1)
    np.savez = before(np.savez)
    safetensors.torch.save_file = before(safetensors.torch.save_file, 1)
    safetensors.numpy.save_file = before(safetensors.numpy.save_file, 1)
    from promptport import fileio

    real_append = fileio.append_jsonl
    for name, mod in list(sys.modules.items()):  # modules that imported these by name
        if name.startswith("promptport"):
            if getattr(mod, "append_jsonl", None) is real_append:
                mod.append_jsonl = before(real_append)
            for attr in ("save_file",):
                f = getattr(mod, attr, None)
                if (
                    f is not None
                    and getattr(f, "__module__", "").startswith("safetensors")
                    and not getattr(f, "__wrapped_by_faults__", False)
                ):
                    setattr(mod, attr, before(f, 1))


def _child(job: dict, kill_at: int | None, only, result_file: str) -> None:
    import faulthandler

    torch.set_num_threads(1)
    hang = open(result_file + ".hang", "w")  # noqa: SIM115 (held open for faulthandler)  # where a stuck segment shows its stacks
    faulthandler.dump_traceback_later(TIMEOUT_S - 10, exit=True, file=hang)
    events = _Events(kill_at, tuple(only) if only else None)
    try:
        _install(events)
        RUNNERS[job["stage"]](job)
    except BaseException:
        Path(result_file).write_text(json.dumps({"error": traceback.format_exc()}))
        os._exit(1)
    Path(result_file).write_text(json.dumps({"events": events.n}))


# ------------------------------------------------------------------ stage runners (run in the child)


def _run_distill(job):
    from promptport.distill import DistillConfig, distill

    out = Path(job["out"])
    has_ckpt = (out / "checkpoint" / "checkpoint.pt").is_file()
    distill(job["teacher"], out, DistillConfig(**job["cfg"]), resume=has_ckpt)


def _run_tune(job):
    from promptport.privacy import DPConfig
    from promptport.tune import TuneConfig, tune

    cfg = dict(job["cfg"])
    dp = cfg.pop("dp", None)
    dp = DPConfig(**dp) if dp else None
    tune(
        job["model"],
        "sst2",
        data=job["data"],
        out=job["out"],
        cfg=TuneConfig(**cfg, dp=dp),
        resume=True,
    )


def _run_transfer(job):
    from promptport.transfer import TransferConfig, transfer

    transfer(
        job["prompt"],
        job["student"],
        job["teacher"],
        public_data=job["public"],
        out=job["out"],
        cfg=TransferConfig(**job["cfg"]),
        resume=True,
    )


def _run_audit(job):
    from promptport.audit import AuditSpec, audit

    audit(job["out"], AuditSpec(**job["spec"]), resume=True, n_boot=50)


def _run_pipeline(job):
    import functools

    from promptport import report
    from promptport.pipeline import load_run_config, run_pipeline

    # 100 bootstrap resamples instead of 1000 (sklearn's f1_score per resample dominates a tiny run's time);
    # the reference and the killed run use the same, so their results stay comparable
    report.bootstrap_ci = functools.partial(report.bootstrap_ci, n_boot=100)
    run_pipeline(load_run_config(None, job["cfg"]), progress=False, log=lambda m: None)


RUNNERS = {
    "distill": _run_distill,
    "tune": _run_tune,
    "transfer": _run_transfer,
    "audit": _run_audit,
    "pipeline": _run_pipeline,
}


# ------------------------------------------------------------------ the parent side

_CTX = None
# imported once by the forkserver: a segment then starts in milliseconds instead of seconds
PRELOAD = [
    "torch",
    "torch._dynamo",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.tokenization_utils_tokenizers",
    "transformers.optimization",
    "accelerate",
    "peft",
    "opacus.accountants",
    "sklearn.metrics",
    "pandas",
    "pyarrow",
    "sympy",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",
    "safetensors.numpy",
    "rich.console",
    "promptport.distill",
    "promptport.tune",
    "promptport.transfer",
    "promptport.audit",
    "promptport.pipeline",
    "promptport.report",
    "test_faults",
]


def _ctx():
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def segment(job: dict, kill_at: int | None = None, only=None) -> tuple[bool, int]:
    """Run the stage in a fresh process; (killed, events counted)."""
    res = Path(str(job["out"]) + ".events.json")
    res.unlink(missing_ok=True)
    p = _ctx().Process(target=_child, args=(job, kill_at, only, str(res)))
    p.start()
    p.join(TIMEOUT_S)
    hang = Path(str(res) + ".hang")
    if p.exitcode is None:
        p.kill()
        p.join()
    if p.exitcode is None or (hang.is_file() and hang.stat().st_size):
        pytest.fail(
            f"{job['stage']} segment did not finish in {TIMEOUT_S}s:\n"
            + (hang.read_text()[-3000:] if hang.is_file() else "")
        )
    if p.exitcode == -signal.SIGKILL:
        return True, kill_at
    info = json.loads(res.read_text()) if res.is_file() else {"error": f"exit code {p.exitcode}"}
    assert p.exitcode == 0 and "events" in info, info.get("error")
    return False, info["events"]


def kill_chain(
    job: dict, ref_events: int, n_kills: int, rng: random.Random, only=None
) -> list[int]:
    """Kill the stage n_kills times at random events (each segment resumes the last), then finish it."""
    k_max = max(
        2, ref_events // (n_kills + 1)
    )  # kills spread over the run, never all before the first save
    kills = []
    for _ in range(n_kills):
        k = rng.randint(1, k_max)
        killed, _ = segment(job, k, only)
        if not killed:
            break
        kills.append(k)
    else:
        killed, _ = segment(job, None, only)
        assert not killed
    KILLS.append((job["stage"], kills))
    assert len(kills) == n_kills, f"the run finished after {len(kills)} of {n_kills} kills"
    return kills


def _rng(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path, atol: float = 1e-6) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=atol, rtol=0)


def _sha(path: Path) -> str:
    from promptport.fileio import sha256_file

    return sha256_file(path)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Tiny teacher and student on disk, labelled private data, a public text file, a user prompt."""
    from promptport.models import load_model
    from promptport.prompt import init_prompt_embeddings, make_metadata, save_prompt
    from promptport.tasks import get_task

    root = tmp_path_factory.mktemp("faults")
    student = build_tiny_llama(root / "student", layers=2, seed=1)
    data = root / "private"
    data.mkdir()
    rows = [
        (
            f"review {i}: "
            + ("i loved every minute, wonderful acting" if i % 2 else "a terrible boring film"),
            i % 2,
        )
        for i in range(40)
    ]
    (data / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "the jokes land\t1\nbad acting\t0\n" * 3)
    (data / "test.tsv").write_text(
        "sentence\tlabel\n" + "it was charming\t1\nworst film of the year\t0\n" * 3
    )
    words = CORPUS.split()
    rng = random.Random(0)
    public = root / "public.txt"
    public.write_text(
        "\n".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + " ."
            for _ in range(200)
        )
        + "\n"
    )
    lm = load_model(str(student))
    emb = (
        init_prompt_embeddings(
            lm.model, lm.tokenizer, 4, "random", generator=torch.Generator().manual_seed(3)
        )
        * 5
    )
    prompt = save_prompt(
        root / "user_prompt",
        emb,
        make_metadata(model_info=lm.info, task=get_task("sst2"), init="random", n_tokens=4),
    )
    return {
        "root": root,
        "teacher": str(tiny_model_dir),
        "student": str(student),
        "data": str(data),
        "public": str(public),
        "prompt": str(prompt),
    }


def _jobs(world, stage: str, **fields) -> tuple[dict, dict]:
    """The same job twice: an uninterrupted reference and the one to kill."""
    base = {"stage": stage, **fields}
    return (
        {**base, "out": str(world["root"] / f"{stage}-ref")},
        {**base, "out": str(world["root"] / f"{stage}-cut")},
    )


# ------------------------------------------------------------------ the stages

DISTILL_CFG = dict(
    layers=2,
    corpus=None,
    max_tokens=1536,
    block_size=32,
    heldout_blocks=4,
    precision="fp32",
    alpha_task=1.0,
    task_template="sst2",
    task_data=None,
    task_examples=48,
    task_heldout=16,
    max_steps=8,
    batch_size=4,
    task_batch_size=8,
    save_every=1,
    lr=2e-3,
)


def test_distill_killed_at_random_points(world):
    cfg = dict(DISTILL_CFG, corpus=[world["public"]], task_data=[world["public"]])
    ref, cut = _jobs(world, "distill", teacher=world["teacher"], cfg=cfg)
    _, n = segment(ref)
    kill_chain(cut, n, 4, _rng("distill"))
    a, b = Path(ref["out"]), Path(cut["out"])
    assert_same_tensors(
        a / "student" / "student.safetensors", b / "student" / "student.safetensors"
    )
    assert _sha(a / "student" / "student.safetensors") == _sha(
        b / "student" / "student.safetensors"
    )
    la, lb = _jsonl(a / "metrics.jsonl"), _jsonl(b / "metrics.jsonl")
    assert [x["step"] for x in lb] == list(range(1, 9))
    assert [x["loss"] for x in la] == pytest.approx([x["loss"] for x in lb], abs=1e-6)
    ma, mb = (
        json.loads((a / "metrics.json").read_text()),
        json.loads((b / "metrics.json").read_text()),
    )
    assert ma["after"] == pytest.approx(mb["after"], abs=1e-6) and ma["before"] == mb["before"]


def test_distill_killed_inside_the_checkpoint_write(world):
    """The checkpoint is one file written to a temp file and renamed: a kill between the two must
    leave the previous checkpoint intact and lose nothing."""
    cfg = dict(DISTILL_CFG, corpus=[world["public"]], task_data=[world["public"]], max_steps=4)
    ref, cut = _jobs(world, "distill-swap", teacher=world["teacher"], cfg=cfg)
    ref["stage"] = cut["stage"] = "distill"
    segment(ref)
    # events on checkpoint.pt: 1 before / 2 after the rename of step 1's checkpoint, 3 / 4 at step 2:
    # kill at 3 = step 2's checkpoint written to its temp file but not yet renamed
    killed, _ = segment(cut, 3, only=("checkpoint.pt",))
    ckpt = Path(cut["out"]) / "checkpoint" / "checkpoint.pt"
    assert killed and torch.load(ckpt, weights_only=True)["step"] == 1
    KILLS.append(("distill (checkpoint write)", [3]))
    segment(cut)
    assert_same_tensors(
        Path(ref["out"]) / "student" / "student.safetensors",
        Path(cut["out"]) / "student" / "student.safetensors",
    )
    steps = [x["step"] for x in _jsonl(Path(cut["out"]) / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_tune_killed_at_random_points(world, dp):
    cfg = dict(
        n_tokens=2,
        batch_size=4,
        max_steps=10,
        eval_every=5,
        checkpoint_every=1,
        lr=0.05,
        max_length=32,
        dp=dict(epsilon=8.0, delta=1e-3, accountant="rdp") if dp else None,
    )
    ref, cut = _jobs(world, "tune", model=world["student"], data=world["data"], cfg=cfg)
    ref["out"], cut["out"] = ref["out"] + ("-dp" if dp else ""), cut["out"] + ("-dp" if dp else "")
    _, n = segment(ref)
    kill_chain(cut, n, 4, _rng(f"tune-{dp}"))
    a, b = Path(ref["out"]) / "prompt", Path(cut["out"]) / "prompt"
    assert_same_tensors(a / "prompt.safetensors", b / "prompt.safetensors")
    assert _sha(a / "prompt.safetensors") == _sha(b / "prompt.safetensors")
    ma, mb = (
        json.loads((a / "prompt.json").read_text()),
        json.loads((b / "prompt.json").read_text()),
    )
    ra, rb = (json.loads((Path(j["out"]) / "metrics.json").read_text()) for j in (ref, cut))
    assert ra["best"] == rb["best"] and rb["steps"] == 10
    steps = [x["step"] for x in _jsonl(Path(cut["out"]) / "metrics.jsonl") if x["type"] == "train"]
    assert steps == list(range(1, 11))  # no step lost or repeated in the log
    if dp:
        pa, pb = ma["privacy"], mb["privacy"]
        assert pb["steps"] == pa["steps"] == 10
        assert (
            pb["epsilon"] == pa["epsilon"] and pb["history"] == pa["history"]
        )  # privacy spent once
        assert (
            pb["noise_multiplier"] == pa["noise_multiplier"]
            and pb["sample_rate"] == pa["sample_rate"]
        )
    else:
        assert ma["privacy"] is None and mb["privacy"] is None


@pytest.mark.parametrize("average_from", [None, 0.2])
def test_transfer_killed_at_random_points(world, average_from):
    """A transfer killed and resumed ends bit-identical, also with the prompt's tail mean (its
    running mean and count live in the checkpoint)."""
    cfg = dict(n_public=40, steps=12, eval_every=2, batch_size=4, lr=5e-2, max_length=32)
    if average_from is not None:
        cfg["average_from"] = average_from
    ref, cut = _jobs(
        world,
        "transfer",
        prompt=world["prompt"],
        student=world["student"],
        teacher=world["teacher"],
        public=world["public"],
        cfg=cfg,
    )
    tag = "" if average_from is None else "-avg"
    ref["out"], cut["out"] = ref["out"] + tag, cut["out"] + tag
    _, n = segment(ref)
    kill_chain(cut, n, 4, _rng("transfer" + tag))
    a, b = Path(ref["out"]), Path(cut["out"])
    assert_same_tensors(a / "prompt" / "prompt.safetensors", b / "prompt" / "prompt.safetensors")
    assert _sha(a / "prompt" / "prompt.safetensors") == _sha(b / "prompt" / "prompt.safetensors")
    ma, mb = (
        json.loads((a / "metrics.json").read_text()),
        json.loads((b / "metrics.json").read_text()),
    )
    assert ma["best"] == mb["best"] and ma["final_heldout_loss"] == mb["final_heldout_loss"]
    assert [x["step"] for x in _jsonl(b / "metrics.jsonl")] == list(range(1, 13))
    assert not (b / "checkpoint").exists()  # a finished transfer leaves no checkpoint behind


def test_audit_shadows_killed_at_random_points(world):
    spec = dict(
        model=world["student"],
        task="sst2",
        data=world["data"],
        pool_size=12,
        n_shadows=4,
        tune=dict(n_tokens=2, max_steps=4, batch_size=4, lr=0.05, max_length=32, seed=0, dp=None),
    )
    ref, cut = _jobs(world, "audit", spec=spec)
    _, n = segment(ref)
    kill_chain(cut, n, 3, _rng("audit"))
    a, b = Path(ref["out"]), Path(cut["out"])
    from promptport.audit import audit_summary, shadow_path

    for s in range(4):
        pa, pb = shadow_path(a, s), shadow_path(b, s)
        assert np.array_equal(_np(pa)["logits"], _np(pb)["logits"]), s
    sa, sb = audit_summary(a), audit_summary(b)
    assert sa["auc"] == sb["auc"] and sa["n_shadows"] == sb["n_shadows"] == 4


def _np(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_run_killed_at_stage_boundaries(world):
    """`promptport run` (distill -> DP tune -> transfer -> evaluate -> report) killed just before and just
    after the manifests and results that mark its stage boundaries, then rerun: same results, same hashes."""
    cfg = dict(
        teacher=world["teacher"],
        task="sst2",
        private_data=world["data"],
        public_data=world["public"],
        val_split="validation",
        eval_split="test",
        allow_overlap=True,
        reuse_student=False,
        distill=dict(
            DISTILL_CFG,
            corpus=[world["public"]],
            task_data=[world["public"]],
            max_steps=4,
            save_every=2,
        ),
        tune=dict(n_tokens=2, batch_size=4, max_steps=6, eval_every=3, lr=0.05, max_length=32),
        dp=dict(epsilon=8.0, delta=1e-3, accountant="rdp"),
        transfer=dict(n_public=30, steps=4, eval_every=2, batch_size=4, max_length=32),
    )
    ref, cut = _jobs(world, "run", cfg=cfg)
    ref["stage"] = cut["stage"] = "pipeline"
    ref["cfg"] = dict(cfg, run_dir=ref["out"])
    cut["cfg"] = dict(cfg, run_dir=cut["out"])
    _, n = segment(ref, only=BOUNDARY_FILES)
    kill_chain(cut, n, 4, _rng("run"), only=BOUNDARY_FILES)
    a, b = Path(ref["out"]), Path(cut["out"])
    ra, rb = (
        json.loads((a / "results.json").read_text()),
        json.loads((b / "results.json").read_text()),
    )
    assert ra["baselines"] == rb["baselines"]
    assert (
        ra["privacy"]["epsilon"] == rb["privacy"]["epsilon"]
        and ra["privacy"]["history"] == rb["privacy"]["history"]
    )
    timing_dependent = {"metrics.json", "prompt/prompt.json", "student/student.json"}
    for stage in ("distill", "tune", "transfer", "evaluate"):
        oa = json.loads((a / stage / "manifest.json").read_text())["outputs"]
        ob = json.loads((b / stage / "manifest.json").read_text())["outputs"]
        assert oa.keys() == ob.keys(), stage
        same = {k: oa[k] == ob[k] for k in oa if k not in timing_dependent}
        assert all(same.values()), (stage, same)
    for p in ("tune/prompt/prompt.safetensors", "transfer/prompt/prompt.safetensors"):
        assert_same_tensors(a / p, b / p)
    assert not list(
        b.rglob(".*.tmp")
    )  # temp files of writes cut short by a kill are swept by the next run


def test_at_least_20_kill_points_over_the_suite():
    if len(KILLS) < 7:
        pytest.skip("runs with the whole file only (counts the kills of the tests above)")
    total = sum(len(k) for _, k in KILLS)
    assert total >= 20, KILLS
