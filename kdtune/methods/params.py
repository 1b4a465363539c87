"""Method parameters: :class:`Param` and the one namespace every method's parameters share.

Parameter names are global: every method (or feature method) that declares
``logit_standardization`` declares the same :class:`Param`, so one config key, one CLI flag and
one search-space name mean one thing. :data:`PARAMS` holds every declared parameter and is
the one place that checks a declaration: a valid name that is no
:class:`~kdtune.config.TrainConfig` field, declared once per method, with the spec any other
method declared under that name. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kdtune.coerce import coerce
from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError

#: The shared config fields a method may or may not read (see ``MethodSpec.reads``).
KD_FIELDS = ("alpha", "temperature", "kd_warmup")
#: Keywords of ``training_loss``/the loss functions that no parameter may take.
RESERVED = ("method", "student_logits", "teacher_logits", "labels", "params", "kd_scale",
            "progress", *KD_FIELDS)
TYPES: dict[type, str] = {float: "a number", int: "an integer", bool: "true or false",
                          str: "a string"}


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
        if not self.name.isidentifier() or self.name in RESERVED:
            raise ValueError(f"parameter {self.name!r}: not a valid parameter name")
        if self.type not in TYPES:
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
        what = TYPES[self.type]
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what

    def check(self, value: Any) -> Any:
        """``value`` coerced to this parameter's type (:func:`kdtune.coerce.coerce`) and
        range-checked; else one-line :class:`KdtuneError` naming the parameter and what it
        allows."""
        try:
            out = coerce(value, self.type, self.name)
        except KdtuneError:
            out = None
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


class ParamNamespace:
    """Every declared parameter by name, in two groups: the logit methods' and the feature
    methods' (the same namespace: a name means one spec in both)."""

    GROUPS = ("method", "feature method")

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, Param]] = {g: {} for g in self.GROUPS}

    def check(self, group: str, owner: str, params: Sequence[Param]) -> tuple[Param, ...]:
        """``params`` of the ``group`` entry ``owner``, checked before it registers: no
        :class:`~kdtune.config.TrainConfig` field, no name twice, no name another method
        declared with another spec (``ValueError``)."""
        params = tuple(params)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        names = [p.name for p in params]
        for p in params:
            if p.name in fields:
                raise ValueError(f"{group} {owner!r}: parameter {p.name!r} is a TrainConfig "
                                 "field")
            known = self.get(p.name)
            if known is not None and known != p:
                raise ValueError(f"{group} {owner!r}: parameter {p.name!r} is already "
                                 f"registered with another spec ({known})")
        if len(set(names)) != len(names):
            raise ValueError(f"{group} {owner!r}: a parameter is declared twice in {names}")
        return params

    def add(self, group: str, params: Iterable[Param]) -> None:
        """Declare ``params`` (checked by :meth:`check`) in ``group``."""
        for p in params:
            self._groups[group].setdefault(p.name, p)

    def release(self, group: str, params: Iterable[Param],
                still_declared: Iterable[Param]) -> None:
        """Forget those of ``params`` that are not among ``still_declared`` (the parameters
        of the ``group`` entries that remain)."""
        keep = set(still_declared)
        for p in params:
            if p not in keep:
                self._groups[group].pop(p.name, None)

    def get(self, name: str) -> Param | None:
        return next((g[name] for g in self._groups.values() if name in g), None)

    def group(self, group: str) -> dict[str, Param]:
        """The parameters of ``group``, name -> spec, in declaration order."""
        return dict(self._groups[group])

    def all(self) -> dict[str, Param]:
        """Every parameter (the logit methods' first), name -> spec."""
        return {k: v for g in self.GROUPS for k, v in self._groups[g].items()}


#: The one parameter namespace of :mod:`kdtune.methods`.
PARAMS = ParamNamespace()
