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
