"""Ray's ``OptunaSearch``, but trials stopped early by the scheduler reach Optuna as PRUNED.

Ray tells Optuna that an ASHA-stopped trial COMPLETED with its last, partial value, so TPE
would learn from a 3-epoch score as if it were final. Here such a trial is told as
``TrialState.PRUNED``; its per-epoch values were already reported as intermediate values.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)

#: Result keys the trainable reports: the epoch reached and the epochs it was going to train.
EPOCH_KEY = "epoch"
PLANNED_KEY = "epochs_planned"


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
    it COMPLETE with its last value).
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate values are indexed by epoch, not by Ray's ``training_iteration`` (the
        two part after a trial resumed from a later checkpoint than Ray's snapshot named)."""
        if EPOCH_KEY in result:
            result = {**result, TRAINING_ITERATION: int(result[EPOCH_KEY])}
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
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
