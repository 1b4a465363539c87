"""The report's figures, drawn with matplotlib (no pyplot: no global state) as PNG bytes of
one fixed pixel size, :data:`WIDTH` × :data:`HEIGHT`."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdtune.pareto import pareto_front
from kdtune.sweep_report.sweep_data import (
    Grid,
    Series,
    SweepData,
    Value,
    alpha_series,
    alpha_temperature,
    on_grid,
    readable_id,
    rungs,
    setting,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
WIDTH, HEIGHT = 1100, 440  # pixels of every figure
ACCURACY_LABELS = {"val_accuracy": "validation accuracy",
                   "test_accuracy": "test accuracy (measured once, never used to choose)"}


@dataclass(frozen=True)
class Drawn:
    """One figure of the report: ``key`` names its PNG file (``<key>.png``)."""

    key: str
    title: str
    caption: str
    png: bytes
    width: int = WIDTH
    height: int = HEIGHT


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _colours(keys: Sequence[Any]) -> dict[Any, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def _methods(frame: Any) -> list[Any]:
    return [setting(r, "method") for _, r in frame.iterrows()]


#: Runs named on a figure at most (the rest: counted in its caption).
MAX_NAMED = 12


def _id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMED])
    return shown + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")


# -- accuracy against latency and size, with the Pareto front -------------------------------------
def accuracy_cost_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the trials no other trial beats on both accuracy ``ys`` (larger) and cost
    ``xs`` (smaller), sorted by cost: the staircase the figure draws."""
    front = pareto_front([(x, -y) for x, y in zip(xs, ys, strict=True)])
    return sorted(front, key=lambda i: (xs[i], -ys[i]))


def accuracy_front(data: SweepData) -> Drawn | None:
    """Validation accuracy against CPU latency (batch 256) and parameters: finished trials by
    method, the Pareto front, the teacher as a star."""
    frame = data.finished
    needed = ["metrics.val_accuracy", "metrics.latency_ms_b256", "metrics.params"]
    if frame.empty or any(c not in frame.columns for c in needed):
        return None
    frame = frame.dropna(subset=needed)
    if frame.empty:
        return None
    teacher = data.teacher
    teacher_y = teacher.val_accuracy if teacher.val_accuracy is not None else teacher.test_accuracy
    teacher_what = "validation" if teacher.val_accuracy is not None else "test"
    methods = _methods(frame)
    colours = _colours(sorted(set(methods), key=str))
    fig, axes = _figure(2)
    panels = (("metrics.latency_ms_b256", "CPU latency, batch of 256 (ms)",
               teacher.latency_ms_b256),
              ("metrics.params", "parameters", teacher.params))
    ys = [float(v) for v in frame["metrics.val_accuracy"]]
    ids = [readable_id(r) for _, r in frame.iterrows()]
    on_front = []
    for ax, (column, xlabel, teacher_x) in zip(axes, panels, strict=True):
        xs = [float(v) for v in frame[column]]
        for method in colours:
            pts = [(x, y) for x, y, m in zip(xs, ys, methods, strict=True) if m == method]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, alpha=0.8,
                       color=colours[method], label=str(method))
        front = accuracy_cost_front(xs, ys)
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="black",
                linewidth=1.2, marker="s", markersize=9, markerfacecolor="none",
                label="Pareto front")
        for i in front[:MAX_NAMED]:
            ax.annotate(ids[i], (xs[i], ys[i]), xytext=(5, -11), textcoords="offset points",
                        fontsize=7)
        on_front.append(_id_list([ids[i] for i in front]))
        if teacher_x is not None and teacher_y is not None:
            ax.scatter([teacher_x], [teacher_y], marker="*", s=260, color="gold",
                       edgecolor="black", zorder=5, label=f"teacher ({teacher_what} acc.)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    caption = (f"{len(frame)} finished trials. The front joins the trials no other trial beats "
               f"on both accuracy and cost (by latency: {on_front[0]}; by size: {on_front[1]}); "
               "the star is the teacher"
               + ("" if teacher_what == "validation" else
                  " (its test accuracy: its checkpoint, with its validation accuracy, was not "
                  "found)") + ".")
    return Drawn("accuracy_front", "Accuracy against latency and size", caption,
                 _png(fig))


