"""PruningOptunaSearch with hand-made results: what Optuna is told when a trial ends.

The searcher is the real one (Ray's OptunaSearch + kdtune's override) on a real in-memory
Optuna study; only the results are made up.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from kdtune.tune.searcher import (
    LiveTrialsLimiter,
    PruningOptunaSearch,
    config_key,
    neighbour,
    stopped_early,
)
from kdtune.tune.space import load_space, suggest

from .conftest import write_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

PLANNED = 6


def result(epoch: int, value: float, **extra: Any) -> dict[str, Any]:
    """What kdtune's trainable reports (plus Ray's ``training_iteration``)."""
    return {"epoch": epoch, "epochs_planned": PLANNED, "training_iteration": epoch,
            "val_accuracy": value, "val_loss": 1 - value, **extra}


def space_fn(trial: optuna.Trial) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}


@pytest.fixture
def searcher() -> PruningOptunaSearch:
    return PruningOptunaSearch(space=space_fn, metric="val_accuracy", mode="max",
                               sampler=optuna.samplers.RandomSampler(seed=0))


def frozen(searcher: PruningOptunaSearch, trial_id: str) -> optuna.trial.FrozenTrial:
    number = searcher._ot_trials[trial_id].number
    return searcher._ot_study.get_trials(deepcopy=False)[number]


def run(searcher: PruningOptunaSearch, trial_id: str, values: list[float]) -> None:
    """Start a trial and report every value but the last one as an ordinary result."""
    assert "lr" in searcher.suggest(trial_id)
    for epoch, value in enumerate(values[:-1], start=1):
        searcher.on_trial_result(trial_id, result(epoch, value))


def test_stopped_early() -> None:
    assert stopped_early(result(2, 0.5))
    assert not stopped_early(result(PLANNED, 0.5))
    assert not stopped_early({"val_accuracy": 0.5})  # no epoch info: not ours to judge
    assert not stopped_early(None)


def test_stopped_by_the_scheduler_is_pruned_with_its_rung_value(searcher) -> None:
    run(searcher, "a", [0.3, 0.5])
    searcher.on_trial_complete("a", result=result(2, 0.5))
    t = frozen(searcher, "a")
    assert t.state == TrialState.PRUNED
    # the value ASHA judged it by (only on_trial_complete sees it) is the last intermediate
    assert t.intermediate_values == {1: 0.3, 2: 0.5}


def test_reaching_the_planned_epochs_is_complete(searcher) -> None:
    values = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85]
    run(searcher, "b", values)
    searcher.on_trial_complete("b", result=result(PLANNED, 0.85, test_accuracy=0.8))
    t = frozen(searcher, "b")
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.85)
    assert t.intermediate_values == dict(enumerate(values, start=1))


def test_error_is_fail_even_with_results(searcher) -> None:
    run(searcher, "c", [0.3, 0.4])
    searcher.on_trial_complete("c", result=result(2, 0.4), error=True)
    assert frozen(searcher, "c").state == TrialState.FAIL
    run(searcher, "d", [0.3])
    searcher.on_trial_complete("d", error=True)
    assert frozen(searcher, "d").state == TrialState.FAIL


def test_a_second_completion_changes_nothing(searcher) -> None:
    run(searcher, "e", [0.3, 0.5])
    searcher.on_trial_complete("e", result=result(2, 0.5))
    searcher.on_trial_complete("e", result=result(PLANNED, 0.9))  # e.g. replayed on resume
    t = frozen(searcher, "e")
    assert t.state == TrialState.PRUNED and t.intermediate_values == {1: 0.3, 2: 0.5}


def test_pruned_trials_keep_their_state_through_save_and_restore(searcher,
                                                                 tmp_path: Path) -> None:
    """What ``kdtune resume`` relies on: Ray pickles the searcher into the experiment."""
    run(searcher, "a", [0.3, 0.5])
    searcher.on_trial_complete("a", result=result(2, 0.5))
    run(searcher, "b", [0.4])  # still running at the "crash"
    searcher.save(str(tmp_path / "searcher.pkl"))

    restored = PruningOptunaSearch(space=space_fn, metric="val_accuracy", mode="max")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert frozen(restored, "a").state == TrialState.PRUNED
    assert frozen(restored, "b").state == TrialState.RUNNING
    restored.on_trial_result("b", result(1, 0.4))  # replayed epoch: ignored by Optuna
    restored.on_trial_complete("b", result=result(PLANNED, 0.9))
    t = frozen(restored, "b")
    assert t.state == TrialState.COMPLETE and t.intermediate_values == {1: 0.4, PLANNED: 0.9}


def test_multi_objective_pruned_and_complete() -> None:
    searcher = PruningOptunaSearch(space=space_fn, metric=["val_accuracy", "params"],
                                   mode=["max", "min"],
                                   sampler=optuna.samplers.NSGAIISampler(seed=0))
    run(searcher, "a", [0.3, 0.5])  # multi-objective: no intermediate values in Optuna
    searcher.on_trial_complete("a", result=result(2, 0.5))
    run(searcher, "b", [0.3, 0.9])
    searcher.on_trial_complete("b", result=result(PLANNED, 0.9, params=1000.0))
    assert frozen(searcher, "a").state == TrialState.PRUNED
    b = frozen(searcher, "b")
    assert b.state == TrialState.COMPLETE and b.values == [0.9, 1000.0]


def test_define_by_run_space_from_a_file(tmp_path: Path) -> None:
    """kdtune's own space function, as ``make_search_alg`` passes it: conditions hold."""
    space = load_space(write_space(tmp_path))
    searcher = PruningOptunaSearch(space=functools.partial(suggest, space=space),
                                   metric="val_accuracy", mode="max",
                                   sampler=optuna.samplers.RandomSampler(seed=1))
    for i in range(20):
        config = searcher.suggest(f"t{i}")
        method = config["method"]
        assert ("alpha" in config) == (method != "none")
        assert ("temperature" in config) == (method == "vanilla")
        assert ("t_right" in config) == ("t_wrong" in config) == (method == "two_temperature")
        assert isinstance(config["hidden"], list)



