"""One CPU-latency figure per student architecture for a whole sweep.

Each worker times the architectures it trains (``kdtune.metrics.cpu_latency_ms``). Two
workers timing the same student get different numbers (load, the CPU model of their node),
so without a shared figure a latency objective or a ``kdtune best`` table could rank two
identical students apart. A sweep names one board, a small detached actor (no CPU reserved)
that the first trial needing it starts (so nothing is added to the sweep's start-up); the
first trial to finish with an architecture times it and publishes the figure, and every later
trial, on any worker or node, reports that figure. A worker asks the board once per
architecture. The driver ends the board with the sweep; a resumed sweep finds it again or,
after the cluster went down, seeds a new one with what its trials had reported
(:func:`seed_board`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError

if TYPE_CHECKING:  # the board's own process imports this module: no torch, no pandas there
    import pandas as pd
    from torch import nn

    from kdtune.data import DataSplits
    from kdtune.metrics import LatencyFn

#: The final metrics the board holds, by batch size.
METRICS = {1: "latency_ms_b1", 256: "latency_ms_b256"}
#: Figures this process has had from a board: (board name, key) -> ms. A published figure
#: never changes, so a worker asks the board once per architecture and batch size.
_SEEN: dict[tuple[str, str], float] = {}
_BOARDS: dict[str, Any] = {}
NAMESPACE = "kdtune"
#: Times a worker asks a board that does not answer before it reports its own figure.
BOARD_ATTEMPTS = 8
_WAITED = [0.0]


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
    if name not in _BOARDS:
        import ray

        _BOARDS[name] = ray.remote(num_cpus=0)(LatencyBoard).options(
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    return _BOARDS[name]


def end_board(name: str) -> None:
    """Stop board ``name`` if it runs (the sweep is over)."""
    import ray

    _BOARDS.pop(name, None)
    with contextlib.suppress(ValueError):  # never started: no trial needed it
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))


def board_name(sweep_run_id: str) -> str:
    """The board of the sweep whose MLflow parent run is ``sweep_run_id``."""
    return f"kdtune-latency-{sweep_run_id}"


def board_key(model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> str:
    from kdtune.metrics import architecture_key

    return repr((architecture_key(model), tuple(in_shape), batch_size))


def shared_latency(name: str) -> LatencyFn:
    """A latency function for ``TrainingRun.final_metrics`` reading and filling board
    ``name``."""

    def latency(model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> float:
        import ray

        from kdtune.metrics import cpu_latency_ms

        key = board_key(model, in_shape, batch_size)
        if (name, key) in _SEEN:
            return _SEEN[name, key]
        measured = None
        for attempt in range(BOARD_ATTEMPTS):
            try:
                known = _ask(board(name).get, key)
                if known is None:
                    measured = measured or cpu_latency_ms(model, in_shape, batch_size)
                    known = _ask(board(name).publish, key, measured)
                _SEEN[name, key] = float(known)
                return _SEEN[name, key]
            except ray.exceptions.RayActorError:
                # the board is starting on a busy node, or the process that held it ended:
                # ask again (a new handle finds it, or starts another) before going alone
                _BOARDS.pop(name, None)
                time.sleep(min(2.0, 0.1 * 2**attempt))
        return measured or cpu_latency_ms(model, in_shape, batch_size)  # this trial's own

    return latency


def _ask(method: Any, *args: Any) -> Any:
    """``ray.get(method.remote(*args))`` on a board, its wall time added to :func:`waited_s`."""
    import ray

    start = time.perf_counter()
    try:
        return ray.get(method.remote(*args))
    finally:
        _WAITED[0] += time.perf_counter() - start


def waited_s() -> float:
    """Seconds this process has spent waiting for boards (starting one, asking it): sweep
    overhead, not the trainer's work."""
    return _WAITED[0]


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
