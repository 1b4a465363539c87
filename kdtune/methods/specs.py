"""What the method registries know without torch: the specs of methods and feature methods.

A :class:`MethodSpec` (a logit term) or :class:`FeatureSpec` (a feature term) holds a method's
name, what it reads, its own parameters (:mod:`kdtune.methods.params`) and its docs line; its
functions (the soft term, an ``adjust`` rule, an online method's ``peers``, a stateful feature
method's ``build``) are either the functions themselves or a :class:`Ref` ``"module:name"``,
imported when first called. The built-in methods are declared with refs
(:mod:`kdtune.methods.catalog`), so their names, parameters, types, defaults and docs are
known without importing torch; a plugin registers its functions with the decorators
:func:`register_method` and :func:`register_feature_method`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kdtune.errors import KdtuneError
from kdtune.methods.params import KD_FIELDS, PARAMS, Param
from kdtune.registry import Ref, Registry, loaded

__all__ = ["FEATURES", "INPUTS", "KD_FIELDS", "METHODS", "FeatureSpec", "MethodSpec", "Ref",
           "all_params", "feature_method_params", "feature_params", "get_feature_method",
           "get_method", "list_feature_methods", "list_methods", "method_params",
           "methods_reading", "parse_stages", "register_feature_method", "register_method",
           "unregister_feature_method", "unregister_method"]

F = TypeVar("F", bound=Callable[..., Any])
INPUTS = ("stages", "embedding")
#: The feature parameters the trainer applies itself (not passed to the term).
TRAINER_PARAMS = ("feature_weight", "stages")


@dataclass(frozen=True)
class MethodSpec:
    """A registered KD method: its soft term, what it reads and its own parameters (see
    :func:`register_method`)."""

    name: str
    fn: Callable[..., Any]
    needs_teacher: bool
    uses_alpha: bool
    uses_temperature: bool
    batch_level: bool
    uses_progress: bool
    params: tuple[Param, ...]
    formula: str = ""
    paper: str = ""
    adjust: Callable[..., Any] | None = None
    kind: str = "response · offline"
    peers: Callable[..., Any] | None = None

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

    def check_signature(self) -> None:
        """The soft term takes ``(student_logits, teacher_logits, labels, *, [temperature],
        <params>, [progress])``; else ``TypeError``."""
        keywords: dict[str, Any] = {p.name: p.default for p in self.params}
        if self.uses_temperature:
            keywords["temperature"] = 1.0
        if self.uses_progress:
            keywords["progress"] = 0
        try:
            inspect.signature(loaded(self.fn)).bind(None, None, None, **keywords)
        except TypeError:
            raise TypeError(f"method {self.name!r}: the loss must take (student_logits, "
                            f"teacher_logits, labels, *, {', '.join(keywords)})") from None


@dataclass(frozen=True)
class FeatureSpec:
    """A registered feature method (see :func:`register_feature_method`)."""

    name: str
    fn: Callable[..., Any] | None
    inputs: str | None
    params: tuple[Param, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    adapt: bool = False
    maps_only: bool = False
    build: Callable[..., Any] | None = None
    kind: str = "feature"
    formula: str = ""
    paper: str = ""

    @property
    def needs_teacher(self) -> bool:
        return self.inputs is not None

    @property
    def loss_params(self) -> tuple[str, ...]:
        """The parameters the term itself reads (not ``feature_weight``, ``stages``)."""
        return tuple(p.name for p in self.params if p.name not in TRAINER_PARAMS)

    def reads(self, key: str) -> bool:
        """Whether this feature method reads ``key``: its own parameters among the feature
        parameters, ``kd_warmup`` when it has a term; any other key is not its concern."""
        if key == "kd_warmup":
            return self.needs_teacher
        if key in PARAMS.group("feature method"):
            return any(p.name == key for p in self.params)
        return True

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Its parameters from ``given``: checked, with its own defaults filled in."""
        own = {p.name: p for p in self.params}
        for key, value in given.items():
            if key not in own and value is not None:
                raise KdtuneError(f"feature method {self.name!r} does not take {key!r}; its "
                                  f"parameters: {', '.join(own) or '(none)'}")
        out = {}
        for name, p in own.items():
            value = given.get(name)
            out[name] = (self.defaults.get(name, p.default) if value is None
                         else p.check(value))
        if "stages" in out:
            parse_stages(out["stages"])
        return out

    def make_term(self, student_shapes: Sequence[Any], teacher_shapes: Sequence[Any],
                  params: Mapping[str, Any], num_train: int) -> Any:
        """The module computing this term in training (a
        :class:`~kdtune.methods.features.FeatureTerm`), for features of these shapes (the
        trainer's ``stages`` or ``[embedding]`` shapes, batch dimension included)."""
        if self.build is not None:
            return self.build(self, student_shapes, teacher_shapes, params, num_train)
        return FEATURE_TERM(self, student_shapes, teacher_shapes, params)

    def check_signature(self) -> None:
        """The pure term takes ``(student_feats, teacher_feats, *, <loss params>)``; else
        ``TypeError``."""
        keywords = {} if self.build is not None else {k: None for k in self.loss_params}
        try:
            inspect.signature(loaded(self.fn)).bind([], [], **keywords)
        except TypeError:
            raise TypeError(f"feature method {self.name!r}: the term must take (student_feats, "
                            f"teacher_feats, *, {', '.join(self.loss_params)})") from None


