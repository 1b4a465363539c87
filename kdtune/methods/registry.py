"""The KD-method registry: a method is one loss function that owns its hyper-parameters.

A method's module registers its soft term with the parameters it reads::

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

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from kdtune.errors import KdtuneError
from kdtune.methods.params import KD_FIELDS, PARAMS, Param  # noqa: F401  (their home)
from kdtune.registry import Registry

LossFn = Callable[..., "Tensor | None"]
"""``fn(student_logits, teacher_logits, labels, *, [temperature], <params>, [progress])``."""
AdjustFn = Callable[[Tensor, Tensor], Tensor]
"""``adjust(teacher_logits, labels) -> new teacher logits`` (float32 in, a new tensor out)."""
PeersFn = Callable[[Callable[[], nn.Module], Mapping[str, Any]], nn.Module]
"""``peers(make_student, params) -> module``: an online method's peers (see register_method)."""
L = TypeVar("L", bound=LossFn)

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass(frozen=True)
class MethodSpec:
    """A registered KD method: its soft term, what it reads and its own parameters."""

    name: str
    fn: LossFn
    needs_teacher: bool
    uses_alpha: bool
    uses_temperature: bool
    batch_level: bool
    uses_progress: bool
    params: tuple[Param, ...]
    formula: str = ""
    paper: str = ""
    adjust: AdjustFn | None = None
    kind: str = "response · offline"
    peers: PeersFn | None = None

    @property
    def needs_teacher_model(self) -> bool:
        """Whether the trainer needs a teacher: the method reads target logits and they do not
        come from its own peers (an online method's targets are its peers' logits)."""
        return self.needs_teacher and self.peers is None

    @property
    def adjusts_teacher(self) -> bool:
        return self.adjust is not None

    def reads(self, key: str) -> bool:
        """Whether this method reads the config key ``key``: ``alpha``, ``temperature``,
        ``kd_warmup`` (which ramps the ``(1 - alpha)`` term, so: the methods reading alpha) or
        a method parameter (its own only). Any other key is not a method's concern (True)."""
        if key in ("alpha", "kd_warmup"):
            return self.uses_alpha
        if key == "temperature":
            return self.uses_temperature
        if key in PARAMS.group("method"):
            return any(p.name == key for p in self.params)
        return True

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """This method's parameters from ``given``: coerced, range-checked, defaults filled in.

        ``None`` counts as not given. A parameter the method does not declare, or a missing
        required one, is a one-line :class:`KdtuneError`.
        """
        own = {p.name: p for p in self.params}
        for key, value in given.items():
            if key not in own and value is not None:
                raise KdtuneError(f"method {self.name!r} does not take {key!r}; its parameters: "
                                  f"{', '.join(own) or '(none)'}")
        missing = [p for p in self.params if p.required and given.get(p.name) is None]
        if missing:
            raise KdtuneError(
                f"method {self.name!r} needs {_and(p.name for p in missing)} "
                f"({'; '.join(f'{p.name}: {p.allowed()}' for p in missing)}): pass "
                f"{' and '.join(p.flag for p in missing)} or set "
                f"{'it' if len(missing) == 1 else 'them'} in the config")
        return {name: p.default if given.get(name) is None else p.check(given[name])
                for name, p in own.items()}


#: The registered methods.
METHODS: Registry[MethodSpec] = Registry("method", plugins="kdtune.methods")


def register_method(
    name: str,
    *,
    needs_teacher: bool = True,
    uses_alpha: bool = True,
    uses_temperature: bool = True,
    batch_level: bool = False,
    uses_progress: bool = False,
    params: Sequence[Param] = (),
    formula: str = "",
    paper: str = "",
    adjust: AdjustFn | None = None,
    kind: str = "response · offline",
    peers: PeersFn | None = None,
) -> Callable[[L], L]:
    """Register the soft-term function ``fn`` of the method ``name`` (see the module docstring).

    ``needs_teacher``: the method reads teacher logits. ``uses_alpha``/``uses_temperature``:
    it reads those config fields. ``batch_level``: ``fn`` returns one value for the batch (a
    batch statistic) instead of one per sample. ``uses_progress``: ``fn`` receives the 0-based
    epoch as ``progress``. ``params``: the method's own hyper-parameters; a name another method
    registered with another spec, or one of :class:`~kdtune.config.TrainConfig`'s fields, is an
    error. ``formula``/``paper``: one line each for the README's methods table. ``adjust``: the
    rule :func:`adjust_teacher_logits` applies (relative KD). ``kind``: the knowledge and the
    scheme, for the README (``response · offline``, ``response · self``, ...). ``peers``: an
    online method (no teacher): ``peers(make_student, params)`` builds the module of the other
    students, trained with the student; the trainer calls it as ``module(x, student_logits,
    loss)`` for the whole step's loss, where ``loss(z_k, z_j)`` is :func:`training_loss` of
    peer ``k``'s logits against peer ``j``'s as target logits (detached), and, when it has
    one, ``module.metrics(x_val, y_val)`` for extra epoch metrics.
    """
    params = PARAMS.check("method", name, params)

    def decorate(fn: L) -> L:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        keywords: dict[str, Any] = {p.name: p.default for p in params}
        if uses_temperature:
            keywords["temperature"] = 1.0
        if uses_progress:
            keywords["progress"] = 0
        try:
            inspect.signature(fn).bind(None, None, None, **keywords)
        except TypeError:
            raise TypeError(f"method {name!r}: the loss must take (student_logits, "
                            f"teacher_logits, labels, *, {', '.join(keywords)})") from None
        METHODS.add(name, MethodSpec(
            name=name, fn=fn, needs_teacher=needs_teacher, uses_alpha=uses_alpha,
            uses_temperature=uses_temperature, batch_level=batch_level,
            uses_progress=uses_progress, params=params, formula=formula, paper=paper,
            adjust=adjust, kind=kind, peers=peers))
        PARAMS.add("method", params)
        return fn

    return decorate


def unregister_method(name: str) -> None:
    """Remove the method ``name`` and the parameters no other method declares (for tests)."""
    spec = METHODS.remove(name)
    PARAMS.release("method", spec.params, [p for s in METHODS.values() for p in s.params])


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; an unknown name raises :class:`KdtuneError`."""
    return METHODS.get(name)


def method_params(name: str) -> dict[str, Param]:
    """The method's own hyper-parameters (not alpha, temperature, kd_warmup): name -> spec."""
    return {p.name: p for p in get_method(name).params}


def all_params() -> dict[str, Param]:
    """Every registered method parameter (logit methods' first, then feature methods'),
    name -> spec, in registration order."""
    return PARAMS.all()


def feature_params() -> dict[str, Param]:
    """The feature methods' parameters (``feature_weight``, ``stages``, ...), name -> spec."""
    return PARAMS.group("feature method")


def methods_reading(key: str) -> list[str]:
    """The registered methods that read the config key ``key`` (for a feature parameter:
    the feature methods that read it)."""
    if key in PARAMS.group("feature method") and key not in PARAMS.group("method"):
        from kdtune.methods.features import get_feature_method, list_feature_methods

        return [n for n in list_feature_methods() if get_feature_method(n).reads(key)]
    return [n for n, s in METHODS.items() if s.reads(key)]


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


def _and(names: Iterable[str]) -> str:
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


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
