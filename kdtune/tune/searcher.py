"""Optuna's ask/tell against the sweep's stored study, on Ray Tune's public ``Searcher`` API.

Every proposal is an Optuna trial asked from the study (define-by-run over kdtune's conditional
space) and tagged with its Ray trial id; every epoch's objective is an intermediate value; a
trial ends as COMPLETE, PRUNED (stopped early by the scheduler) or FAIL (an error). Nothing
else is kept: Ray pickles this searcher as the study's URL and name, and a restored one reads
its settings (space file, samples, sampler, concurrency) and its trials back from the study.

No configuration is trained twice: on small categorical spaces TPE proposes the same one again
and again (optuna issue 2021), and the same config and seed give the same numbers. A repeated
proposal is told FAIL (Optuna's samplers ignore failed trials) and replaced by a neighbour:
the proposal with one parameter moved to another value (more when those are used up, then a
random draw). A grid (``sampler: grid``) is proposed one configuration at a time: the next one
not proposed yet is enqueued and asked, so grid trials are ordinary Optuna trials.
"""

from __future__ import annotations

import json
import logging
import math
import random
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from kdtune.tune.study import (
    ATTR_MAX_CONCURRENT,
    ATTR_NUM_SAMPLES,
    ATTR_RAY_ID,
    ATTR_REPEAT_OF,
    ATTR_SAMPLER,
    ATTR_SEED,
    ATTR_SPACE,
    ATTR_SPACE_SHA,
    SweepStudy,
    load_unchanged_space,
)
from kdtune.tune.trainable import EPOCH_KEY, FAILURE_KEY, PLANNED_KEY
from kdtune.urls import redact

if TYPE_CHECKING:
    from kdtune.tune.space import SearchSpace

logger = logging.getLogger(__name__)

#: Neighbours, then random draws, tried before a repeated configuration is trained again
#: (a space with fewer configurations than trials).
MAX_NEIGHBOURS, MAX_RANDOM = 64, 256


def search_attrs(space: SearchSpace, num_samples: int) -> dict[str, Any]:
    """The study attributes a :class:`StudySearcher` runs by."""
    return {ATTR_SPACE: space.source, ATTR_SPACE_SHA: space.sha256,
            ATTR_NUM_SAMPLES: num_samples, ATTR_MAX_CONCURRENT: space.search.max_concurrent,
            ATTR_SAMPLER: space.search.sampler, ATTR_SEED: space.search.seed}


def stopped_early(result: dict[str, Any] | None) -> bool:
    """A trial whose last result is before its planned last epoch was stopped early."""
    if not result or EPOCH_KEY not in result or PLANNED_KEY not in result:
        return False
    return result[EPOCH_KEY] < result[PLANNED_KEY]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.RandomSampler(seed=seed),  # every value enqueued
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed)}[name]()


