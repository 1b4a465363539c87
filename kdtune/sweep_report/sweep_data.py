"""One sweep as the report needs it, read from MLflow alone: its parent run, trials and
finalists, learning curves, teacher, and the aggregates the figures and tables show."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdtune.sweep_results import (
    NOT_A_SETTING,
    TeacherFacts,
    final_mask,
    finalist_mask,
    objective,
    teacher_facts,
)
from kdtune.tracking import Tracker, decode_param
from kdtune.vocabulary import TAG_FINALIST, TAG_RUNG

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

#: The per-epoch metric the learning curves show.
CURVE_METRIC = "val_accuracy"
#: Rows of the leaderboard when it shows the sweep's best trials (not finalists).
LEADERBOARD_TOP = 10


@dataclass(frozen=True)
class Value:
    """A metric over seeds: mean, sample sd (None: one seed or not recorded) and seeds."""

    mean: float
    sd: float | None = None
    n: int = 1


@dataclass
class SweepData:
    name: str
    parent: Run
    trials: pd.DataFrame  # child runs that are not finalists, oldest first
    finalists: pd.DataFrame  # child runs tagged kdtune.stage=final
    metrics: list[str]  # the objective
    modes: list[str]
    searched: list[str]
    teacher: TeacherFacts
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run id -> curve

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "FINISHED"]


def load_sweep(tracker: Tracker, name: str) -> SweepData:
    """Everything about sweep ``name`` (an unknown name is a one-line error)."""
    parent = tracker.sweep_run(name)
    runs = tracker.child_runs(name)
    final = finalist_mask(runs) if len(runs) else runs.index == runs.index
    trials = runs[~final_mask(runs)] if len(runs) else runs
    metrics, modes = objective(tracker, name)
    searched = [p for p in parent.data.params.get("searched", "").split(",") if p]
    data = SweepData(name=name, parent=parent, trials=trials, finalists=runs[final],
                     metrics=metrics, modes=modes, searched=searched,
                     teacher=teacher_facts(parent, runs))
    for run_id in data.trials["run_id"]:
        history = tracker.client.get_metric_history(str(run_id), CURVE_METRIC)
        by_step: dict[int, tuple[int, float]] = {}
        for m in history:  # one value per epoch: the latest logged
            if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                by_step[m.step] = (m.timestamp, m.value)
        data.curves[str(run_id)] = [(step, v) for step, (_, v) in sorted(by_step.items())]
    return data


# -- settings of a run ---------------------------------------------------------------------
def setting(row: pd.Series, key: str) -> Any:
    """A run's value of config key ``key`` (decoded), or None when not logged."""
    value = row.get(f"params.{key}")
    return decode_param(value) if isinstance(value, str) else None


def method_reads(method: Any, key: str) -> bool:
    """Whether KD method ``method`` reads config key ``key`` (``alpha``, ``temperature``):
    the sweep logs every key of the resolved config, also those a method ignores."""
    from kdtune.errors import KdtuneError
    from kdtune.methods import get_method

    try:
        return get_method(str(method)).reads(key)
    except KdtuneError:  # a method not registered here (a plugin's): assume it does
        return True


def settings_label(row: pd.Series, keys: Iterable[str]) -> str:
    """``method=vanilla alpha=0.3 hidden=16``: the searched settings a run's method reads."""
    method = setting(row, "method")
    parts = []
    for key in keys:
        if key != "method" and key in ("alpha", "temperature", "t_right", "t_wrong") \
                and not method_reads(method, key):
            continue
        parts.append(f"{key}={_short(setting(row, key))}")
    return " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    return str(value)


def _setting_key(row: pd.Series, ignore: Iterable[str] = ()) -> str:
    """What a run trained, without how it was run (seed, device, paths) and without
    ``ignore``: runs with the same key are seeds of one configuration."""
    skip = {*NOT_A_SETTING, *ignore}
    params = {c[len("params."):]: row[c] for c in row.index
              if c.startswith("params.") and isinstance(row[c], str)}
    return json.dumps({k: v for k, v in sorted(params.items()) if k not in skip})


# -- aggregates ------------------------------------------------------------------------------
def metric_value(rows: pd.DataFrame, metric: str) -> Value | None:
    """``metric`` over ``rows`` (runs of one configuration): the mean and sd across runs when
    there are several, else the run's own value with its logged spread over seeds
    (``<metric>_sd``) and seed count."""
    column = f"metrics.{metric}"
    if column not in rows.columns:
        return None
    values = [float(v) for v in rows[column] if _finite(v)]
    if not values:
        return None
    if len(values) > 1:
        return Value(statistics.fmean(values), statistics.stdev(values), len(values))
    row = rows[rows[column].map(_finite)].iloc[0]
    sd = row.get(f"metrics.{metric}_sd")
    seeds = setting(row, "seeds")
    n = len(seeds) if isinstance(seeds, list) else 1
    return Value(values[0], float(sd) if _finite(sd) else None, n)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class BoardRow:
    label: str
    settings: str
    values: Mapping[str, Value | None]


