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
from pathlib import Path
from typing import Any

from kdtune.config import TrainConfig, parse_yaml
from kdtune.errors import KdtuneError
from kdtune.resolve import config_from_dict
from kdtune.tune import space_checks as rules
from kdtune.tune.overlay import trial_train_config
from kdtune.tune.sampling import expand_grid, grid_points, optuna_params, params_in_space, suggest
from kdtune.tune.space_branches import Branches
from kdtune.tune.space_checks import teacher_dict
from kdtune.tune.space_errors import one_line, validate
from kdtune.tune.space_schema import DATA_KEYS, AshaSpec, At, ResourcesSpec, SearchSpec
from kdtune.tune.space_values import (
    Objective,
    Parameter,
    Resources,
    SchedulerSettings,
    SearchSettings,
    SearchSpace,
    TeacherSettings,
    WarmStart,
)

__all__ = [
    "DATA_KEYS", "Objective", "Parameter", "Resources", "SchedulerSettings", "SearchSettings",
    "SearchSpace", "TeacherSettings", "WarmStart", "expand_grid", "grid_points", "load_space",
    "optuna_params", "params_in_space", "suggest", "teacher_config", "trial_config",
]


def trial_config(space: SearchSpace, params: Mapping[str, Any], *,
                 seed: int | None = None) -> TrainConfig:
    """The trial's :class:`TrainConfig`: ``fixed`` overlaid with ``params`` (and ``seed``)."""
    return trial_train_config(space.fixed, params, seed=seed, where=f"{space.source}: trial")


def teacher_config(space: SearchSpace) -> TrainConfig | None:
    """The teacher's :class:`TrainConfig` when the file gives one (``None`` for a checkpoint).

    Data settings come from ``fixed``; ``augment``/``device``/``threads``/``amp`` too unless
    the teacher section sets them; the method is ``none``.
    """
    if space.teacher is None or space.teacher.config is None:
        return None
    return config_from_dict(teacher_dict(space.fixed, space.teacher.config),
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