class StudySearcher(Searcher):
    """Ray Tune searcher asking and telling the sweep's Optuna study (module docstring)."""

    def __init__(self, study: SweepStudy, metrics: list[str], modes: list[str]) -> None:
        super().__init__(metric=metrics[0], mode=modes[0])
        self.sweep_study = study
        self.metrics, self.modes = list(metrics), list(modes)
        self._session: _Session | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep_study": self.sweep_study, "metrics": self.metrics, "modes": self.modes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["sweep_study"], state["metrics"], state["modes"])

    @property
    def session(self) -> _Session:
        """What this process knows, read from the study at first use."""
        if self._session is None:
            self._session = _Session.load(self.sweep_study)
        return self._session

    # -- Ray's Searcher API ----------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the objective comes from the space file, not from Ray

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        s = self.session
        if len(s.numbers) >= s.num_samples:
            return Searcher.FINISHED
        if len(s.running) >= s.max_concurrent:
            return None
        if s.points is not None and not s.study.get_trials(deepcopy=False,
                                                           states=(TrialState.WAITING,)):
            point = next((p for p in s.points if config_key(p) not in s.proposed), None)
            if point is None:
                return Searcher.FINISHED
            s.study.enqueue_trial(s.encode(point))
        trial, config = s.ask()
        attempt = 0
        while config_key(config) in s.proposed and attempt < MAX_NEIGHBOURS + MAX_RANDOM:
            trial.set_user_attr(ATTR_REPEAT_OF, s.proposed[config_key(config)])
            s.study.tell(trial, state=TrialState.FAIL)
            if attempt < MAX_NEIGHBOURS:
                moved = 1 + attempt * 3 // MAX_NEIGHBOURS  # widen the step when stuck
                s.study.enqueue_trial(neighbour(trial.params, trial.distributions, s.rng, moved))
                trial, config = s.ask()
            else:  # the neighbourhood is used up: anywhere in the space
                trial, config = s.ask(randomly=True)
            attempt += 1
        if config_key(config) in s.proposed:  # every try was a repeat: train this one again
            trial.set_user_attr(ATTR_REPEAT_OF, s.proposed[config_key(config)])
            logger.warning("every configuration tried was trained already (last: %s): trial %s "
                           "trains it again", config, trial_id)
        trial.set_user_attr(ATTR_RAY_ID, trial_id)
        s.add(trial_id, trial.number, config)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """A single objective's value each epoch becomes an intermediate value."""
        s = self.session
        if trial_id in s.running and len(self.metrics) == 1 and EPOCH_KEY in result:
            value = result.get(self.metrics[0])
            if value is not None and math.isfinite(value):
                self.sweep_study.report(s.numbers[trial_id], int(result[EPOCH_KEY]),
                                        float(value))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        s = self.session
        if trial_id not in s.running:  # told already (a trial replayed after a resume)
            return
        number = s.numbers[trial_id]
        if not error and result:
            self.on_trial_result(trial_id, result)  # Ray passes the last result only here
        s.running.discard(trial_id)
        if error or not result or FAILURE_KEY in result:  # a failure of any kind: FAIL
            s.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            return
        if stopped_early(result):
            s.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            return
        values = [float(result.get(m, math.nan)) for m in self.metrics]
        if not all(math.isfinite(v) for v in values):
            s.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            return
        s.study.tell(number, values, skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        """Ray's snapshot of the searcher: where the study is (the state is in the study)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"url": redact(self.sweep_study.url), "name": self.sweep_study.name}, f)

    def restore(self, checkpoint_path: str) -> None:
        self._session = None  # read the study again


class _Session:
    """What a searcher process knows of the study, loaded once and kept up to date."""

    def __init__(self, sweep_study: SweepStudy, space: SearchSpace, attrs: dict[str, Any]
                 ) -> None:
        from kdtune.tune.space import grid_points

        self.study = sweep_study.study
        self.space = space
        self.num_samples = int(attrs[ATTR_NUM_SAMPLES])
        self.max_concurrent = int(attrs[ATTR_MAX_CONCURRENT])
        # seeded by the sweep's seed and how far it got: a resumed sweep draws anew
        seed = int(attrs[ATTR_SEED]) + len(self.study.get_trials(deepcopy=False))
        self.rng = random.Random(seed)
        self.study.sampler = make_sampler(attrs[ATTR_SAMPLER], seed)
        self.points = (grid_points(space, self.num_samples)
                       if attrs[ATTR_SAMPLER] == "grid" else None)
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.running: set[str] = set()  # Ray trials not told yet
        self.proposed: dict[str, str] = {}  # configuration key -> the Ray trial that has it

    @classmethod
    def load(cls, sweep_study: SweepStudy) -> _Session:
        attrs = sweep_study.attrs
        space = load_unchanged_space(attrs[ATTR_SPACE], attrs[ATTR_SPACE_SHA], sweep_study.name)
        session = cls(sweep_study, space, attrs)
        for trial_id, t in sweep_study.sweep_trials().items():
            session.add(trial_id, t.number, session.config_of(t),
                        running=not t.state.is_finished())
        return session

    def add(self, trial_id: str, number: int, config: dict[str, Any], *,
            running: bool = True) -> None:
        self.numbers[trial_id] = number
        self.proposed.setdefault(config_key(config), trial_id)
        if running:
            self.running.add(trial_id)

    def config_of(self, trial: Any) -> dict[str, Any]:
        """The configuration an Optuna trial stands for (list values decoded)."""
        from kdtune.tune.space import suggest

        return suggest(optuna.trial.FixedTrial(trial.params), self.space)

    def encode(self, config: dict[str, Any]) -> dict[str, Any]:
        from kdtune.tune.space import optuna_params

        return optuna_params(config)

    def ask(self, *, randomly: bool = False) -> tuple[optuna.Trial, dict[str, Any]]:
        """Ask the study (or a random sampler over it) for a trial and its configuration."""
        from kdtune.tune.space import suggest

        sampler = self.study.sampler
        if randomly:
            self.study.sampler = optuna.samplers.RandomSampler(seed=self.rng.randrange(2**32))
        try:
            trial = self.study.ask()
            return trial, suggest(trial, self.space)
        finally:
            self.study.sampler = sampler


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
