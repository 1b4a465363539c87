"""One CPU-latency figure per student architecture for a whole sweep.

Each worker times the architectures it trains (``kdtune.metrics.cpu_latency_ms``). Two
workers timing the same student get different numbers (load, the CPU model of their node),
so without a shared figure a latency objective or a ``kdtune best`` table could rank two
identical students apart. A sweep names one board, a small detached actor (no CPU reserved)
that the first trial needing it starts (so nothing is added to the sweep's start-up); the
first trial to finish with an architecture times it and publishes the figure, and every later
trial, on any worker or node, reports that figure. A trial asks the board once per
architecture. The driver ends the board with the sweep; a resumed sweep finds it again or,
after the cluster went down, seeds a new one with what its trials had reported
(:func:`seed_board`).
"""

from __future__ import annotations

import contextlib
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
NAMESPACE = "kdtune"
#: Times a worker asks a board that does not answer before it reports its own figure.
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


def board(name: str) -> Any:
    """The board actor called ``name``, started if there is none yet. Detached: it outlives
    the trial that started it (Ray ends a trial's actor when it no longer needs it), and a
    sweep resumed after a crash finds it again; the driver ends it with the sweep
    (:func:`end_board`)."""
    import ray

    return ray.remote(num_cpus=0)(LatencyBoard).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()


def end_board(name: str) -> None:
    """Stop board ``name`` if it runs (the sweep is over)."""
    import ray

    with contextlib.suppress(ValueError):  # never started: no trial needed it
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))


def board_name(sweep_run_id: str) -> str:
    """The board of the sweep whose MLflow parent run is ``sweep_run_id``."""
    return f"kdtune-latency-{sweep_run_id}"


def board_key(model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> str:
    from kdtune.metrics import architecture_key

    return repr((architecture_key(model), tuple(in_shape), batch_size))


class SharedLatency:
    """A latency function for ``TrainingRun.final_metrics`` that reads and fills board
    ``name``. A published figure never changes, so it asks the board once per architecture
    and batch size; :attr:`waited_s` counts the seconds spent waiting for the board (starting
    it, asking it): sweep overhead, not the trainer's work."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.known: dict[str, float] = {}
        self.waited_s = 0.0
        self.actor: Any = None

    def __call__(self, model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> float:
        from kdtune.metrics import cpu_latency_ms

        key = board_key(model, in_shape, batch_size)
        if key not in self.known:
            self.known[key] = self.figure(key, lambda: cpu_latency_ms(model, in_shape,
                                                                      batch_size))
        return self.known[key]

    def figure(self, key: str, measure: Callable[[], float]) -> float:
        """The board's figure for ``key``, published from ``measure()`` if it has none yet;
        this process's own measurement when the board does not answer."""
        import ray

        measured = None
        for attempt in range(BOARD_ATTEMPTS):
            try:
                figure = self.ask(lambda b: b.get.remote(key))
                if figure is None:
                    measured = measured or measure()
                    figure = self.ask(lambda b, ms=measured: b.publish.remote(key, ms))
                return float(figure)
            except (ray.exceptions.RayActorError, ValueError):
                # the board is starting on a busy node, the process that held it ended, or
                # another trial was creating it at this moment (Ray's get-or-create looks it
                # up by name again and may not see it yet): ask again (a new handle finds it,
                # or starts another) before going alone
                self.actor = None
                time.sleep(min(2.0, 0.1 * 2**attempt))
        return measured or measure()

    def ask(self, call: Callable[[Any], Any]) -> Any:
        """``ray.get(call(board))``, its wall time added to :attr:`waited_s`."""
        import ray

        start = time.perf_counter()
        try:
            self.actor = self.actor or board(self.name)
            return ray.get(call(self.actor))
        finally:
            self.waited_s += time.perf_counter() - start


def seed_board(name: str, runs: pd.DataFrame, data: DataSplits) -> int:
    """Start board ``name`` holding the latencies the sweep's trials already logged (rows of
    ``Tracker.trial_runs``), so that trials after a resume report the same figures for the
    same architectures (the first figure of an architecture, as a board keeps; a run whose
    config no longer builds is skipped). Returns how many figures were published."""
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
    if figures:  # else the first trial that needs the board starts it
        actor = board(name)
        ray.get([actor.publish.remote(key, ms) for key, ms in figures.items()])
    return len(figures)
