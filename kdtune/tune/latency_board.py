"""One CPU-latency figure per student architecture for a whole sweep.

Each worker times the architectures it trains (``kdtune.metrics.cpu_latency_ms``). Two
workers timing the same student get different numbers (load, the CPU model of their node),
so without a shared figure a latency objective or a ``kdtune best`` table could rank two
identical students apart. The driver starts one board per sweep, a small actor (no CPU
reserved) that it owns, and hands it to every trial with the sweep's context; the first trial
to time an architecture publishes its figure, and every later trial, on any worker or node,
reports that figure. A trial asks the board once per architecture. The board ends with the
driver (the driver also stops it when the sweep ends); a resumed sweep, or ``kdtune
finalize``, starts a new one holding what the sweep's trials reported (:func:`seed_board`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError

if TYPE_CHECKING:  # the board's own process imports this module: no torch, no pandas there
    import pandas as pd
    from torch import nn

    from kdtune.data import DataSplits

#: The final metrics the board holds, by batch size.
METRICS = {1: "latency_ms_b1", 256: "latency_ms_b256"}
#: Times a trial asks a board that is unavailable for a moment before it reports its own figure.
BOARD_ATTEMPTS = 8


class LatencyBoard:
    """Latency in ms by (architecture, input shape, batch size) key; first published wins."""

    def __init__(self) -> None:
        self._ms: dict[str, float] = {}

    def get(self, key: str) -> float | None:
        return self._ms.get(key)

    def publish(self, key: str, ms: float) -> float:
        """Record ``ms`` unless a figure is there already; return the one that stays."""
        return self._ms.setdefault(key, ms)


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
        self.known: dict[str, float] = {}
        self.waited_s = 0.0

    def __call__(self, model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> float:
        from kdtune.metrics import cpu_latency_ms

        key = board_key(model, in_shape, batch_size)
        if key not in self.known:
            self.known[key] = self.figure(key, lambda: cpu_latency_ms(model, in_shape,
                                                                      batch_size))
        return self.known[key]

    def figure(self, key: str, measure: Callable[[], float]) -> float:
        """The board's figure for ``key``, published from ``measure()`` if it has none yet;
        this process's own measurement when the board is gone (its driver ended)."""
        import ray

        measured = None
        for attempt in range(BOARD_ATTEMPTS):
            try:
                figure = self.ask(self.board.get, key)
                if figure is None:
                    measured = measured or measure()
                    figure = self.ask(self.board.publish, key, measured)
                return float(figure)
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


def seed_board(board: Any, runs: pd.DataFrame, data: DataSplits) -> int:
    """Publish on ``board`` the latencies the sweep's trials already logged (rows of
    ``Tracker.trial_runs``), so that trials after a resume, and finalists, report the same
    figures for the same architectures (the first figure of an architecture, as a board keeps;
    a run whose config no longer builds is skipped). Returns how many figures it published."""
    import ray

    from kdtune.config import TrainConfig
    from kdtune.tracking import config_from_run
    from kdtune.trainer import build_student

    figures: dict[str, float] = {}
    for _, row in runs.iterrows():
        known = {b: row.get(f"metrics.{m}") for b, m in METRICS.items()}
        known = {b: float(v) for b, v in known.items() if v is not None and math.isfinite(v)}
        if not known:
            continue
        try:
            config = TrainConfig.from_dict(
                config_from_run(row, fields=TrainConfig.field_names()), where="a trial")
            model = build_student(config, data)
        except KdtuneError:  # logged by another kdtune version: that trial's figure is lost
            continue
        for batch_size, ms in known.items():
            figures.setdefault(board_key(model, data.in_shape, batch_size), ms)
    ray.get([board.publish.remote(key, ms) for key, ms in figures.items()])
    return len(figures)
