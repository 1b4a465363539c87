"""Reading kdtune's MLflow runs: params as strings (:func:`encode_param`,
:func:`decode_param`, a run's config), runs as a DataFrame, a sweep's objective and its best
trials (one metric ranked, several: the Pareto front).

Functions of runs and frames only: the store is read by :class:`kdtune.tracking.Tracker`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError, choose_one, did_you_mean
from kdtune.pareto import pareto_front
from kdtune.vocabulary import (
    DIRECTIONS,
    MODES,
    PARAM_OBJECTIVE_METRICS,
    PARAM_OBJECTIVE_MODES,
    STAGE_FINAL,
    TAG_STAGE,
    TAG_TRIAL_ID,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

#: The statuses a trial's run ends with.
TRIAL_STATUSES = ("FINISHED", "KILLED", "FAILED")


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot log {type(value).__name__} value {value!r} as an MLflow param")


def encode_param(value: Any) -> str:
    """Encode a config value as an MLflow param string that :func:`decode_param` inverts.

    Plain strings are kept as they are unless they would read back as JSON (``"3"``,
    ``"null"``), in which case they are JSON-quoted; everything else is JSON.
    """
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, default=_json_default)


def decode_param(text: str) -> Any:
    """Inverse of :func:`encode_param`."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def config_from_run(row_or_params: Mapping[str, Any] | pd.Series,
                    fields: Iterable[str] | None = None) -> dict[str, Any]:
    """Rebuild the config dict logged as a run's params.

    Accepts ``run.data.params`` (``"x"`` keys) or a row of :meth:`Tracker.trial_runs`
    (``"params.x"`` keys; other columns are ignored, params a run did not log — NaN in a
    frame — are skipped). With ``fields``, keys that are not among them are dropped.
    """
    items = list(row_or_params.items())
    if any(str(k).startswith("params.") for k, _ in items):
        items = [(k[len("params."):], v) for k, v in items if str(k).startswith("params.")]
    keep = None if fields is None else set(fields)
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, str) or (keep is not None and key not in keep):
            continue
        out[key] = decode_param(value)
    return out


def run_config(row_or_params: Mapping[str, Any] | pd.Series, where: str = "config"
               ) -> TrainConfig:
    """The training config a run logged as its params (see :func:`config_from_run`),
    validated; logged keys that are not config fields (``seeds``) are left out. The method
    registry it validates against is imported here, on the first call: ``kdtune best``
    imports it only to write ``--config-out``."""
    from kdtune.resolve import config_from_dict, config_keys

    return config_from_dict(config_from_run(row_or_params, fields=config_keys()), where=where)


def rank_trials(frame: pd.DataFrame, sweep: str, *, metrics: Sequence[str],
                modes: Sequence[str], top: int | None = None,
                status: Sequence[str] = ("FINISHED",)) -> pd.DataFrame:
    """The best of a sweep's trials (``frame``, as :meth:`Tracker.trial_runs` returns them).

    One metric: rows sorted best-first. Several: the Pareto front (rows no other row
    beats or equals on every metric while beating on one), sorted by the first metric.
    ``top`` cuts the result afterwards. Rows lacking an objective metric are left out.
    """
    metrics, modes = list(metrics), list(modes)
    if not metrics or len(metrics) != len(modes):
        raise KdtuneError(f"give one mode per metric: metrics {metrics}, modes {modes}")
    for mode in modes:
        if mode not in DIRECTIONS:
            raise choose_one("mode", mode, DIRECTIONS)
    if frame.empty:
        return frame
    check_logged(frame, metrics, sweep)
    cols = [f"metrics.{m}" for m in metrics]
    frame = frame[frame["status"].isin(list(status))].dropna(subset=cols)
    if len(metrics) > 1 and len(frame):
        # to minimise: the maximised metrics negated
        points = [[-v if m == "max" else v for v, m in zip(row, modes, strict=True)]
                  for row in frame[cols].to_numpy(dtype=float).tolist()]
        frame = frame.iloc[pareto_front(points)]
    frame = frame.sort_values(cols, ascending=[m == "min" for m in modes], kind="stable")
    front = ["run_id", "trial_id", "status", *cols]
    frame = frame[front + [c for c in frame.columns if c not in front]]
    if top is not None:
        frame = frame.head(top)
    return frame.reset_index(drop=True)


def objective_of(parent: Run, name: str) -> tuple[list[str], list[str]]:
    """The objective (metrics, modes) recorded on sweep ``name``'s parent run."""
    params = parent.data.params
    metrics = as_list(params.get(PARAM_OBJECTIVE_METRICS))
    modes = as_list(params.get(PARAM_OBJECTIVE_MODES))
    if not metrics:
        raise KdtuneError(f"sweep {name!r} records no objective; pass --metric and --mode")
    if len(modes) != len(metrics):
        modes = [MODES.get(m, "max") for m in metrics]
    return metrics, modes


def is_final(run: Run) -> bool:
    """Whether a child run is a finalist run (``kdtune finalize``), not a search trial."""
    return run.data.tags.get(TAG_STAGE) == STAGE_FINAL


def driver_run_seconds(run: Mapping[str, Any]) -> float | None:
    """How long a recorded driver run lasted (None while it runs, or if its driver was killed
    before it recorded its end)."""
    if "seconds" in run:
        return float(run["seconds"])
    if run.get("end") is None:
        return None
    return (int(run["end"]) - int(run["start"])) / 1000


def check_logged(frame: pd.DataFrame, metrics: Sequence[str], sweep: str, *,
                  typos_only: bool = False) -> None:
    """A one-line error naming the closest logged metric if one of ``metrics`` never was
    (with ``typos_only``, only when there is a close one)."""
    if frame.empty:
        return
    logged = sorted(c[len("metrics."):] for c in frame.columns if c.startswith("metrics."))
    for metric in metrics:
        if metric not in logged:
            hint = did_you_mean(metric, logged)
            if typos_only and not hint:
                continue
            raise KdtuneError(f"metric {metric!r} was not logged by any trial of sweep "
                              f"{sweep!r}{hint}; logged metrics: "
                              f"{', '.join(logged) or '(none)'}")


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """``None`` -> [], ``"a,b"`` or ``'["a", "b"]'`` -> ["a", "b"], a list stays a list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        decoded = decode_param(value)
        if isinstance(decoded, list):
            return [str(v) for v in decoded]
        return [p.strip() for p in value.split(",") if p.strip()]
    return [str(v) for v in value]


def runs_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Runs as a DataFrame: run_id, run_name, trial_id, status, start/end time, params.*,
    metrics.*, tags.* (sorted within each group)."""
    import pandas as pd

    head = ["run_id", "run_name", "trial_id", "status", "start_time", "end_time"]
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name,
             "trial_id": r.data.tags.get(TAG_TRIAL_ID), "status": r.info.status,
             "start_time": r.info.start_time, "end_time": r.info.end_time,
             **{f"params.{k}": v for k, v in r.data.params.items()},
             **{f"metrics.{k}": float(v) for k, v in r.data.metrics.items()},
             **{f"tags.{k}": v for k, v in r.data.tags.items()}} for r in runs]
    group = {"params": 0, "metrics": 1, "tags": 2}
    rest = sorted(set().union(*rows) - set(head), key=lambda c: (group[c.split(".")[0]], c))
    frame = pd.DataFrame(rows, columns=head + rest)
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    return frame.astype({c: float for c in rest if c.startswith("metrics.")})