def test_a_restored_trial_the_study_never_saw_is_adopted(tmp_path: Path) -> None:
    """Ray writes its experiment snapshot (the trials), then the searcher's: a driver killed
    in between leaves a trial the restored study never saw, and Ray's trial counter behind.
    The trial joins the study as the trial that proposed its config (Optuna learns from it;
    its completion passes the concurrency limiter), and no trial beyond num_samples is
    proposed."""
    space = load_space(write_space(tmp_path))

    def new_limiter() -> LiveTrialsLimiter:  # as make_search_alg builds it
        return LiveTrialsLimiter(
            PruningOptunaSearch(space=functools.partial(suggest, space=space),
                                metric="val_accuracy", mode="max", num_samples=3,
                                sampler=optuna.samplers.RandomSampler(seed=1)),
            max_concurrent=2)

    experiment = tmp_path / "experiment"
    experiment.mkdir()
    before = new_limiter()
    known = before.suggest("known")
    before.searcher.save_to_dir(str(experiment), "s1")  # the searcher's snapshot ...
    missed = before.suggest("missed")  # ... then a trial, in Ray's experiment snapshot only
    trial_data = [[json.dumps({"trial_id": t, "config": c}), "{}"]
                  for t, c in (("known", known), ("missed", missed))]
    (experiment / "experiment_state-s1.json").write_text(json.dumps({"trial_data": trial_data}))

    restored = new_limiter()
    restored.searcher.restore_from_dir(str(experiment))  # what Ray's restore calls
    searcher = restored.searcher
    assert set(searcher._ot_trials) == {"known", "missed"}
    assert suggest(optuna.trial.FixedTrial(frozen(searcher, "missed").params), space) == missed
    assert isinstance(missed["hidden"], list)  # a list choice, encoded for Optuna
    assert searcher._proposed[config_key(missed)] == "missed"  # not proposed again
    restored.on_trial_result("missed", {**result(1, 0.4), "config/lr": missed["lr"]})
    restored.on_trial_complete("missed", result=result(PLANNED, 0.9))
    restored.on_trial_complete("known", result=result(PLANNED, 0.7))
    t = frozen(searcher, "missed")
    assert t.state == TrialState.COMPLETE and t.value == 0.9
    assert t.intermediate_values == {1: 0.4, PLANNED: 0.9}
    assert frozen(searcher, "known").value == 0.7
    assert restored.live_trials == set()  # both ended: the slots are free again
    assert restored.suggest("third") is not None
    assert restored.suggest("fourth") == Searcher.FINISHED  # num_samples=3 reached


