"""StudySearcher on a real Optuna study in a real SQLite storage; only the results are made up.

Each test creates the sweep's study as ``run_sweep`` does (``SweepStudy.create`` with
``search_attrs`` of a space file) and drives the searcher through Ray's ``Searcher`` calls
(``suggest``, ``on_trial_result``, ``on_trial_complete``) with results shaped like the ones
kdtune's trainable reports. What the study holds is read back through a separate Optuna
connection, so every assertion is about what a resumed sweep would find in the storage.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from kdtune.tune import searcher as searcher_module
from kdtune.tune.ray_session import trial_dirname_of
from kdtune.tune.recovery import reask_lost_trials
from kdtune.tune.searcher import (
    StudySearcher,
    config_key,
    neighbour,
    search_attrs,
    stopped_early,
)
from kdtune.tune.space import expand_grid, grid_points, load_space
from kdtune.tune.study import ATTR_RAY_ID, ATTR_REASKED, ATTR_REPEAT_OF, SweepStudy

from .conftest import write_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

PLANNED = 6  # BASE_SPACE trains 6 epochs
NAME = "sweep"

#: 2 + 2 x 3 = 8 configurations; ``temperature`` only for vanilla (a conditional branch) and
#: ``hidden`` list-valued (stored in Optuna as the strings "8" and "16").
TINY_CATEGORICAL = {
    "method": {"type": "categorical", "choices": ["none", "vanilla"]},
    "temperature": {"type": "categorical", "choices": [2, 5, 10],
                    "when": {"method": ["vanilla"]}},
    "hidden": {"type": "categorical", "choices": [[8], [16]]},
}
#: A conditional grid with list values: none x 2 hidden + vanilla x 2 T x 2 hidden = 6.
GRID = {
    "method": {"type": "categorical", "choices": ["none", "vanilla"]},
    "temperature": {"type": "categorical", "choices": [2, 4], "when": {"method": ["vanilla"]}},
    "hidden": {"type": "categorical", "choices": [[8], [8, 8]]},
}


def result(epoch: int, value: float, **extra: Any) -> dict[str, Any]:
    """What kdtune's trainable reports each epoch (plus Ray's ``training_iteration``)."""
    return {"epoch": epoch, "epochs_planned": PLANNED, "training_iteration": epoch,
            "val_accuracy": value, "val_loss": 1 - value, "params": 1234.0,
            "latency_ms_b1": 0.5, **extra}


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Optuna SQLite database with its schema and no study, made once; tests copy it."""
    path = tmp_path_factory.mktemp("optuna-template") / "empty.db"
    optuna.storages.RDBStorage(f"sqlite:///{path}")
    return path


def new_searcher(tmp_path: Path, empty_db: Path, num_samples: int = 8,
                 **changes: Any) -> StudySearcher:
    """A searcher over a new study, as ``run_sweep`` makes them:
    the space file is BASE_SPACE with ``changes`` (top-level keys) applied."""
    space = load_space(write_space(tmp_path, **changes))
    db = tmp_path / "search.db"  # not "optuna.db": the pickle test looks for b"optuna"
    shutil.copy(empty_db, db)
    study = SweepStudy(f"sqlite:///{db}", NAME)
    study.create(space.modes, search_attrs(space, num_samples))
    return StudySearcher(study, space.metrics, space.modes)


@functools.cache
def reader(url: str) -> optuna.storages.RDBStorage:
    """A connection to the storage at ``url`` of the test's own, not the searcher's."""
    return optuna.storages.RDBStorage(url)


def stored(searcher: StudySearcher) -> list[FrozenTrial]:
    """Every trial of the study, read afresh through the test's own connection."""
    return optuna.load_study(study_name=NAME, storage=reader(searcher.sweep_study.url)
                             ).get_trials()


def stored_by_ray_id(searcher: StudySearcher) -> dict[str, FrozenTrial]:
    """The study's trials tagged with a Ray trial id, by that id."""
    return {t.user_attrs[ATTR_RAY_ID]: t for t in stored(searcher)
            if ATTR_RAY_ID in t.user_attrs}


