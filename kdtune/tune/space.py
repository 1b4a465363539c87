"""Search spaces: a YAML file parsed into frozen dataclasses, validated before any trial starts.

The schema is documented in ``docs/search-space.md``. Every error is one
:class:`~kdtune.errors.KdtuneError` line naming the file, the key path and what is allowed, e.g.
``x.yaml: parameters.alpha.type: unknown type 'flaot'; choose one of: ...``.

Neither Optuna nor Ray is imported here: :func:`suggest` only calls the methods of the trial it
is handed, and Optuna appears in type hints alone.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.config import TrainConfig, _coerce, parse_yaml
from kdtune.errors import KdtuneError, choose_one
from kdtune.vocabulary import MODES as METRIC_MODES
from kdtune.vocabulary import OBJECTIVE_METRICS, RUNG_METRICS

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

__all__ = [
    "Objective", "Parameter", "Resources", "SchedulerSettings", "SearchSettings", "SearchSpace",
    "TeacherSettings", "WarmStart", "expand_grid", "grid_points", "load_space", "params_in_space",
    "suggest", "teacher_config", "trial_config",
]

PARAM_TYPES = ("categorical", "int", "float", "logfloat")
SAMPLERS = ("tpe", "random", "grid", "nsga2")
SCHEDULERS = ("asha", "none")
MODES = ("max", "min")
TOP_KEYS = ("name", "fixed", "teacher", "parameters", "objective", "search", "scheduler",
            "resources")
SEARCH_KEYS = ("num_samples", "max_concurrent", "sampler", "seed", "warm_start")
WARM_START_KEYS = ("from", "top")
SCHEDULER_KEYS = ("type", "metric", "grace_period", "reduction_factor", "max_t")
RESOURCE_KEYS = ("cpus", "gpus", "max_retries")
OBJECTIVE_KEYS = ("metric", "mode")
PARAM_KEYS = {
    "categorical": ("type", "choices", "when"),
    "int": ("type", "low", "high", "step", "when"),
    "float": ("type", "low", "high", "step", "when"),
    "logfloat": ("type", "low", "high", "when"),
}
#: Data settings shared by the teacher and every trial: set under ``fixed`` only.
DATA_KEYS = ("dataset", "data_root", "download", "split_seed", "val_fraction", "train_per_class")
#: Teacher settings taken from ``fixed`` unless the ``teacher`` section sets them.
TEACHER_DEFAULT_KEYS = ("augment", "device", "threads", "amp")
#: Fields no parameter may vary (one teacher and one split per sweep; seeds come from fixed).
NOT_SEARCHABLE = (*DATA_KEYS, "seed", "teacher", "out", "device", "threads")
#: Fields ``fixed`` may not set: the search layer fills them in.
NOT_FIXED = {"teacher": "give the teacher in the top-level teacher: section",
             "out": "the search layer chooses each trial's output folder"}
#: Fields the ``teacher`` section may not set.
#: (``train_per_class`` may differ: validation and test do not depend on it, so a teacher
#: that learns from more of the training part never sees the students' held-out images.)
NOT_TEACHER = {**{k: "the teacher takes it from fixed" for k in DATA_KEYS
                  if k != "train_per_class"},
               **{k: "the teacher is trained alone (method none)"
                  for k in ("method", "feature_method", "alpha", "temperature", "kd_warmup",
                            "teacher")},
               "out": "the search layer chooses where the teacher is saved"}
MAX_CONFIGS = 100_000  # cap on grid expansion and on the branches checked at load time
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# -- the dataclasses ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One searched ``TrainConfig`` field.

    ``choices`` (categorical only) are already coerced to the field's type: list-valued choices
    such as ``hidden`` widths are tuples. ``when`` holds ``(parameter, allowed values)`` pairs;
    all of them must hold for the parameter to be active.
    """

    name: str
    type: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def is_active(self, params: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the already sampled ``params``."""
        return all(ref in params and _hashable(params[ref]) in allowed
                   for ref, allowed in self.when)


@dataclass(frozen=True)
class Objective:
    """A metric to optimise and its direction (``max`` or ``min``)."""

    metric: str
    mode: str


@dataclass(frozen=True)
class WarmStart:
    """Run the ``top`` best configurations of sweep ``source`` first (those valid here)."""

    source: str
    top: int


@dataclass(frozen=True)
class SearchSettings:
    """``num_samples`` trials (for a grid: its size unless given), sampled by ``sampler``."""

    num_samples: int | None
    max_concurrent: int
    sampler: str
    seed: int
    warm_start: WarmStart | None = None


@dataclass(frozen=True)
class SchedulerSettings:
    """ASHA settings (all ``None`` but ``type`` when ``type`` is ``none``).

    ``metric``/``mode``: what ASHA ranks trials by at its rungs -- the first objective unless
    ``scheduler.metric`` names another per-epoch metric (mode: that metric's direction).
    """

    type: str
    grace_period: int | None
    reduction_factor: float | None
    max_t: int | None
    metric: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Resources:
    """Per-trial Ray resources; fractional GPUs allowed, always with at least one CPU.

    ``max_retries``: how many times a trial whose worker process or node died continues from
    its last checkpoint (a failure of the trial itself is never retried).
    """

    cpus: float
    gpus: float
    max_retries: int = 2


@dataclass(frozen=True)
class TeacherSettings:
    """A teacher checkpoint (``path``, absolute) or the teacher's own fields (``config``)."""

    path: str | None
    config: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file."""

    name: str
    source: str
    sha256: str
    fixed: Mapping[str, Any] = field(hash=False)
    seeds: tuple[int, ...]
    teacher: TeacherSettings | None
    parameters: tuple[Parameter, ...]
    objectives: tuple[Objective, ...]
    search: SearchSettings
    scheduler: SchedulerSettings
    resources: Resources

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def parameter(self, name: str) -> Parameter:
        """The parameter called ``name``."""
        for p in self.parameters:
            if p.name == name:
                return p
        raise choose_one("parameter", name, [p.name for p in self.parameters])


# -- public functions --------------------------------------------------------------------------
def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one configuration define-by-run; inactive parameters are never suggested.

    Returns only the sampled parameters (list-valued choices as lists). A module-level function
    so ``functools.partial(suggest, space=space)`` pickles (Ray's ``OptunaSearch`` needs that).
    """
    params: dict[str, Any] = {}
    for p in space.parameters:
        if not p.is_active(params):
            continue
        if p.type == "categorical":
            assert p.choices is not None
            encoded = [_encode(c) for c in p.choices]
            picked = trial.suggest_categorical(p.name, encoded)
            params[p.name] = p.choices[encoded.index(picked)]
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high),
                                               step=int(p.step or 1))
        else:
            assert p.low is not None and p.high is not None
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step,
                                                 log=p.type == "logfloat")
    return {k: _plain(v) for k, v in params.items()}


