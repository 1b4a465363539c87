"""Building models: ``create_model``, the :class:`Features` every model returns, value checks.

A builder is a function ``builder(num_classes, in_shape, **kw) -> nn.Module``, registered with
``@register_model(name)`` (:mod:`kdtune.models.catalog`, no torch there). Its keyword arguments
(and their defaults) are the model's options; ``create_model`` rejects any keyword the
builder does not declare, so adding a model is just writing and decorating one function.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from kdtune.errors import KdtuneError, choose_one
from kdtune.models.catalog import MODELS


class Features(NamedTuple):
    """What ``model.forward_features(x)`` returns, from one forward pass.

    ``logits`` ``(N, classes)``: exactly what ``model(x)`` gives. ``stages``: the per-stage
    outputs, first to last (an MLP's hidden activations ``(N, width)``; a ResNet's or a WRN's
    stage outputs ``(N, C, H, W)``). ``embedding`` ``(N, D)``: the pooled vector the linear
    classifier reads.
    """

    logits: torch.Tensor
    stages: list[torch.Tensor]
    embedding: torch.Tensor

Builder = Callable[..., nn.Module]


def create_model(name: str, num_classes: int, in_shape: Sequence[int], **kw: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes and inputs of shape ``(C, H, W)``.

    Raises :class:`KdtuneError` for an unknown name, an option the model does not take, or an
    invalid value.
    """
    spec = MODELS.get(name)
    allowed = spec.options
    unknown = [k for k in kw if k not in allowed]
    if unknown:
        bad = ", ".join(repr(k) for k in unknown)
        takes = ", ".join(sorted(allowed)) or "no options"
        raise KdtuneError(f"model {name!r} does not take {bad}; it takes: {takes}")
    num_classes = check_int("num_classes", num_classes, minimum=1)
    ok = (
        isinstance(in_shape, Sequence)
        and not isinstance(in_shape, str | bytes)
        and len(in_shape) == 3
        and all(_is_int(d) and d >= 1 for d in in_shape)
    )
    if not ok:
        raise KdtuneError(
            f"in_shape {in_shape!r}: must be 3 positive integers (channels, height, width)"
        )
    c, h, w = (int(d) for d in in_shape)
    return spec.build(num_classes, (c, h, w), **kw)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Value checks shared by the builders. Each returns the checked value or raises KdtuneError.


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(what: str, value: object, *, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` (bools are refused)."""
    if not _is_int(value) or value < minimum:
        raise KdtuneError(f"{what} {value!r}: must be an integer >= {minimum}")
    return int(value)


def check_dropout(value: object) -> float:
    """``value`` as a dropout probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise KdtuneError(f"dropout {value!r}: must be a number in [0, 1)")
    return float(value)


def check_choice(what: str, value: object, allowed: Sequence[object]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``."""
    if isinstance(value, bool) or value not in allowed:
        if isinstance(value, str):
            raise choose_one(what, value, allowed)
        choices = ", ".join(str(a) for a in allowed)
        raise KdtuneError(f"{what} {value!r}: must be one of: {choices}")


def check_int_list(what: str, value: object, *, minimum: int) -> list[int]:
    """``value`` as a list of ints ``>= minimum``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise KdtuneError(f"{what} {value!r}: must be a list of integers >= {minimum}")
    items = list(value)
    for v in items:
        if not _is_int(v) or v < minimum:
            raise KdtuneError(
                f"{what} {items!r}: {v!r} is not allowed; each must be an integer >= {minimum}"
            )
    return [int(v) for v in items]
