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

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from kdtune.errors import KdtuneError, choose_one

LossFn = Callable[..., "Tensor | None"]
"""``fn(student_logits, teacher_logits, labels, *, [temperature], <params>, [progress])``."""
AdjustFn = Callable[[Tensor, Tensor], Tensor]
"""``adjust(teacher_logits, labels) -> new teacher logits`` (float32 in, a new tensor out)."""
PeersFn = Callable[[Callable[[], nn.Module], Mapping[str, Any]], nn.Module]
"""``peers(make_student, params) -> module``: an online method's peers (see register_method)."""
L = TypeVar("L", bound=LossFn)

#: The shared config fields a method may or may not read (see :meth:`MethodSpec.reads`).
KD_FIELDS = ("alpha", "temperature", "kd_warmup")
#: Keywords of :func:`training_loss`/the loss functions that no parameter may take.
_RESERVED = ("method", "student_logits", "teacher_logits", "labels", "params", "kd_scale",
             "progress", *KD_FIELDS)
_TYPES: dict[type, str] = {float: "a number", int: "an integer", bool: "true or false",
                           str: "a string"}
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a method: a config key, a CLI flag and a search-space name.

    ``default`` ``None`` makes the parameter required. ``low``/``high`` bound numbers
    (inclusive unless ``low_open``/``high_open``); ``choices`` lists the allowed values.
    """

    name: str
    type: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name in _RESERVED:
            raise ValueError(f"parameter {self.name!r}: not a valid parameter name")
        if self.type not in _TYPES:
            raise TypeError(f"parameter {self.name!r}: type must be one of float, int, bool, "
                            "str")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.check(c) for c in self.choices))
        if self.default is not None:
            self.check(self.default)

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """What a value may be, e.g. ``a number > 0`` or ``a number in [0, 1]``."""
        if self.choices is not None:
            return "one of: " + ", ".join(str(c) for c in self.choices)
        what = _TYPES[self.type]
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what

    def check(self, value: Any) -> Any:
        """``value`` coerced to this parameter's type and range-checked; else one-line
        :class:`KdtuneError` naming the parameter and what it allows."""
        out = _coerce(value, self.type)
        if out is None or not self._in_range(out):
            raise KdtuneError(f"{self.name} {value!r} must be {self.allowed()}")
        return out

    def _in_range(self, v: Any) -> bool:
        if self.choices is not None:
            return v in self.choices
        if self.type in (bool, str):
            return True
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return self.high is None or not (v > self.high or (self.high_open and v == self.high))


def _coerce(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (YAML, CLI and MLflow spellings accepted), or ``None``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        return words.get(value.lower()) if isinstance(value, str) else None
    if isinstance(value, bool):
        return None
    if kind is str:
        return value if isinstance(value, str) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if kind is int:
        return int(number) if math.isfinite(number) and number.is_integer() else None
    return number


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
        if key in _PARAMS:
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


_METHODS: dict[str, MethodSpec] = {}
_PARAMS: dict[str, Param] = {}
#: The feature methods' parameters (:mod:`kdtune.methods.features`): the same namespace.
_FEATURE_PARAMS: dict[str, Param] = {}


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
    from kdtune.config import TrainConfig

    params = tuple(params)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    names = [p.name for p in params]
    for p in params:
        if p.name in fields:
            raise ValueError(f"method {name!r}: parameter {p.name!r} is a TrainConfig field")
        known = _PARAMS.get(p.name) or _FEATURE_PARAMS.get(p.name)
        if known is not None and known != p:
            raise ValueError(f"method {name!r}: parameter {p.name!r} is already registered "
                             f"with another spec ({known})")
    if len(set(names)) != len(names):
        raise ValueError(f"method {name!r}: a parameter is declared twice in {names}")

    def decorate(fn: L) -> L:
        if name in _METHODS:
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
        _METHODS[name] = MethodSpec(
            name=name, fn=fn, needs_teacher=needs_teacher, uses_alpha=uses_alpha,
            uses_temperature=uses_temperature, batch_level=batch_level,
            uses_progress=uses_progress, params=params, formula=formula, paper=paper,
            adjust=adjust, kind=kind, peers=peers)
        for p in params:
            _PARAMS.setdefault(p.name, p)
        return fn

    return decorate


def unregister_method(name: str) -> None:
    """Remove the method ``name`` and the parameters no other method declares (for tests)."""
    spec = get_method(name)
    del _METHODS[name]
    for p in spec.params:
        if not any(p in other.params for other in _METHODS.values()):
            del _PARAMS[p.name]


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; an unknown name raises :class:`KdtuneError`."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise choose_one("method", name, list_methods()) from None


def method_params(name: str) -> dict[str, Param]:
    """The method's own hyper-parameters (not alpha, temperature, kd_warmup): name -> spec."""
    return {p.name: p for p in get_method(name).params}


def all_params() -> dict[str, Param]:
    """Every registered method parameter (logit methods' first, then feature methods'),
    name -> spec, in registration order."""
    return {**_PARAMS, **_FEATURE_PARAMS}


def feature_params() -> dict[str, Param]:
    """The feature methods' parameters (``feature_weight``, ``stages``, ...), name -> spec."""
    return dict(_FEATURE_PARAMS)


def methods_reading(key: str) -> list[str]:
    """The registered methods that read the config key ``key`` (for a feature parameter:
    the feature methods that read it)."""
    if key in _FEATURE_PARAMS and key not in _PARAMS:
        from kdtune.methods.features import get_feature_method, list_feature_methods

        return [n for n in list_feature_methods() if get_feature_method(n).reads(key)]
    return [n for n, s in _METHODS.items() if s.reads(key)]


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
                f"{', '.join(n for n, s in _METHODS.items() if not s.needs_teacher)}")
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
            f"{', '.join(n for n, s in _METHODS.items() if s.adjusts_teacher) or '(none)'}")
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
