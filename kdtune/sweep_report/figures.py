"""The report's figures, drawn with matplotlib (no pyplot: no global state) as PNG bytes of
one fixed pixel size, :data:`WIDTH` × :data:`HEIGHT`."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdtune.sweep_report.sweep_data import (
    Series,
    SweepData,
    alpha_series,
    alpha_temperature,
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


# -- accuracy against latency and size, with the Pareto front -------------------------------------
def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (smaller or equal x and larger or equal
    y, one of them strictly), sorted by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
    front, best = [], -math.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front


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
    for ax, (column, xlabel, teacher_x) in zip(axes, panels, strict=True):
        xs = [float(v) for v in frame[column]]
        for method in colours:
            pts = [(x, y) for x, y, m in zip(xs, ys, methods, strict=True) if m == method]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, alpha=0.8,
                       color=colours[method], label=str(method))
        front = pareto_front(xs, ys)
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="black",
                linewidth=1.2, marker="s", markersize=9, markerfacecolor="none",
                label="Pareto front")
        if teacher_x is not None and teacher_y is not None:
            ax.scatter([teacher_x], [teacher_y], marker="*", s=260, color="gold",
                       edgecolor="black", zorder=5, label=f"teacher ({teacher_what} acc.)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    caption = (f"{len(frame)} finished trials. The front joins the trials no other trial beats "
               "on both accuracy and cost; the star is the teacher"
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
    seeds = _seed_note(series)
    return Drawn("accuracy_vs_alpha", "Accuracy against alpha",
                 f"Finished trials of the methods that read alpha{seeds}; lines join trials "
                 "that differ in alpha alone.", _png(fig))


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


def _seed_note(series: Sequence[Series]) -> str:
    ns = {v.n for s in series for _, vs in s.points for v in vs.values() if v is not None}
    n = max(ns, default=1)
    return f", mean ± sd over {n} seeds" if n > 1 else ""


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
    names = ", ".join(d.name for d, _ in per_sweep)
    seeds = _seed_note([s for _, ss in per_sweep for s in ss])
    return Drawn("alpha_overlay", "Alpha study: the sweeps' accuracy against alpha",
                 f"Sweeps {names}{seeds}; dotted: each sweep's teacher (test accuracy).",
                 _png(fig))


# -- alpha × temperature -------------------------------------------------------------------------
def alpha_by_temperature(data: SweepData) -> Drawn | None:
    """Mean validation accuracy over alpha × T per method: a heatmap for a grid, else the
    trials as points coloured by accuracy."""
    grids = alpha_temperature(data)
    if not grids:
        return None
    from matplotlib import colormaps

    fig, axes = _figure(min(len(grids), 4))
    cmap = colormaps["viridis"]
    values = [v for g in grids for _, _, v in g.scatter]
    low, high = min(values), max(values)
    image = None
    for ax, grid in zip(axes, grids, strict=False):
        is_grid = len(grid.alphas) * len(grid.temperatures) <= 2 * len(grid.scatter) \
            and len(grid.alphas) <= 12 and len(grid.temperatures) <= 12
        if is_grid:
            image = ax.imshow(grid.values, cmap=cmap, vmin=low, vmax=high, origin="lower",
                              aspect="auto")
            ax.set_xticks(range(len(grid.alphas)), [f"{a:g}" for a in grid.alphas])
            ax.set_yticks(range(len(grid.temperatures)), [f"{t:g}" for t in grid.temperatures])
            for yi, row in enumerate(grid.values):
                for xi, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(xi, yi, f"{v:.3f}", ha="center", va="center", fontsize=9,
                                color="white" if v < (low + high) / 2 else "black")
        else:
            image = ax.scatter([a for a, _, _ in grid.scatter], [t for _, t, _ in grid.scatter],
                               c=[v for _, _, v in grid.scatter], cmap=cmap, vmin=low,
                               vmax=high, s=60, edgecolor="black")
        ax.set_title(grid.method)
        ax.set_xlabel("alpha")
        ax.set_ylabel("temperature T")
    if image is not None:
        fig.colorbar(image, ax=axes, label="validation accuracy", shrink=0.9)
    shown = ", ".join(g.method for g in grids[:4])
    return Drawn("alpha_by_temperature", "Accuracy over alpha × temperature",
                 f"Mean validation accuracy of the finished trials of {shown} per (alpha, T) "
                 "(points: the trials, where the sweep did not run a grid).", _png(fig))


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
    if best_id is not None and data.curves.get(best_id):
        curve = data.curves[best_id]
        ax.plot([s for s, _ in curve], [v for _, v in curve], color="black", linewidth=2.6,
                label="best trial")
    for i, rung in enumerate(rungs(data)):
        ax.axvline(rung, color="black", linestyle=":", linewidth=1,
                   label="ASHA rungs (epochs where trials were stopped)" if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    killed = int((frame["status"] == "KILLED").sum())
    return Drawn("learning_curves", "Learning curves",
                 f"Validation accuracy after every epoch of {len(frame)} trials (the mean over "
                 f"a trial's seeds); {killed} stopped early by ASHA.", _png(fig))


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

