"""The CLI: exit codes, one-line errors, config files, and nothing half-written on bad input."""

import json
import subprocess
import sys

import pytest

from promptport.cli import main


def run(args, capsys):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def test_evaluate_tiny_model_writes_metrics(tiny_model_dir, sst_like_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    rc, text = run(
        [
            "evaluate",
            "--model",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data",
            sst_like_dir,
            "--split",
            "dev",
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == 0, text
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 8 and {"accuracy", "macro_f1", "seconds", "examples_per_s"} <= set(m)
    assert any(ln.startswith("evaluate: sst2/validation accuracy") for ln in text.splitlines())


@pytest.mark.parametrize(
    "case",
    [
        "task",
        "model_dir",
        "model_missing",
        "columns",
        "labels",
        "empty",
        "limit",
        "out",
        "prompt_other_model",
        "config_key",
    ],
)
def test_bad_input_exit_2_nothing_written(
    case, tiny_model_dir, tiny_model_dir_wide, sst_like_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--model",
        tiny_model_dir,
        "--task",
        "sst2",
        "--data",
        sst_like_dir,
        "--split",
        "dev",
        "--out",
        out,
    ]
    if case == "task":
        args[4] = "no_such_task"
    elif case == "model_dir":
        args[2] = tmp_path  # exists, but not a model
    elif case == "model_missing":
        args[2] = tmp_path / "nope"
    elif case == "columns":
        d = tmp_path / "d"
        d.mkdir()
        (d / "dev.tsv").write_text("body\tlabel\nhi\t1\n")
        args[6] = d
    elif case == "labels":
        d = tmp_path / "d"
        d.mkdir()
        (d / "dev.tsv").write_text("sentence\tlabel\nhi\t1\nho\tmaybe\n")
        args[6] = d
    elif case == "empty":
        d = tmp_path / "d"
        d.mkdir()
        (d / "dev.tsv").write_text("sentence\tlabel\n")
        args[6] = d
    elif case == "limit":
        args += ["--limit", "0"]
    elif case == "out":
        f = tmp_path / "file"
        f.write_text("x")
        out = f / "sub"
        args[-1] = out
    elif case == "prompt_other_model":
        from promptport.models import load_model
        from promptport.prompt import init_prompt_embeddings, make_metadata, save_prompt
        from promptport.tasks import get_task

        wide = load_model(str(tiny_model_dir_wide))
        emb = init_prompt_embeddings(wide.model, wide.tokenizer, 3, "random")
        save_prompt(
            tmp_path / "p",
            emb,
            make_metadata(model_info=wide.info, task=get_task("sst2"), init="random", n_tokens=3),
        )
        args += ["--prompt", tmp_path / "p"]
    elif case == "config_key":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("batch_sise: 4\n")
        args += ["--config", cfg]
    rc, text = run(args, capsys)
    assert rc == 2, text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and "Traceback" not in text
    assert not (out / "metrics.json").exists()
    if case == "config_key":
        assert "did you mean 'batch_size'" in text


def test_config_file_and_cli_override(tiny_model_dir, sst_like_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\ntask: sst2\ndata: {sst_like_dir}\nsplit: dev\nlimit: 3\n"
        f"out-dir: {tmp_path / 'from_cfg'}\n"
    )
    rc, text = run(["evaluate", "--config", cfg, "--limit", "5"], capsys)
    assert rc == 0, text
    assert json.loads((tmp_path / "from_cfg" / "metrics.json").read_text())["n"] == 5


def test_config_bad_value_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: many\n")
    rc, text = run(["evaluate", "--config", cfg], capsys)
    assert rc == 2 and "limit" in text


def test_console_script_help_and_exit_code():
    r = subprocess.run(
        [sys.executable, "-m", "promptport.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "--task" in r.stdout and "--config" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "promptport.cli", "evaluate", "--limit", "0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: limit") and "Traceback" not in r.stderr


def test_transfer_help_names_every_embedded_public_source():
    """--public-data's help lists what the loader accepts (the offline default's rt_reviews too), and
    the example uses in-domain public text, not the movie plots the offline default left behind."""
    from click.testing import CliRunner

    from promptport.cli import app
    from promptport.corpus import EMBEDDED_TEXTS

    out = " ".join(
        CliRunner().invoke(app, ["transfer", "--help"], terminal_width=200).output.split()
    )
    assert all(f"embedded:{n}" in out for n in EMBEDDED_TEXTS) and "rt_reviews" in EMBEDDED_TEXTS
    assert "--public-data embedded:rt_reviews --out runs/transfer" in out


def test_export_peft_cli(tiny_lm, tmp_path, capsys):
    from promptport.prompt import init_prompt_embeddings, make_metadata, save_prompt
    from promptport.tasks import get_task

    emb = init_prompt_embeddings(tiny_lm.model, tiny_lm.tokenizer, 3, "random")
    save_prompt(
        tmp_path / "p",
        emb,
        make_metadata(model_info=tiny_lm.info, task=get_task("sst2"), init="random", n_tokens=3),
    )
    rc, text = run(["export", tmp_path / "p", "--peft", tmp_path / "peft"], capsys)
    assert rc == 0, text
    assert (
        json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"]
        == "PROMPT_TUNING"
    )


def test_split_column_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    """One file with a split column: evaluate reads only the named split; a missing column is exit 2."""
    f = tmp_path / "all.tsv"
    names = ["train", "dev", "test"]
    f.write_text(
        "sentence\tlabel\tpart\n"
        + "".join(f"review {i} text\t{i % 2}\t{names[i % 3]}\n" for i in range(30))
    )
    base = ["evaluate", "--model", tiny_model_dir, "--task", "sst2", "--data", f]
    rc, text = run(
        base + ["--split", "test", "--split-column", "part", "--out", tmp_path / "e"], capsys
    )
    assert rc == 0, text
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == 10
    rc, text = run(base + ["--split", "test", "--out", tmp_path / "h"], capsys)  # hash split
    m = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert rc == 0 and m["n"] < 10 and "text hash" in m["split_rule"]
    rc, text = run(base + ["--split-column", "nope", "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "split_column" in text
