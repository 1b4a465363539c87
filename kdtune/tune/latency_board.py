"""One CPU-latency figure per student architecture for a whole sweep.

Each worker times the architectures it trains (``kdtune.metrics.cpu_latency``, kdtune's one
timing policy). Two workers timing the same student still get different numbers (load, the
CPU model of their node), so without a shared figure a latency objective or a ``kdtune best``
table could rank two identical students apart. The driver starts one board per sweep, a
small actor (no CPU reserved) that it owns, and hands it to every trial with the sweep's
context; the first trial to time an architecture publishes its figure with its spread, and
every later trial, on any worker or node, reports that figure and spread. A trial asks the
board once per architecture. The board ends with the driver (the driver also stops it when
the sweep ends); a resumed sweep, or ``kdtune finalize``, starts a new one holding what the
sweep's trials reported (:func:`seed_board`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError
from kdtune.vocabulary import LATENCY_FIGURES, LATENCY_SPREADS

if TYPE_CHECKING:  # the board's own process imports this module: no torch, no pandas there
    import pandas as pd
    from torch import nn

    from kdtune.data import DataSplits
    from kdtune.metrics import Latency

#: Times a trial asks a board that is unavailable for a moment before it reports its own figure.
BOARD_ATTEMPTS = 8

#: What the board holds per key: (the figure in ms, its interquartile range in ms; NaN when a
#: recorded figure came without one).
Figure = tuple[float, float]


class LatencyBoard:
    """Latency figures by (architecture, input shape, batch size) key; first published wins."""

    def __init__(self) -> None:
        self._figures: dict[str, Figure] = {}

    def get(self, key: str) -> Figure | None:
        return self._figures.get(key)

    def publish(self, key: str, figure: Figure) -> Figure:
        """Record ``figure`` unless one is there already; return the one that stays."""
        return self._figures.setdefault(key, figure)


def start_board() -> Any:
    """Start a sweep's board; its handle. The board belongs to this driver: it ends with it."""
    import ray

    return ray.remote(num_cpus=0)(LatencyBoard).remote()


def end_board(board: Any) -> None:
    """Stop ``board`` (the sweep is over)."""
    import ray

    ray.kill(board)


def board_key(model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> str:
    from kdtune.metrics import architecture_key

    return repr((architecture_key(model), tuple(in_shape), batch_size))


class SharedLatency:
    """A latency function for ``TrainingRun.final_metrics`` that reads and fills ``board``.
    A published figure never changes, so it asks the board once per architecture and batch
    size; :attr:`waited_s` counts the seconds spent waiting for the board: sweep overhead, not
    the trainer's work."""

    def __init__(self, board: Any) -> None:
        self.board = board
        self.known: dict[str, Latency] = {}
        self.waited_s = 0.0

    def __call__(self, model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> Latency:
        from kdtune.metrics import cpu_latency

        key = board_key(model, in_shape, batch_size)
        if key not in self.known:
            self.known[key] = self.figure(key, lambda: cpu_latency(model, in_shape, batch_size))
        return self.known[key]

    def figure(self, key: str, measure: Callable[[], Latency]) -> Latency:
        """The board's figure for ``key``, published from ``measure()`` if it has none yet;
        this process's own measurement when the board is gone (its driver ended)."""
        import ray

        measured = None
        for attempt in range(BOARD_ATTEMPTS):
            try:
                figure = self.ask(self.board.get, key)
                if figure is None:
                    measured = measured or measure()
                    figure = self.ask(self.board.publish, key, (measured.ms, measured.iqr_ms))
                return _as_latency(figure, measured)
            except ray.exceptions.ActorUnavailableError:  # for a moment (a busy node): again
                time.sleep(min(2.0, 0.1 * 2**attempt))
            except ray.exceptions.RayActorError:  # the board died with its driver
                break
        return measured or measure()

    def ask(self, method: Any, *args: Any) -> Any:
        """``ray.get(method.remote(*args))``, its wall time added to :attr:`waited_s`."""
        import ray

        start = time.perf_counter()
        try:
            return ray.get(method.remote(*args))
        finally:
            self.waited_s += time.perf_counter() - start


def _as_latency(figure: Figure, measured: Latency | None) -> Latency:
    """The board's ``figure`` as a :class:`~kdtune.metrics.Latency`: ``measured`` itself when
    the board kept this process's measurement."""
    from kdtune.metrics import Latency

    ms, iqr_ms = figure
    if measured is not None and (measured.ms, measured.iqr_ms) == (ms, iqr_ms):
        return measured
    return Latency(float(ms), float(iqr_ms))


def seed_board(board: Any, runs: pd.DataFrame, data: DataSplits) -> int:
    """Publish on ``board`` the latencies the sweep's trials already logged (rows of
    ``Tracker.trial_runs``), with their spreads, so that trials after a resume, and
    finalists, report the same figures for the same architectures (the first figure of an
    architecture, as a board keeps; a run whose config no longer builds is skipped). Returns
    how many figures it published."""
    import ray

    from kdtune.runs import run_config
    from kdtune.trainer import build_student

    figures: dict[str, Figure] = {}
    for _, row in runs.iterrows():
        known = {b: (_finite(row.get(f"metrics.{m}")),
                     _finite(row.get(f"metrics.{LATENCY_SPREADS[b]}")))
                 for b, m in LATENCY_FIGURES.items()}
        known = {b: figure for b, figure in known.items() if not math.isnan(figure[0])}
        if not known:
            continue
        try:
            config = run_config(row, where="a trial")
            model = build_student(config, data)
        except KdtuneError:  # logged by another kdtune version: that trial's figure is lost
            continue
        for batch_size, figure in known.items():
            figures.setdefault(board_key(model, data.in_shape, batch_size), figure)
    ray.get([board.publish.remote(key, figure) for key, figure in figures.items()])
    return len(figures)


def _finite(value: Any) -> float:
    """A logged metric as a float; NaN when it is missing."""
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan
