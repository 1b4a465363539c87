"""Model quality and cost: accuracy, parameters, FLOPs, CPU latency."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from kdtune.models import count_params

__all__ = ["LATENCY_POLICY", "Latency", "LatencyFn", "TimingPolicy", "accuracy", "count_flops",
           "count_params", "cpu_latency", "evaluate", "predict"]


@dataclass(frozen=True)
class TimingPolicy:
    """How kdtune times a model on the CPU (:func:`cpu_latency`); every latency it reports --
    ``kdtune train``, a sweep's trials and finalists, the teacher on a sweep's driver -- is
    timed with :data:`LATENCY_POLICY`."""

    #: torch intra-op threads while timing, whatever the run's own threads: the figure does
    #: not depend on the machine's cores or a trial's CPUs, and a pass never waits for a
    #: second thread that the OS has given to another process. With one thread the forward
    #: runs on the timing thread itself, so each pass is timed by that thread's CPU clock
    #: (:func:`pass_clock`).
    threads: int = 1
    #: seconds of untimed passes first (at least one pass): caches, allocator, lazy kernels.
    warmup_s: float = 0.1
    #: seconds of timed passes (at least ``min_passes``; a model whose one pass outlasts this
    #: is timed once).
    budget_s: float = 0.4
    min_passes: int = 3


LATENCY_POLICY = TimingPolicy()


@dataclass(frozen=True)
class Latency:
    """A latency figure: the median of the timed passes (ms) and their interquartile range
    (ms). ``passes`` and ``threads`` say how it was timed (0 for a figure read from a
    record rather than timed in this process)."""

    ms: float
    iqr_ms: float
    passes: int = 0
    threads: int = 0

    @classmethod
    def of(cls, seconds: list[float], *, threads: int) -> Latency:
        """The figure of passes that took ``seconds`` each."""
        ms = [1000.0 * t for t in seconds]
        if len(ms) > 1:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = q3 = ms[0]
        return cls(statistics.median(ms), q3 - q1, len(ms), threads)


def pass_clock(threads: int) -> Callable[[], float]:
    """The clock a pass is timed by (seconds): with one torch thread, the calling thread's CPU
    clock -- on an idle core it reads what the wall clock reads (measured within 5% for a
    0.03 ms MLP pass, 0.3% for ResNet passes of milliseconds), and it stops while the OS runs
    another process on the core, the main noise of a shared machine; with more threads (whose
    work that clock would miss), or where the thread clock is coarse (Windows), the wall
    clock."""
    if threads == 1 and time.get_clock_info("thread_time").resolution <= 1e-6:
        return time.thread_time
    return time.perf_counter


LatencyFn = Callable[[nn.Module, tuple[int, ...], int], Latency]
"""``latency(model, in_shape, batch_size) -> Latency``: how a run's final metrics time a
model."""


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
_LATENCY: dict[tuple, Latency] = {}
_FLOPS: dict[tuple, int] = {}


def architecture_key(model: nn.Module) -> tuple:
    """Identifies a model's compute (class and parameter/buffer shapes), not its weights."""
    shapes = tuple((n, tuple(t.shape)) for n, t in model.state_dict().items())
    return type(model).__qualname__, shapes


def cpu_latency(model: nn.Module, in_shape: tuple[int, ...], batch_size: int, *,
                policy: TimingPolicy = LATENCY_POLICY) -> Latency:
    """The CPU latency of one forward pass of a batch of ``batch_size``, timed per ``policy``
    (kdtune's one way of timing, :data:`LATENCY_POLICY`): the median of the timed passes,
    with their interquartile range, each pass timed by :func:`pass_clock`.

    The model is copied to the CPU and timed in eval mode with ``policy.threads`` torch
    threads, whatever threads the caller runs with (restored after); the original is not
    moved. Warm-up passes run for ``policy.warmup_s`` (at least one pass), then passes are
    timed for ``policy.budget_s`` (at least ``policy.min_passes``) -- except a model whose
    warm-up pass alone outlasted the budget (a ResNet-50 batch of 256 takes ~11 s on one
    core), timed once: at that length the noise is a small fraction. The result is
    remembered per (architecture, input shape, batch size, timing threads) in this process.
    """
    key = (architecture_key(model), tuple(in_shape), batch_size, policy.threads)
    if key not in _LATENCY:
        with torch_threads(policy.threads):
            _LATENCY[key] = _time_forward(model, in_shape, batch_size, policy)
    return _LATENCY[key]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _time_forward(model: nn.Module, in_shape: tuple[int, ...], batch_size: int,
                  policy: TimingPolicy) -> Latency:
    import copy

    cpu_model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch_size, *in_shape)
    start = time.perf_counter()
    first = None
    while first is None or time.perf_counter() - start < policy.warmup_s:
        begin = time.perf_counter()
        cpu_model(x)
        first = first if first is not None else time.perf_counter() - begin
    at_least = 1 if first > policy.budget_s else policy.min_passes
    threads = torch.get_num_threads()
    clock = pass_clock(threads)
    times: list[float] = []
    start = time.perf_counter()  # the budget is wall time: what timing costs the run
    while len(times) < at_least or time.perf_counter() - start < policy.budget_s:
        begin = clock()
        cpu_model(x)
        times.append(clock() - begin)
    return Latency.of(times, threads=threads)