def run(searcher: StudySearcher, trial_id: str, values: list[float]) -> dict[str, Any]:
    """Start trial ``trial_id``; report ``values`` as epochs 1, 2, ... through
    ``on_trial_result`` (Ray's per-result call); return its configuration."""
    config = searcher.suggest(trial_id)
    assert isinstance(config, dict), config
    for epoch, value in enumerate(values, start=1):
        searcher.on_trial_result(trial_id, result(epoch, value))
    return config


def check_in_space(config: dict[str, Any]) -> None:
    """BASE_SPACE's conditions and ranges hold for ``config``, list values are lists."""
    method = config["method"]
    assert method in ("none", "vanilla", "two_temperature")
    assert ("alpha" in config) == (method != "none")
    assert ("temperature" in config) == (method == "vanilla")
    assert ("t_right" in config) == ("t_wrong" in config) == (method == "two_temperature")
    assert config["hidden"] in ([8], [16]) and isinstance(config["hidden"], list)
    assert 0.01 <= config["lr"] <= 0.2
    if "alpha" in config:
        assert 0.1 <= config["alpha"] <= 0.9
    if method == "vanilla":
        assert config["temperature"] in (2, 4)
    if method == "two_temperature":
        assert config["t_right"] in (2, 5) and config["t_wrong"] in (10, 20)
    assert set(config) <= {"method", "alpha", "temperature", "t_right", "t_wrong", "hidden",
                           "lr"}


def test_stopped_early() -> None:
    assert stopped_early(result(2, 0.5))
    assert not stopped_early(result(PLANNED, 0.5))
    assert not stopped_early({"val_accuracy": 0.5})  # no epoch info: not ours to judge
    assert not stopped_early(None)


# -- proposals ---------------------------------------------------------------------------------
def test_proposals_follow_the_define_by_run_space(tmp_path: Path, empty_db: Path) -> None:
    """Conditions hold, list choices come back as lists, and the study holds exactly the
    active parameters with list choices encoded as strings."""
    searcher = new_searcher(tmp_path, empty_db, num_samples=16,
                            search={"num_samples": 16, "max_concurrent": 16, "sampler": "tpe",
                                    "seed": 5})
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(16)}
    for config in configs.values():
        check_in_space(config)
    assert {c["method"] for c in configs.values()} == {"none", "vanilla", "two_temperature"}
    trials = stored_by_ray_id(searcher)
    for trial_id, config in configs.items():
        params = trials[trial_id].params
        assert set(params) == set(config)  # no inactive parameter was suggested
        assert params["hidden"] == "-".join(map(str, config["hidden"]))
        assert {k: v for k, v in params.items() if k != "hidden"} == \
            {k: v for k, v in config.items() if k != "hidden"}


def test_one_study_trial_per_ray_trial(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    assert stored(searcher) == []  # nothing is asked before Ray asks
    for trial_id in ("a", "b"):
        searcher.suggest(trial_id)
    trials = stored(searcher)
    assert [t.user_attrs[ATTR_RAY_ID] for t in trials] == ["a", "b"]
    assert [t.state for t in trials] == [TrialState.RUNNING] * 2
    assert len({t.number for t in trials}) == 2


def test_running_configurations_are_not_proposed_again(tmp_path: Path,
                                                        empty_db: Path) -> None:
    """Random sampling of 8 configurations among 8, none finished: still 8 different."""
    searcher = new_searcher(tmp_path, empty_db, parameters=TINY_CATEGORICAL,
                            search={"num_samples": 8, "max_concurrent": 8,
                                    "sampler": "random", "seed": 3})
    running = [searcher.suggest(f"t{i}") for i in range(8)]
    assert len({config_key(c) for c in running}) == 8


# -- what the study is told --------------------------------------------------------------------
def test_each_epoch_is_an_intermediate_value(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    run(searcher, "a", [0.3, 0.5, 0.6])
    searcher.on_trial_result("a", result(4, math.nan))  # not a number: not recorded
    searcher.on_trial_result("a", {"val_accuracy": 0.9})  # no epoch: no step to record at
    searcher.on_trial_result("ghost", result(1, 0.9))  # a trial the searcher never proposed
    [t] = stored(searcher)
    assert t.state == TrialState.RUNNING
    assert t.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.6}


def test_a_trial_stopped_at_a_rung_is_pruned_with_its_rung_value(tmp_path: Path,
                                                                   empty_db: Path) -> None:
    """A last result before the planned epochs (the scheduler stopped it): PRUNED. Ray does
    not call ``on_trial_result`` with the result the scheduler stops a trial on; only
    ``on_trial_complete`` gets it, and the PRUNED trial keeps it as its last step."""
    searcher = new_searcher(tmp_path, empty_db)
    run(searcher, "a", [0.3])
    searcher.on_trial_complete("a", result=result(2, 0.5))
    t = stored_by_ray_id(searcher)["a"]
    assert t.state == TrialState.PRUNED
    assert t.intermediate_values == {1: 0.3, 2: 0.5}


def test_reaching_the_planned_epochs_is_complete(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    values = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85]
    run(searcher, "b", values)
    searcher.on_trial_complete("b", result=result(PLANNED, 0.85, test_accuracy=0.8))
    t = stored_by_ray_id(searcher)["b"]
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.85)
    assert t.intermediate_values == dict(enumerate(values, start=1))


