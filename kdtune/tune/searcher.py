"""Ray's ``OptunaSearch``, but trials stopped early by the scheduler reach Optuna as PRUNED,
no configuration is trained twice, and a grid runs through the same searcher.

Ray tells Optuna that an ASHA-stopped trial COMPLETED with its last, partial value, so TPE
would learn from a 3-epoch score as if it were final. Here such a trial is told as
``TrialState.PRUNED``; its per-epoch values were already reported as intermediate values.

On small categorical spaces TPE proposes the same configuration again and again (optuna
issue 2021): the same config and seed give the same numbers, so such a trial would only burn
compute. A repeated proposal is told FAIL (Optuna's samplers ignore failed trials) and
replaced by a neighbour: the proposal with one parameter moved to another value (more when
those are used up, then a random draw).

A grid (``points``: kdtune's expansion of a conditional space) is proposed one configuration
at a time: the next one not proposed yet is enqueued in the study and asked, so grid trials
are ordinary Optuna trials (pruned, failed, adopted on resume and saved exactly like TPE's).
"""

from __future__ import annotations

import json
import logging
import math
import random
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import RandomSampler
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from kdtune.tune.trainable import EPOCH_KEY, PLANNED_KEY

logger = logging.getLogger(__name__)

#: Neighbours, then random draws, tried before a repeated configuration is trained again
#: (a space with fewer configurations than trials).
MAX_NEIGHBOURS, MAX_RANDOM = 64, 256


def stopped_early(result: dict[str, Any] | None) -> bool:
    """A trial whose last result is before its planned last epoch was stopped early."""
    if not result or EPOCH_KEY not in result or PLANNED_KEY not in result:
        return False
    return result[EPOCH_KEY] < result[PLANNED_KEY]


class PruningOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that reports scheduler-stopped trials as pruned.

    Also: the last result of a trial reaches the searcher only through ``on_trial_complete``
    (Ray skips ``on_trial_result`` for it), so it is added to the trial's intermediate values
    here: a trial pruned at a rung carries the value the scheduler judged it by. A trial that
    errored is told FAIL even when it had reported results (Ray's ``OptunaSearch`` would tell
    it COMPLETE with its last value). Configurations are never repeated while unseen ones are
    near (module docstring); ``seed`` seeds the choice of neighbours. With ``points`` the
    searcher proposes exactly those configurations, in order, and then no more.
    """

    def __init__(self, *args: Any, seed: int | None = None, num_samples: int | None = None,
                 points: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = random.Random(seed)
        self._proposed: dict[str, str] = {}  # configuration key -> the Ray trial that has it
        self.repeats_avoided = 0
        self.num_samples = num_samples
        self.points = points
        self._restored_ids: set[str] = set()  # the trials of Ray's snapshot at the last restore

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling a searcher saved by an older kdtune (a sweep started before an upgrade
        and resumed after it): start the memory it did not have empty."""
        self.__dict__.update({"_rng": random.Random(), "_proposed": {}, "repeats_avoided": 0,
                              "num_samples": None, "points": None, "_restored_ids": set(),
                              **state})

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self._ot_trials or not callable(self._space):
            return super().suggest(trial_id)  # a restored trial keeps its configuration
        known = set(self._ot_trials) | self._restored_ids
        if self.num_samples is not None and len(known) >= self.num_samples:
            return Searcher.FINISHED  # Ray's restored trial counter was behind (see restore)
        if self.points is not None:
            return self._suggest_point(trial_id)
        config = super().suggest(trial_id)
        for attempt in range(MAX_NEIGHBOURS + MAX_RANDOM):
            key = config_key(config)
            if key not in self._proposed:
                self._proposed[key] = trial_id
                return config
            repeat = self._ot_trials.pop(trial_id)
            repeat.set_user_attr("kdtune_repeat_of", self._proposed[key])
            self._ot_study.tell(repeat, state=TrialState.FAIL)
            self.repeats_avoided += 1
            if attempt < MAX_NEIGHBOURS:
                moved = 1 + attempt * 3 // MAX_NEIGHBOURS  # widen the step when stuck
                self._ot_study.enqueue_trial(neighbour(repeat.params, repeat.distributions,
                                                       self._rng, moved))
                config = super().suggest(trial_id)
            else:  # the neighbourhood is used up: anywhere in the space
                config = self._suggest_randomly(trial_id)
        logger.warning("every configuration tried was trained already (last: %s): trial %s "
                       "trains it again", config, trial_id)
        return config

    def _suggest_point(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next configuration of ``points`` not proposed yet, asked through the study."""
        from kdtune.tune.space import optuna_params

        assert self.points is not None
        point = next((p for p in self.points if config_key(p) not in self._proposed), None)
        if point is None:
            return Searcher.FINISHED
        self._ot_study.enqueue_trial(optuna_params(point))
        config = super().suggest(trial_id)
        self._proposed[config_key(config)] = trial_id
        return config

    def _suggest_randomly(self, trial_id: str) -> dict[str, Any] | None:
        study = self._ot_study
        sampler = study.sampler
        study.sampler = RandomSampler(seed=self._rng.randrange(2**32))
        try:
            return super().suggest(trial_id)
        finally:
            study.sampler = sampler

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Restore, then reconcile with the trials of Ray's experiment snapshot.

        Ray writes its experiment snapshot (the trials) and then the searcher's; a driver
        killed in between leaves trials the restored study never saw, and Ray's trial counter
        behind. Those trials are adopted (:meth:`_adopt`), and no trial beyond
        ``num_samples`` is proposed.
        """
        super().restore_from_dir(checkpoint_dir)
        trials = experiment_trials(checkpoint_dir)
        self._restored_ids = set(trials)
        for trial_id, config in trials.items():
            self._adopt(trial_id, config)

    def _knows(self, trial_id: str) -> bool:
        return trial_id in self._ot_trials or trial_id in self._completed_trials

    def _adopt(self, trial_id: str, config: Any) -> bool:
        """Make sure Optuna knows ``trial_id``; False if it cannot (no config).

        A trial the study never saw joins it as the trial that proposed its config (the
        config enqueued and asked), so Optuna learns from it and it is not proposed again.
        """
        if self._knows(trial_id):
            return True
        if not isinstance(config, dict) or not callable(self._space):
            logger.warning("trial %s is unknown to the restored Optuna study and has no "
                           "config: Optuna will not learn from it", trial_id)
            return False
        from kdtune.tune.space import optuna_params

        self._ot_study.enqueue_trial(optuna_params(config))
        super().suggest(trial_id)  # asks the enqueued trial: the space suggests its values
        self._proposed.setdefault(config_key(config), trial_id)
        return True

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate values are indexed by epoch, not by Ray's ``training_iteration`` (the
        two part after a trial resumed from a later checkpoint than Ray's snapshot named)."""
        if not (self._knows(trial_id) or self._adopt(trial_id, result_config(result))):
            return
        if EPOCH_KEY in result:
            result = {**result, TRAINING_ITERATION: int(result[EPOCH_KEY])}
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if not (self._knows(trial_id) or self._adopt(trial_id, result_config(result))):
            return
        if trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)  # warns, no-op
            return
        if error:
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        self._report_last(trial_id, result)
        if not stopped_early(result):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _report_last(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """Report the final result as an intermediate value (single objective only)."""
        if not result or isinstance(self.metric, list) or self.metric not in result:
            return
        step = result.get(EPOCH_KEY, result.get(TRAINING_ITERATION))
        if step is None:
            return
        ot_trial = self._ot_trials[trial_id]
        stored = next(t for t in self._ot_study.get_trials(deepcopy=False)
                      if t.number == ot_trial.number)
        if int(step) not in stored.intermediate_values:
            ot_trial.report(float(result[self.metric]), int(step))


class LiveTrialsLimiter(ConcurrencyLimiter):
    """Ray's ``ConcurrencyLimiter``, but a trial that reports is live even when the limiter's
    restored state missed it (see ``PruningOptunaSearch._adopt``): Ray's would not pass such
    a trial's completion on, and Optuna would keep it RUNNING."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._limit_concurrency:
            self.live_trials.add(trial_id)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if self._limit_concurrency:
            self.live_trials.add(trial_id)  # (the searcher ignores a second completion)
        super().on_trial_complete(trial_id, result=result, error=error)


def result_config(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The trial config in a result: ``config``, or Ray's flattened ``config/...`` keys."""
    if not result:
        return None
    if isinstance(result.get("config"), dict):
        return result["config"]
    flat = {k[len("config/"):]: v for k, v in result.items() if k.startswith("config/")}
    return flat or None


def experiment_trials(experiment_dir: str) -> dict[str, dict[str, Any]]:
    """Trial id -> config of every trial in Ray's newest experiment snapshot in the folder
    (empty when there is none or it cannot be read)."""
    from kdtune.tune.storage import experiment_snapshot

    try:
        trials = {}
        for trial_json, _ in experiment_snapshot(experiment_dir):
            trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            trials[str(trial["trial_id"])] = dict(trial.get("config") or {})
        return trials
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("could not read Ray's experiment snapshot in %s: %s", experiment_dir, e)
        return {}


def config_key(config: dict[str, Any] | None) -> str:
    """One string per configuration (parameter values are plain JSON values)."""
    return json.dumps(config, sort_keys=True)


def neighbour(params: dict[str, Any], distributions: dict[str, BaseDistribution],
              rng: random.Random, moved: int = 1) -> dict[str, Any]:
    """``params`` with ``moved`` parameters set to another value of their distribution.

    Parameters that the new values make active (a conditional branch) are left out, so the
    sampler chooses them; those made inactive are ignored by the define-by-run space.
    """
    movable = [n for n, d in distributions.items() if not d.single()]
    out = dict(params)
    for name in rng.sample(movable, min(moved, len(movable))):
        out[name] = _other_value(distributions[name], params[name], rng)
    return out


def _other_value(dist: BaseDistribution, current: Any, rng: random.Random) -> Any:
    """A value of ``dist`` other than ``current`` (which must not be its only value)."""
    if isinstance(dist, CategoricalDistribution):
        return rng.choice([c for c in dist.choices if c != current])
    assert isinstance(dist, IntDistribution | FloatDistribution)
    while True:
        if isinstance(dist, IntDistribution):
            value: float = rng.randrange(dist.low, dist.high + 1, dist.step)
        elif dist.step is not None:
            value = dist.low + dist.step * rng.randint(0, round((dist.high - dist.low)
                                                                / dist.step))
        elif dist.log:
            value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        else:
            value = rng.uniform(dist.low, dist.high)
        if not math.isclose(value, current):
            return value
