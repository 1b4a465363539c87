"""One sweep as the report needs it, read from MLflow alone: its parent run, trials and
finalists, learning curves, teacher, the time its drivers trained, and the aggregates the
figures and tables show."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdtune.runs import decode_param, driver_run_seconds
from kdtune.sweep_results import (
    NOT_A_SETTING,
    TeacherFacts,
    finalist_mask,
    objective,
    teacher_facts,
)
from kdtune.tracking import Tracker
from kdtune.vocabulary import (
    STAGE_FINAL,
    TAG_DRIVER_RUNS,
    TAG_FINALIST,
    TAG_READABLE_ID,
    TAG_RUNG,
    TAG_STAGE,
)

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
    trials: pd.DataFrame  # the search trials (child runs not tagged kdtune.stage=final)
    finalists: pd.DataFrame  # finalist runs (role kd) of the latest finalize's top
    metrics: list[str]  # the objective
    modes: list[str]
    searched: list[str]
    teacher: TeacherFacts
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run id -> curve
    #: the time kdtune's drivers trained for the sweep (None: not read)
    wall_time: WallTime | None = None

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "FINISHED"]


def load_sweep(tracker: Tracker, name: str) -> SweepData:
    """Everything about sweep ``name`` (an unknown name is a one-line error)."""
    parent = tracker.sweep_run(name)
    runs = tracker.child_runs(name)
    final = finalist_mask(runs) if len(runs) else runs.index == runs.index
    stage = runs.get(f"tags.{TAG_STAGE}")
    trials = runs[stage != STAGE_FINAL] if stage is not None else runs
    metrics, modes = objective(tracker, name)
    searched = [p for p in parent.data.params.get("searched", "").split(",") if p]
    data = SweepData(name=name, parent=parent, trials=trials, finalists=runs[final],
                     metrics=metrics, modes=modes, searched=searched,
                     teacher=teacher_facts(parent, runs),
                     wall_time=wall_time(recorded_driver_runs(parent.data.tags),
                                         run_times(runs), parent.info))
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


def readable_id(row: pd.Series) -> str:
    """A child run's readable id (``NAME#12``, ``NAME#12/seed3``); its Ray trial id when it
    has none (a sweep of an older kdtune)."""
    label = row.get(f"tags.{TAG_READABLE_ID}")
    return label if isinstance(label, str) and label else str(row.get("trial_id"))


def _natural(text: str) -> list[Any]:
    """Sort key: numbers in ``text`` by value (``x#2/seed10`` after ``x#2/seed9``)."""
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"([0-9]+)", text)]


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
        ids = ", ".join(sorted((readable_id(r) for _, r in group.iterrows()), key=_natural))
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
        if own is not None:
            return own
        row = rows.iloc[0]  # finalist runs name their trial by its readable id (older: Ray's)
        chosen = by_trial.get(readable_id(row))
        if chosen is None:
            chosen = by_trial.get(str(row["trial_id"]))
        return None if chosen is None else metric_value(chosen, metric)

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


#: An axis of the alpha × T figure is on a grid when it takes at most this many values, each
#: (on average) by two trials or more; values drawn from a range are not.
MAX_GRID_VALUES = 12
#: Off a grid, a method with at least this many trials has its alpha × T cells binned; with
#: fewer, its trials are drawn as points.
MIN_BINNED_TRIALS = 24
#: Equal-width bins of an axis that is not on a grid.
BINS = 5


def on_grid(values: Sequence[float]) -> bool:
    """Whether ``values`` (one per trial) repeat a few values, as a grid's do."""
    distinct = len(set(values))
    return distinct <= MAX_GRID_VALUES and 2 * distinct <= len(values)


@dataclass(frozen=True)
class Axis:
    """One axis of an alpha × T heat map: its cells' labels and each trial's cell."""

    labels: list[str]
    cells: list[int]  # per value given, the index of its cell
    binned: bool


def grid_axis(values: Sequence[float]) -> Axis:
    """The distinct values as cells (:func:`on_grid`), else :data:`BINS` equal-width bins
    from the smallest to the largest value (fewer when there are fewer distinct values)."""
    if on_grid(values):
        distinct = sorted(set(values))
        return Axis([f"{v:g}" for v in distinct], [distinct.index(v) for v in values], False)
    low, high = min(values), max(values)
    count = max(1, min(BINS, len(set(values))))
    width = (high - low) / count
    edges = [low + i * width for i in range(count)] + [high]
    cells = [min(int((v - low) / width), count - 1) if width > 0 else 0 for v in values]
    labels = [f"{a:.3g}–{b:.3g}" for a, b in itertools.pairwise(edges)]
    return Axis(labels, cells, True)


