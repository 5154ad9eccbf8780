"""Settings defined once: a config dataclass field carries its default and its help text, and the
command-line options are generated from the fields.

    n_tokens: int = setting(20, "Number of virtual tokens.")

gives the field `n_tokens` (default 20) and, through `click_options(TuneConfig)`, the option
`--n-tokens` with that default and help on every command that shows tuning settings (`tune`, `audit`).
Adding a setting is one edit in one dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

_MISSING: Any = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Iterable[str] | None = None,
    default_factory: Callable[[], Any] = _MISSING,
    cli: bool = True,
    short: str | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its help text (and allowed values) in the field's metadata.
    `cli=False`: a setting with no command-line option of its own (e.g. set by a shared option);
    `short`: a one-letter alias ("-c"); `flag`: an on/off pair for a bool ("--x/--no-x").
    A `list[str]` field is a repeatable option; not given, it keeps the field's default."""
    meta: dict[str, Any] = {"help": help, "cli": cli}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if short is not None:
        meta["short"] = short
    if flag is not None:
        meta["flag"] = flag
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _click_type(f: dataclasses.Field):
    import click

    if "choices" in f.metadata:
        return click.Choice(list(f.metadata["choices"]))
    kind = str(f.type).replace(" ", "").split("|")[0]
    return {"int": int, "float": float, "str": str}.get(kind, str)


def click_options(cls, help_prefix: str = "", exclude: Iterable[str] = ()) -> Callable:
    """A decorator adding one click option per command-line field of `cls` (except `exclude`), in
    field order."""
    import click

    skip = set(exclude)

    def decorate(fn):
        for f in reversed([f for f in cli_fields(cls) if f.name not in skip]):
            default = f.default if f.default is not _MISSING else None
            text = help_prefix + f.metadata["help"]
            names = [option_name(f.name)]
            if "short" in f.metadata:
                names.append(f.metadata["short"])
            if "flag" in f.metadata:  # an on/off pair
                fn = click.option(
                    f.metadata["flag"], f.name, default=bool(default), show_default=True, help=text
                )(fn)
                continue
            if str(f.type) == "bool":
                flag = click.option(*names, f.name, is_flag=True, default=bool(default), help=text)
                fn = flag(fn)
                continue
            if _is_list(f):
                fn = click.option(*names, f.name, multiple=True, help=text)(fn)
                continue
            fn = click.option(
                *names,
                f.name,
                type=_click_type(f),
                default=default,
                show_default=default is not None,
                help=text,
            )(fn)
        return fn

    return decorate


def _is_list(f: dataclasses.Field) -> bool:
    return str(f.type).replace(" ", "").startswith("list[")


def option_values(cls, values: dict) -> dict:
    """The values of `cls`'s command-line fields among parsed options; a repeatable option that was
    not given is left out, so the field keeps its default."""
    out = {}
    for f in cli_fields(cls):
        if f.name not in values:
            continue
        if _is_list(f):
            if values[f.name]:
                out[f.name] = list(values[f.name])
            continue
        out[f.name] = values[f.name]
    return out
