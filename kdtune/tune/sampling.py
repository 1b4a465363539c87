"""Configurations of a search space: define-by-run sampling, grid expansion, read-back.

:func:`params_in_space` reads a trained config back as a trial of a space.

Neither Optuna nor Ray is imported here: :func:`suggest` only calls the methods of the trial it
is handed, and Optuna appears in type hints alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError
from kdtune.tune.space_values import hashable

if TYPE_CHECKING:
    import optuna

    from kdtune.tune.space_values import Parameter, SearchSpace

MAX_CONFIGS = 100_000  # cap on grid expansion and on the branches checked at load time


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one configuration define-by-run; inactive parameters are never suggested.

    Returns only the sampled parameters (list-valued choices as lists).
    """
    params: dict[str, Any] = {}
    for p in space.parameters:
        if not p.is_active(params):
            continue
        if p.type == "categorical":
            assert p.choices is not None
            encoded = [encode(c) for c in p.choices]
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
    return {k: plain(v) for k, v in params.items()}


def expand_grid(space: SearchSpace) -> list[dict[str, Any]]:
    """Every configuration of an all-categorical space, walking the conditional tree.

    Inactive parameters are absent; the order is deterministic (parameters in file order,
    choices in file order, the first parameter varying slowest) and there are no duplicates.
    """
    for p in space.parameters:
        if p.type != "categorical":
            raise KdtuneError(f"{space.source}: parameters.{p.name}.type: a grid expands only "
                              f"categorical parameters; {p.name} is {p.type}")
    combos = expand(space.parameters, KdtuneError(
        f"{space.source}: parameters: the grid has more than {MAX_CONFIGS} configurations"))
    return [{k: plain(v) for k, v in c.items()} for c in combos]


def grid_points(space: SearchSpace, num_samples: int | None = None) -> list[dict[str, Any]]:
    """The configurations a grid sweep of ``num_samples`` trials runs, in grid order.

    The whole grid when ``num_samples`` is None or its size; otherwise ``num_samples`` distinct
    configurations drawn at random (seeded by ``search.seed``), so a partial grid still covers
    every branch it can instead of only the first values of the first parameter.
    """
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
        value = hashable(config.get(p.name))
        if p.choices is not None:
            if value not in p.choices:
                return None
        elif not isinstance(value, int | float) or isinstance(value, bool) or \
                not p.low <= value <= p.high or (p.type == "int" and value != int(value)):  # type: ignore[operator]
            return None
        params[p.name] = value
    return {k: plain(v) for k, v in params.items()}


def optuna_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as :func:`suggest` gave them to Optuna (list choices as strings)."""
    return {k: encode(hashable(v)) for k, v in config.items()}


def expand(parameters: Iterable[Parameter], too_many: Exception) -> list[dict[str, Any]]:
    """All assignments of the categorical ``parameters`` that respect their conditions;
    ``too_many`` is raised past :data:`MAX_CONFIGS`."""
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
                raise too_many
        combos = nxt
    return combos


def encode(choice: Any) -> Any:
    """An Optuna-safe categorical value: tuples become ``"300-300"`` strings."""
    return "-".join(str(v) for v in choice) if isinstance(choice, tuple) else choice


def plain(value: Any) -> Any:
    """Tuples as lists (a choice as a trial's config holds it)."""
    return list(value) if isinstance(value, tuple) else value
