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
