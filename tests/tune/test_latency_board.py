"""The sweep's latency board: one CPU-latency figure (with its spread) per student
architecture, whichever worker trained the student."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch
from torch import nn

from kdtune.metrics import LATENCY_POLICY, Latency, cpu_latency
from kdtune.models import create_model
from kdtune.runs import run_config
from kdtune.tune.latency_board import (
    LatencyBoard,
    SharedLatency,
    board_key,
    end_board,
    seed_board,
    start_board,
)
from kdtune.vocabulary import LATENCY_FIGURES, LATENCY_SPREADS

from .conftest import SweepRecord

SHAPE = (1, 8, 8)


def mlp(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_shape=SHAPE, hidden=(width,))


def test_first_published_figure_stays() -> None:
    b = LatencyBoard()
    assert b.get("k") is None
    assert b.publish("k", (1.5, 0.1)) == (1.5, 0.1)
    assert b.publish("k", (9.0, 2.0)) == (1.5, 0.1)  # the figure and its spread together
    assert b.get("k") == (1.5, 0.1)


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
    def time_on_a_worker(board: object, width: int, seed: int) -> tuple[Latency, int]:
        return SharedLatency(board)(mlp(width, seed), SHAPE, 1), os.getpid()

    # the first worker to time an architecture publishes its figure and spread
    first, pid = ray.get(time_on_a_worker.remote(board, 16, 0))
    assert first.ms > 0 and first.iqr_ms >= 0 and pid != os.getpid()
    assert first.threads == LATENCY_POLICY.threads  # timed by the policy, not the worker
    assert ray.get(board.get.remote(board_key(mlp(16), SHAPE, 1))) == (first.ms, first.iqr_ms)
    # another process (the driver here) reads that figure instead of timing its own; the
    # wait for the board is counted apart (a trial's trainer_s leaves it out)
    latency = SharedLatency(board)
    read = latency(mlp(16, seed=7), SHAPE, 1)
    assert (read.ms, read.iqr_ms) == (first.ms, first.iqr_ms)
    assert latency.waited_s > 0
    # a figure already on the board is what every worker reports: no worker times it again
    ray.get(board.publish.remote(board_key(mlp(8), SHAPE, 1), (123.0, 4.0)))
    other = ray.get(time_on_a_worker.remote(board, 8, 3))[0]
    assert (other.ms, other.iqr_ms) == (123.0, 4.0)
    end_board(board)


def test_a_trial_and_kdtune_train_time_by_the_same_policy(ray_session: None) -> None:
    """A sweep trial (a Ray worker training with its CPUs as torch threads, here 2) and
    ``kdtune train`` (this process, every core's threads) time the same architecture the
    same way: the policy's threads, warm-up and budget, the median with its spread."""
    import ray
    from ray import cloudpickle

    from kdtune.config import TrainConfig
    from kdtune.trainer import train

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    board = start_board()

    @ray.remote(num_cpus=1)
    def trial(board: object) -> tuple[int, Latency, Latency]:
        torch.set_num_threads(2)  # as a trial with resources.cpus 2 trains
        latency = SharedLatency(board)
        return (torch.get_num_threads(), latency(mlp(29), SHAPE, 1),
                latency(mlp(29), SHAPE, 256))

    threads, b1, b256 = ray.get(trial.remote(board))
    end_board(board)
    assert threads == 2
    config = TrainConfig(dataset="digits", model="mlp", hidden=(29,), method="none",
                         epochs=1, device="cpu", threads=2)
    before = torch.get_num_threads()
    try:
        metrics = train(config).metrics
    finally:
        torch.set_num_threads(before)
    own = [cpu_latency(mlp(29), SHAPE, b) for b in (1, 256)]  # what train() timed, remembered
    assert [metrics[LATENCY_FIGURES[b]] for b in (1, 256)] == [f.ms for f in own]
    assert [metrics[LATENCY_SPREADS[b]] for b in (1, 256)] == [f.iqr_ms for f in own]
    for figure in (b1, b256, *own):
        assert figure.threads == LATENCY_POLICY.threads == 1
        assert figure.passes >= LATENCY_POLICY.min_passes
        assert figure.ms > 0 and figure.iqr_ms >= 0


@pytest.mark.parametrize("batch_size", [1, 256])
def test_batch_sizes_are_timed_apart(ray_session: None, batch_size: int) -> None:
    import ray

    board = start_board()
    measured = SharedLatency(board)(mlp(8), SHAPE, batch_size)
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, batch_size))) == \
        (measured.ms, measured.iqr_ms)
    other = 256 if batch_size == 1 else 1
    assert ray.get(board.get.remote(board_key(mlp(8), SHAPE, other))) is None
    end_board(board)


def test_a_resumed_sweep_starts_from_the_figures_in_mlflow(ray_session: None,
                                                           asha_sweep: SweepRecord) -> None:
    import ray

    from kdtune.config import TrainConfig
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
        config = run_config(row)
        model = build_student(config, data)
        for batch, metric in LATENCY_FIGURES.items():
            key = board_key(model, data.in_shape, batch)
            assert ray.get(board.get.remote(key)) == (row[f"metrics.{metric}"],
                                                      row[f"metrics.{LATENCY_SPREADS[batch]}"])
    end_board(board)


def test_figures_recorded_without_a_spread_are_seeded_without_one(
        ray_session: None, asha_sweep: SweepRecord) -> None:
    """A sweep whose trials logged no spread keeps their figures; a trial reading one of them
    gets the figure with an unknown (NaN) spread, which its cost metrics leave out."""
    import math

    import ray

    from kdtune.config import TrainConfig
    from kdtune.trainer import build_student, load_data

    runs = asha_sweep.tracker().trial_runs("asha")
    without = runs.drop(columns=[f"metrics.{m}" for m in LATENCY_SPREADS.values()])
    data = load_data(TrainConfig(dataset="digits"))
    board = start_board()
    assert seed_board(board, without, data) > 0
    row = without[without["metrics.latency_ms_b1"].notna()].iloc[0]
    config = run_config(row)
    ms, iqr = ray.get(board.get.remote(board_key(build_student(config, data),
                                                 data.in_shape, 1)))
    assert ms == row["metrics.latency_ms_b1"] and math.isnan(iqr)
    figure = SharedLatency(board)(build_student(config, data), data.in_shape, 1)
    assert figure.ms == ms and math.isnan(figure.iqr_ms)
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
    assert latency(mlp(16), SHAPE, 1).ms > 0
