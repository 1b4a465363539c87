"""The hook through which a report gets parameter importances.

The importances come from the sweep's Optuna study (Optuna's importance evaluator), which the
search layer owns. :func:`parameter_importances` is what ``kdtune report`` calls for each
sweep; it returns None until the search layer supplies them, and the report's importance
section is drawn for every sweep it returns a mapping for. ``write_report(importances=...)``
passes them in directly.
"""

from __future__ import annotations

from collections.abc import Mapping

from kdtune.tracking import Tracker


def parameter_importances(tracker: Tracker, name: str) -> Mapping[str, float] | None:
    """``{parameter: importance}`` for sweep ``name`` (larger: explains more of the
    objective's variation), or None when not available."""
    return None
