"""Metrics: accuracy, FLOPs, and CPU latency timed by one policy, once per architecture."""

from __future__ import annotations

import time

import pytest
import torch

from kdtune.metrics import (
    LATENCY_POLICY,
    Latency,
    TimingPolicy,
    accuracy,
    architecture_key,
    count_flops,
    cpu_latency,
)
from kdtune.models import create_model


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_flops_of_a_linear_model() -> None:
    model = create_model("mlp", 10, (1, 8, 8), hidden=())
    assert count_flops(model, (1, 8, 8)) == 2 * 64 * 10  # a multiply-add counts as 2


def test_flops_are_counted_once_per_architecture() -> None:
    a = create_model("mlp", 10, (1, 8, 8), hidden=(19,))
    first = count_flops(a, (1, 8, 8))
    assert first == 2 * (64 * 19 + 19 * 10)
    b = create_model("mlp", 10, (1, 8, 8), hidden=(19,))
    calls: list[int] = []
    b.register_forward_hook(lambda *args: calls.append(1))
    assert count_flops(b, (1, 8, 8)) == first and calls == []


def test_latency_is_measured_once_per_architecture() -> None:
    torch.manual_seed(0)
    a = create_model("mlp", 10, (1, 8, 8), hidden=(17,))
    b = create_model("mlp", 10, (1, 8, 8), hidden=(17,))  # other weights, same compute
    c = create_model("mlp", 10, (1, 8, 8), hidden=(18,))
    assert architecture_key(a) == architecture_key(b) != architecture_key(c)
    first = cpu_latency(a, (1, 8, 8), 4)
    calls: list[int] = []
    b.register_forward_hook(lambda *args: calls.append(1))  # copied along with the model
    assert cpu_latency(b, (1, 8, 8), 4) == first and calls == []
    assert cpu_latency(b, (1, 8, 8), 5).ms > 0 and calls  # another batch size is measured


@pytest.mark.parametrize("caller_threads", [1, 2])
def test_latency_is_timed_with_the_policy_threads_whatever_the_callers(
        caller_threads: int) -> None:
    """The figure does not depend on the threads of the process that times it (``kdtune
    train`` runs with every core's threads, a trial with its CPUs): timing runs with the
    policy's threads, and the caller's are restored."""
    model = create_model("mlp", 10, (1, 8, 8), hidden=(23 + caller_threads,))
    before = torch.get_num_threads()
    torch.set_num_threads(caller_threads)
    try:
        figure = cpu_latency(model, (1, 8, 8), 2)
        assert torch.get_num_threads() == caller_threads
    finally:
        torch.set_num_threads(before)
    assert figure.threads == LATENCY_POLICY.threads == 1
    # the median of passes timed for the policy's budget, with their spread
    assert figure.passes >= LATENCY_POLICY.min_passes
    assert figure.ms > 0 and figure.iqr_ms >= 0


def test_median_and_interquartile_range() -> None:
    figure = Latency.of([0.004, 0.001, 0.002, 0.003, 0.100], threads=1)
    assert figure.ms == pytest.approx(3.0)  # the median: a preempted pass does not move it
    assert figure.iqr_ms == pytest.approx(2.0)  # 4 ms - 2 ms
    assert (figure.passes, figure.threads) == (5, 1)
    once = Latency.of([0.25], threads=1)
    assert (once.ms, once.iqr_ms) == (pytest.approx(250.0), 0.0)


@pytest.mark.parametrize(("budget_s", "passes"), [
    (0.1, 1 + 3),  # a slow pass: one warm-up, then 3 timed
    (0.04, 1 + 1),  # a pass longer than the whole budget: timed once after its warm-up
])
def test_latency_timing_stops_at_its_budget(budget_s: float, passes: int) -> None:
    """A slow forward is timed a few times, not for as many passes as a fast one."""
    from kdtune import metrics

    calls: list[int] = []

    class Slow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            begin = time.thread_time()
            while time.thread_time() - begin < 0.05:  # 50 ms of compute on this thread
                pass
            return x

    policy = TimingPolicy(warmup_s=0.01, budget_s=budget_s)
    figure = metrics._time_forward(Slow(), (2,), 1, policy)
    assert len(calls) == passes and figure.passes == passes - 1
    assert figure.ms >= 50 and figure.iqr_ms >= 0


def test_passes_are_timed_by_the_timing_threads_cpu_clock() -> None:
    """With one torch thread the forward runs on the timing thread, whose CPU clock does not
    run while the OS gives the core to another process; with more, the wall clock."""
    from kdtune.metrics import pass_clock

    assert pass_clock(1) is time.thread_time  # Linux: a nanosecond thread clock
    assert pass_clock(2) is time.perf_counter
