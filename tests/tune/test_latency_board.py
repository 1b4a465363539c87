"""The sweep's latency board: one CPU-latency figure per student architecture, whichever
worker trained the student."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch
from torch import nn

from kdtune.models import create_model
from kdtune.tune.latency_board import (
    METRICS,
    LatencyBoard,
    SharedLatency,
    board_key,
    end_board,
    seed_board,
    start_board,
)

from .conftest import SweepRecord

SHAPE = (1, 8, 8)


def mlp(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_shape=SHAPE, hidden=(width,))


def test_first_published_figure_stays() -> None:
    b = LatencyBoard()
    assert b.get("k") is None
    assert b.publish("k", 1.5) == 1.5
    assert b.publish("k", 9.0) == 1.5
    assert b.get("k") == 1.5


def test_key_is_the_architecture_not_the_weights() -> None:
    assert board_key(mlp(8, seed=0), SHAPE, 1) == board_key(mlp(8, seed=1), SHAPE, 1)
    assert board_key(mlp(8), SHAPE, 1) != board_key(mlp(16), SHAPE, 1)
    assert board_key(mlp(8), SHAPE, 1) != board_key(mlp(8), SHAPE, 256)


def test_workers_report_the_published_figure(ray_session: None) -> None:
    import ray
    from ray import cloudpickle

    # the task below refers to this module, which Ray's workers cannot import by its name
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    board = start_board()

    @ray.remote(num_cpus=1)
    def time_on_a_worker(board: object, width: int, seed: int) -> tuple[float, int]:
        return SharedLatency(board)(mlp(width, seed), SHAPE, 1), os.getpid()

    # the first worker to time an architecture publishes its figure
    first, pid = ray.get(time_on_a_worker.remote(board, 16, 0))
    assert first > 0 and pid != os.getpid()
    assert ray.get(board.get.remote(board_key(mlp(16), SHAPE, 1))) == first
    # another process (the driver here) reads that figure instead of timing its own; the
    # wait for the board is counted apart (a trial's trainer_s leaves it out)
    latency = SharedLatency(board)
    assert latency(mlp(16, seed=7), SHAPE, 1) == first
    assert latency.waited_s > 0
    # a figure already on the board is what every worker reports: no worker times it again
    ray.get(board.publish.remote(board_key(mlp(8), SHAPE, 1), 123.0))
    assert ray.get(time_on_a_worker.remote(board, 8, 3))[0] == 123.0
    end_board(board)


@pytest.mark.parametrize("batch_size", [1, 256])
def test_batch_sizes_are_timed_apart(ray_session: None, batch_size: int) -> None:
    import ray

    board = start_board()
    measured = SharedLatency(board)(mlp(8), SHAPE, batch_size)
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, batch_size))) == measured
    other = 256 if batch_size == 1 else 1
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, other))) is None
    end_board(board)


def test_a_resumed_sweep_starts_from_the_figures_in_mlflow(ray_session: None,
                                                           asha_sweep: SweepRecord) -> None:
    import ray

    from kdtune.config import TrainConfig
    from kdtune.tracking import config_from_run
    from kdtune.trainer import build_student, load_data

    runs = asha_sweep.tracker().trial_runs("asha")
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) >= 1
    data = load_data(TrainConfig(dataset="digits"))
    board = start_board()
    published = seed_board(board, runs, data)
    widths = {row["params.hidden"] for _, row in finished.iterrows()}
    assert published == 2 * len(widths)  # b1 and b256 of each architecture
    for _, row in finished.iterrows():
        config = TrainConfig.from_dict(config_from_run(row, fields=TrainConfig.field_names()))
        model = build_student(config, data)
        for batch, metric in METRICS.items():
            key = board_key(model, data.in_shape, batch)
            assert ray.get(board.get.remote(key)) == row[f"metrics.{metric}"]
    end_board(board)


def test_nothing_to_seed_publishes_nothing(ray_session: None, asha_sweep: SweepRecord) -> None:
    import ray

    from kdtune.config import TrainConfig
    from kdtune.trainer import load_data

    runs = asha_sweep.tracker().trial_runs("asha")
    without = runs.drop(columns=[c for c in runs.columns if "latency" in c])
    board = start_board()
    assert seed_board(board, without, load_data(TrainConfig(dataset="digits"))) == 0
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, 1))) is None
    end_board(board)


def test_trials_stopped_early_report_their_latency_too(asha_sweep: SweepRecord) -> None:
    """A trial measures its cost before epoch 1, so a run ASHA stopped carries it as well."""
    runs = asha_sweep.tracker().trial_runs("asha")
    killed = runs[runs["status"] == "KILLED"]
    assert len(killed) and killed["metrics.latency_ms_b1"].notna().all()
    assert (killed["metrics.params"] > 0).all()


def test_a_trial_whose_board_is_gone_reports_its_own_figure(ray_session: None) -> None:
    """The board ends with its driver (or when the sweep ends): a trial still running then
    times the student itself instead of failing."""
    import ray

    board = start_board()
    SharedLatency(board)(mlp(8), SHAPE, 1)
    end_board(board)
    deadline = time.monotonic() + 20  # ray.kill returns at once
    while time.monotonic() < deadline:
        try:
            ray.get(board.get.remote("k"))
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.1)
    latency = SharedLatency(board)
    assert latency(mlp(16), SHAPE, 1) > 0
