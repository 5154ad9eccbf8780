"""The privacy boundary: private text never reaches a provider-side artifact.

A canary string is planted in every private example; after a whole run it must appear in no file the
provider-side stages wrote (nor anywhere else in the run directory: the report holds no private text).
"""

import json

from conftest import build_tiny_llama
from promptport.pipeline import load_run_config, run_pipeline

CANARY = "zqxj canary 7781"


def test_canary_never_reaches_provider_side(tmp_path, tiny_model_dir):
    priv = tmp_path / "private"
    priv.mkdir()
    rows = [
        (f"{CANARY} the movie was great {i}", 1) if i % 2 else (f"{CANARY} a terrible film {i}", 0)
        for i in range(24)
    ]
    for split, part in (("train", rows[:16]), ("dev", rows[16:20]), ("test", rows[20:])):
        (priv / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in part)
        )
    pub = tmp_path / "public.txt"
    pub.write_text("\n".join(f"public sentence number {i} about weather" for i in range(30)) + "\n")
    student = build_tiny_llama(tmp_path / "student", layers=2, seed=1)
    cfg = load_run_config(
        None,
        dict(
            run_dir=str(tmp_path / "run"),
            teacher=str(tiny_model_dir),
            student=str(student),
            task="sst2",
            private_data=str(priv),
            public_data=str(pub),
            eval_split="test",
            tune={"n_tokens": 3, "epochs": 1, "batch_size": 4, "max_length": 32},
            transfer={"n_public": 20, "steps": 2, "batch_size": 4, "max_length": 32},
        ),
    )
    logs = []
    run_pipeline(cfg, progress=False, log=logs.append)
    run = tmp_path / "run"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.parts[-2] == "transfer" for p in files)
    needle = CANARY.encode()
    leaked = [str(p.relative_to(run)) for p in files if needle in p.read_bytes()]
    assert leaked == [], f"canary found in {leaked}"
    assert not any(CANARY in line for line in logs)
    # the only private-derived object the provider stage received is the prompt artifact
    inputs = json.loads((run / "transfer" / "manifest.json").read_text())["stage_inputs"]
    assert set(inputs) == {"prompt", "public_data", "student", "teacher"}
    assert inputs["prompt"]["path"].endswith("tune/prompt")


def test_prompt_artifact_holds_no_private_path_or_statistic(tmp_path, tiny_model_dir):
    """The artifact travels to the provider: it used to carry the data path, the exact training-set
    size, the best validation accuracy and examples/s x seconds (about the sum of the realised
    Poisson batch sizes)."""
    from promptport.tune import TuneConfig, tune

    d = tmp_path / "secret-folder-name"
    d.mkdir()
    rows = [(f"sentence {i} good" if i % 2 else f"sentence {i} bad", i % 2) for i in range(26)]
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows[:19]))
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows[19:]))
    cfg = TuneConfig(n_tokens=2, epochs=1, batch_size=4, max_length=32, dp=None)
    m = tune(str(tiny_model_dir), "sst2", data=str(d), out=tmp_path / "o", cfg=cfg)
    text = (tmp_path / "o" / "prompt" / "prompt.json").read_text()
    meta = json.loads(text)
    assert "secret-folder-name" not in text and str(tmp_path) not in text
    flat = json.dumps(meta["training"])
    for key in ("n_train", "n_val", "best", "examples_per_s", "train_seconds", "data", "steps"):
        assert f'"{key}"' not in flat, key
    assert str(m["val_accuracy"]) not in flat
    # the user's own metrics keep them (they stay on the user's machine)
    assert m["n_train"] == 19 and "secret-folder-name" in m["data"]


def test_dp_statement_names_what_it_assumes_public(tmp_path, tiny_model_dir):
    from promptport.privacy import DPConfig
    from promptport.tune import TuneConfig, tune

    d = tmp_path / "d"
    d.mkdir()
    rows = "".join(f"text {i}\t{i % 2}\n" for i in range(20))
    (d / "train.tsv").write_text("sentence\tlabel\n" + rows)
    cfg = TuneConfig(
        n_tokens=2,
        epochs=1,
        batch_size=4,
        max_length=32,
        dp=DPConfig(epsilon=8.0, delta=1e-3, accountant="rdp"),
    )
    tune(str(tiny_model_dir), "sst2", data=str(d), out=tmp_path / "o", cfg=cfg, val_split=None)
    meta = json.loads((tmp_path / "o" / "prompt" / "prompt.json").read_text())
    assert any("training-set size N" in x for x in meta["privacy"]["assumed_public"])