@dataclass(frozen=True)
class Grid:
    """Validation accuracy over alpha × temperature for one method.

    ``kind`` says what the figure draws: ``"grid"`` (both axes on a grid: a heat map of the
    mean per (alpha, T)), ``"bins"`` (a heat map over bins of the axes that are not) or
    ``"points"`` (every trial at its alpha and T, too few trials off a grid to bin)."""

    method: str
    kind: str
    alphas: list[str]  # cell labels (grid, bins)
    temperatures: list[str]
    values: list[list[float]]  # [temperature][alpha]: the mean; NaN where no trial fell
    counts: list[list[int]]  # [temperature][alpha]: the trials in the cell
    scatter: list[tuple[float, float, float]]  # (alpha, T, accuracy) of every trial

    @property
    def binned(self) -> list[str]:
        """The axes binned (``alpha``, ``temperature``)."""
        if self.kind != "bins":
            return []
        alphas = [a for a, _, _ in self.scatter]
        temps = [t for _, t, _ in self.scatter]
        return [name for name, values in (("alpha", alphas), ("temperature", temps))
                if not on_grid(values)]


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
        alphas = [a for a, _, _ in mine]
        temps = [t for _, t, _ in mine]
        if len(set(alphas)) < 2 or len(set(temps)) < 2:
            continue
        grids.append(_grid(str(method), mine))
    return grids


def _grid(method: str, trials: list[tuple[float, float, float]]) -> Grid:
    x = grid_axis([a for a, _, _ in trials])
    y = grid_axis([t for _, t, _ in trials])
    kind = "grid" if not (x.binned or y.binned) else \
        "bins" if len(trials) >= MIN_BINNED_TRIALS else "points"
    if kind == "points":
        return Grid(method, kind, [], [], [], [], trials)
    cells: dict[tuple[int, int], list[float]] = {}
    for xi, yi, (_, _, v) in zip(x.cells, y.cells, trials, strict=True):
        cells.setdefault((xi, yi), []).append(v)
    values = [[statistics.fmean(cells[(xi, yi)]) if (xi, yi) in cells else math.nan
               for xi in range(len(x.labels))] for yi in range(len(y.labels))]
    counts = [[len(cells.get((xi, yi), [])) for xi in range(len(x.labels))]
              for yi in range(len(y.labels))]
    return Grid(method, kind, x.labels, y.labels, values, counts, trials)


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


# -- the time the drivers trained ------------------------------------------------------------
@dataclass(frozen=True)
class DriverSpan:
    """One recorded run of a kdtune driver that trained for the sweep (``kind``: search,
    resume, extend, finalize, or ``earlier``: older runs merged into one entry)."""

    kind: str
    seconds: float
    #: it recorded no end (still running, or its driver was killed): counted up to the last
    #: end of the runs started while it ran
    open: bool = False


@dataclass(frozen=True)
class WallTime:
    """How long kdtune's drivers trained for a sweep: the sum of its recorded driver runs
    (idle time between them not counted); a sweep that recorded none (older kdtune): the span
    from its first run's start to its last run's end (``spans`` empty)."""

    seconds: float | None  # None: no run has ended yet
    spans: tuple[DriverSpan, ...]
    running: bool  # the sweep's parent run is RUNNING

    @property
    def partial(self) -> bool:
        return any(s.open for s in self.spans) or (not self.spans and self.running)


def recorded_driver_runs(tags: Mapping[str, str]) -> list[dict[str, Any]] | None:
    """The parent run's driver runs (tag ``kdtune.driver_runs``); None when it has none or
    they cannot be read."""
    text = tags.get(TAG_DRIVER_RUNS)
    if not text:
        return None
    try:
        runs = json.loads(text)
    except ValueError:
        return None
    if not isinstance(runs, list) or not runs or not all(
            isinstance(r, dict) and isinstance(r.get("start"), int | float) for r in runs):
        return None
    return runs


def run_times(runs: pd.DataFrame) -> list[tuple[int, int | None]]:
    """(start, end) of each child run in epoch milliseconds (end None: not ended)."""
    import pandas as pd

    if runs.empty:
        return []
    out = []
    for start, end in zip(runs["start_time"], runs["end_time"], strict=True):
        if pd.isna(start):
            continue
        out.append((int(start.value // 1_000_000),
                    None if pd.isna(end) else int(end.value // 1_000_000)))
    return out


def wall_time(driver_runs: Sequence[Mapping[str, Any]] | None,
              times: Sequence[tuple[int, int | None]], parent: Any) -> WallTime:
    """:class:`WallTime` from the recorded driver runs (None: not recorded), the child runs'
    (start, end) in epoch ms and the parent run's ``info``. A driver run without an end
    counts up to the last end of the child runs started between its start and the next
    driver run's."""
    running = parent.status == "RUNNING"
    if driver_runs:
        spans = []
        for i, entry in enumerate(driver_runs):
            seconds = driver_run_seconds(entry)
            if seconds is not None:
                spans.append(DriverSpan(str(entry.get("kind", "?")), max(0.0, seconds)))
                continue
            start = int(entry["start"])
            following = int(driver_runs[i + 1]["start"]) if i + 1 < len(driver_runs) else None
            ends = [e for s, e in times if e is not None and s >= start
                    and (following is None or s < following)]
            upto = max(ends, default=start)
            if following is not None:
                upto = min(upto, following)
            spans.append(DriverSpan(str(entry.get("kind", "?")), max(0.0, (upto - start) / 1000),
                                    open=True))
        return WallTime(sum(s.seconds for s in spans), tuple(spans), running)
    starts = [s for s, _ in times]
    ends = [e for _, e in times if e is not None]
    if starts and ends:
        return WallTime(max(0.0, (max(ends) - min(starts)) / 1000), (), running)
    if parent.start_time and parent.end_time:
        return WallTime((parent.end_time - parent.start_time) / 1000, (), running)
    return WallTime(None, (), running)
