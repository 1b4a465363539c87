"""``kdtune best``: the best configs of a sweep, answered from MLflow alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kdtune.errors import KdtuneError
from kdtune.report import print_table, table_from_rows

#: Result columns shown beside the objective (when the runs have them).
SHOWN_METRICS = ("val_accuracy", "test_accuracy", "params", "latency_ms_b1", "speedup")


def show_best(name: str, *, tracking_uri: str, top: int | None = 10, metric: str | None = None,
              mode: str | None = None, fmt: str = "table", config_out: str | None = None) -> None:
    """Print the best trials (Pareto front for several metrics) and optionally write the
    winner's config as YAML that ``kdtune train --config`` accepts."""
    from kdtune.tracking import Tracker, best_configs

    if top is not None and top < 1:
        raise KdtuneError(f"--top {top} must be >= 1")
    frame = best_configs(name, metric=metric, mode=mode, top=top, tracking_uri=tracking_uri)
    if frame.empty:
        raise KdtuneError(f"sweep {name!r} has no finished trial yet")
    tracker = Tracker(tracking_uri)
    searched = tracker.sweep_run(name).data.params.get("searched", "")
    objective = metric.split(",") if metric else tracker.objective(name)[0]
    metric_cols = [c for c in (*objective, *SHOWN_METRICS) if f"metrics.{c}" in frame.columns]
    param_cols = [p for p in searched.split(",") if p and f"params.{p}" in frame.columns]
    rows = [_row(r, metric_cols, param_cols) for _, r in frame.iterrows()]
    columns = ["trial_id", *dict.fromkeys(metric_cols), *param_cols]
    if fmt == "json":
        print(json.dumps(rows))
    elif fmt == "csv":
        import pandas as pd

        print(pd.DataFrame(rows, columns=columns).to_csv(index=False), end="")
    else:
        print_table(table_from_rows(rows, columns, title=f"best of sweep {name!r}"))
    if config_out:
        path = write_config(frame.iloc[0], config_out)
        print(f"config of trial {frame.iloc[0]['trial_id']} written to {path}; retrain with "
              f"`kdtune train --config {path}`")


def _row(r: Any, metric_cols: list[str], param_cols: list[str]) -> dict[str, Any]:
    from kdtune.tracking import decode_param

    row: dict[str, Any] = {"trial_id": r["trial_id"], "run_id": r["run_id"]}
    for c in metric_cols:
        value = r[f"metrics.{c}"]
        row[c] = None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else float(value)
    for p in param_cols:
        value = r[f"params.{p}"]
        row[p] = decode_param(value) if isinstance(value, str) else None
    for p in _unused_by_method(row.get("method")):  # resolved defaults the method ignores
        if p in row:
            row[p] = None
    return row


def _unused_by_method(method: Any) -> tuple[str, ...]:
    """The method-dependent keys (alpha, temperature, kd_warmup, every method parameter) that
    ``method`` does not read, per the method registry."""
    from kdtune.methods import all_params, get_method, list_methods
    from kdtune.methods.registry import KD_FIELDS

    if method not in list_methods():
        return ()
    spec = get_method(method)
    return tuple(k for k in (*KD_FIELDS, *all_params()) if not spec.reads(k))


def write_config(row: Any, path: str | Path) -> Path:
    """The trial's full training config, validated, as YAML."""
    import yaml

    from kdtune.config import TrainConfig
    from kdtune.tracking import config_from_run

    config = TrainConfig.from_dict(config_from_run(row, fields=TrainConfig.field_names()),
                                   where="best config")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config.replace(out=None).to_dict(), sort_keys=False))
    return out
