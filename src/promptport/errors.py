"""Error types that the CLI maps to exit codes (2 = bad input, 1 = failure)."""

from __future__ import annotations


class PromptportError(Exception):
    """A failure the user should see as one line, without a traceback (exit code 1)."""

    exit_code = 1


class BadInput(PromptportError):
    """Input the user can fix: names the offending field (exit code 2)."""

    exit_code = 2

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def unknown_key(field: str, valid, where: str = "") -> BadInput:
    """A BadInput for a key nobody reads, naming the closest valid key (typos are the usual cause)."""
    import difflib

    close = difflib.get_close_matches(field.rsplit(".", 1)[-1], list(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
    return BadInput(field, f"unknown key{' in ' + where if where else ''}{hint}")
