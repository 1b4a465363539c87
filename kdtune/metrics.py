"""Model quality and cost: accuracy, parameters, FLOPs, CPU latency."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from kdtune.models import count_params

__all__ = ["LatencyFn", "accuracy", "count_flops", "count_params", "cpu_latency_ms", "evaluate",
           "predict"]

LatencyFn = Callable[[nn.Module, tuple[int, ...], int], float]
"""``latency(model, in_shape, batch_size) -> ms``: how a run's final metrics time a model."""


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (put in eval mode) on ``x``, computed in batches, as float32."""
    model.eval()
    outs = [model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``(x, y)``."""
    logits = predict(model, x)
    loss = nn.functional.cross_entropy(logits, y.to(logits.device)).item() if len(y) else 0.0
    return accuracy(logits, y.to(logits.device)), loss


def count_flops(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one sample, counted by ``torch.utils.flop_counter``.

    A multiply-add counts as two FLOPs (PyTorch's convention). Counted once per
    (architecture, input shape) in this process.
    """
    key = (architecture_key(model), tuple(in_shape))
    if key not in _FLOPS:
        _FLOPS[key] = _count_flops(model, in_shape)
    return _FLOPS[key]


def _count_flops(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *in_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


#: Latency measured per architecture in this process: a sweep's worker (actors are reused)
#: measures each student architecture and batch size once, not once per trial or seed.
_LATENCY_MS: dict[tuple, float] = {}
_FLOPS: dict[tuple, int] = {}


def architecture_key(model: nn.Module) -> tuple:
    """Identifies a model's compute (class and parameter/buffer shapes), not its weights."""
    shapes = tuple((n, tuple(t.shape)) for n, t in model.state_dict().items())
    return type(model).__qualname__, shapes


def cpu_latency_ms(model: nn.Module, in_shape: tuple[int, ...], batch_size: int, *,
                   repeats: int = 10, warmup: int = 2, budget_s: float = 0.5) -> float:
    """Wall time in milliseconds of one forward pass of a batch on the CPU (fastest pass).

    The model is copied to the CPU and timed in eval mode; the original is not moved. After
    ``warmup`` passes, ``repeats`` passes are timed, but no more than fit in ``budget_s``
    (at least 3): a ResNet-8 batch of 256 takes ~150 ms on one core, and a trial should not
    spend seconds timing it. A model whose first pass alone exceeds the budget (a ResNet-50
    batch of 256 takes ~11 s on one core) is timed once more after it: at that length the
    noise is a small fraction. The result is remembered per (architecture, input shape, batch
    size, torch threads) in this process.
    """
    key = (architecture_key(model), tuple(in_shape), batch_size, torch.get_num_threads())
    if key not in _LATENCY_MS:
        _LATENCY_MS[key] = _time_forward(model, in_shape, batch_size, repeats, warmup,
                                         budget_s)
    return _LATENCY_MS[key]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block (as a trial sets them to its
    CPUs), restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _time_forward(model: nn.Module, in_shape: tuple[int, ...], batch_size: int, repeats: int,
                  warmup: int, budget_s: float) -> float:
    import copy

    cpu_model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch_size, *in_shape)
    at_least = 3
    for i in range(warmup):
        start = time.perf_counter()
        cpu_model(x)
        first = time.perf_counter() - start
        if i == 0 and first > budget_s / 4:
            at_least = 1 if first > budget_s else 3
            break  # a slow pass: once is warm enough
    times: list[float] = []
    while len(times) < repeats and (len(times) < at_least or sum(times) < budget_s):
        start = time.perf_counter()
        cpu_model(x)
        times.append(time.perf_counter() - start)
    # the fastest pass: noise (another trial on the core, the OS) only ever adds time, so the
    # minimum is what the model costs, and trials measured on different workers agree
    return 1000.0 * min(times)