def test_a_result_without_its_objective_is_fail(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    run(searcher, "a", [0.3])
    searcher.on_trial_complete("a", result={"epoch": PLANNED, "epochs_planned": PLANNED})
    assert stored_by_ray_id(searcher)["a"].state == TrialState.FAIL


def test_error_is_fail_even_with_results(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    run(searcher, "c", [0.3, 0.4])
    searcher.on_trial_complete("c", result=result(PLANNED, 0.4), error=True)
    run(searcher, "d", [0.3])
    searcher.on_trial_complete("d", error=True)
    trials = stored_by_ray_id(searcher)
    assert trials["c"].state == TrialState.FAIL and trials["d"].state == TrialState.FAIL
    assert trials["c"].values is None


def test_a_second_completion_changes_nothing(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    run(searcher, "e", [0.3, 0.5])
    searcher.on_trial_complete("e", result=result(2, 0.5))
    before = stored_by_ray_id(searcher)["e"]
    searcher.on_trial_result("e", result(3, 0.7))  # e.g. replayed after a resume
    searcher.on_trial_complete("e", result=result(PLANNED, 0.9))
    searcher.on_trial_complete("e", error=True)
    after = stored_by_ray_id(searcher)["e"]
    assert after.state == TrialState.PRUNED
    assert after.intermediate_values == before.intermediate_values
    assert after.values == before.values and after.datetime_complete == \
        before.datetime_complete


def test_multi_objective_complete_with_both_values_and_pruned(tmp_path: Path,
                                                               empty_db: Path) -> None:
    objectives = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "params", "mode": "min"}]
    searcher = new_searcher(tmp_path, empty_db, objective=objectives,
                            search={"num_samples": 8, "max_concurrent": 4, "sampler": "nsga2",
                                    "seed": 0})
    run(searcher, "a", [0.3, 0.5])
    searcher.on_trial_complete("a", result=result(2, 0.5))
    run(searcher, "b", [0.3, 0.6, 0.7, 0.8, 0.85, 0.9])
    searcher.on_trial_complete("b", result=result(PLANNED, 0.9, params=1000.0))
    run(searcher, "c", [0.4])
    searcher.on_trial_complete("c", result={"epoch": PLANNED, "epochs_planned": PLANNED,
                                            "val_accuracy": 0.7})  # no params: nothing to tell
    trials = stored_by_ray_id(searcher)
    assert trials["a"].state == TrialState.PRUNED
    assert trials["b"].state == TrialState.COMPLETE and trials["b"].values == [0.9, 1000.0]
    assert trials["c"].state == TrialState.FAIL
    # Optuna keeps intermediate values for one objective only; none are reported here
    assert all(not t.intermediate_values for t in trials.values())
    study = optuna.load_study(study_name=NAME, storage=reader(searcher.sweep_study.url))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]


