"""Each setting is defined once: the tuning and DP options of `promptport tune` and `promptport audit`
are generated from the TuneConfig / DPConfig fields (default and help text in the field)."""

from __future__ import annotations

import dataclasses

import click
import pytest

from promptport.cli import app
from promptport.options import cli_fields, click_options, option_name, setting
from promptport.privacy import DPConfig
from promptport.tune import LOOP_ONLY_SETTINGS, TuneConfig


def _params(command: str) -> dict[str, click.Option]:
    return {p.name: p for p in app.commands[command].params if isinstance(p, click.Option)}


@pytest.mark.parametrize("command", ["tune", "audit"])
@pytest.mark.parametrize("cls", [TuneConfig, DPConfig])
def test_every_setting_is_an_option_of_tune_and_audit(command, cls):
    params = _params(command)
    skip = (
        LOOP_ONLY_SETTINGS if command == "audit" else ()
    )  # shadows: no validation, no checkpoints
    for f in cli_fields(cls):
        if f.name in skip:
            assert f.name not in params
            continue
        assert f.name in params, (
            f"{command} has no {option_name(f.name)} for {cls.__name__}.{f.name}"
        )
        opt = params[f.name]
        assert opt.opts == [option_name(f.name)]
        default = None if f.default is dataclasses.MISSING else f.default
        assert opt.default == default, (f.name, opt.default, default)
        assert opt.help.endswith(f.metadata["help"])


def test_every_tuning_field_has_help_and_only_shared_ones_are_not_options():
    for cls in (TuneConfig, DPConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
    off = {f.name for f in dataclasses.fields(TuneConfig)} - {
        f.name for f in cli_fields(TuneConfig)
    }
    assert off == {"seed", "dp"}  # --seed is every command's; DP has its own options


def test_a_new_field_becomes_an_option():
    @dataclasses.dataclass
    class Cfg:
        n_things: int = setting(3, "How many things.")
        mode: str = setting("a", "Mode.", choices=("a", "b"))
        hidden: int = setting(0, "Not an option.", cli=False)

    @click.command()
    @click_options(Cfg)
    def cmd(**v):
        click.echo(repr(v))

    from click.testing import CliRunner

    r = CliRunner().invoke(cmd, ["--n-things", "5", "--mode", "b"])
    assert r.exit_code == 0 and r.output.strip() == repr({"n_things": 5, "mode": "b"})
    assert CliRunner().invoke(cmd, ["--mode", "c"]).exit_code == 2
    assert "How many things." in CliRunner().invoke(cmd, ["--help"]).output


def test_distill_options_are_the_config_fields():
    """`promptport distill` options come from DistillConfig: every field but the shared --seed,
    with its default and help; repeatable options for the lists, an on/off pair for the bools."""
    from promptport.distill import DistillConfig

    params = _params("distill")
    fields = {f.name: f for f in dataclasses.fields(DistillConfig)}
    assert {f.name for f in cli_fields(DistillConfig)} == set(fields) - {"seed"}
    for name, f in fields.items():
        assert f.metadata.get("help"), name
        if name == "seed":
            continue
        opt = params[name]
        assert opt.help == f.metadata["help"]
        if str(f.type).startswith("list["):
            assert opt.multiple, name
        elif f.default is not dataclasses.MISSING:
            assert opt.default == f.default, (name, opt.default, f.default)
    assert params["corpus"].opts == ["--corpus", "-c"]
    assert params["freeze_embeddings"].secondary_opts == ["--train-embeddings"]


def test_distill_cli_builds_the_config_a_python_user_would(monkeypatch, tmp_path):
    """Not given, a repeatable option keeps the field's default (the embedded corpus); the flags map
    onto the fields; a bad choice is a one-line error naming the option, exit code 2."""
    from click.testing import CliRunner

    import promptport.distill as D

    seen = {}

    def fake(teacher, out, cfg, **kw):
        seen["cfg"] = cfg
        return {"rank": 1}

    monkeypatch.setattr(D, "distill", fake)
    r = CliRunner().invoke(app, ["distill", "--out", str(tmp_path), "--layers", "2"])
    assert r.exit_code == 0, r.output
    assert seen["cfg"] == D.DistillConfig(layers=2)
    r = CliRunner().invoke(
        app,
        ["distill", "--out", str(tmp_path), "-c", "a.txt", "-c", "b.txt", "--train-embeddings",
         "--task-whole-texts", "-T", "3", "--seed", "4"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert cfg.corpus == ["a.txt", "b.txt"] and not cfg.freeze_embeddings
    assert not cfg.task_sentences and cfg.temperature == 3.0 and cfg.seed == 4
    bad = CliRunner().invoke(app, ["distill", "--out", str(tmp_path), "--schedule", "steps"])
    assert bad.exit_code == 2 and "--schedule" in bad.output
