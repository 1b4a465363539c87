"""The sweep's latency board: one CPU-latency figure per student architecture, whichever
worker trained the student."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from kdtune.models import create_model
from kdtune.tune.latency_board import LatencyBoard, board_key, shared_latency, start_board

SHAPE = (1, 8, 8)


def mlp(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_shape=SHAPE, hidden=(width,))


def test_first_published_figure_stays() -> None:
    board = LatencyBoard()
    assert board.get("k") is None
    assert board.publish("k", 1.5) == 1.5
    assert board.publish("k", 9.0) == 1.5
    assert board.get("k") == 1.5


def test_key_is_the_architecture_not_the_weights() -> None:
    assert board_key(mlp(8, seed=0), SHAPE, 1) == board_key(mlp(8, seed=1), SHAPE, 1)
    assert board_key(mlp(8), SHAPE, 1) != board_key(mlp(16), SHAPE, 1)
    assert board_key(mlp(8), SHAPE, 1) != board_key(mlp(8), SHAPE, 256)


def test_workers_report_the_published_figure(ray_session: None) -> None:
    import sys

    import ray
    from ray import cloudpickle

    # the task below refers to this module, which Ray's workers cannot import by its name
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    board = start_board()
    # a figure already on the board is what every worker reports: no worker times it again
    ray.get(board.publish.remote(board_key(mlp(8), SHAPE, 1), 123.0))

    @ray.remote(num_cpus=1)
    def time_on_a_worker(width: int, seed: int) -> tuple[float, int]:
        return shared_latency(board)(mlp(width, seed), SHAPE, 1), os.getpid()

    assert ray.get(time_on_a_worker.remote(8, 3))[0] == 123.0
    # a new architecture is timed once, by the first worker, and published
    first, pid = ray.get(time_on_a_worker.remote(16, 0))
    assert first != 123.0 and first > 0
    assert ray.get(board.get.remote(board_key(mlp(16), SHAPE, 1))) == first
    # another process (the driver here) reads the same figure instead of timing its own
    assert shared_latency(board)(mlp(16, seed=7), SHAPE, 1) == first
    assert pid != os.getpid()


@pytest.mark.parametrize("batch_size", [1, 256])
def test_batch_sizes_are_timed_apart(ray_session: None, batch_size: int) -> None:
    import ray

    board = start_board()
    measured = shared_latency(board)(mlp(8), SHAPE, batch_size)
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, batch_size))) == measured
    other = 256 if batch_size == 1 else 1
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, other))) is None