# -- accuracy against alpha --------------------------------------------------------------------
def _draw_series(ax: Axes, series: Sequence[Series], metric: str,
                 colour: Callable[[int, Series], Any], label: Callable[[Series], str],
                 linestyle: Callable[[int], str] = lambda _: "-") -> None:
    for i, s in enumerate(series):
        pts = [(a, v[metric]) for a, v in s.points if v.get(metric) is not None]
        if not pts:
            continue
        xs = [a for a, _ in pts]
        ys = [v.mean for _, v in pts]
        errs = [v.sd or 0.0 for _, v in pts]
        has_err = any(v.sd for _, v in pts)
        ax.errorbar(xs, ys, yerr=errs if has_err else None, color=colour(i, s),
                    linestyle=linestyle(i) if s.line else "none", marker="o", markersize=5,
                    capsize=3, linewidth=1.5, label=label(s))


def accuracy_vs_alpha(data: SweepData) -> Drawn | None:
    """Validation and test accuracy against alpha per method (± sd over seeds)."""
    series = alpha_series(data, ACCURACY_LABELS)
    if not series:
        return None
    fig, axes = _figure(2)
    colours = _colours([s.label for s in series])
    for ax, metric in zip(axes, ACCURACY_LABELS, strict=True):
        _draw_series(ax, series, metric, lambda _, s: colours[s.label], lambda s: s.label)
        ax.set_xlabel("alpha (weight of the hard-label loss; 1 = no distillation)")
        ax.set_ylabel(ACCURACY_LABELS[metric])
        ax.grid(alpha=0.3)
    for ax in axes:
        _legend_or_note(ax, names=[data.name])
    return Drawn("accuracy_vs_alpha", "Accuracy against alpha",
                 f"Finished trials of the methods that read alpha. {_capital(_plotted(series))}."
                 " Lines join trials that differ in alpha alone.", _png(fig))


