"""Timing helpers shared by the benchmarks.

Every figure a benchmark prints is a *ratio of two things measured side by side in one run*:
the two sides are interleaved (A B, B A, A B, ...) after a warm-up, so both see the same
machine noise (other work on a shared machine, CPU frequency, caches), and the median of the
repeats is compared. Absolute seconds are printed next to each ratio for the record, but only
the ratio is judged against its target.

A result line looks like::

    step[mlp-digits]: 1.03x (target <= 1.05x) PASS   KD 0.0213 s / CE 0.0207 s per epoch ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPACES = Path(__file__).resolve().parent / "spaces"
OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


@dataclass
class Result:
    """One judged figure: ``value`` compared with ``threshold`` by ``op``."""

    name: str
    value: float
    op: str  # "<=" or ">="
    threshold: float
    unit: str = "x"  # "x" for ratios, "%" for fractions
    raw: str = ""  # the raw seconds / counts behind the ratio
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return OPS[self.op](self.value, self.threshold)

    def fmt_value(self, v: float) -> str:
        return f"{100 * v:.1f}%" if self.unit == "%" else f"{v:.3g}{self.unit}"

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        text = (f"{self.name}: {self.fmt_value(self.value)} (target {self.op} "
                f"{self.fmt_value(self.threshold)}) {verdict}")
        return text + (f"   {self.raw}" if self.raw else "")


def emit(result: Result) -> Result:
    """Print the result line (and flush: benchmarks run long)."""
    print(result.line(), flush=True)
    return result


def note(text: str) -> None:
    """An informational line (not judged), indented under the results."""
    print(f"  . {text}", flush=True)


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """``median [min..max] (n)`` of a list of seconds, for the raw part of a line."""
    return f"{median(xs):.4g} s [{min(xs):.4g}..{max(xs):.4g}] (n={len(xs)})"


Timed = Callable[[], float | None]


def _time(fn: Timed) -> float:
    start = time.perf_counter()
    own = fn()
    return float(own) if own is not None else time.perf_counter() - start


def interleaved(a: Timed, b: Timed, *, repeats: int, warmup: int = 1
                ) -> tuple[list[float], list[float]]:
    """Measure ``a`` and ``b`` alternately; return their lists of seconds.

    Each callable either returns the seconds it measured itself (e.g. the trainer's own timer,
    which leaves out evaluation) or ``None`` to be timed around the call. The order flips every
    repeat (AB, BA, AB, ...) so neither side always runs first; ``warmup`` rounds of both are
    run first and thrown away (allocator, caches, lazy initialisation).
    """
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(_time(a))
            tb.append(_time(b))
        else:
            tb.append(_time(b))
            ta.append(_time(a))
    return ta, tb


def set_threads(n: int) -> None:
    """Torch intra-op threads for this process (a trial gets ``cpus`` threads)."""
    import torch

    torch.set_num_threads(n)


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder for every store a benchmark writes (MLflow, Ray, caches);
    ``KDTUNE_CACHE`` points into it, so no cached teacher output from elsewhere is reused."""
    folder = Path(tempfile.mkdtemp(prefix=f"kdtune-bench-{prefix}-"))
    old = os.environ.get("KDTUNE_CACHE")
    os.environ["KDTUNE_CACHE"] = str(folder / "cache")
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("KDTUNE_CACHE", None)
        else:
            os.environ["KDTUNE_CACHE"] = old
        if keep:
            print(f"  . kept {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def machine() -> str:
    """One line about the machine the numbers come from."""
    import platform

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()} {os.cpu_count()} CPUs, load avg {load:.2f}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
            f"python {platform.python_version()}")


def make_teacher(data: Any, folder: Path, model: str, *, val_fraction: float = 0.1,
                 seed: int = 0, **kwargs: Any) -> Path:
    """A teacher checkpoint for ``data`` with freshly initialised (untrained) weights.

    For timing, a teacher's weights do not matter (its forward pass costs the same), so the
    step/cache/data-path benchmarks skip training it. Written with kdtune's own
    :func:`kdtune.teacher.save_teacher`, so it carries a real fingerprint.
    """
    import torch

    from kdtune.models import create_model
    from kdtune.teacher import data_spec, save_teacher

    torch.manual_seed(seed)
    net = create_model(model, data.num_classes, data.in_shape, **kwargs)
    spec = {"name": model, "kwargs": {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in kwargs.items()}}
    return save_teacher(net, spec, data_spec(data, 0, val_fraction), {}, folder)


def save_results(results: Sequence[Result], path: str | Path) -> None:
    Path(path).write_text(json.dumps([{**asdict(r), "passed": r.passed} for r in results],
                                     indent=2, default=str))


def python() -> str:
    """The interpreter running the benchmarks (the project's .venv when run via make)."""
    return sys.executable
