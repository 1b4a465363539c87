"""One CPU-latency figure per student architecture for a whole sweep.

Each worker times the architectures it trains (``kdtune.metrics.cpu_latency_ms``, once per
process). Two workers timing the same student get different numbers (load, the CPU model of
their node), so without a shared figure a latency objective or a ``kdtune best`` table could
rank two identical students apart. The driver starts one small actor per sweep (no CPU
reserved); the first trial to finish with an architecture times it and publishes the figure,
every later trial of the sweep, on any worker or node, reports that figure. A resumed sweep
starts a new board: architectures are timed again once.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdtune.metrics import LatencyFn, architecture_key, cpu_latency_ms


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
    """A :class:`LatencyBoard` actor owned by the driver (it ends with the driver)."""
    import ray

    return ray.remote(num_cpus=0)(LatencyBoard).remote()


def board_key(model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> str:
    return repr((architecture_key(model), tuple(in_shape), batch_size))


def shared_latency(board: Any) -> LatencyFn:
    """A latency function for ``TrainingRun.final_metrics`` that reads and fills ``board``."""

    def latency(model: nn.Module, in_shape: tuple[int, ...], batch_size: int) -> float:
        import ray

        key = board_key(model, in_shape, batch_size)
        known = ray.get(board.get.remote(key))
        if known is not None:
            return float(known)
        measured = cpu_latency_ms(model, in_shape, batch_size)
        return float(ray.get(board.publish.remote(key, measured)))

    return latency
