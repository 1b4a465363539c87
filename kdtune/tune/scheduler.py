"""The sweep's trial scheduler: early stopping at rungs (ASHA; MO-ASHA for several
objectives), decided from the study, or none (FIFO).

Rungs lie at ``grace_period * reduction_factor**k`` epochs below ``max_t``; a trial that passes
them trains all its epochs. A trial reaching a rung is compared with the trials recorded at
that rung before it and goes on only if it is in their top ``1 / reduction_factor`` (ASHA, Li
et al. 2020). With one objective that is Ray's ASHA rule: its value must reach the
``1 - 1/reduction_factor`` quantile of the earlier values. With several (MO-ASHA, Schmucker et
al. 2021) a trial's values at the rung are a vector — the scheduler's per-epoch metric and the
cost objectives (parameters, FLOPs, latency, which a trial measures before its first epoch) —
ranked by non-dominated sorting, ties within a front broken by crowding distance, and it goes
on while fewer than ``ceil(n / reduction_factor)`` of the ``n`` earlier trials rank strictly
above it (a trial as good as the ones before it goes on, as in Ray's rule).

Each decision is written to the study with the values it was made on (:mod:`.study`), so a
resumed sweep finds every rung as it was and repeats a decision it had made instead of making
it again. The scheduler itself keeps nothing: Ray pickles the study's URL and name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from kdtune.pareto import non_dominated_fronts
from kdtune.tune.study import ATTR_RAY_ID, ATTR_RUNG, SweepStudy
from kdtune.tune.trainable import EPOCH_KEY
from kdtune.vocabulary import RUNG_METRICS

if TYPE_CHECKING:
    from kdtune.tune.space import SearchSpace


def trial_scheduler(space: SearchSpace, study: SweepStudy) -> FIFOScheduler:
    """The sweep's Ray Tune trial scheduler: ASHA (MO-ASHA for several objectives) with its
    rungs in the study, or FIFO."""
    s = space.scheduler
    if s.type == "none":
        return FIFOScheduler()
    assert s.grace_period is not None and s.reduction_factor is not None and s.max_t is not None
    metrics, modes = rung_objectives(space)
    return RungScheduler(study, metrics=metrics, modes=modes, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, max_t=s.max_t)


def rung_objectives(space: SearchSpace) -> tuple[list[str], list[str]]:
    """What early stopping compares at a rung: the scheduler's per-epoch metric, and with
    several objectives also the cost objectives (known from the first epoch on)."""
    s = space.scheduler
    assert s.metric is not None and s.mode is not None
    costs = [o for o in space.objectives if o.metric not in RUNG_METRICS]
    if not space.multi_objective:
        costs = []
    return [s.metric, *(o.metric for o in costs)], [s.mode, *(o.mode for o in costs)]


def rung_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[float]:
    """The epochs at which trials are compared: ``grace * rf**k`` below ``max_t``."""
    out, k = [], 0
    while grace_period * reduction_factor**k < max_t:
        out.append(grace_period * reduction_factor**k)
        k += 1
    return out


def rung_keeps(values: Sequence[Sequence[float]], modes: Sequence[str],
               reduction_factor: float) -> bool:
    """Whether the last of ``values`` (one vector per trial recorded at a rung, in the order
    they got there, the trial to judge last) goes on (module docstring)."""
    earlier, own = values[:-1], values[-1]
    if not earlier:
        return True
    if len(own) == 1:  # Ray's ASHA: at or above the quantile of the earlier values
        sign = 1.0 if modes[0] == "max" else -1.0
        cutoff = float(np.nanpercentile([sign * v[0] for v in earlier],
                                        (1 - 1 / reduction_factor) * 100))
        return sign * own[0] >= cutoff
    points = [[v if m == "min" else -v for v, m in zip(vec, modes, strict=True)]
              for vec in values]
    rank = {}  # trial -> (front, -crowding distance): smaller ranks above
    for f, front in enumerate(non_dominated_fronts(points)):
        distance = crowding_distance([points[i] for i in front])
        rank.update({i: (f, -d) for i, d in zip(front, distance, strict=True)})
    above = sum(rank[i] < rank[len(points) - 1] for i in range(len(earlier)))
    return above < math.ceil(len(earlier) / reduction_factor)


def crowding_distance(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within its front (ends: infinity; an
    objective equal on every point is left out)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    distance = [0.0] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        if high == low:  # an objective equal on every point says nothing about crowding
            continue
        distance[order[0]] = distance[order[-1]] = math.inf
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            distance[i] += (points[b][k] - points[a][k]) / (high - low)
    return distance


class RungScheduler(FIFOScheduler):
    """ASHA / MO-ASHA on Ray Tune's public scheduler API, its rungs kept in the study.

    ``metrics``/``modes``: the vector compared at a rung (the scheduler's per-epoch metric
    first, then the cost objectives of a multi-objective sweep).
    """

    def __init__(self, study: SweepStudy, *, metrics: list[str], modes: list[str],
                 grace_period: int, reduction_factor: float, max_t: int) -> None:
        super().__init__()
        self.sweep_study = study
        self.metrics, self.modes = list(metrics), list(modes)
        self.grace_period, self.reduction_factor, self.max_t = \
            grace_period, reduction_factor, max_t
        self.milestones = rung_milestones(grace_period, reduction_factor, max_t)
        self._judged: dict[str, float] = {}  # Ray trial id -> the last milestone decided

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_judged"} | {"_judged": {}}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        epoch = result.get(EPOCH_KEY)
        if epoch is None:
            return TrialScheduler.CONTINUE
        passed = [m for m in self.milestones
                  if m <= epoch and m > self._judged.get(trial.trial_id, 0)]
        if not passed:
            return TrialScheduler.CONTINUE
        milestone = passed[-1]
        self._judged[trial.trial_id] = milestone
        return TrialScheduler.CONTINUE if self.decide(trial.trial_id, milestone, result) \
            else TrialScheduler.STOP

    def decide(self, trial_id: str, milestone: float, result: dict) -> bool:
        """Whether trial ``trial_id`` goes on past ``milestone``; written to the study."""
        key = f"{ATTR_RUNG}{milestone:g}"
        trials = self.sweep_study.trials()
        own = next((t for t in trials if t.user_attrs.get(ATTR_RAY_ID) == trial_id), None)
        if own is None:
            return True  # not a sweep trial of this study
        if key in own.user_attrs:  # decided before the driver died: the same decision
            return bool(own.user_attrs[key]["keep"])
        vector = [float(result.get(m, math.nan)) for m in self.metrics]
        if not all(math.isfinite(v) for v in vector):
            return True  # nothing to rank by: the trial fails or ends by itself
        recorded = sorted((t.user_attrs[key] for t in trials if key in t.user_attrs
                           and t.number != own.number), key=lambda r: r["order"])
        values = [r["values"] for r in recorded] + [vector]
        keep = rung_keeps(values, self.modes, self.reduction_factor)
        if not own.state.is_finished():
            self.sweep_study.set_trial_attr(own.number, key, {
                "values": vector, "keep": keep, "order": len(recorded)})
        return keep
