"""Early stopping at rungs: the pure rung functions, and RungScheduler on a real SQLite study.

The scheduler is the real one on a real Optuna study (trials tagged with their Ray trial id,
as the searcher leaves them); the Ray trials are stand-ins carrying only a ``trial_id`` (all
the scheduler reads), and the Tune controller argument is unused.
"""

from __future__ import annotations

import functools
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from kdtune.tune.scheduler import (
    RungScheduler,
    crowding_distance,
    rung_keeps,
    rung_milestones,
)
from kdtune.tune.study import ATTR_RAY_ID, SweepStudy

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAME = "sweep"
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


class FakeTrial:
    """A Ray trial as far as the scheduler looks at it."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def result(epoch: int | None, accuracy: float, planned: int = 8, **extra: Any
           ) -> dict[str, Any]:
    """What kdtune's trainable reports each epoch (cost metrics measured before epoch 1)."""
    out = {"epochs_planned": planned, "val_accuracy": accuracy, "val_loss": 1 - accuracy,
           "params": 1000.0, **extra}
    if epoch is not None:
        out["epoch"] = epoch
    return out


# -- the pure functions ------------------------------------------------------------------------
@pytest.mark.parametrize(("grace", "rf", "max_t", "milestones"), [
    (1, 2, 8, [1, 2, 4]),  # max_t itself is no rung: a trial reaching it ends anyway
    (1, 2, 9, [1, 2, 4, 8]),
    (1, 3, 10, [1, 3, 9]),
    (2, 2, 8, [2, 4]),
    (3, 3, 27, [3, 9]),
    (1, 1.5, 4, [1, 1.5, 2.25, 3.375]),
    (1, 2, 1, []),
    (4, 2, 4, []),
])
def test_rung_milestones(grace: int, rf: float, max_t: int, milestones: list[float]) -> None:
    assert rung_milestones(grace, rf, max_t) == pytest.approx(milestones)


def quantile_keeps(values: list[float], rf: float) -> bool:
    """Ray's ASHA rule for a metric to maximise: the judged value (last) goes on if it is at or
    above the (1 - 1/rf) quantile of the values recorded before it (the first always goes on).
    numpy interpolates at an index like 6.000000000000001 when the exact one is 6, so a value
    equal to the quantile may compare one ulp below it."""
    if len(values) == 1:
        return True
    cutoff = np.nanpercentile(values[:-1], (1 - 1 / rf) * 100)
    return values[-1] >= cutoff or math.isclose(values[-1], cutoff, rel_tol=1e-12)


@pytest.mark.parametrize("rf", [2, 3, 4])
def test_rung_keeps_is_the_asha_quantile_rule_for_one_metric(rf: int) -> None:
    rng = random.Random(rf)
    kept = stopped = 0
    for n in range(1, 31):
        for _ in range(10):
            values = [rng.random() for _ in range(n)]
            expected = quantile_keeps(values, rf)
            assert rung_keeps([[v] for v in values], ["max"], rf) == expected, (values, rf)
            # the same rung with the metric to minimise, negated
            assert rung_keeps([[-v] for v in values], ["min"], rf) == expected, (values, rf)
            kept, stopped = kept + expected, stopped + (not expected)
    assert kept > 0 and stopped > 0


def test_rung_keeps_small_rungs() -> None:
    assert rung_keeps([[0.5]], ["max"], 2)  # the first trial at a rung always goes on
    assert rung_keeps([[0.5], [0.6]], ["max"], 2)
    assert rung_keeps([[0.5], [0.5]], ["max"], 2)  # as good as the one before it
    assert not rung_keeps([[0.6], [0.5]], ["max"], 2)
    assert rung_keeps([[0.6], [0.5]], ["min"], 2)
    # rf 4, four earlier values: the cutoff is their 75% quantile (0.4 here)
    assert rung_keeps([[0.1], [0.2], [0.3], [0.5], [0.4]], ["max"], 4)
    assert not rung_keeps([[0.1], [0.2], [0.4], [0.5], [0.35]], ["max"], 4)


def ray_asha_decisions(values: list[float], rf: float) -> list[bool]:
    """Ray's own ASHAScheduler: trials reaching rung 1 one after the other; which go on."""
    asha = ASHAScheduler(time_attr="epoch", metric="val_accuracy", mode="max", max_t=100,
                         grace_period=1, reduction_factor=rf)
    out = []
    for i, value in enumerate(values):
        trial = FakeTrial(f"t{i}")
        asha.on_trial_add(None, trial)
        out.append(asha.on_trial_result(None, trial, {"epoch": 1, "val_accuracy": value})
                   == CONTINUE)
    return out


def test_rung_keeps_decides_as_rays_asha_scheduler() -> None:
    assert ray_asha_decisions([0.1, 0.3, 0.15], 2) == [True, True, False]
    rng = random.Random(0)
    for rf in (2, 3, 4):
        for _ in range(20):
            values = [rng.random() for _ in range(12)]
            ours = [rung_keeps([[v] for v in values[:i + 1]], ["max"], rf)
                    for i in range(len(values))]
            assert ours == ray_asha_decisions(values, rf), (values, rf)


