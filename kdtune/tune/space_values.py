"""The validated search space as frozen values: :class:`SearchSpace` and its parts.

:func:`kdtune.tune.space.load_space` builds them from a file; sampling, the sweep and finalize
read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdtune.errors import choose_one


def hashable(value: Any) -> Any:
    """Lists as tuples (a choice as a space holds it)."""
    return tuple(value) if isinstance(value, list) else value


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
