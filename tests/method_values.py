"""Valid and invalid values for any registered method's parameters, read from the registry."""

from __future__ import annotations

from typing import Any

from kdtune.methods import Param, method_params


def valid_value(p: Param) -> Any:
    """A value ``p`` accepts: its default, else one inside its range."""
    if p.default is not None:
        return p.default
    if p.choices is not None:
        return p.choices[0]
    if p.type is bool:
        return True
    if p.type is str:
        return "x"
    if p.low is not None and p.high is not None:
        return p.type((p.low + p.high) / 2)
    if p.low is not None:
        return p.type(p.low + 2)
    return p.type(p.high - 2) if p.high is not None else p.type(1)


def valid_params(method: str) -> dict[str, Any]:
    """A value for each required parameter of ``method`` (the others take their defaults)."""
    return {n: valid_value(p) for n, p in method_params(method).items() if p.required}


def variants(method: str) -> dict[str, dict[str, Any]]:
    """``{"default": valid_params}`` plus, per bool parameter, the other value of it."""
    base = valid_params(method)
    out = {"default": base}
    for name, p in method_params(method).items():
        if p.type is bool:
            out[f"{name}={not valid_value(p)}"] = {**base, name: not valid_value(p)}
    return out


def bad_values(p: Param) -> list[Any]:
    """Values ``p`` must refuse: the wrong type, and just outside each end of its range."""
    out: list[Any] = ["not-a-value"]
    if p.choices is not None:
        return out
    if p.type in (int, float):
        if p.low is not None:
            out.append(p.low if p.low_open else p.low - 1)
        if p.high is not None:
            out.append(p.high if p.high_open else p.high + 1)
        out.append(float("nan"))
    return out