# -- how many trials -----------------------------------------------------------------------
def test_num_samples_reached_is_finished(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db, num_samples=3,
                            search={"num_samples": 3, "max_concurrent": 5, "sampler": "tpe",
                                    "seed": 0})
    for i in range(3):
        assert isinstance(searcher.suggest(f"t{i}"), dict)
    assert searcher.suggest("t3") == Searcher.FINISHED
    searcher.on_trial_complete("t0", result=result(PLANNED, 0.9))
    assert searcher.suggest("t4") == Searcher.FINISHED  # finished trials count too
    assert len(stored(searcher)) == 3


def test_max_concurrent_running_waits_until_one_ends(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)  # BASE_SPACE: max_concurrent 2
    run(searcher, "a", [0.5])
    run(searcher, "b", [0.6])
    assert searcher.suggest("c") is None
    searcher.on_trial_result("a", result(2, 0.6))
    assert searcher.suggest("c") is None  # a result is not an end
    assert len(stored(searcher)) == 2  # waiting asks the study nothing
    searcher.on_trial_complete("a", result=result(2, 0.6))  # stopped early: ended
    assert isinstance(searcher.suggest("c"), dict)
    assert searcher.suggest("d") is None
    searcher.on_trial_complete("b", error=True)  # an error frees its place too
    assert isinstance(searcher.suggest("d"), dict)
    assert [t.user_attrs[ATTR_RAY_ID] for t in stored(searcher)] == ["a", "b", "c", "d"]


def test_no_configuration_twice_until_the_space_is_exhausted(tmp_path: Path, empty_db: Path,
                                                            caplog, monkeypatch) -> None:
    """TPE on a tiny categorical space proposes known configurations again and again; each
    is trained once, the repeats told FAIL (ignored by Optuna's samplers) with the Ray trial
    that had it; once all 8 are used, a warning and a repeat."""
    searcher = new_searcher(tmp_path, empty_db, num_samples=9, parameters=TINY_CATEGORICAL,
                            search={"num_samples": 9, "max_concurrent": 1, "sampler": "tpe",
                                    "seed": 0})
    best = {"method": "vanilla", "temperature": 5.0, "hidden": [16]}
    seen: dict[str, str] = {}
    for i in range(8):
        config = run(searcher, f"t{i}", [])
        assert config_key(config) not in seen, (config, i)
        seen[config_key(config)] = f"t{i}"
        value = 0.9 if config == best else 0.5  # TPE keeps proposing the best one
        searcher.on_trial_complete(f"t{i}", result=result(PLANNED, value))
    assert len(seen) == 8
    trials = stored(searcher)
    repeats = [t for t in trials if ATTR_REPEAT_OF in t.user_attrs]
    assert repeats  # TPE did repeat itself
    assert all(t.state == TrialState.FAIL and ATTR_RAY_ID not in t.user_attrs
               for t in repeats)
    # each repeat names the Ray trial that holds its configuration
    decoded = searcher.session.config_of
    assert all(seen[config_key(decoded(t))] == t.user_attrs[ATTR_REPEAT_OF] for t in repeats)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 8

    # nothing unseen is left: the searcher tries neighbours, then random draws, then trains
    # a repeat (fewer tries than a sweep makes, each a FAIL trial in the study)
    monkeypatch.setattr(searcher_module, "MAX_NEIGHBOURS", 4)
    monkeypatch.setattr(searcher_module, "MAX_RANDOM", 3)
    with caplog.at_level(logging.WARNING, logger="kdtune.tune.searcher"):
        ninth = searcher.suggest("t8")
    assert config_key(ninth) in seen
    assert "trained already" in caplog.text
    assert len(stored(searcher)) == len(trials) + 4 + 3 + 1
    assert stored_by_ray_id(searcher)["t8"].state == TrialState.RUNNING


# -- a grid ------------------------------------------------------------------------------------
def grid_searcher(tmp_path: Path, empty_db: Path, num_samples: int, **search: Any
                  ) -> StudySearcher:
    return new_searcher(tmp_path, empty_db, num_samples=num_samples, parameters=GRID,
                        search={"sampler": "grid", "max_concurrent": 8,
                                "num_samples": num_samples, **search})