def expand_grid(space: SearchSpace) -> list[dict[str, Any]]:
    """Every configuration of an all-categorical space, walking the conditional tree.

    Inactive parameters are absent; the order is deterministic (parameters in file order,
    choices in file order, the first parameter varying slowest) and there are no duplicates.
    """
    for p in space.parameters:
        if p.type != "categorical":
            raise KdtuneError(f"{space.source}: parameters.{p.name}.type: a grid expands only "
                              f"categorical parameters; {p.name} is {p.type}")
    combos = _expand(space.parameters, lambda: KdtuneError(
        f"{space.source}: parameters: the grid has more than {MAX_CONFIGS} configurations"))
    return [{k: _plain(v) for k, v in c.items()} for c in combos]


def grid_points(space: SearchSpace, num_samples: int | None = None) -> list[dict[str, Any]]:
    """The configurations a grid sweep of ``num_samples`` trials runs, in grid order.

    The whole grid when ``num_samples`` is None or its size; otherwise ``num_samples`` distinct
    configurations drawn at random (seeded by ``search.seed``), so a partial grid still covers
    every branch it can instead of only the first values of the first parameter.
    """
    import random

    grid = expand_grid(space)
    if num_samples is None or num_samples >= len(grid):
        return grid
    keep = sorted(random.Random(space.search.seed).sample(range(len(grid)), num_samples))
    return [grid[i] for i in keep]


