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
) -> Any:
    """A dataclass field with its help text (and allowed values) in the field's metadata.
    `cli=False`: a setting with no command-line option of its own (e.g. set by a shared option)."""
    meta: dict[str, Any] = {"help": help, "cli": cli}
    if choices is not None:
        meta["choices"] = tuple(choices)
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
            if str(f.type) == "bool":
                name = option_name(f.name)
                flag = click.option(name, f.name, is_flag=True, default=bool(default), help=text)
                fn = flag(fn)
                continue
            fn = click.option(
                option_name(f.name),
                f.name,
                type=_click_type(f),
                default=default,
                show_default=default is not None,
                help=text,
            )(fn)
        return fn

    return decorate


def option_values(cls, values: dict) -> dict:
    """The values of `cls`'s command-line fields among parsed options."""
    return {f.name: values[f.name] for f in cli_fields(cls) if f.name in values}