def test_a_grid_proposes_each_point_once_in_order_then_finishes(tmp_path: Path,
                                                                empty_db: Path) -> None:
    searcher = grid_searcher(tmp_path, empty_db, 6)
    points = expand_grid(load_space(tmp_path / "space.yaml"))
    assert len(points) == 6
    proposed = [searcher.suggest(f"t{i}") for i in range(6)]
    assert proposed == points
    assert searcher.suggest("extra") == Searcher.FINISHED
    searcher.on_trial_complete("t0", result=result(2, 0.5))
    searcher.on_trial_complete("t3", result=result(PLANNED, 0.9))
    trials = stored_by_ray_id(searcher)
    assert len(stored(searcher)) == 6  # no proposal was a repeat
    assert trials["t0"].state == TrialState.PRUNED  # grid trials are ordinary Optuna trials
    assert trials["t3"].state == TrialState.COMPLETE
    assert points[3]["hidden"] == [8, 8] and trials["t3"].params["hidden"] == "8-8"


def test_a_partial_grid_is_a_sample_of_the_grid_in_grid_order(tmp_path: Path,
                                                               empty_db: Path) -> None:
    searcher = grid_searcher(tmp_path, empty_db, 4, seed=1)
    space = load_space(tmp_path / "space.yaml")
    grid, points = expand_grid(space), grid_points(space, 4)
    proposed = [searcher.suggest(f"t{i}") for i in range(4)]
    assert proposed == points
    assert len({config_key(c) for c in proposed}) == 4
    assert [grid.index(c) for c in proposed] == sorted(grid.index(c) for c in proposed)
    assert searcher.suggest("t4") == Searcher.FINISHED


def test_a_grid_continues_where_it_stopped_after_unpickling(tmp_path: Path,
                                                            empty_db: Path) -> None:
    searcher = grid_searcher(tmp_path, empty_db, 6)
    points = expand_grid(load_space(tmp_path / "space.yaml"))
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    searcher.on_trial_complete("t0", result=result(PLANNED, 0.9))
    restored = pickle.loads(pickle.dumps(searcher))
    rest = [restored.suggest(f"t{i}") for i in range(3, 6)]
    assert first + rest == points
    assert restored.suggest("t6") == Searcher.FINISHED


# -- Ray pickles the searcher; a resumed sweep unpickles it -------------------------------------
def test_the_pickle_holds_only_the_study_url_and_name(tmp_path: Path, empty_db: Path) -> None:
    searcher = new_searcher(tmp_path, empty_db)
    run(searcher, "a", [0.5])  # the searcher has read the study and holds it
    assert isinstance(searcher.session.study, optuna.Study)
    data = pickle.dumps(searcher)
    assert len(data) < 1000, len(data)
    assert b"optuna" not in data  # no Optuna object (its module path would be named)
    assert searcher.sweep_study.url.encode() in data and NAME.encode() in data
    restored = pickle.loads(data)
    assert (restored.sweep_study.url, restored.sweep_study.name) == \
        (searcher.sweep_study.url, NAME)
    assert (restored.metrics, restored.modes) == (["val_accuracy"], ["max"])


def test_an_unpickled_searcher_continues_the_sweep(tmp_path: Path, empty_db: Path) -> None:
    """Proposals, counts and running trials come back from the study alone."""
    searcher = new_searcher(tmp_path, empty_db, num_samples=6, parameters=TINY_CATEGORICAL,
                            search={"num_samples": 6, "max_concurrent": 2,
                                    "sampler": "random", "seed": 1})
    a = run(searcher, "a", [0.3, 0.4])
    searcher.on_trial_complete("a", result=result(PLANNED, 0.8))
    b = run(searcher, "b", [0.5])  # running when the driver stops
    c = run(searcher, "c", [])  # running, no result yet

    restored = pickle.loads(pickle.dumps(searcher))
    assert restored.suggest("d") is None  # b and c are still running: max_concurrent 2
    restored.on_trial_result("b", result(1, 0.5))  # replayed from b's checkpoint
    restored.on_trial_result("b", result(2, 0.6))
    restored.on_trial_complete("b", result=result(PLANNED, 0.7))
    trials = stored_by_ray_id(restored)
    assert trials["b"].state == TrialState.COMPLETE and trials["b"].value == 0.7
    assert trials["b"].intermediate_values == {1: 0.5, 2: 0.6, PLANNED: 0.7}
    assert trials["c"].state == TrialState.RUNNING
    later = [restored.suggest("d")]
    restored.on_trial_complete("c", error=True)
    restored.on_trial_complete("d", result=result(PLANNED, 0.6))
    later += [restored.suggest("e"), restored.suggest("f")]
    assert all(isinstance(c, dict) for c in later)
    assert restored.suggest("g") == Searcher.FINISHED  # 6 trials: a .. f
    keys = [config_key(x) for x in (a, b, c, *later)]
    assert len(set(keys)) == 6  # no configuration proposed twice across the restart
    assert list(stored_by_ray_id(restored)) == list("abcdef")


