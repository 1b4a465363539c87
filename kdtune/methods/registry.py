"""The KD-method registry and the one entry point the trainer calls: ``distillation_loss``.

A method is a pure per-sample loss function with one shared signature::

    fn(student_logits, teacher_logits, labels, *, alpha, temperature, t_right, t_wrong) -> (N,)

decorated with ``@register_method(name, ...)``. The flags tell ``distillation_loss`` which
arguments to validate; the function receives them already checked (teacher logits detached,
``alpha`` and the temperatures as floats) and returns one loss per sample. Adding a method is
writing and decorating one function; the trainer never branches on the method.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from kdtune.errors import KdtuneError, choose_one

LossFn = Callable[..., Tensor]
"""``fn(student_logits, teacher_logits, labels, *, alpha, temperature, t_right, t_wrong)``."""
AdjustFn = Callable[[Tensor, Tensor], Tensor]
"""``adjust(teacher_logits, labels) -> new teacher logits`` (float32 in, a new tensor out)."""
L = TypeVar("L", bound=LossFn)


@dataclass(frozen=True)
class MethodSpec:
    """A registered KD method.

    ``fn`` is the per-sample loss; ``adjust`` (only for methods with ``adjusts_teacher``) maps
    ``(teacher_logits, labels)`` to new teacher logits, see :func:`adjust_teacher_logits`.
    """

    name: str
    fn: LossFn
    needs_teacher: bool
    uses_temperature: bool
    uses_two_temperatures: bool
    adjusts_teacher: bool
    adjust: AdjustFn | None = None

    def uses(self, field: str) -> bool:
        """Whether this method reads the config field ``field``: one of :data:`KD_FIELDS`
        (``alpha`` only with a teacher, ``temperature``, ``t_right``/``t_wrong``); any other
        field is not a method's concern (True)."""
        return {"alpha": self.needs_teacher, "temperature": self.uses_temperature,
                "t_right": self.uses_two_temperatures,
                "t_wrong": self.uses_two_temperatures}.get(field, True)


#: The config fields a method may or may not read (see :meth:`MethodSpec.uses`).
KD_FIELDS = ("alpha", "temperature", "t_right", "t_wrong")


_METHODS: dict[str, MethodSpec] = {}
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def register_method(
    name: str,
    *,
    needs_teacher: bool = True,
    uses_temperature: bool = True,
    uses_two_temperatures: bool = False,
    adjusts_teacher: bool = False,
    adjust: AdjustFn | None = None,
) -> Callable[[L], L]:
    """Register a per-sample loss ``fn`` under ``name`` (see the module docstring).

    Methods with ``adjusts_teacher=True`` also pass ``adjust(teacher_logits, labels)``, the
    rule :func:`adjust_teacher_logits` applies.
    """
    if adjusts_teacher != (adjust is not None):
        raise TypeError(f"method {name!r}: pass adjust=... exactly when adjusts_teacher=True")

    def decorate(fn: L) -> L:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        try:
            inspect.signature(fn).bind(
                None, None, None, alpha=0.0, temperature=1.0, t_right=None, t_wrong=None
            )
        except TypeError:
            raise TypeError(
                f"method {name!r}: the loss must take (student_logits, teacher_logits, labels, "
                "*, alpha, temperature, t_right, t_wrong)"
            ) from None
        _METHODS[name] = MethodSpec(
            name=name,
            fn=fn,
            needs_teacher=needs_teacher,
            uses_temperature=uses_temperature,
            uses_two_temperatures=uses_two_temperatures,
            adjusts_teacher=adjusts_teacher,
            adjust=adjust,
        )
        return fn

    return decorate


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; an unknown name raises :class:`KdtuneError`."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise choose_one("method", name, list_methods()) from None