# -- no configuration twice -------------------------------------------------------------------
def grid_fn(trial: optuna.Trial) -> dict[str, Any]:
    """2 x 3 = 6 configurations; ``temperature`` only for vanilla (a conditional branch)."""
    method = trial.suggest_categorical("method", ["none", "vanilla"])
    config: dict[str, Any] = {"method": method}
    if method == "vanilla":
        config["temperature"] = trial.suggest_categorical("temperature", [2, 5, 10])
    config["width"] = trial.suggest_categorical("width", [16, 32])
    return config


def test_no_configuration_twice_until_the_space_is_exhausted(caplog) -> None:
    """TPE on a tiny categorical space repeats its best config; kdtune trains each once."""
    searcher = PruningOptunaSearch(space=grid_fn, metric="val_accuracy", mode="max",
                                   sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
                                   seed=0)
    seen = []
    for i in range(8):  # the space has 8 configs: none x 2 widths + vanilla x 3 T x 2 widths
        config = searcher.suggest(f"t{i}")
        seen.append(tuple(sorted(config.items())))
        value = 0.9 if config == {"method": "vanilla", "temperature": 5, "width": 32} else 0.5
        searcher.on_trial_complete(f"t{i}", result=result(PLANNED, value))
    assert len(set(seen)) == 8
    assert searcher.repeats_avoided > 0
    trials = searcher._ot_study.get_trials(deepcopy=False)
    repeats = [t for t in trials if "kdtune_repeat_of" in t.user_attrs]
    assert len(repeats) == searcher.repeats_avoided
    assert all(t.state == TrialState.FAIL for t in repeats)  # ignored by Optuna's samplers
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 8

    with caplog.at_level("WARNING", logger="kdtune.tune.searcher"):
        ninth = searcher.suggest("t8")  # nothing unseen is left: it trains a repeat
    assert tuple(sorted(ninth.items())) in seen
    assert "trained already" in caplog.text


def test_running_configurations_are_not_proposed_again() -> None:
    searcher = PruningOptunaSearch(space=grid_fn, metric="val_accuracy", mode="max",
                                   sampler=optuna.samplers.RandomSampler(seed=3), seed=3)
    running = [searcher.suggest(f"t{i}") for i in range(8)]  # none has reported yet
    assert len({tuple(sorted(c.items())) for c in running}) == 8


def test_the_dedupe_memory_survives_save_and_restore(tmp_path: Path) -> None:
    searcher = PruningOptunaSearch(space=grid_fn, metric="val_accuracy", mode="max",
                                   sampler=optuna.samplers.RandomSampler(seed=1), seed=1)
    first = [searcher.suggest(f"t{i}") for i in range(5)]
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = PruningOptunaSearch(space=grid_fn, metric="val_accuracy", mode="max")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t0") == first[0]  # a restored trial keeps its configuration
    rest = [restored.suggest(f"t{i}") for i in range(5, 8)]
    assert len({tuple(sorted(c.items())) for c in first + rest}) == 8


