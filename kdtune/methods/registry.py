"""The KD losses: a method's soft term composed with the hard-label loss, in one place.

A method is one loss function that owns its hyper-parameters; its spec (name, parameters,
docs) is registered in :mod:`kdtune.methods.specs` (no torch; the built-in methods are
declared in :mod:`kdtune.methods.catalog`). A plugin registers its soft term with the
parameters it reads::

    @register_method("dkd", params=[Param("nckd_weight", float, 8.0, low=0, help="...")],
                     formula="...", paper="...")
    def dkd(student_logits, teacher_logits, labels, *, temperature, nckd_weight) -> Tensor:
        ...  # the soft term: one value per sample, or one per batch (batch_level=True)

The function receives its arguments checked: teacher logits detached (``None`` for a method
that needs no teacher), ``temperature`` as a float (only when ``uses_temperature``), each of its
parameters coerced, range-checked and defaulted, and ``progress`` (the 0-based epoch) only when
``uses_progress``. It returns the soft term only; the hard-label cross-entropy and the weights
are composed in one place, :func:`training_loss`::

    alpha * CE(z_s, y) + kd_scale * (1 - alpha) * soft

(``distillation_loss`` is the same with ``kd_scale`` 1). A method that does not read alpha
returns no soft term (``None``): its loss is ``CE`` with weight 1.

Parameter names are global: every method that declares ``logit_standardization`` declares the
same :class:`Param`, so one config key, one CLI flag and one search-space name mean one thing.
Config, CLI, search-space validation, MLflow params and the README's methods table read the
registry; adding a method changes nothing else under ``kdtune/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdtune.errors import KdtuneError
from kdtune.methods.params import KD_FIELDS, Param
from kdtune.methods.specs import (
    METHODS,
    MethodSpec,
    all_params,
    feature_params,
    get_method,
    list_methods,
    method_params,
    methods_reading,
    register_method,
    unregister_method,
)

#: The spec side lives in kdtune.methods.specs (no torch); this module adds the losses.
__all__ = ["KD_FIELDS", "METHODS", "AdjustFn", "LossFn", "MethodSpec", "Param", "PeersFn",
           "adjust_teacher_logits", "all_params", "distillation_loss", "feature_params",
           "get_method", "list_methods", "method_params", "methods_reading", "register_method",
           "training_loss", "unregister_method"]

LossFn = Callable[..., "Tensor | None"]
"""``fn(student_logits, teacher_logits, labels, *, [temperature], <params>, [progress])``."""
AdjustFn = Callable[[Tensor, Tensor], Tensor]
"""``adjust(teacher_logits, labels) -> new teacher logits`` (float32 in, a new tensor out)."""
PeersFn = Callable[[Callable[[], nn.Module], Mapping[str, Any]], nn.Module]
"""``peers(make_student, params) -> module``: an online method's peers (see register_method)."""

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def distillation_loss(
    method: str,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    **params: Any,
) -> Tensor:
    """``alpha * CE(z_s, y) + (1 - alpha) * soft`` of ``method``: a float32 scalar.

    ``params`` are the method's own parameters (see :func:`method_params`); omitted ones take
    their defaults. Teacher logits are a fixed target: they are detached; a method without a
    teacher ignores them (they may be ``None``). Invalid arguments raise :class:`KdtuneError`.
    """
    return training_loss(method, student_logits, teacher_logits, labels, alpha=alpha,
                         temperature=temperature, params=params)


def training_loss(
    method: str,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    params: Mapping[str, Any] | None = None,
    kd_scale: float = 1.0,
    progress: int = 0,
) -> Tensor:
    """The trainer's loss: ``alpha * CE + kd_scale * (1 - alpha) * soft`` (a float32 scalar).

    ``kd_scale`` is the warm-up factor in ``(0, 1]``; ``progress`` the 0-based epoch, handed
    to methods that declare ``uses_progress``. The one place where CE and a method's soft term
    are composed; per-sample soft terms are weighed per sample, then averaged.
    """
    spec = get_method(method)
    _check_logits(student_logits, labels)
    kwargs = spec.resolve(params or {})
    if spec.needs_teacher:
        if teacher_logits is None:
            raise KdtuneError(
                f"method {method!r} needs teacher logits; methods without a teacher: "
                f"{', '.join(n for n, s in METHODS.items() if not s.needs_teacher)}")
        if teacher_logits.shape != student_logits.shape:
            raise KdtuneError(
                f"teacher logits of shape {tuple(teacher_logits.shape)} do not match student "
                f"logits of shape {tuple(student_logits.shape)}")
        teacher_logits = teacher_logits.detach()
    else:
        teacher_logits = None
    if spec.uses_temperature:
        kwargs["temperature"] = _check_positive("temperature", temperature)
    if spec.uses_progress:
        kwargs["progress"] = progress
    labels = labels.long()
    hard = nn.functional.cross_entropy(student_logits.float(), labels, reduction="none")
    if spec.uses_alpha:
        alpha = _check_alpha(alpha)
        if alpha == 1.0:
            return hard.mean()
    soft = spec.fn(student_logits, teacher_logits, labels, **kwargs)
    if soft is None:
        return hard.mean()
    want = () if spec.batch_level else hard.shape
    if soft.shape != want:
        raise TypeError(f"method {method!r} returned a soft term of shape {tuple(soft.shape)}; "
                        f"expected {tuple(want)}")
    if not spec.uses_alpha:
        return (hard.mean() + soft) if spec.batch_level else (hard + soft).mean()
    w_soft = (1.0 - alpha) * float(kd_scale)
    if spec.batch_level:
        return _weigh(alpha, hard.mean(), w_soft, soft.float())
    return _weigh(alpha, hard, w_soft, soft.float()).mean()


def _weigh(w_hard: float, hard: Tensor, w_soft: float, soft: Tensor) -> Tensor:
    """``w_hard * hard + w_soft * soft``; a zero weight drops its term, a weight 1 is exact."""
    if w_hard == 0.0:
        return soft if w_soft == 1.0 else w_soft * soft
    return w_hard * hard + w_soft * soft


def adjust_teacher_logits(method: str, teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """The teacher logits as ``method`` (rkd_v1..rkd_v4) rewrites them: a new tensor.

    The input is never modified; the result has the input's dtype and device. Methods that do
    not adjust the teacher raise :class:`KdtuneError` naming those that do.
    """
    spec = get_method(method)
    if spec.adjust is None:
        raise KdtuneError(
            f"method {method!r} does not adjust teacher logits; methods that do: "
            f"{', '.join(n for n, s in METHODS.items() if s.adjusts_teacher) or '(none)'}")
    _check_logits(teacher_logits, labels, what="teacher logits")
    adjusted = spec.adjust(teacher_logits.detach().float().clone(), labels.long())
    return adjusted.to(teacher_logits.dtype)


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
