"""Parameter importances for a report: Optuna's importance evaluator over the sweep's study.

:func:`parameter_importances` is what ``kdtune report`` calls for each sweep; the report draws
the importance section for every sweep it returns a mapping for (None: no study, or fewer than
two completed trials). ``write_report(importances=...)`` passes them in directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from kdtune.errors import KdtuneError
from kdtune.tracking import Tracker


def parameter_importances(tracker: Tracker, name: str) -> Mapping[str, float] | None:
    """``{parameter: importance}`` for the first objective of sweep ``name`` (larger: explains
    more of its variation), or None when not available."""
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    from kdtune.best import sweep_study

    try:
        study = sweep_study(name, tracking_uri=tracker.tracking_uri)
    except KdtuneError:
        return None
    completed = study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        return None
    multi = len(study.study.directions) > 1
    with warnings.catch_warnings():  # few trials per value: Optuna warns; the figure shows it
        warnings.simplefilter("ignore", UserWarning)
        return dict(get_param_importances(study.study,
                                          target=(lambda t: t.values[0]) if multi else None))