#: The term module of a feature method without its own ``build`` (torch: imported when used).
FEATURE_TERM = Ref("kdtune.methods.features:FeatureTerm")
#: The registered methods; plugins: the entry-point group ``kdtune.methods``.
METHODS: Registry[MethodSpec] = Registry("method", plugins="kdtune.methods")
#: The registered feature methods (their plugins load with the methods').
FEATURES: Registry[FeatureSpec] = Registry("feature method")


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
    adjust: Callable[..., Any] | str | None = None,
    kind: str = "response · offline",
    peers: Callable[..., Any] | str | None = None,
) -> Callable[[F], F]:
    """Register the soft-term function ``fn`` of the method ``name`` (see
    :mod:`kdtune.methods.registry` for what it receives and returns).

    ``needs_teacher``: the method reads teacher logits. ``uses_alpha``/``uses_temperature``:
    it reads those config fields. ``batch_level``: ``fn`` returns one value for the batch (a
    batch statistic) instead of one per sample. ``uses_progress``: ``fn`` receives the 0-based
    epoch as ``progress``. ``params``: the method's own hyper-parameters; a name another method
    registered with another spec, or one of :class:`~kdtune.config.TrainConfig`'s fields, is an
    error. ``formula``/``paper``: one line each for the methods table. ``adjust``: the rule
    ``adjust_teacher_logits`` applies (relative KD). ``kind``: the knowledge and the scheme
    (``response · offline``, ``response · self``, ...). ``peers``: an online method (no
    teacher): ``peers(make_student, params)`` builds the module of the other students, trained
    with the student; the trainer calls it as ``module(x, student_logits, loss)`` for the
    whole step's loss, where ``loss(z_k, z_j)`` is ``training_loss`` of peer ``k``'s logits
    against peer ``j``'s as target logits (detached), and, when it has one,
    ``module.metrics(x_val, y_val)`` for extra epoch metrics. ``fn``, ``adjust`` and
    ``peers`` may be ``"module:name"`` strings, imported when first called.
    """
    params = PARAMS.check("method", name, params)

    def decorate(fn: F) -> F:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        spec = MethodSpec(
            name=name, fn=_ref(fn), needs_teacher=needs_teacher, uses_alpha=uses_alpha,
            uses_temperature=uses_temperature, batch_level=batch_level,
            uses_progress=uses_progress, params=params, formula=formula, paper=paper,
            adjust=_ref(adjust), kind=kind, peers=_ref(peers))
        if not isinstance(spec.fn, Ref):
            spec.check_signature()
        METHODS.add(name, spec)
        PARAMS.add("method", params)
        return fn

    return decorate