def params_in_space(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The searched parameters of a trained ``config`` (any sweep's resolved config) as a
    trial of ``space`` would have them, or None when a parameter active here has no value in
    ``config`` that this space allows."""
    params: dict[str, Any] = {}
    for p in space.parameters:
        if not p.is_active(params):
            continue
        value = _hashable(config.get(p.name))
        if p.choices is not None:
            if value not in p.choices:
                return None
        elif not isinstance(value, int | float) or isinstance(value, bool) or \
                not p.low <= value <= p.high or (p.type == "int" and value != int(value)):  # type: ignore[operator]
            return None
        params[p.name] = value
    return {k: _plain(v) for k, v in params.items()}


def trial_config(space: SearchSpace, params: Mapping[str, Any], *,
                 seed: int | None = None) -> TrainConfig:
    """The trial's :class:`TrainConfig`: ``fixed`` overlaid with ``params`` (and ``seed``)."""
    data = {**space.fixed, **params}
    if seed is not None:
        data["seed"] = seed
    return TrainConfig.from_dict(data, where=f"{space.source}: trial")


def teacher_config(space: SearchSpace) -> TrainConfig | None:
    """The teacher's :class:`TrainConfig` when the file gives one (``None`` for a checkpoint).

    Data settings come from ``fixed``; ``augment``/``device``/``threads``/``amp`` too unless
    the teacher section sets them; the method is ``none``.
    """
    if space.teacher is None or space.teacher.config is None:
        return None
    return TrainConfig.from_dict(_teacher_dict(space.fixed, space.teacher.config),
                                 where=f"{space.source}: teacher")


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (see ``docs/search-space.md``)."""
    return _Loader(path).load()


# -- loading -----------------------------------------------------------------------------------
class _Loader:
    """One pass over one file; ``err(path, msg)`` builds the one-line errors.

    ``types``: every key a config takes (the registered method parameters included) -> type.
    """

    def __init__(self, path: str | Path) -> None:
        self.shown = str(path)
        self.path = Path(path).expanduser().absolute()
        self.types = TrainConfig.key_types()
        self.models_checked: set[tuple[str, str, str]] = set()
        #: Keys of ``fixed`` with an effect in some trial checked so far; why the others have
        #: none (see ``kdtune.no_effect``).
        self.effective: set[str] = set()
        self.no_effect: dict[str, str] = {}
        #: Feature-pair checks skipped because the meta device cannot run them (logged once).
        self.skipped: set[tuple[str, ...]] = set()
        self.pairs_checked: set[tuple[str, ...]] = set()
        self.shapes: dict[tuple[Any, ...], list[Any]] = {}  # see feature_shapes
        #: The teacher's architecture (name, options, classes, input shape), when known.
        self.teacher_model: tuple[str, dict[str, Any], int, tuple[int, ...]] | None = None

    def err(self, key: str, msg: str) -> KdtuneError:
        return KdtuneError(f"{self.shown}: {key}: {msg}")

    def load(self) -> SearchSpace:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise KdtuneError(f"{self.shown}: no such search-space file") from None
        except OSError as exc:
            raise KdtuneError(f"{self.shown}: cannot read: {exc.strerror}") from None
        data = parse_yaml(raw, self.shown)
        if not isinstance(data, dict):
            raise KdtuneError(f"{self.shown}: expected a mapping with keys "
                              f"{', '.join(TOP_KEYS)}; got {type(data).__name__}")
        self.check_keys(data, TOP_KEYS, "")

        name = self.parse_name(data.get("name", self.path.stem))
        fixed, seeds = self.parse_fixed(self.mapping(data, "fixed"))
        teacher = self.parse_teacher(data.get("teacher"), fixed)
        parameters = self.parse_parameters(data.get("parameters"), fixed)
        objectives = self.parse_objectives(data.get("objective"))
        self.check_branches(parameters, fixed, teacher)
        self.check_fixed_effects(fixed)
        search = self.parse_search(self.mapping(data, "search"), parameters, objectives)
        scheduler = self.parse_scheduler(self.mapping(data, "scheduler"), parameters, fixed,
                                         objectives)
        resources = self.parse_resources(self.mapping(data, "resources"), fixed)
        return SearchSpace(
            name=name, source=str(self.path), sha256=hashlib.sha256(raw).hexdigest(),
            fixed=fixed, seeds=seeds, teacher=teacher, parameters=parameters,
            objectives=objectives, search=search, scheduler=scheduler, resources=resources)

    # -- helpers ---------------------------------------------------------------------------
    def mapping(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(key, f"expected a mapping, got {_show(value)}")
        return value

    def check_keys(self, data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
        allowed = list(allowed)
        for key in data:
            if key not in allowed:
                path = f"{where}.{key}" if where else str(key)
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.err(path, f"unknown key {key!r}; allowed: {', '.join(allowed)}{hint}")

    def number(self, value: Any, key: str, *, integer: bool = False,
               minimum: float | None = None, above: float | None = None) -> Any:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            ok = False
        if ok and integer and not float(value).is_integer():
            ok = False
        what = "an integer" if integer else "a number"
        if minimum is not None:
            what += f" >= {minimum:g}"
        if above is not None:
            what += f" > {above:g}"
        if (not ok or (minimum is not None and value < minimum)
                or (above is not None and value <= above)):
            raise self.err(key, f"expected {what}, got {_show(value)}")
        return int(value) if integer else float(value)

    def resolve(self, value: str) -> str:
        """A path relative to the YAML file's folder (``~`` expanded), made absolute."""
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (self.path.parent / p).resolve())

    # -- sections --------------------------------------------------------------------------
    def parse_name(self, value: Any) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.err("name", f"expected a name of letters, digits, '_', '.', '-', "
                                   f"got {_show(value)}")
        return value

    def parse_fixed(self, data: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...]]:
        self.check_keys(data, [*self.types, "seeds"], "fixed")
        fixed: dict[str, Any] = {}
        for key, value in data.items():
            if key == "seeds":
                continue
            if key in NOT_FIXED:
                raise self.err(f"fixed.{key}", f"not allowed here: {NOT_FIXED[key]}")
            fixed[key] = _coerce(value, self.types[key], f"{self.shown}: fixed.{key}")
            if key == "data_root" and fixed[key] is not None:
                fixed[key] = self.resolve(fixed[key])
            self.check_alone(key, fixed[key], f"fixed.{key}")
        if "seeds" in data:
            if "seed" in data:
                raise self.err("fixed.seeds", "give seeds or seed, not both")
            raw = data["seeds"]
            raw = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
            if not isinstance(raw, list) or not raw:
                raise self.err("fixed.seeds", f"expected a non-empty list of integers, "
                                              f"got {_show(data['seeds'])}")
            seeds = tuple(self.number(s, f"fixed.seeds[{i}]", integer=True, minimum=0)
                          for i, s in enumerate(raw))
            if len(set(seeds)) != len(seeds):
                raise self.err("fixed.seeds", f"duplicate seeds in {list(seeds)}")
        else:
            seeds = (int(fixed.get("seed", 0)),)
        return fixed, seeds

    def parse_teacher(self, data: Any, fixed: Mapping[str, Any]) -> TeacherSettings | None:
        if data is None:
            return None
        if not isinstance(data, dict) or not data:
            raise self.err("teacher", "expected {path: FILE} or the teacher's TrainConfig "
                                      f"fields (model, hidden, epochs, ...), got {_show(data)}")
        if "path" in data:
            if len(data) > 1:
                other = next(k for k in data if k != "path")
                raise self.err(f"teacher.{other}", "not allowed beside teacher.path (give a "
                                                   "checkpoint or a config, not both)")
            value = data["path"]
            if not isinstance(value, str) or not value:
                raise self.err("teacher.path", f"expected a file path, got {_show(value)}")
            path = self.resolve(value)
            if not Path(path).is_file():
                raise self.err("teacher.path", f"no such file {path!r}")
            from kdtune.teacher import checkpoint_architecture

            self.teacher_model = checkpoint_architecture(path)
            return TeacherSettings(path=path, config=None)
        from kdtune.methods import all_params

        self.check_keys(data, ["path", *self.types], "teacher")
        config: dict[str, Any] = {}
        for key, value in data.items():
            why = NOT_TEACHER.get(key) or (NOT_TEACHER["method"] if key in all_params() else None)
            if why:
                raise self.err(f"teacher.{key}", f"not allowed here: {why}")
            config[key] = _coerce(value, self.types[key], f"{self.shown}: teacher.{key}")
        try:
            cfg = TrainConfig.from_dict(_teacher_dict(fixed, config))
        except KdtuneError as exc:
            raise self.err("teacher", str(exc)) from None
        from kdtune.no_effect import refuse_no_effect

        refuse_no_effect(cfg, {k: f"{self.shown}: teacher.{k}" for k in config})
        self.check_model_options(cfg, lambda k: f"teacher.{k}" if k in config else f"fixed.{k}")
        self.check_model_values(cfg, "teacher")
        from kdtune.data.datasets import dataset_shape

        self.teacher_model = (cfg.model, cfg.model_kwargs(), *dataset_shape(cfg.dataset))
        return TeacherSettings(path=None, config=config)

    def parse_parameters(self, data: Any, fixed: Mapping[str, Any]) -> tuple[Parameter, ...]:
        if not isinstance(data, dict) or not data:
            raise self.err("parameters", "expected a mapping of TrainConfig fields to "
                                         "parameter specs; add at least one parameter")
        params: dict[str, Parameter] = {}
        for name, spec in data.items():
            params[name] = self.parse_parameter(str(name), spec, fixed, params)
        return tuple(params.values())

    def parse_parameter(self, name: str, spec: Any, fixed: Mapping[str, Any],
                        earlier: Mapping[str, Parameter]) -> Parameter:
        key = f"parameters.{name}"
        if name not in self.types:
            raise self.err(key, str(choose_one("parameter", name, self.types))
                           + " (parameters are TrainConfig fields)")
        if name in NOT_SEARCHABLE:
            why = ("set the seeds under fixed.seeds" if name == "seed"
                   else "one teacher and one data split serve the whole sweep; set it under "
                        "fixed" if name in DATA_KEYS else "set it under fixed")
            raise self.err(key, f"{name} cannot be searched: {why}")
        if name in fixed:
            raise self.err(key, f"also set under fixed.{name}; set it in one place")
        if not isinstance(spec, dict):
            raise self.err(key, f"expected a mapping with a type, got {_show(spec)}")
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            if kind is None:
                raise self.err(f"{key}.type", f"missing; choose one of: {', '.join(PARAM_TYPES)}")
            raise self.err(f"{key}.type", str(choose_one("type", kind, PARAM_TYPES)))
        self.check_keys(spec, PARAM_KEYS[kind], key)
        base = _base_type(self.types[name])
        when = self.parse_when(spec.get("when"), key, name, fixed, earlier)
        if kind == "categorical":
            choices = self.parse_choices(spec.get("choices"), key, name)
            return Parameter(name, kind, choices=choices, when=when)
        numeric = {"int": (int, float), "float": (float,), "logfloat": (float,)}[kind]
        if base not in numeric:
            takes = {int: "integers", float: "numbers", bool: "true/false", str: "strings",
                     tuple: "lists of integers"}[base]
            fits = "int, float, logfloat or categorical" if base is float else "categorical"
            fits = "int or categorical" if base is int else fits
            raise self.err(f"{key}.type", f"{name} takes {takes}; use type {fits}")
        for bound in ("low", "high"):
            if bound not in spec:
                raise self.err(f"{key}.{bound}", f"missing; type {kind} needs low and high")
        integer = kind == "int"
        low = self.number(spec["low"], f"{key}.low", integer=integer)
        high = self.number(spec["high"], f"{key}.high", integer=integer)
        if low >= high:
            raise self.err(f"{key}.low", f"low {low:g} must be < high {high:g} (for a single "
                                         f"value, put {name} under fixed)")
        if kind == "logfloat" and low <= 0:
            raise self.err(f"{key}.low", f"a logfloat needs low > 0, got {low:g}")
        step = None
        if spec.get("step") is not None:
            step = self.number(spec["step"], f"{key}.step", integer=integer, above=0)
            span = (high - low) / step
            if step > high - low or abs(span - round(span)) > 1e-9:
                raise self.err(f"{key}.step", f"high - low ({high - low:g}) must be a multiple "
                                              f"of step {step:g}")
        for bound, value in (("low", low), ("high", high)):
            self.check_alone(name, value, f"{key}.{bound}")
        return Parameter(name, kind, low=low, high=high, step=step, when=when)

    def parse_choices(self, raw: Any, key: str, name: str) -> tuple[Any, ...]:
        if raw is None:
            raise self.err(f"{key}.choices", "missing; a categorical parameter needs choices")
        if not isinstance(raw, list):
            raise self.err(f"{key}.choices", f"expected a list, got {_show(raw)}")
        if not raw:
            raise self.err(f"{key}.choices", "empty; list at least one value")
        choices: list[Any] = []
        for i, value in enumerate(raw):
            if isinstance(value, dict):
                raise self.err(f"{key}.choices[{i}]", f"expected a value, got {_show(value)}")
            value = _coerce(value, self.types[name], f"{self.shown}: {key}.choices[{i}]")
            if value in choices:
                raise self.err(f"{key}.choices", f"duplicate choice {_show(_plain(value))}")
            self.check_alone(name, value, f"{key}.choices")
            choices.append(value)
        return tuple(choices)

    def parse_when(self, raw: Any, key: str, name: str, fixed: Mapping[str, Any],
                   earlier: Mapping[str, Parameter]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if raw is None:
            return ()
        if not isinstance(raw, dict) or not raw:
            raise self.err(f"{key}.when", "expected a mapping of an earlier categorical "
                                          f"parameter to its allowed values, got {_show(raw)}")
        out = []
        for ref, values in raw.items():
            where = f"{key}.when.{ref}"
            ref_p = earlier.get(ref)
            if ref_p is None:
                if ref == name:
                    raise self.err(where, "a parameter cannot depend on itself")
                if ref in fixed:
                    raise self.err(where, f"{ref} is under fixed; conditions refer to "
                                          "parameters declared before this one")
                known = list(earlier)
                close = difflib.get_close_matches(str(ref), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.err(where, f"{ref!r} is not a parameter declared before {name}; "
                                      f"declared so far: {', '.join(known) or '(none)'}{hint}")
            if ref_p.type != "categorical":
                raise self.err(where, f"conditions need a categorical parameter; {ref} is "
                                      f"{ref_p.type}")
            assert ref_p.choices is not None
            values = values if isinstance(values, list) else [values]
            if not values:
                raise self.err(where, "empty; list the values of "
                                      f"{ref} for which {name} exists")
            shown = ", ".join(str(_plain(c)) for c in ref_p.choices)
            allowed: list[Any] = []
            for value in values:
                try:
                    coerced = _coerce(value, self.types[ref], "")
                except KdtuneError:
                    coerced = value
                if _hashable(coerced) not in ref_p.choices:
                    close = difflib.get_close_matches(
                        str(value), [str(_plain(c)) for c in ref_p.choices], n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise self.err(where, f"impossible condition: {_show(value)} is not a "
                                          f"choice of {ref} (choices: {shown}){hint}")
                if _hashable(coerced) not in allowed:
                    allowed.append(_hashable(coerced))
            out.append((str(ref), tuple(allowed)))
        return tuple(out)

    def parse_objectives(self, raw: Any) -> tuple[Objective, ...]:
        if raw is None:
            return (Objective("val_accuracy", "max"),)
        items = [raw] if isinstance(raw, dict) else raw
        if not isinstance(items, list) or not items:
            raise self.err("objective", "expected {metric: M, mode: max|min} or a non-empty "
                                        f"list of them, got {_show(raw)}")
        out: list[Objective] = []
        for i, item in enumerate(items):
            key = "objective" if isinstance(raw, dict) else f"objective[{i}]"
            if not isinstance(item, dict):
                raise self.err(key, f"expected {{metric: M, mode: max|min}}, got {_show(item)}")
            self.check_keys(item, OBJECTIVE_KEYS, key)
            metric = item.get("metric")
            if metric == "test_accuracy":
                raise self.err(f"{key}.metric", "test_accuracy is for the final report, never "
                                                "for choosing; use val_accuracy")
            if metric not in OBJECTIVE_METRICS:
                raise self.err(f"{key}.metric", str(choose_one("metric", metric,
                                                               OBJECTIVE_METRICS)))
            mode = item.get("mode", METRIC_MODES[metric])
            if mode not in MODES:
                raise self.err(f"{key}.mode", str(choose_one("mode", mode, MODES)))
            if metric in [o.metric for o in out]:
                raise self.err(f"{key}.metric", f"{metric} is already an objective")
            out.append(Objective(metric, mode))
        return tuple(out)

    def parse_search(self, data: dict[str, Any], parameters: tuple[Parameter, ...],
                     objectives: tuple[Objective, ...]) -> SearchSettings:
        self.check_keys(data, SEARCH_KEYS, "search")
        multi = len(objectives) > 1
        sampler = data.get("sampler", "nsga2" if multi else "tpe")
        if sampler not in SAMPLERS:
            raise self.err("search.sampler", str(choose_one("sampler", sampler, SAMPLERS)))
        if multi and sampler != "nsga2":
            raise self.err("search.sampler", f"{len(objectives)} objectives need sampler "
                                             f"nsga2, not {sampler}")
        if not multi and sampler == "nsga2":
            raise self.err("search.sampler", "nsga2 is for several objectives; with one "
                                             "objective use tpe, random or grid")
        num = data.get("num_samples")
        if num is not None:
            num = self.number(num, "search.num_samples", integer=True, minimum=1)
        if sampler == "grid":
            for p in parameters:
                if p.type != "categorical":
                    raise self.err(f"parameters.{p.name}.type", f"sampler grid takes only "
                                   f"categorical parameters; {p.name} is {p.type} (list its "
                                   "values as choices, or use sampler tpe or random)")
            size = len(_expand(parameters, lambda: self.err(
                "parameters", f"the grid has more than {MAX_CONFIGS} configurations")))
            if num is None:
                num = size
            elif num > size:
                raise self.err("search.num_samples", f"{num} is more than the grid's {size} "
                                                     "configurations")
        elif num is None:
            raise self.err("search.num_samples", f"missing; sampler {sampler} needs the number "
                                                 "of trials (an integer >= 1)")
        concurrent = self.number(data.get("max_concurrent", 1), "search.max_concurrent",
                                 integer=True, minimum=1)
        seed = self.number(data.get("seed", 0), "search.seed", integer=True, minimum=0)
        return SearchSettings(num_samples=num, max_concurrent=concurrent, sampler=sampler,
                              seed=seed, warm_start=self.parse_warm_start(data, sampler, num))

    def parse_warm_start(self, data: dict[str, Any], sampler: str, num: int
                         ) -> WarmStart | None:
        if data.get("warm_start") is None:
            return None
        warm = data["warm_start"]
        if not isinstance(warm, dict):
            raise self.err("search.warm_start", f"expected {{from: SWEEP, top: K}}, got "
                                                f"{_show(warm)}")
        self.check_keys(warm, WARM_START_KEYS, "search.warm_start")
        source = warm.get("from")
        if not isinstance(source, str) or not _NAME.match(source):
            raise self.err("search.warm_start.from", f"expected a sweep name, got "
                                                     f"{_show(source)}")
        if sampler == "grid":
            raise self.err("search.warm_start", "a grid runs its own configurations; warm "
                                                "start is for tpe, random and nsga2")
        top = self.number(warm.get("top", 5), "search.warm_start.top", integer=True, minimum=1)
        if top > num:
            raise self.err("search.warm_start.top", f"{top} is more than num_samples {num}")
        return WarmStart(source, top)

    def parse_scheduler(self, data: dict[str, Any], parameters: tuple[Parameter, ...],
                        fixed: Mapping[str, Any], objectives: tuple[Objective, ...]
                        ) -> SchedulerSettings:
        self.check_keys(data, SCHEDULER_KEYS, "scheduler")
        kind = data.get("type", "asha")
        if kind not in SCHEDULERS:
            raise self.err("scheduler.type", str(choose_one("scheduler", kind, SCHEDULERS)))
        if kind == "none":
            for key in SCHEDULER_KEYS[1:]:
                if key in data:
                    raise self.err(f"scheduler.{key}", "only for type asha")
            return SchedulerSettings("none", None, None, None)
        first = objectives[0]
        metric, mode = first.metric, first.mode
        if "metric" in data:
            metric = data["metric"]
            if metric not in RUNG_METRICS:
                raise self.err("scheduler.metric", str(choose_one("scheduler metric", metric,
                                                                  RUNG_METRICS)))
            mode = first.mode if metric == first.metric else METRIC_MODES[metric]
        elif metric not in RUNG_METRICS:
            where = "objective" if len(objectives) == 1 else "objective[0]"
            raise self.err(f"{where}.metric", f"ASHA acts on the first objective, which must be "
                                              f"reported every epoch ({', '.join(RUNG_METRICS)}"
                                              f"), not {metric}; reorder the objectives, set "
                                              "scheduler.metric or scheduler: {type: none}")
        epochs = _max_epochs(parameters, fixed)
        grace = self.number(data.get("grace_period", 1), "scheduler.grace_period",
                            integer=True, minimum=1)
        factor = self.number(data.get("reduction_factor", 2), "scheduler.reduction_factor",
                             above=1)
        max_t = data.get("max_t")
        if max_t is None:
            max_t = epochs
        else:
            max_t = self.number(max_t, "scheduler.max_t", integer=True, minimum=1)
            if max_t > epochs:
                raise self.err("scheduler.max_t", f"{max_t} is more than the {epochs} epochs a "
                                                  "trial trains at most")
        if grace > max_t:
            raise self.err("scheduler.grace_period", f"{grace} is more than max_t {max_t}")
        return SchedulerSettings("asha", grace, factor, max_t, metric, mode)

    def parse_resources(self, data: dict[str, Any], fixed: Mapping[str, Any]) -> Resources:
        self.check_keys(data, RESOURCE_KEYS, "resources")
        cpus = self.number(data.get("cpus", 1), "resources.cpus", above=0)
        gpus = self.number(data.get("gpus", 0), "resources.gpus", minimum=0)
        if gpus > 1 and not gpus.is_integer():
            raise self.err("resources.gpus", f"{gpus:g}: more than one GPU must be a whole "
                                             "number (fractions only below 1, e.g. 0.25)")
        if gpus > 0 and cpus < 1:
            raise self.err("resources.cpus", f"{cpus:g} must be >= 1 when gpus > 0 (a GPU "
                                             "trial still needs a whole CPU)")
        if gpus == 0 and fixed.get("device") == "cuda":
            raise self.err("resources.gpus", "0, but fixed.device is cuda; give each trial a "
                                             "GPU share (e.g. gpus: 0.25) or use device auto")
        retries = self.number(data.get("max_retries", 2), "resources.max_retries",
                              integer=True, minimum=0)
        return Resources(cpus=cpus, gpus=gpus, max_retries=retries)

    # -- cross-checks ----------------------------------------------------------------------
    def check_alone(self, name: str, value: Any, key: str) -> None:
        """Validate one field's value with every other field valid (range checks); a method
        parameter against its own spec in the method registry."""
        from kdtune.methods import all_params, get_feature_method, get_method, list_methods

        if name in ("method", "feature_method"):
            try:
                (get_method if name == "method" else get_feature_method)(value)
            except KdtuneError as exc:
                raise self.err(key, str(exc)) from None
            return
        try:
            if name in all_params():
                all_params()[name].check(value)
                return
            base: dict[str, Any] = {"method": "none"}
            if name == "temperature":
                specs = [get_method(m) for m in list_methods()]
                base = {"method": next((s.name for s in specs if s.uses_temperature), "none")}
            TrainConfig.from_dict({**base, name: value})
        except KdtuneError as exc:
            raise self.err(key, str(exc)) from None

    def check_model_options(self, cfg: TrainConfig, path_of: Callable[[str], str]) -> None:
        from kdtune.models import model_options

        allowed = model_options(cfg.model)
        for key in cfg.model_kwargs():
            if key not in allowed:
                takes = ", ".join(sorted(allowed)) or "no options"
                raise self.err(path_of(key), f"model {cfg.model!r} does not take {key!r}; it "
                                             f"takes: {takes}")

    def check_branches(self, parameters: tuple[Parameter, ...], fixed: Mapping[str, Any],
                       teacher: TeacherSettings | None) -> None:
        """Every parameter is reachable and every branch of the categorical tree is valid.

        A branch fixes the parameters that others depend on; in each, a config is built from
        representative values (first choice / low), then once per other choice and ``high``.
        """
        from kdtune.methods import (
            get_feature_method,
            get_method,
            list_feature_methods,
            list_methods,
        )
        from kdtune.methods.registry import feature_params

        structural = {ref for p in parameters for ref, _ in p.when}
        branches = _expand([p for p in parameters if p.name in structural], lambda: self.err(
            "parameters", f"more than {MAX_CONFIGS} combinations of the parameters named "
                          "in conditions"))
        for p in parameters:
            if p.when and not any(p.is_active(b) for b in branches):
                raise self.err(f"parameters.{p.name}.when", f"impossible condition: "
                               f"{p.name} is never active (its conditions exclude each other)")
        specs = {m: get_method(m) for m in list_methods()}
        method_p = next((p for p in parameters if p.name == "method"), None)
        fspecs = {m: get_feature_method(m) for m in list_feature_methods()}
        feature_p = next((p for p in parameters if p.name == "feature_method"), None)
        for branch in branches:
            active = [p for p in parameters if p.is_active(branch)]
            rep = dict(branch)
            for p in active:
                if p.name not in branch:
                    rep[p.name] = p.choices[0] if p.choices is not None else p.low
            method = rep.get("method", fixed.get("method", _default("method")))
            spec = specs[method]
            feature = rep.get("feature_method",
                              fixed.get("feature_method", _default("feature_method")))
            fspec = fspecs[feature]
            where = "parameters.method.choices" if "method" in rep else "fixed.method"
            for needs, what in ((spec.needs_teacher_model, f"method {method}"),
                                (fspec.needs_teacher, f"feature method {feature}")):
                if needs and teacher is None:
                    raise self.err("teacher", f"missing; {what} needs a teacher: add "
                                              "teacher: {path: FILE} or the teacher's "
                                              "TrainConfig fields (model, hidden, epochs, ...)")
            missing = [q.name for q in spec.params
                       if q.required and q.name not in fixed and q.name not in rep]
            if missing:
                names = (missing[0] if len(missing) == 1
                         else f"{', '.join(missing[:-1])} and {missing[-1]}")
                raise self.err(where, f"method {method} needs {names}: add "
                                      f"{'it' if len(missing) == 1 else 'them'} under "
                                      f"parameters with when: {{method: [{method}]}} or under "
                                      "fixed")
            for p in active:
                if p.name in feature_params() or (p.name == "kd_warmup" and fspec.reads(p.name)):
                    if fspec.reads(p.name):
                        continue
                    users = [c for c in (feature_p.choices if feature_p and feature_p.choices
                                         else fspecs) if fspecs[c].reads(p.name)]
                    raise self.err(f"parameters.{p.name}", f"active with feature method "
                                   f"{feature}, which does not use {p.name}; add when: "
                                   f"{{feature_method: [{', '.join(users)}]}}")
                if not spec.reads(p.name):
                    users = [c for c in (method_p.choices if method_p and method_p.choices
                                         else specs) if specs[c].reads(p.name)]
                    raise self.err(f"parameters.{p.name}", f"active with method {method}, "
                                   f"which does not use {p.name}; add when: {{method: "
                                   f"[{', '.join(users)}]}}")
            self.check_config(rep, fixed, "parameters", branch)
            for p in active:
                if p.name in branch:
                    continue
                others = (p.choices[1:] if p.choices is not None else (p.high,))
                key = f"parameters.{p.name}.{'choices' if p.choices is not None else 'high'}"
                for value in others:
                    self.check_config({**rep, p.name: value}, fixed, key, branch)

    def check_config(self, params: Mapping[str, Any], fixed: Mapping[str, Any], key: str,
                     branch: Mapping[str, Any]) -> None:
        from kdtune.no_effect import no_effect

        try:
            cfg = TrainConfig.from_dict({**fixed, **params})
        except KdtuneError as exc:
            shown = ", ".join(f"{k}={_plain(v)}" for k, v in params.items())
            raise self.err(key, f"{exc} (in the trial {{{shown}}})") from None
        for name in fixed:  # a fixed value has an effect when it has one in some trial
            reason = no_effect(cfg, name) if name not in self.effective else None
            if reason is None:
                self.effective.add(name)
            else:
                self.no_effect.setdefault(name, reason)
        if key != "parameters":  # a variant: blame the value that was varied
            self.check_model_options(cfg, lambda k: key)
        else:
            self.check_model_options(
                cfg, lambda k: f"parameters.{k}" if k in params else f"fixed.{k}")
        self.check_model_values(cfg, key, params)
        blamed = "parameters.feature_method.choices" if "feature_method" in params \
            else "fixed.feature_method"
        self.check_feature_pair(cfg, blamed if key == "parameters" else key, params)

    def check_fixed_effects(self, fixed: Mapping[str, Any]) -> None:
        """A value under ``fixed`` that changes nothing in any trial of the sweep is refused
        (its field's default is not the user's input)."""
        for name, value in fixed.items():
            if name not in self.effective and value != _default(name):
                raise self.err(f"fixed.{name}", f"has no effect here: {self.no_effect[name]}; "
                                                "drop it")

    def check_model_values(self, cfg: TrainConfig, key: str,
                           params: Mapping[str, Any] | None = None) -> None:
        """Build the model of ``cfg`` on PyTorch's meta device (no memory, no weights): the
        model's own checks refuse values such as a hidden width of 0 here, not in a trial."""
        model_key = (cfg.dataset, cfg.model, repr(sorted(cfg.model_kwargs().items())))
        if model_key in self.models_checked:
            return
        import torch

        from kdtune.data.datasets import dataset_shape
        from kdtune.models import create_model

        num_classes, in_shape = dataset_shape(cfg.dataset)
        try:
            with torch.device("meta"):
                create_model(cfg.model, num_classes, in_shape, **cfg.model_kwargs())
        except KdtuneError as exc:
            shown = ", ".join(f"{k}={_plain(v)}" for k, v in (params or {}).items())
            trial = "" if params is None else f" (in the trial {{{shown}}})"
            raise self.err(key, f"{exc}{trial}") from None
        self.models_checked.add(model_key)

    def check_feature_pair(self, cfg: TrainConfig, key: str, params: Mapping[str, Any]) -> None:
        """Build ``cfg``'s feature term for its student and the teacher on PyTorch's meta
        device: a pair the method cannot serve (feature maps asked of an MLP, stages one of
        them lacks) is refused here, not in every trial."""
        from kdtune.data.datasets import dataset_shape
        from kdtune.methods import get_feature_method

        spec = get_feature_method(cfg.feature_method)
        options = cfg.model_kwargs()
        pair = (cfg.model, repr(sorted(options.items())), cfg.feature_method,
                repr(sorted((k, v) for k, v in cfg.method_params.items() if spec.reads(k))))
        if spec.inputs is None or self.teacher_model is None or pair in self.pairs_checked:
            return
        import torch

        name, kwargs, num_classes, in_shape = self.teacher_model
        shape = dataset_shape(cfg.dataset)
        if (num_classes, tuple(in_shape)) != tuple(shape):
            return  # a teacher of other data: loading it says so
        try:
            student = self.feature_shapes(cfg.model, options, *shape, spec.inputs)
            teacher = self.feature_shapes(name, kwargs, num_classes, in_shape, spec.inputs)
            with torch.device("meta"):
                spec.make_term(student, teacher, cfg.method_params, 2)
        except Exception as exc:
            if not meta_unsupported(exc):
                shown = ", ".join(f"{k}={_plain(v)}" for k, v in params.items())
                reason = str(exc) if isinstance(exc, KdtuneError) else \
                    f"building feature method {cfg.feature_method!r} for student " \
                    f"{cfg.model!r} and teacher {name!r} failed: {type(exc).__name__}: " \
                    f"{' '.join(str(exc).split())[:300]}"
                raise self.err(key, f"{reason} (in the trial {{{shown}}})") from None
            # a model the meta device cannot run: its trials will tell (said once per kind)
            skipped = (cfg.feature_method, cfg.model, name, type(exc).__name__)
            if skipped not in self.skipped:
                self.skipped.add(skipped)
                logger.warning("%s: the load-time check of feature method %r for student %r and "
                               "teacher %r was skipped: the meta device cannot run them (%s)",
                               self.shown, cfg.feature_method, cfg.model, name,
                               type(exc).__name__)
        self.pairs_checked.add(pair)

    def feature_shapes(self, model: str, kwargs: Mapping[str, Any], num_classes: int,
                       in_shape: tuple[int, ...], inputs: str) -> list[Any]:
        """The shapes of a model's features (``stages`` or ``embedding``) for a batch of 2,
        from one pass on the meta device (no memory, no weights) per architecture."""
        key = (model, repr(sorted(kwargs.items())), num_classes, tuple(in_shape), inputs)
        if key not in self.shapes:
            import torch

            from kdtune.models import create_model

            with torch.device("meta"), torch.no_grad():
                built = create_model(model, num_classes, in_shape, **kwargs).eval()
                feats = built.forward_features(torch.empty(2, *in_shape))
            self.shapes[key] = [f.shape for f in (feats.stages if inputs == "stages"
                                                  else [feats.embedding])]
        return self.shapes[key]


# -- small helpers -----------------------------------------------------------------------------
def meta_unsupported(exc: BaseException) -> bool:
    """Whether ``exc`` says that PyTorch's meta device cannot run an operation: one with no
    meta kernel (``NotImplementedError``), or one that reads a tensor's values, which a meta
    tensor does not have (``RuntimeError`` "... on meta tensors")."""
    return isinstance(exc, NotImplementedError) or (
        isinstance(exc, RuntimeError) and "meta tensor" in str(exc))


def _teacher_dict(fixed: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: fixed[k] for k in (*DATA_KEYS, *TEACHER_DEFAULT_KEYS) if k in fixed}
    data.update(config)
    data["method"] = "none"
    return data


def _expand(parameters: Iterable[Parameter], too_many: Callable[[], KdtuneError]
            ) -> list[dict[str, Any]]:
    """All assignments of the categorical ``parameters`` that respect their conditions."""
    combos: list[dict[str, Any]] = [{}]
    for p in parameters:
        assert p.choices is not None
        nxt: list[dict[str, Any]] = []
        for c in combos:
            if p.is_active(c):
                nxt.extend({**c, p.name: choice} for choice in p.choices)
            else:
                nxt.append(c)
            if len(nxt) > MAX_CONFIGS:
                raise too_many()
        combos = nxt
    return combos


def _max_epochs(parameters: Iterable[Parameter], fixed: Mapping[str, Any]) -> int:
    for p in parameters:
        if p.name == "epochs":
            return int(max(p.choices) if p.choices is not None else p.high)  # type: ignore
    return int(fixed.get("epochs", _default("epochs")))


def _default(name: str) -> Any:
    return TrainConfig.__dataclass_fields__[name].default


def _base_type(hint: Any) -> type:
    """``int | None`` -> int, ``tuple[int, ...] | None`` -> tuple, ..."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return tuple if typing.get_origin(hint) is tuple else hint


def optuna_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as :func:`suggest` gave them to Optuna (list choices as strings)."""
    return {k: _encode(_hashable(v)) for k, v in config.items()}


def _encode(choice: Any) -> Any:
    """An Optuna-safe categorical value: tuples become ``"300-300"`` strings."""
    return "-".join(str(v) for v in choice) if isinstance(choice, tuple) else choice


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    return repr(_plain(value)) if not isinstance(value, dict) else "a mapping"