def leaderboard(data: SweepData, columns: Iterable[str]) -> tuple[str, list[BoardRow]]:
    """(what it shows, rows best first by the objective's first metric — validation).

    The finalists when there are (runs of one configuration grouped: mean ± sd over them),
    else the sweep's best finished trials (± sd over the trial's seeds when it had several).
    """
    metric, mode = data.metrics[0], data.modes[0]
    columns = list(dict.fromkeys([*columns, metric]))
    if len(data.finalists):
        groups = [g for _, g in data.finalists.groupby(
            data.finalists.apply(_setting_key, axis=1), sort=False)]
        what = "finalists (the chosen configurations retrained on fresh seeds)"
    else:
        groups = [data.finished.iloc[[i]] for i in range(len(data.finished))]
        what = f"best finished trials by {metric} (no finalists yet)"
    rows = []
    for group in groups:
        first = group.iloc[0]
        values = {c: metric_value(group, c) for c in columns}
        ids = ", ".join(str(t) for t in group["trial_id"])
        rows.append(BoardRow(ids, settings_label(first, data.searched), values))
    sign = -1.0 if mode == "max" else 1.0

    def rank(row: BoardRow) -> float:
        value = row.values.get(metric)
        return sign * value.mean if value is not None else math.inf

    rows.sort(key=rank)
    return what, rows if len(data.finalists) else rows[:LEADERBOARD_TOP]


@dataclass(frozen=True)
class Series:
    """Accuracy against alpha for one method (and one temperature when the sweep varied
    it): ``points`` (alpha, value per accuracy metric), ``line`` when alpha is the only
    thing that changes between its points."""

    label: str
    points: list[tuple[float, Mapping[str, Value | None]]]
    line: bool


def alpha_series(data: SweepData, metrics: Iterable[str]) -> list[Series]:
    """Finished trials of the methods that read alpha, per method (and temperature, when a
    method's trials used a few temperatures); empty unless alpha took 2+ values. A metric a
    trial does not report (test accuracy: search trials never read the test set) is its
    finalist runs' when ``kdtune finalize`` chose it (mean ± sd over their fresh seeds)."""
    metrics = list(metrics)
    frame = data.finished
    finals = data.finalists
    by_trial = dict(list(finals.groupby(f"tags.{TAG_FINALIST}"))) \
        if f"tags.{TAG_FINALIST}" in finals.columns else {}

    def value(rows: pd.DataFrame, metric: str) -> Value | None:
        own = metric_value(rows, metric)
        chosen = by_trial.get(str(rows["trial_id"].iloc[0]))
        return own if own is not None or chosen is None else metric_value(chosen, metric)

    if frame.empty or "params.alpha" not in frame.columns:
        return []
    frame = frame.assign(run_method=[setting(r, "method") for _, r in frame.iterrows()],
                         run_alpha=[setting(r, "alpha") for _, r in frame.iterrows()],
                         run_t=[setting(r, "temperature") for _, r in frame.iterrows()])
    frame = frame[[method_reads(m, "alpha") for m in frame["run_method"]]]
    frame = frame[frame["run_alpha"].map(_finite)]
    if frame["run_alpha"].nunique() < 2:
        return []
    out = []
    for method, rows in frame.groupby("run_method", sort=True):
        split_t = method_reads(method, "temperature") and 1 < rows["run_t"].nunique() <= 5
        parts = rows.groupby("run_t", sort=True) if split_t else [(None, rows)]
        for t, part in parts:
            label = str(method) + (f", T={_short(t)}" if t is not None else "")
            others = part.apply(lambda r: _setting_key(r, ignore=("alpha",)), axis=1)
            line = part["run_alpha"].is_unique and others.nunique() == 1
            points = [(float(r["run_alpha"]), {m: value(part.loc[[i]], m) for m in metrics})
                      for i, r in part.sort_values("run_alpha", kind="stable").iterrows()]
            out.append(Series(label, points, line))
    return out


@dataclass(frozen=True)
class Grid:
    """Mean accuracy over alpha × temperature for one method (cells without a trial: NaN)."""

    method: str
    alphas: list[float]
    temperatures: list[float]
    values: list[list[float]]  # [temperature][alpha]
    scatter: list[tuple[float, float, float]]  # (alpha, T, accuracy) of every trial


def alpha_temperature(data: SweepData, metric: str = "val_accuracy") -> list[Grid]:
    """Methods that read both alpha and T, whose finished trials used 2+ values of each."""
    frame = data.finished
    column = f"metrics.{metric}"
    if frame.empty or column not in frame.columns:
        return []
    grids = []
    rows = [(setting(r, "method"), setting(r, "alpha"), setting(r, "temperature"), r[column])
            for _, r in frame.iterrows()]
    for method in sorted({r[0] for r in rows}, key=str):
        if not (method_reads(method, "alpha") and method_reads(method, "temperature")):
            continue
        mine = [(float(a), float(t), float(v)) for m, a, t, v in rows
                if m == method and _finite(a) and _finite(t) and _finite(v)]
        alphas = sorted({a for a, _, _ in mine})
        temps = sorted({t for _, t, _ in mine})
        if len(alphas) < 2 or len(temps) < 2:
            continue
        cells: dict[tuple[float, float], list[float]] = {}
        for a, t, v in mine:
            cells.setdefault((a, t), []).append(v)
        values = [[statistics.fmean(cells[(a, t)]) if (a, t) in cells else math.nan
                   for a in alphas] for t in temps]
        grids.append(Grid(str(method), alphas, temps, values, mine))
    return grids


def rungs(data: SweepData) -> list[int]:
    """Epochs at which ASHA stopped trials (tag ``kdtune.rung`` of KILLED runs)."""
    column = f"tags.{TAG_RUNG}"
    if column not in data.trials.columns:
        return []
    found = set()
    for value in data.trials[column].dropna():
        try:
            found.add(int(value))
        except ValueError:
            continue
    return sorted(found)


def counts_by_status(frame: pd.DataFrame) -> dict[str, int]:
    if frame.empty:
        return {}
    return {str(k): int(v) for k, v in frame["status"].value_counts().sort_index().items()}