def test_an_unpickled_searcher_draws_new_configurations(tmp_path: Path,
                                                        empty_db: Path) -> None:
    """Continuous parameters: a new random draw never equals an earlier one."""
    searcher = new_searcher(tmp_path, empty_db, num_samples=8,
                            search={"num_samples": 8, "max_concurrent": 8,
                                    "sampler": "random", "seed": 1})
    for i in range(3):
        searcher.suggest(f"t{i}")
    restored = pickle.loads(pickle.dumps(searcher))
    for i in range(3, 6):
        restored.suggest(f"t{i}")
    assert [t.user_attrs.get(ATTR_REPEAT_OF) for t in stored(restored)
            if ATTR_REPEAT_OF in t.user_attrs] == []


def test_rays_searcher_snapshot_is_where_the_study_is(tmp_path: Path,
                                                       empty_db: Path) -> None:
    """``save`` writes the study's URL and name; ``restore`` reads the study again."""
    searcher = new_searcher(tmp_path, empty_db)  # max_concurrent 2
    run(searcher, "a", [0.5])
    run(searcher, "b", [0.5])
    snapshot = tmp_path / "searcher-state.json"
    searcher.save(str(snapshot))
    assert json.loads(snapshot.read_text()) == {"url": searcher.sweep_study.url,
                                                "name": NAME}
    assert searcher.suggest("c") is None
    # the study changes behind this searcher's back: b is given up
    reask_lost_trials(SweepStudy(searcher.sweep_study.url, NAME), {trial_dirname_of("a")})
    assert searcher.suggest("c") is None  # what it read before: b still running
    searcher.restore(str(snapshot))
    assert isinstance(searcher.suggest("c"), dict)  # read again: only a is running


def test_a_trial_lost_before_rays_snapshot_is_asked_again(tmp_path: Path,
                                                          empty_db: Path) -> None:
    """The driver died after the study got trial b but before Ray's snapshot named it:
    ``reask_lost_trials`` tells b FAIL and enqueues its configuration, which the next new
    Ray trial runs; b no longer counts as a trial of the sweep."""
    searcher = new_searcher(tmp_path, empty_db, num_samples=3,
                            search={"num_samples": 3, "max_concurrent": 3, "sampler": "tpe",
                                    "seed": 2})
    run(searcher, "a", [0.5])
    b = run(searcher, "b", [0.4])
    data = pickle.dumps(searcher)  # Ray's tuner.pkl

    assert reask_lost_trials(SweepStudy(searcher.sweep_study.url, NAME),
                             {trial_dirname_of("a")}) == 1
    lost = stored_by_ray_id(searcher)["b"]
    assert lost.state == TrialState.FAIL and lost.user_attrs[ATTR_REASKED] is True
    assert stored_by_ray_id(searcher)["a"].state == TrialState.RUNNING

    restored = pickle.loads(data)
    assert restored.suggest("c") == b  # b's configuration, for a new Ray trial
    assert set(restored.sweep_study.sweep_trials()) == {"a", "c"}
    other = restored.suggest("d")  # 3 samples: a, c and one more
    assert isinstance(other, dict) and config_key(other) != config_key(b)
    assert restored.suggest("e") == Searcher.FINISHED
    restored.on_trial_complete("a", result=result(PLANNED, 0.8))
    restored.on_trial_complete("c", result=result(PLANNED, 0.7))
    trials = stored_by_ray_id(restored)
    assert trials["a"].state == trials["c"].state == TrialState.COMPLETE
    assert trials["b"].state == TrialState.FAIL  # the lost one stays given up
    assert sorted(restored.sweep_study.sweep_trials()) == ["a", "c", "d"]