def _legend_or_note(ax: Axes, names: Sequence[str]) -> None:
    """The panel's legend; a panel with nothing drawn (test accuracy before ``kdtune
    finalize`` measured it) says how to fill it."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
        return
    ax.text(0.5, 0.5, "not measured yet: `kdtune finalize "
            f"{names[0] if len(names) == 1 else 'NAME'} --top K`\nreads the test set once, "
            "for the chosen configurations", ha="center", va="center", fontsize=9,
            transform=ax.transAxes, wrap=True)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


#: What a point of a panel of the alpha figures stands for, by metric.
POINTS = {"val_accuracy": ("validation", "trial"),
          "test_accuracy": ("test", "configuration `kdtune finalize` retrained")}


def values_note(metric: str, values: Sequence[Value]) -> str:
    """What the points of ``metric``'s panel show: one run's value, or mean ± sd over how
    many seeds (``values``: the points')."""
    panel, unit = POINTS.get(metric, (metric, "point"))
    ns = sorted({v.n for v in values})
    several = [n for n in ns if n > 1]
    if not several:
        return f"{panel}: one value per {unit} (single-seed runs, no spread)"
    count = str(several[0]) if len(several) == 1 else f"{several[0]}–{several[-1]}"
    fresh = " fresh" if metric == "test_accuracy" else ""
    if 1 in ns:
        return (f"{panel}: mean ± sd over {count}{fresh} seeds where a {unit} has several, "
                "else its single run's value")
    return f"{panel}: mean ± sd over {count}{fresh} seeds per {unit}"


def _plotted(series: Sequence[Series]) -> str:
    """The notes of the panels that show points: ``validation: ...; test: ...``."""
    notes = []
    for metric in ACCURACY_LABELS:
        values = [v[metric] for s in series for _, v in s.points if v.get(metric) is not None]
        if values:
            notes.append(values_note(metric, values))
    return "; ".join(notes)


def alpha_overlay(sweeps: Sequence[SweepData]) -> Drawn | None:
    """Accuracy against alpha of several sweeps on the same axes (an alpha study), with each
    sweep's teacher's test accuracy as a dotted line on the test panel."""
    per_sweep = [(d, alpha_series(d, ACCURACY_LABELS)) for d in sweeps]
    per_sweep = [(d, s) for d, s in per_sweep if s]
    if len(per_sweep) < 2:
        return None
    fig, axes = _figure(2)
    colours = _colours([d.name for d, _ in per_sweep])
    styles = ["-", "--", ":", "-."]
    for ax, metric in zip(axes, ACCURACY_LABELS, strict=True):
        for d, series in per_sweep:
            many = len(series) > 1

            def label(s: Series, d: SweepData = d, many: bool = many) -> str:
                return f"{d.name}: {s.label}" if many else d.name

            def colour(_: int, s: Series, d: SweepData = d) -> Any:
                return colours[d.name]

            _draw_series(ax, series, metric, colour, label, lambda i: styles[i % len(styles)])
            if metric == "test_accuracy" and d.teacher.test_accuracy is not None:
                ax.axhline(d.teacher.test_accuracy, color=colours[d.name], linestyle=":",
                           linewidth=1, label=f"teacher of {d.name}")
        ax.set_xlabel("alpha (weight of the hard-label loss; 1 = no distillation)")
        ax.set_ylabel(ACCURACY_LABELS[metric])
        ax.grid(alpha=0.3)
    for ax in axes:
        _legend_or_note(ax, names=[d.name for d, _ in per_sweep])
    plotted = " ".join(f"{d.name}: {_plotted(series)}." for d, series in per_sweep)
    return Drawn("alpha_overlay", "Alpha study: the sweeps' accuracy against alpha",
                 f"{plotted} Dotted: each sweep's teacher (test accuracy).", _png(fig))


# -- alpha × temperature -------------------------------------------------------------------------
def accuracy_limits(values: Sequence[float], least: float = 0.02) -> tuple[float, float]:
    """The colour scale of accuracies ``values``: their range, within [0, 1], widened to
    ``least`` when narrower (matplotlib would widen a single value's by 10% either side)."""
    low, high = max(0.0, min(values)), min(1.0, max(values))
    if high - low < least:
        low = max(0.0, min((low + high - least) / 2, 1.0 - least))
        high = low + least
    return low, high


def alpha_by_temperature(data: SweepData) -> Drawn | None:
    """Validation accuracy over alpha × T per method: a heatmap of the mean per cell on a
    grid (continuous axes binned when there are enough trials), else the trials as points
    coloured by accuracy."""
    grids = alpha_temperature(data)
    if not grids:
        return None
    fig = draw_alpha_by_temperature(grids)
    shown = " ".join(_grid_note(g) for g in grids[:4])
    return Drawn("alpha_by_temperature", "Accuracy over alpha × temperature",
                 f"Validation accuracy of the finished trials over alpha × T. {shown}",
                 _png(fig))


def _grid_note(grid: Grid) -> str:
    n = len(grid.scatter)
    if grid.kind == "grid":
        return f"{grid.method}: the mean of its {n} trials per (alpha, T) of the grid."
    if grid.kind == "bins":
        return (f"{grid.method}: the mean of its {n} trials per cell, "
                f"{' and '.join(grid.binned)} in equal-width bins (n: trials in the cell).")
    return (f"{grid.method}: each of its {n} trials as a point (its values are not on a grid, "
            "too few to bin).")


def draw_alpha_by_temperature(grids: Sequence[Grid]) -> Figure:
    """The figure of :func:`alpha_by_temperature` (the first four methods), one colour
    scale for all panels (:func:`accuracy_limits`)."""
    from matplotlib import colormaps

    fig, axes = _figure(min(len(grids), 4))
    cmap = colormaps["viridis"]
    low, high = accuracy_limits([v for g in grids for _, _, v in g.scatter])
    image = None
    for ax, grid in zip(axes, grids, strict=False):
        if grid.kind == "points":
            image = ax.scatter([a for a, _, _ in grid.scatter], [t for _, t, _ in grid.scatter],
                               c=[v for _, _, v in grid.scatter], cmap=cmap, vmin=low,
                               vmax=high, s=60, edgecolor="black")
            for values, ticks in (([a for a, _, _ in grid.scatter], ax.set_xticks),
                                  ([t for _, t, _ in grid.scatter], ax.set_yticks)):
                if on_grid(values):
                    ticks(sorted(set(values)))
        else:
            image = ax.imshow(grid.values, cmap=cmap, vmin=low, vmax=high, origin="lower",
                              aspect="auto")
            ax.set_xticks(range(len(grid.alphas)), grid.alphas)
            ax.set_yticks(range(len(grid.temperatures)), grid.temperatures)
            counted = grid.kind == "bins" or any(n != 1 for row in grid.counts for n in row
                                                 if n)
            for yi, row in enumerate(grid.values):
                for xi, v in enumerate(row):
                    if not math.isnan(v):
                        text = f"{v:.3f}" + (f"\nn={grid.counts[yi][xi]}" if counted else "")
                        ax.text(xi, yi, text, ha="center", va="center", fontsize=8,
                                color="white" if v < (low + high) / 2 else "black")
        ax.set_title(grid.method)
        ax.set_xlabel("alpha" + (" (bins)" if "alpha" in grid.binned else ""))
        ax.set_ylabel("temperature T" + (" (bins)" if "temperature" in grid.binned else ""))
    if image is not None:
        fig.colorbar(image, ax=axes, label="validation accuracy", shrink=0.9)
    return fig


# -- learning curves -------------------------------------------------------------------------------
def learning_curves(data: SweepData) -> Drawn | None:
    """Per-epoch validation accuracy of every trial; trials ASHA stopped in grey, ending with
    a cross at their rung; the rungs as dotted lines; the best trial in bold."""
    frame = data.trials
    if frame.empty or not any(data.curves.values()):
        return None
    methods = _methods(frame)
    colours = _colours(sorted(set(methods), key=str))
    best_id = None
    finished = data.finished
    column = "metrics.val_accuracy"
    if column in finished.columns and finished[column].notna().any():
        best_id = str(finished.loc[finished[column].idxmax(), "run_id"])
    fig, (ax,) = _figure(1)
    labelled: set[str] = set()
    for (_, row), method in zip(frame.iterrows(), methods, strict=True):
        curve = data.curves.get(str(row["run_id"]), [])
        if not curve:
            continue
        xs, ys = [s for s, _ in curve], [v for _, v in curve]
        if row["status"] == "KILLED":
            label = "stopped early (ASHA)" if "killed" not in labelled else None
            labelled.add("killed")
            ax.plot(xs, ys, color="grey", alpha=0.6, linewidth=1, label=label)
            ax.plot(xs[-1:], ys[-1:], marker="x", color="grey", markersize=7)
        else:
            label = str(method) if str(method) not in labelled else None
            labelled.add(str(method))
            ax.plot(xs, ys, color=colours[method], alpha=0.85, linewidth=1.3, label=label)
    best_label = None
    if best_id is not None and data.curves.get(best_id):
        curve = data.curves[best_id]
        best_label = readable_id(finished[finished["run_id"] == best_id].iloc[0])
        ax.plot([s for s, _ in curve], [v for _, v in curve], color="black", linewidth=2.6,
                label=f"best trial ({best_label})")
    for i, rung in enumerate(rungs(data)):
        ax.axvline(rung, color="black", linestyle=":", linewidth=1,
                   label="ASHA rungs (epochs where trials were stopped)" if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    killed = int((frame["status"] == "KILLED").sum())
    best = f"; bold: the best, {best_label}" if best_label else ""
    return Drawn("learning_curves", "Learning curves",
                 f"Validation accuracy after every epoch of {len(frame)} trials (the mean over "
                 f"a trial's seeds); {killed} stopped early by ASHA{best}.", _png(fig))


# -- parameter importances -----------------------------------------------------------------------
def importances(data: SweepData, values: Mapping[str, float]) -> Drawn | None:
    """Horizontal bars of the given importance of each parameter (largest on top)."""
    items = sorted(((str(k), float(v)) for k, v in values.items()), key=lambda kv: kv[1])
    if not items:
        return None
    fig, (ax,) = _figure(1)
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("importance for " + data.metrics[0])
    ax.grid(alpha=0.3, axis="x")
    return Drawn("parameter_importances", "Parameter importances",
                 f"How much of the variation of {data.metrics[0]} over the sweep's trials each "
                 "parameter explains (Optuna's importance evaluator).", _png(fig))


def sweep_figures(data: SweepData, importance: Mapping[str, float] | None) -> list[Drawn]:
    """Every figure that applies to the sweep, in the report's order."""
    drawn = [accuracy_front(data), accuracy_vs_alpha(data), alpha_by_temperature(data),
             learning_curves(data), importances(data, importance) if importance else None]
    return [d for d in drawn if d is not None]