@pytest.mark.parametrize("dist", [
    optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
    optuna.distributions.IntDistribution(1, 4),
    optuna.distributions.IntDistribution(2, 10, step=4),
    optuna.distributions.FloatDistribution(0.1, 0.9),
    optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
    optuna.distributions.FloatDistribution(0.1, 0.5, step=0.2),
])
def test_a_neighbour_moves_the_asked_number_of_parameters(dist) -> None:
    rng = random.Random(0)
    first = dist.to_external_repr(dist.to_internal_repr(
        dist.choices[0] if isinstance(dist, optuna.distributions.CategoricalDistribution)
        else dist.low))
    params = {"x": first, "y": "keep", "z": 1}
    dists = {"x": dist, "y": optuna.distributions.CategoricalDistribution(["keep"]),
             "z": optuna.distributions.IntDistribution(1, 3)}
    for _ in range(50):
        one = neighbour(params, dists, rng, moved=1)
        assert sum(one[k] != params[k] for k in params) == 1
        assert one["y"] == "keep"  # a one-value parameter never moves
        assert dist._contains(dist.to_internal_repr(one["x"]))
        two = neighbour(params, dists, rng, moved=2)
        assert two["x"] != params["x"] and two["z"] != params["z"]


def test_a_searcher_pickled_before_the_repeat_check_resumes() -> None:
    """Ray keeps the searcher in ``tuner.pkl``: one from an older kdtune lacks the memory."""
    import pickle

    searcher = PruningOptunaSearch(space=grid_fn, metric="val_accuracy", mode="max",
                                   sampler=optuna.samplers.RandomSampler(seed=2), seed=2)
    searcher.suggest("t0")
    for attribute in ("_rng", "_proposed", "repeats_avoided"):
        del searcher.__dict__[attribute]
    restored = pickle.loads(pickle.dumps(searcher))
    assert restored.suggest("t1") and restored.repeats_avoided >= 0


# -- a grid through the same searcher ---------------------------------------------------------
def grid_searcher(tmp_path: Path, **search: Any) -> tuple[PruningOptunaSearch, list[dict]]:
    """kdtune's searcher over a conditional grid with list values, as make_search_alg makes it."""
    from kdtune.tune.space import grid_points

    space = load_space(write_space(tmp_path, parameters={
        "method": {"type": "categorical", "choices": ["none", "vanilla"]},
        "temperature": {"type": "categorical", "choices": [2, 4], "when": {"method": ["vanilla"]}},
        "hidden": {"type": "categorical", "choices": [[8], [8, 8]]}},
        search={"sampler": "grid", "max_concurrent": 2, **search}))
    points = grid_points(space, space.search.num_samples)
    searcher = PruningOptunaSearch(space=functools.partial(suggest, space=space),
                                   metric="val_accuracy", mode="max", points=points,
                                   sampler=optuna.samplers.RandomSampler(seed=0),
                                   num_samples=len(points))
    return searcher, points


def test_a_grid_proposes_each_point_once_in_order_then_finishes(tmp_path: Path) -> None:
    searcher, points = grid_searcher(tmp_path)
    assert len(points) == 6  # none x 2 hidden + vanilla x 2 T x 2 hidden
    proposed = [searcher.suggest(f"t{i}") for i in range(len(points))]
    assert proposed == points
    assert searcher.suggest("extra") == Searcher.FINISHED
    searcher.on_trial_complete("t0", result=result(2, 0.5))
    searcher.on_trial_complete("t1", result=result(PLANNED, 0.9))
    assert frozen(searcher, "t0").state == TrialState.PRUNED  # grid trials are Optuna trials
    assert frozen(searcher, "t1").state == TrialState.COMPLETE
    assert frozen(searcher, "t1").params["hidden"] == "8-8"  # a list, encoded for Optuna


def test_a_grid_resumes_where_it_stopped(tmp_path: Path) -> None:
    searcher, points = grid_searcher(tmp_path, num_samples=4)
    first = [searcher.suggest(f"t{i}") for i in range(2)]
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = PruningOptunaSearch(space=searcher._space, metric="val_accuracy", mode="max")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t0") == first[0]  # a restored trial keeps its configuration
    rest = [restored.suggest(f"t{i}") for i in range(2, 4)]
    assert first + rest == points
    assert restored.suggest("t4") == Searcher.FINISHED
