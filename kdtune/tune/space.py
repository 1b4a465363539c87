"""Search spaces: a YAML file loaded into frozen dataclasses, validated before any trial starts.

The file's format is documented in ``docs/search-space.md``. :func:`load_space` reads a file,
validates it against its schema (:mod:`kdtune.tune.space_schema`), applies the rules across
sections (:mod:`kdtune.tune.space_checks`) and the checks that build each branch's config and
models (:mod:`kdtune.tune.space_branches`). Every error is one
:class:`~kdtune.errors.KdtuneError` line naming the file, the key path and what is allowed, e.g.
``x.yaml: parameters.alpha.type: unknown type 'flaot'; choose one of: ...``.

Sampling and grid expansion are :mod:`kdtune.tune.sampling`; its public functions are
importable from here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtune.config import TrainConfig, parse_yaml
from kdtune.errors import KdtuneError, choose_one
from kdtune.tune import space_checks as rules
from kdtune.tune.sampling import (
    expand_grid,
    grid_points,
    hashable,
    optuna_params,
    params_in_space,
    suggest,
)
from kdtune.tune.space_branches import Branches
from kdtune.tune.space_checks import teacher_dict
from kdtune.tune.space_errors import one_line, validate
from kdtune.tune.space_schema import DATA_KEYS, AshaSpec, At, ResourcesSpec, SearchSpec

__all__ = [
    "DATA_KEYS", "Objective", "Parameter", "Resources", "SchedulerSettings", "SearchSettings",
    "SearchSpace", "TeacherSettings", "WarmStart", "expand_grid", "grid_points", "load_space",
    "optuna_params", "params_in_space", "suggest", "teacher_config", "trial_config",
]


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
        return all(ref in params and hashable(params[ref]) in allowed
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
    return TrainConfig.from_dict(teacher_dict(space.fixed, space.teacher.config),
                                 where=f"{space.source}: teacher")


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (see ``docs/search-space.md``)."""
    shown = str(path)
    path = Path(path).expanduser().absolute()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KdtuneError(f"{shown}: no such search-space file") from None
    except OSError as exc:
        raise KdtuneError(f"{shown}: cannot read: {exc.strerror}") from None
    doc = validate(parse_yaml(raw, shown), shown)
    try:
        return _space(doc, path, shown, hashlib.sha256(raw).hexdigest())
    except At as exc:
        raise KdtuneError(one_line(f"{shown}: {exc.key}: {exc.message}")) from None


def _space(doc: Any, path: Path, shown: str, sha256: str) -> SearchSpace:
    """The validated document ``doc`` as a :class:`SearchSpace`, once the rules across its
    sections and its branches hold."""
    def resolve(value: str) -> str:  # relative to the file's folder, ~ expanded
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (path.parent / p).resolve())

    fixed = doc.fixed.given() if doc.fixed is not None else {}
    seeds = fixed.pop("seeds", None) or (int(fixed.get("seed", 0)),)
    if fixed.get("data_root") is not None:
        fixed["data_root"] = resolve(fixed["data_root"])
    branches = Branches(shown)
    teacher = None
    if doc.teacher is not None and hasattr(doc.teacher, "path"):
        teacher = TeacherSettings(path=resolve(doc.teacher.path))
        branches.teacher_checkpoint(teacher.path)
    elif doc.teacher is not None:
        teacher = TeacherSettings(path=None, config=doc.teacher.given())
        branches.teacher_config(teacher.config, fixed)  # type: ignore[arg-type]
    params: dict[str, Parameter] = {}
    for name, spec in doc.parameters.given().items():
        when = rules.conditions(name, spec.when, params, fixed)
        choices = getattr(spec, "choices", None)
        params[name] = Parameter(
            name, spec.type, when=when, choices=None if choices is None else tuple(choices),
            low=getattr(spec, "low", None), high=getattr(spec, "high", None),
            step=getattr(spec, "step", None))
    parameters = tuple(params.values())
    objectives = rules.objectives(doc.objective)
    branches.check(parameters, fixed, teacher is not None)
    search = rules.search(doc.search or SearchSpec(), parameters, len(objectives))
    warm = search.pop("warm_start")
    return SearchSpace(
        name=doc.name or path.stem, source=str(path), sha256=sha256, fixed=fixed, seeds=seeds,
        teacher=teacher, parameters=parameters,
        objectives=tuple(Objective(m, mode) for m, mode in objectives),
        search=SearchSettings(**search, warm_start=None if warm is None else WarmStart(*warm)),
        scheduler=SchedulerSettings(**rules.scheduler(doc.scheduler or AshaSpec(), parameters,
                                                      fixed, objectives)),
        resources=Resources(**rules.resources(doc.resources or ResourcesSpec(), fixed)))