def distillation_loss(
    method: str,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    t_right: float | None = None,
    t_wrong: float | None = None,
) -> Tensor:
    """The batch-mean loss of ``method`` (a float32 scalar).

    ``alpha`` weighs the hard-label cross-entropy and ``1 - alpha`` the soft term. Teacher
    logits are a fixed target: they are detached. For ``none`` the teacher may be ``None`` and
    ``alpha``/``temperature`` are ignored. Invalid arguments raise :class:`KdtuneError`.
    """
    spec = get_method(method)
    _check_logits(student_logits, labels)
    if spec.needs_teacher:
        if teacher_logits is None:
            raise KdtuneError(
                f"method {method!r} needs teacher logits; "
                f"methods without a teacher: {_names(lambda s: not s.needs_teacher)}"
            )
        if teacher_logits.shape != student_logits.shape:
            raise KdtuneError(
                f"teacher logits of shape {tuple(teacher_logits.shape)} do not match student "
                f"logits of shape {tuple(student_logits.shape)}"
            )
        teacher_logits = teacher_logits.detach()
        alpha = _check_alpha(alpha)
    else:
        teacher_logits = None
        alpha = 1.0
    temperature = _check_positive("temperature", temperature) if spec.uses_temperature else 1.0
    if spec.uses_two_temperatures:
        if t_right is None or t_wrong is None:
            raise KdtuneError(f"{method} needs t_right and t_wrong (> 0)")
        t_right = _check_positive("t_right", t_right)
        t_wrong = _check_positive("t_wrong", t_wrong)
    per_sample = spec.fn(
        student_logits,
        teacher_logits,
        labels.long(),
        alpha=alpha,
        temperature=temperature,
        t_right=t_right,
        t_wrong=t_wrong,
    )
    return per_sample.mean()


def adjust_teacher_logits(method: str, teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """The teacher logits as ``method`` (rkd_v1..rkd_v4) rewrites them: a new tensor.

    The input is never modified; the result has the input's dtype and device. Methods that do
    not adjust the teacher raise :class:`KdtuneError` naming those that do.
    """
    spec = get_method(method)
    if spec.adjust is None:
        raise KdtuneError(
            f"method {method!r} does not adjust teacher logits; methods that do: "
            f"{_names(lambda s: s.adjusts_teacher)}"
        )
    _check_logits(teacher_logits, labels, what="teacher logits")
    adjusted = spec.adjust(teacher_logits.detach().float().clone(), labels.long())
    return adjusted.to(teacher_logits.dtype)


def _names(pred: Callable[[MethodSpec], bool]) -> str:
    return ", ".join(n for n, s in _METHODS.items() if pred(s)) or "(none)"


def _check_logits(logits: Tensor, labels: Tensor, what: str = "student logits") -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise KdtuneError(f"{what} must be a float tensor of shape (N, C)")
    if logits.shape[0] == 0:
        raise KdtuneError(f"{what} hold an empty batch; need at least one sample")
    if (
        not isinstance(labels, Tensor)
        or labels.shape != logits.shape[:1]
        or labels.dtype not in _INT_DTYPES
    ):
        raise KdtuneError(
            f"labels must be an integer tensor of shape ({logits.shape[0]},) to match {what} "
            f"of shape {tuple(logits.shape)}"
        )


def _as_float(what: str, value: object, allowed: str) -> float:
    if isinstance(value, bool):
        raise KdtuneError(f"{what} {value!r} must be {allowed}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KdtuneError(f"{what} {value!r} must be {allowed}") from None


def _check_alpha(alpha: object) -> float:
    a = _as_float("alpha", alpha, "a number in [0, 1]")
    if not 0.0 <= a <= 1.0:
        raise KdtuneError(f"alpha {alpha!r} is outside [0, 1]")
    return a


def _check_positive(what: str, value: object) -> float:
    v = _as_float(what, value, "a number > 0")
    if not v > 0:
        raise KdtuneError(f"{what} {value!r} must be > 0")
    if not math.isfinite(v):
        raise KdtuneError(f"{what} {value!r} must be finite (> 0)")
    return v
