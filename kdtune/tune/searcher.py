"""Ray's ``OptunaSearch``, but trials stopped early by the scheduler reach Optuna as PRUNED.

Ray tells Optuna that an ASHA-stopped trial COMPLETED with its last, partial value, so TPE
would learn from a 3-epoch score as if it were final. Here such a trial is told as
``TrialState.PRUNED``; its per-epoch values were already reported as intermediate values.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import TrialState
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
    """``OptunaSearch`` that reports scheduler-stopped trials as pruned."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if error or not stopped_early(result) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