def register_feature_method(
    name: str,
    *,
    inputs: str | None,
    params: Sequence[Param] = (),
    defaults: Mapping[str, Any] | None = None,
    adapt: bool = False,
    maps_only: bool = False,
    build: Callable[..., Any] | str | None = None,
    kind: str = "feature",
    formula: str = "",
    paper: str = "",
) -> Callable[[F], F]:
    """Register the pure term ``fn(student_feats, teacher_feats, *, <loss params>)`` of the
    feature method ``name`` (see :mod:`kdtune.methods.features`). ``inputs``: ``"stages"``
    or ``"embedding"`` (``None``: no term). ``defaults``: its defaults of the shared
    parameters (``feature_weight``, ``stages``). ``adapt``: the trainer's term maps each
    student feature onto its teacher's shape with a trainable adapter when they differ.
    ``maps_only``: the term needs ``(N, C, H, W)`` maps. ``build``: makes a custom
    ``FeatureTerm`` (a stateful method; its ``fn`` is then not reachable through
    ``feature_loss``). ``kind``: the methods table's kind column. ``fn`` and ``build`` may be
    ``"module:name"`` strings, imported when first called."""
    params = PARAMS.check("feature method", name, params)
    defaults = dict(defaults or {})
    if inputs is not None and inputs not in INPUTS:
        raise ValueError(f"feature method {name!r}: inputs must be one of {INPUTS}")
    for p in params:
        if p.required and p.name not in defaults:
            raise ValueError(f"feature method {name!r}: give {p.name!r} a default")
    if inputs is not None and "feature_weight" not in defaults:
        raise ValueError(f"feature method {name!r}: declare its default feature_weight")

    def decorate(fn: F) -> F:
        if name in FEATURES:
            raise ValueError(f"feature method {name!r} is already registered")
        spec = FeatureSpec(name=name, fn=_ref(fn), inputs=inputs, params=params,
                           defaults=defaults, adapt=adapt, maps_only=maps_only,
                           build=_ref(build), kind=kind, formula=formula, paper=paper)
        if not isinstance(spec.fn, Ref):
            spec.check_signature()
        FEATURES.add(name, spec)
        PARAMS.add("feature method", params)
        return fn

    return decorate


def _ref(fn: Any) -> Any:
    return Ref(fn) if isinstance(fn, str) else fn


def unregister_method(name: str) -> None:
    """Remove the method ``name`` and the parameters no other method declares (for tests)."""
    spec = METHODS.remove(name)
    PARAMS.release("method", spec.params, [p for s in METHODS.values() for p in s.params])


def unregister_feature_method(name: str) -> None:
    """Remove the feature method ``name`` and the parameters no other feature method
    declares (for tests)."""
    spec = FEATURES.remove(name)
    PARAMS.release("feature method", spec.params,
                   [p for s in FEATURES.values() for p in s.params])


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; an unknown name raises :class:`KdtuneError`."""
    return METHODS.get(name)


def method_params(name: str) -> dict[str, Param]:
    """The method's own hyper-parameters (not alpha, temperature, kd_warmup): name -> spec."""
    return {p.name: p for p in get_method(name).params}


def list_feature_methods() -> list[str]:
    """Names of all registered feature methods (``none`` first), in registration order."""
    return FEATURES.names()


def get_feature_method(name: str) -> FeatureSpec:
    """The :class:`FeatureSpec` of ``name``; an unknown name raises :class:`KdtuneError`."""
    return FEATURES.get(name)


def feature_method_params(name: str) -> dict[str, Param]:
    """The feature method's hyper-parameters (``feature_weight`` included): name -> spec."""
    return {p.name: p for p in get_feature_method(name).params}


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
        return [n for n, s in FEATURES.items() if s.reads(key)]
    return [n for n, s in METHODS.items() if s.reads(key)]


def parse_stages(text: str) -> str | list[int]:
    """``"last"`` -> ``[1]``, ``"all"`` -> ``"all"``, ``"1,2"`` -> ``[1, 2]`` (1 = last)."""
    words = str(text).replace(" ", "")
    if words == "all":
        return "all"
    if words == "last":
        return [1]
    try:
        picks = [int(w) for w in words.split(",")]
    except ValueError:
        picks = []
    if not picks or any(k < 1 for k in picks) or len(set(picks)) != len(picks):
        raise KdtuneError(f"stages {text!r} must be last, all, or distinct indices >= 1 "
                          "counted from the last stage (e.g. 1,2)")
    return picks


def _and(names: Iterable[str]) -> str:
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
