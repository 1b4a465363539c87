"""Errors that mean "the user asked for something invalid".

The CLI turns a :class:`KdtuneError` into one line on stderr and exit code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdtuneError(ValueError):
    """Invalid user input: a bad value, an unknown name, a missing file."""


def choose_one(kind: str, value: object, allowed: Iterable[object]) -> KdtuneError:
    """Build the error for ``value`` not being one of ``allowed``.

    >>> str(choose_one("method", "rkd5", ["none", "vanilla"]))
    "unknown method 'rkd5'; choose one of: none, vanilla"
    """
    allowed = [str(a) for a in allowed]
    msg = f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}"
    close = difflib.get_close_matches(str(value), allowed, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return KdtuneError(msg)


class Interrupted(KeyboardInterrupt):
    """The user stopped a command (Ctrl-C); the message says what to do next."""
