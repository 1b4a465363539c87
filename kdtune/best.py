"""``kdtune best``: the best configs of a sweep, answered from MLflow alone; the sweeps in a
store (``--list``); the parameter importances of a sweep's study (``--importance``)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from kdtune.errors import KdtuneError
from kdtune.vocabulary import (
    PARAM_OBJECTIVE_METRICS,
    PARAM_OBJECTIVE_MODES,
    PARAM_SEARCHED,
    TAG_KIND,
    TAG_NUM_SAMPLES,
    TAG_PARENT,
    TAG_READABLE_ID,
    TAG_SWEEP,
    TAG_UNUSED,
)

#: Result columns shown beside the objective (when the runs have them).
SHOWN_METRICS = ("val_accuracy", "params", "latency_ms_b1", "speedup")
#: The identifiers of a trial in csv and json: its readable id (``NAME#12``), its Ray trial id
#: and its MLflow run id; the table shows the readable one.
IDS = ("id", "trial_id", "run_id")


def show_best(name: str, *, tracking_uri: str, top: int | None = 10, metric: str | None = None,
              mode: str | None = None, fmt: str = "table", config_out: str | None = None) -> None:
    """Print the best trials (Pareto front for several metrics) and optionally write the
    winner's config as YAML that ``kdtune train --config`` accepts. One search of the store
    answers it (:func:`~kdtune.tracking.sweep_best`)."""
    from kdtune.mlflow_store import require_store
    from kdtune.runs import objective_of
    from kdtune.tracking import Tracker, sweep_best

    if top is not None and top < 1:
        raise KdtuneError(f"--top {top} must be >= 1")
    if metric is not None and "test_accuracy" in metric.split(","):
        raise KdtuneError("--metric test_accuracy: the test set is never used to choose; rank "
                          f"by val_accuracy, and read test accuracy with `kdtune finalize {name}`")
    require_store(tracking_uri)
    parent, frame = sweep_best(Tracker(tracking_uri), name, metric=metric, mode=mode, top=top)
    if frame.empty:
        raise KdtuneError(f"sweep {name!r} has no finished trial yet")
    searched = parent.data.params.get(PARAM_SEARCHED, "")
    objective = metric.split(",") if metric else objective_of(parent, name)[0]
    metric_cols = [c for c in (*objective, *SHOWN_METRICS) if f"metrics.{c}" in frame.columns]
    param_cols = [p for p in searched.split(",") if p and f"params.{p}" in frame.columns]
    rows = [_row(r, metric_cols, param_cols) for _, r in frame.iterrows()]
    shown = [*dict.fromkeys(metric_cols), *param_cols]
    if fmt == "table":
        _print(rows, ["id", *shown], fmt, title=f"best of sweep {name!r}")
    else:
        _print(rows, [*IDS, *shown], fmt, title="")
    if config_out:
        path = write_config(frame.iloc[0], config_out)
        print(f"config of {rows[0]['id']} written to {path}; retrain with "
              f"`kdtune train --config {path}`")


def show_sweeps(*, tracking_uri: str, fmt: str = "table") -> None:
    """One row per sweep, newest first: name, state, trials ended / planned, the best value of
    its first objective, when it started. One search of the store answers it."""
    from datetime import UTC, datetime

    from kdtune.mlflow_store import require_store
    from kdtune.runs import TRIAL_STATUSES, decode_param, is_final
    from kdtune.tracking import Tracker

    require_store(tracking_uri)
    runs = Tracker(tracking_uri).all_runs()
    sweeps = sorted((r for r in runs if r.data.tags.get(TAG_KIND) == "sweep"),
                    key=lambda r: r.info.start_time or 0, reverse=True)
    if not sweeps:
        raise KdtuneError(f"no sweep in {tracking_uri} yet; run `kdtune search` first")
    trials: dict[str, list[Any]] = {}
    for run in runs:
        if run.data.tags.get(TAG_KIND) == "trial" and not is_final(run):
            trials.setdefault(run.data.tags.get(TAG_PARENT, ""), []).append(run)
    rows = []
    for sweep in sweeps:
        mine = trials.get(sweep.info.run_id, [])
        params = sweep.data.params
        metric = _first(params.get(PARAM_OBJECTIVE_METRICS), decode_param)
        mode = _first(params.get(PARAM_OBJECTIVE_MODES), decode_param) or "max"
        values = [r.data.metrics[metric] for r in mine
                  if r.info.status == "FINISHED" and metric in r.data.metrics
                  and not math.isnan(r.data.metrics[metric])]
        best = (max(values) if mode == "max" else min(values)) if values else None
        total = sweep.data.tags.get(TAG_NUM_SAMPLES)
        started = datetime.fromtimestamp((sweep.info.start_time or 0) / 1000, tz=UTC)
        rows.append({
            "name": sweep.data.tags.get(TAG_SWEEP, sweep.info.run_name),
            "state": sweep.info.status,
            "trials": f"{sum(r.info.status in TRIAL_STATUSES for r in mine)}/"
                      f"{total if total is not None else '?'}",
            "objective": metric, "best": best, "started": started.strftime("%Y-%m-%d %H:%M")})
    _print(rows, ["name", "state", "trials", "objective", "best", "started"], fmt,
           title=f"sweeps in {tracking_uri}")


def _first(value: str | None, decode: Any) -> str:
    """The first entry of a comma-joined (or JSON list) param, or ``""``."""
    if not value:
        return ""
    decoded = decode(value)
    items = decoded if isinstance(decoded, list) else str(value).split(",")
    return str(items[0]).strip() if items else ""


def sweep_study(name: str, *, tracking_uri: str, study_storage: str | None = None) -> Any:
    """The :class:`~kdtune.tune.study.SweepStudy` of sweep ``name``: at ``study_storage``, else
    where its parent run says it is."""
    from kdtune.mlflow_store import require_store
    from kdtune.tracking import Tracker
    from kdtune.tune.study import study_of_sweep

    require_store(tracking_uri)
    return study_of_sweep(name, Tracker(tracking_uri).sweep_run(name).data.tags, study_storage)


def show_importance(name: str, *, tracking_uri: str, study_storage: str | None = None,
                    fmt: str = "table") -> None:
    """Optuna's parameter importances (its default evaluator, fANOVA) for each objective of
    the sweep, over its completed trials. Parameters set in only some trials (conditional
    ones) are left out: the evaluator needs a parameter in every trial it compares."""
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    from kdtune.tracking import Tracker

    study = sweep_study(name, tracking_uri=tracking_uri, study_storage=study_storage)
    metrics, _ = Tracker(tracking_uri).objective(name)
    completed = study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        raise KdtuneError(f"sweep {name!r} has {len(completed)} completed trial(s); "
                          "importances need at least 2")
    per_metric = {}
    with warnings.catch_warnings():  # few trials per value: the table is only as good
        warnings.simplefilter("ignore", UserWarning)
        for i, metric in enumerate(metrics):
            target = (lambda t, i=i: t.values[i]) if len(metrics) > 1 else None
            per_metric[metric] = get_param_importances(study.study, target=target)
    params = list(dict.fromkeys(p for imp in per_metric.values() for p in imp))
    if not params:
        raise KdtuneError(f"sweep {name!r}: no parameter is set in every completed trial, so "
                          "there is nothing to compare")
    rows = [{"parameter": p, **{m: per_metric[m].get(p) for m in metrics}} for p in params]
    _print(rows, ["parameter", *metrics], fmt, title=f"parameter importances of sweep {name!r}")


def _print(rows: list[dict[str, Any]], columns: list[str], fmt: str, *, title: str) -> None:
    if fmt == "json":
        print(json.dumps([{c: row.get(c) for c in columns} for row in rows]))
    elif fmt == "csv":
        import csv
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: "" if row.get(c) is None else row[c] for c in columns}
                         for row in rows)
        print(text.getvalue(), end="")
    else:
        from kdtune.report import print_table, table_from_rows

        print_table(table_from_rows(rows, columns, title=title))


def _row(r: Any, metric_cols: list[str], param_cols: list[str]) -> dict[str, Any]:
    from kdtune.runs import decode_param

    readable = r.get(f"tags.{TAG_READABLE_ID}")
    row: dict[str, Any] = {"id": readable if isinstance(readable, str) else r["trial_id"],
                           "trial_id": r["trial_id"], "run_id": r["run_id"]}
    for c in metric_cols:
        value = r[f"metrics.{c}"]
        row[c] = None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else float(value)
    for p in param_cols:
        value = r[f"params.{p}"]
        row[p] = decode_param(value) if isinstance(value, str) else None
    unused = r.get(f"tags.{TAG_UNUSED}")
    for p in unused.split(",") if isinstance(unused, str) else ():
        if p in row:  # resolved defaults the run's methods ignore
            row[p] = None
    return row


def write_config(row: Any, path: str | Path) -> Path:
    """The trial's full training config, validated, as YAML."""
    import yaml

    from kdtune.runs import run_config

    config = run_config(row, where="best config")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config.to_saved_dict(), sort_keys=False))
    return out
