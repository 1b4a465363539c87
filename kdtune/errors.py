"""Errors that mean "the user asked for something invalid".

The CLI turns a :class:`KdtuneError` into one line on stderr and exit code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class KdtuneError(ValueError):
    """Invalid user input: a bad value, an unknown name, a missing file."""


def choose_one(kind: str, value: object, allowed: Iterable[object]) -> KdtuneError:
    """Build the error for ``value`` not being one of ``allowed``.

    >>> str(choose_one("method", "rkd5", ["none", "vanilla"]))
    "unknown method 'rkd5'; choose one of: none, vanilla"
    """
    allowed = [str(a) for a in allowed]
    return KdtuneError(f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}"
                       f"{did_you_mean(value, allowed)}")


def did_you_mean(value: object, allowed: Iterable[object], *,
                 shown: Callable[[str], str] = repr) -> str:
    """`` (did you mean X?)`` naming the entry of ``allowed`` closest to ``value`` (written by
    ``shown``), or ``""`` when none is close.

    >>> did_you_mean("--temprature", ["--temperature", "--teacher"], shown=str)
    ' (did you mean --temperature?)'
    """
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {shown(close[0])}?)" if close else ""


class Interrupted(KeyboardInterrupt):
    """The user stopped a command (Ctrl-C); the message says what to do next."""