def test_crowding_distance() -> None:
    # per objective (range 3, then 4): the middle point spans 3/3 and 4/4
    assert crowding_distance([(1, 5), (2, 3), (4, 1)]) == [math.inf, 2.0, math.inf]
    # x: (3 - 0) / 10 and (10 - 1) / 10; y: (10 - 3) / 10 and (6 - 0) / 10
    assert crowding_distance([(0, 10), (1, 6), (3, 3), (10, 0)]) == \
        pytest.approx([math.inf, 1.0, 1.5, math.inf])
    assert crowding_distance([(1, 2), (2, 1)]) == [math.inf, math.inf]
    assert crowding_distance([(1, 2)]) == [math.inf]


def test_an_objective_equal_on_every_point_changes_no_crowding_distance() -> None:
    # the front trades the first objective against the third; the second is constant
    points = [(0, 1, 5), (2, 1, 3), (1, 1, 4)]
    assert crowding_distance(points) == [math.inf, math.inf, 2.0]
    # a rung of five trials on one front (accuracy against latency, the same params), rf 2:
    # J, close to T1, is the least crowded and the last of five; three go on
    rung = [[0.90, 1000.0, 5.0],  # T0
            [0.85, 1000.0, 4.0],  # T1
            [0.80, 1000.0, 3.0],  # T2
            [0.70, 1000.0, 1.0],  # T3
            [0.84, 1000.0, 3.9]]  # J, judged
    assert not rung_keeps([[a, lat] for a, _, lat in rung], ["max", "min"], 2)
    assert not rung_keeps(rung, ["max", "min", "min"], 2)  # the same with params added


def test_a_multi_objective_rung_ranks_by_pareto_front() -> None:
    """Four trials at a rung, rf 2: the best two go on. The judged trial J is second on
    accuracy, but A is both more accurate and smaller: Pareto rank stops J."""
    rung = [[0.90, 100.0],  # A
            [0.70, 50.0],  # B
            [0.60, 10.0],  # C
            [0.80, 200.0]]  # J, judged: dominated by A
    assert rung_keeps([[acc] for acc, _ in rung], ["max"], 2)  # accuracy alone keeps J
    assert not rung_keeps(rung, ["max", "min"], 2)
    # a small, inaccurate trial is on the first front and one of its ends: it goes on
    small = [*rung[:3], [0.50, 5.0]]
    assert not rung_keeps([[acc] for acc, _ in small], ["max"], 2)
    assert rung_keeps(small, ["max", "min"], 2)


# -- RungScheduler on a real study -------------------------------------------------------------
@pytest.fixture
def study(tmp_path: Path) -> SweepStudy:
    """A new study in SQLite (as ``run_sweep`` creates it), no trials yet."""
    study = SweepStudy(f"sqlite:///{tmp_path / 'rungs.db'}", NAME)
    study.create(["max"], {})
    return study


@functools.cache
def reader(url: str) -> optuna.storages.RDBStorage:
    """A connection to the storage at ``url`` of the test's own, not the scheduler's."""
    return optuna.storages.RDBStorage(url)


def add_trials(study: SweepStudy, *trial_ids: str) -> None:
    """Trials as the searcher leaves them: asked, tagged with their Ray trial id, running."""
    optuna_study = optuna.load_study(study_name=NAME, storage=reader(study.url))
    for trial_id in trial_ids:
        optuna_study.ask().set_user_attr(ATTR_RAY_ID, trial_id)


def rung_attrs(study: SweepStudy, key: str) -> dict[str, Any]:
    """Ray trial id -> user attribute ``key``, read through a new connection."""
    trials = optuna.load_study(study_name=NAME, storage=reader(study.url)).get_trials()
    return {t.user_attrs[ATTR_RAY_ID]: t.user_attrs[key] for t in trials if key in t.user_attrs}


def scheduler(study: SweepStudy, metrics: tuple[str, ...] = ("val_accuracy",),
              modes: tuple[str, ...] = ("max",), max_t: int = 8) -> RungScheduler:
    return RungScheduler(study, metrics=list(metrics), modes=list(modes), grace_period=1,
                         reduction_factor=2, max_t=max_t)


def report(s: RungScheduler, trial_id: str, epoch: int | None, accuracy: float,
           **extra: Any) -> str:
    return s.on_trial_result(None, FakeTrial(trial_id), result(epoch, accuracy, **extra))