# -- neighbours --------------------------------------------------------------------------------
def in_distribution(dist: Any, value: Any) -> bool:
    """Whether ``value`` is one of ``dist``'s values (public attributes only)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if not dist.low <= value <= dist.high:
        return False
    if dist.step is None:
        return True
    steps = (value - dist.low) / dist.step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


@pytest.mark.parametrize("dist", [
    CategoricalDistribution(["a", "b", "c"]),
    IntDistribution(1, 4),
    IntDistribution(2, 10, step=4),
    FloatDistribution(0.1, 0.9),
    FloatDistribution(1e-3, 1e-1, log=True),
    FloatDistribution(0.1, 0.5, step=0.2),
])
def test_a_neighbour_moves_the_asked_number_of_parameters(dist) -> None:
    rng = random.Random(0)
    first = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
    params = {"x": first, "y": "keep", "z": 1}
    dists = {"x": dist, "y": CategoricalDistribution(["keep"]), "z": IntDistribution(1, 3)}
    for _ in range(50):
        one = neighbour(params, dists, rng, moved=1)
        assert sum(one[k] != params[k] for k in params) == 1
        assert one["y"] == "keep"  # a one-value parameter never moves
        assert in_distribution(dist, one["x"]) and in_distribution(dists["z"], one["z"])
        two = neighbour(params, dists, rng, moved=2)
        assert two["x"] != params["x"] and two["z"] != params["z"] and two["y"] == "keep"
        assert in_distribution(dist, two["x"])
        assert neighbour(params, dists, rng, moved=5).keys() == params.keys()


def test_the_last_retry_is_checked_like_every_other(tmp_path: Path, empty_db: Path, caplog,
                                                    monkeypatch) -> None:
    """When the last proposal allowed is new, it trains as new: no warning, no ``repeat_of``;
    when it repeats a trained one, the warning and ``repeat_of`` name it."""
    searcher = new_searcher(tmp_path, empty_db, num_samples=9, parameters=TINY_CATEGORICAL,
                            search={"num_samples": 9, "max_concurrent": 1, "sampler": "random",
                                    "seed": 0})
    seen: dict[str, str] = {}
    for i in range(6):
        config = run(searcher, f"t{i}", [])
        seen[config_key(config)] = f"t{i}"
        searcher.on_trial_complete(f"t{i}", result=result(PLANNED, 0.5))
    session = searcher.session
    unseen = [c for c in expand_grid(session.space) if config_key(c) not in seen]
    assert len(unseen) == 2
    monkeypatch.setattr(searcher_module, "MAX_NEIGHBOURS", 0)
    monkeypatch.setattr(searcher_module, "MAX_RANDOM", 1)
    a_seen = next(iter(seen))
    # the study hands out what is enqueued first: a trained configuration, then a new one
    for config in (json.loads(a_seen), unseen[0]):
        session.study.enqueue_trial(session.encode(config))
    with caplog.at_level(logging.WARNING, logger="kdtune.tune.searcher"):
        new = searcher.suggest("t6")
    assert config_key(new) == config_key(unseen[0])
    assert "trained already" not in caplog.text
    assert ATTR_REPEAT_OF not in stored_by_ray_id(searcher)["t6"].user_attrs
    searcher.on_trial_complete("t6", result=result(PLANNED, 0.5))
    # every try a repeat: the last one trains again, said and recorded
    for config in (json.loads(a_seen), json.loads(a_seen)):
        session.study.enqueue_trial(session.encode(config))
    with caplog.at_level(logging.WARNING, logger="kdtune.tune.searcher"):
        again = searcher.suggest("t7")
    assert config_key(again) == a_seen and "trained already" in caplog.text
    assert stored_by_ray_id(searcher)["t7"].user_attrs[ATTR_REPEAT_OF] == seen[a_seen]
