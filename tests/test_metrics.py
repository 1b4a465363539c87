"""Metrics: accuracy, FLOPs, and CPU latency measured once per architecture."""

from __future__ import annotations

import time

import pytest
import torch

from kdtune.metrics import accuracy, architecture_key, count_flops, cpu_latency_ms
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
    first = cpu_latency_ms(a, (1, 8, 8), 4)
    calls: list[int] = []
    b.register_forward_hook(lambda *args: calls.append(1))  # copied along with the model
    assert cpu_latency_ms(b, (1, 8, 8), 4) == first and calls == []
    assert cpu_latency_ms(b, (1, 8, 8), 5) > 0 and calls  # another batch size is measured


@pytest.mark.parametrize(("budget_s", "passes"), [
    (0.1, 1 + 3),  # a slow pass: one warm-up, then 3 timed
    (0.04, 1 + 1),  # a pass longer than the whole budget: timed once after its warm-up
])
def test_latency_timing_stops_at_its_budget(budget_s: float, passes: int) -> None:
    """A slow forward is timed a few times, not warmup + repeats times."""
    from kdtune import metrics

    calls: list[int] = []

    class Slow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            time.sleep(0.05)
            return x

    assert metrics._time_forward(Slow(), (2,), 1, repeats=10, warmup=2,
                                 budget_s=budget_s) >= 50
    assert len(calls) == passes