def test_decisions_are_written_to_the_study(study: SweepStudy) -> None:
    s = scheduler(study)
    assert s.milestones == [1, 2, 4]
    add_trials(study, "a", "b", "c")
    assert report(s, "a", 1, 0.8) == CONTINUE  # first at rung 1
    assert report(s, "b", 1, 0.9) == CONTINUE
    assert report(s, "c", 1, 0.7) == STOP  # below both: 3 - ceil(2 / 2) = 2 go on
    assert report(s, "a", 1, 0.1) == CONTINUE  # the same epoch again: decided already
    assert report(s, "a", 2, 0.85) == CONTINUE  # first at rung 2
    assert report(s, "b", 3, 0.8) == STOP  # passed rung 2 at epoch 3: judged there
    assert rung_attrs(study, "rung_1") == {
        "a": {"values": [0.8], "keep": True, "order": 0},
        "b": {"values": [0.9], "keep": True, "order": 1},
        "c": {"values": [0.7], "keep": False, "order": 2}}
    assert rung_attrs(study, "rung_2") == {
        "a": {"values": [0.85], "keep": True, "order": 0},
        "b": {"values": [0.8], "keep": False, "order": 1}}
    assert rung_attrs(study, "rung_4") == {}


def test_multi_objective_rung_through_the_scheduler(study: SweepStudy) -> None:
    """The hand-made rung above, reported by four trials: J is stopped on Pareto rank."""
    s = scheduler(study, metrics=("val_accuracy", "params"), modes=("max", "min"))
    add_trials(study, "A", "B", "C", "J")
    assert report(s, "A", 1, 0.90, params=100.0) == CONTINUE
    # A and B are one front, both its ends (infinitely crowded): neither ranks above the
    # other, and a trial as good as the one before it goes on
    assert report(s, "B", 1, 0.70, params=50.0) == CONTINUE
    # two of three go on: A, B, C are one front, C and A its ends
    assert report(s, "C", 1, 0.60, params=10.0) == CONTINUE
    assert report(s, "J", 1, 0.80, params=200.0) == STOP  # two of four; J is on front 2
    assert rung_attrs(study, "rung_1")["J"] == {"values": [0.80, 200.0], "keep": False,
                                                "order": 3}
    # on accuracy alone, the same rung keeps J
    accuracy_only = scheduler(study)
    add_trials(study, "A1", "B1", "C1", "J1")
    for trial_id, accuracy in (("A1", 0.9), ("B1", 0.7), ("C1", 0.6), ("J1", 0.8)):
        accuracy_only.decide(trial_id, 2, result(2, accuracy))
    assert rung_attrs(study, "rung_2")["J1"]["keep"] is True


def test_a_decision_is_replayed_after_a_restart(study: SweepStudy) -> None:
    """A new scheduler (Ray unpickles it on resume) repeats the stored decision for a trial
    resuming past a rung, even when trials recorded since would decide otherwise."""
    s = scheduler(study)
    add_trials(study, "a", "b")
    assert report(s, "a", 1, 0.5) == CONTINUE
    assert report(s, "b", 1, 0.4) == STOP
    assert report(s, "a", 2, 0.5) == CONTINUE  # the first at rung 2
    data = pickle.dumps(s)
    assert len(data) < 2000 and b"optuna" not in data  # the study's URL and name, no study

    later = pickle.loads(data)
    add_trials(study, "c", "d", "e")
    assert report(later, "c", 1, 0.1) == STOP
    assert report(later, "d", 1, 0.2) == STOP
    # judged now, b (0.4) would be second of a, c, d, b: kept; it was stopped
    assert rung_keeps([[0.5], [0.1], [0.2], [0.4]], ["max"], 2)
    assert report(later, "b", 1, 0.4) == STOP
    # and a kept trial stays kept though a better trial came since
    assert report(later, "e", 2, 0.9) == CONTINUE  # e passed rung 2 after a
    assert not rung_keeps([[0.9], [0.5]], ["max"], 2)
    again = pickle.loads(pickle.dumps(later))
    assert report(again, "a", 2, 0.5) == CONTINUE
    assert rung_attrs(study, "rung_1")["b"] == {"values": [0.4], "keep": False, "order": 1}
    assert rung_attrs(study, "rung_2") == {
        "a": {"values": [0.5], "keep": True, "order": 0},
        "e": {"values": [0.9], "keep": True, "order": 1}}


def test_max_t_bounds_the_rungs_and_a_trial_past_them_trains_on(study: SweepStudy) -> None:
    s = scheduler(study, max_t=4)
    assert s.milestones == [1, 2]
    add_trials(study, "a", "b")
    assert report(s, "a", 1, 0.9) == CONTINUE
    assert report(s, "a", 3, 0.9) == CONTINUE  # rung 2, the first there
    assert report(s, "a", 4, 0.95, planned=6) == CONTINUE  # no rung at or past max_t
    assert report(s, "a", 6, 0.95, planned=6) == CONTINUE  # its last epoch: it ends itself
    assert rung_attrs(study, "rung_4") == {}


def test_results_without_an_epoch_or_a_value_continue(study: SweepStudy) -> None:
    s = scheduler(study)
    add_trials(study, "a", "b")
    assert report(s, "a", 1, 0.9) == CONTINUE
    assert report(s, "b", None, 0.1) == CONTINUE  # no epoch: nothing to place at a rung
    assert report(s, "b", 1, math.nan) == CONTINUE  # nothing to rank by
    assert report(s, "ghost", 1, 0.0) == CONTINUE  # not a trial of this sweep
    assert set(rung_attrs(study, "rung_1")) == {"a"}
