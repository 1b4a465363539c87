"""The one coercion of user values (YAML, CLI flags, MLflow params) to an annotated type.

Every value a user writes reaches kdtune as a string, a YAML scalar or a list; :func:`coerce`
turns it into the type a config field or a method parameter declares, or raises a one-line
:class:`~kdtune.errors.KdtuneError` ``<where>: expected <what>, got <value>``. The rules:

* ``bool``: ``True``/``False``, or the words true/false, yes/no, 1/0 (any case);
* ``int``: an integer, a float or a string holding an integral number (``5``, ``5.0``,
  ``"5"``, ``"1e3"``); never a bool, never a fraction (2.5 is not truncated to 2);
* ``float``: a number or a string of one; never a bool;
* ``str``: a string, or a number written as a string (``stages: 1`` -> ``"1"``);
* ``tuple[int, ...]``: a list of integers, one integer, or ``"300-300"``/``"1,1,0,0"``;
* ``dict``: a mapping; ``X | None``: ``None`` or an ``X``.
"""

from __future__ import annotations

import math
import numbers
import re
import types
import typing
from typing import Any

from kdtune.errors import KdtuneError

_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` (see the module docstring), or a one-line
    :class:`KdtuneError` starting with ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], where)
    if origin is tuple:
        if isinstance(value, int | str) and not isinstance(value, bool):
            value = split_ints(value, where)
        if not isinstance(value, list | tuple):
            raise KdtuneError(f"{where}: expected a list of integers, got {value!r}")
        return tuple(coerce(v, int, where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise KdtuneError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _WORDS:
            return _WORDS[value.strip().lower()]
        raise KdtuneError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        number = _number(value)
        if number is None or not math.isfinite(number) or not number.is_integer():
            raise KdtuneError(f"{where}: expected an integer, got {value!r}")
        return value if type(value) is int else int(number)
    if hint is float:
        number = _number(value)
        if number is None:
            raise KdtuneError(f"{where}: expected a number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise KdtuneError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number or a string of one (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        return None
    try:
        return float(value)
    except (OverflowError, ValueError):
        return None


def split_ints(value: int | str, where: str) -> list[int]:
    """``"300-300"``, ``"1,1,0,0"`` or ``300`` -> a list of ints."""
    if isinstance(value, int):
        return [value]
    text = value.strip()
    # Commas/spaces separate; a dash separates only without them ("300-300"), so that
    # "-1,1,0,0" keeps its minus sign (and is refused by the model) instead of becoming 1.
    if re.search(r"[,\s]", text):
        parts = [p for p in re.split(r"[,\s]+", text) if p]
    else:
        parts = text.split("-") if text else []
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise KdtuneError(f"{where}: expected integers like 300-300 or 1,1,0,0, "
                          f"got {value!r}") from None
