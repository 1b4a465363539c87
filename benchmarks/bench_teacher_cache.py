"""Benchmark 2: a KD trial with the teacher's per-view logits cached vs the teacher run live.

CIFAR-shaped synthetic data (3x32x32, pad-4 crop + flip = 162 views), a ResNet teacher and a
small ResNet student. Both trials are the same :class:`kdtune.trainer.TrainingRun` config
except ``teacher_outputs``: ``cached`` (the ``(N, 162, C)`` fp16 table, computed once before
the trials and *not* counted in the trial time) vs ``live`` (a teacher forward pass on every
augmented batch). A trial = building the ``TrainingRun`` + ``epochs`` x ``train_epoch``
(training loop and the per-epoch validation pass; the end-of-trial report is left out, it is
the same for both). Trials are interleaved (live, cached, cached, live, ...).
Target: cached >= 3x faster.

The view table's one-off cost is measured on its own (a fresh cache folder, so nothing is
read from disk) and printed in seconds, in live epochs, as break-even (the number of
training epochs over all trials after which the table has paid for itself) and in
trial-equivalents of this benchmark's trial and of 30- and 240-epoch trials.

The ceiling: per sample, live costs ``S + T`` and cached ``S`` (S = the student's
forward + backward + update, T = the teacher's forward), so the speedup is at most
``1 + T / S``; the pair decides whether 3x is reachable. The full run times two pairs:
ResNet-56 -> ResNet-8 (the usual "big teacher" case) and ResNet-20 -> ResNet-8.
Teachers are untrained (weights do not change the cost).

    .venv/bin/python -m benchmarks.bench_teacher_cache [--quick] [--pair resnet56:resnet8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks.common import (
    Result,
    emit,
    header,
    interleaved,
    machine,
    make_teacher,
    median,
    note,
    scratch,
    set_threads,
    spread,
)

TARGET = 3.0


def per_sample_costs(teacher_model, student_model, in_shape,
                     batch_size: int) -> tuple[float, float]:
    """Seconds per sample of the teacher's forward (eval, no grad) and of the student's
    forward + backward + SGD step, at the trial's batch size (for the ceiling line)."""
    import torch

    x = torch.randn(batch_size, *in_shape)
    y = torch.randint(0, 10, (batch_size,))
    opt = torch.optim.SGD(student_model.parameters(), lr=0.01)

    def teacher() -> None:
        with torch.no_grad():
            teacher_model.eval()(x)

    def student() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(student_model.train()(x), y).backward()
        opt.step()

    tt, ts = interleaved(teacher, student, repeats=5, warmup=1)
    return median(tt) / batch_size, median(ts) / batch_size


def measure(teacher_name: str, student_name: str, *, n_train: int, epochs: int, repeats: int,
            batch_size: int = 64) -> list[Result]:
    from kdtune.config import TrainConfig
    from kdtune.data import SyntheticSpec, load_dataset
    from kdtune.models import create_model
    from kdtune.teacher import load_teacher, view_key, view_logits
    from kdtune.trainer import TrainingRun

    pair = f"{teacher_name}->{student_name}"
    data = load_dataset("synthetic", synthetic=SyntheticSpec(n_train=n_train, n_test=50))
    aug = data.augment
    assert aug is not None and aug.num_views == 162
    with scratch("cache") as tmp:
        path = make_teacher(data, tmp / "teacher", teacher_name)
        teacher = load_teacher(path)
        # the one-off cost: every (training sample, view), fresh (KDTUNE_CACHE is empty)
        start = time.perf_counter()
        table = view_logits(teacher, data, aug)
        table_s = time.perf_counter() - start
        assert view_key(data, aug) in teacher.outputs
        base = dict(dataset="synthetic", model=student_name, method="vanilla", alpha=0.5,
                    temperature=4.0, teacher=str(path), epochs=epochs, batch_size=batch_size,
                    lr=0.05, device="cpu", seed=0)

        def trial(mode: str):
            def go() -> None:
                run = TrainingRun(TrainConfig(**base, teacher_outputs=mode), teacher=teacher,
                                  data=data)
                assert run.teacher_mode == ("views" if mode == "cached" else "live")
                for _ in range(epochs):
                    run.train_epoch()
            return go

        t_live, t_cached = interleaved(trial("live"), trial("cached"), repeats=repeats,
                                       warmup=1)
        t_fwd, s_step = per_sample_costs(teacher.model, create_model(
            student_name, data.num_classes, data.in_shape), data.in_shape, batch_size)
    speedup = median(t_live) / median(t_cached)
    n = len(data.x_train)
    res = emit(Result(
        f"teacher_cache[{pair}]", speedup, ">=", TARGET,
        raw=(f"trial of {epochs} epochs on {n} samples: live {spread(t_live)}, cached "
             f"{spread(t_cached)}"),
        extra={"live_s": t_live, "cached_s": t_cached, "table_s": table_s}))
    note(f"ceiling 1 + T/S = {1 + t_fwd / s_step:.2f}x (teacher forward {1e3 * t_fwd:.3f} "
         f"ms/sample, student train step {1e3 * s_step:.3f} ms/sample, batch {batch_size})")
    live_epoch = median(t_live) / epochs
    saved_per_epoch = (median(t_live) - median(t_cached)) / epochs
    note(f"view table ({n} x {aug.num_views} views x {data.num_classes} classes, fp16, "
         f"{table.numel() * 2 / 2**20:.1f} MiB): one-off {table_s:.1f} s = "
         f"{table_s / live_epoch:.1f} live epochs; pays for itself after "
         f"{table_s / saved_per_epoch:.0f} training epochs over all trials of the sweep")
    cached_epoch = median(t_cached) / epochs
    note(f"table in trial-equivalents (cached trials of the same data): "
         f"{table_s / median(t_cached):.1f} x this {epochs}-epoch trial, "
         f"{table_s / (30 * cached_epoch):.2f} x a 30-epoch trial, "
         f"{table_s / (240 * cached_epoch):.2f} x a 240-epoch trial "
         f"(live: {table_s / (30 * live_epoch):.2f} / {table_s / (240 * live_epoch):.2f})")
    return [res]


def run(quick: bool = False, threads: int = 1,
        pairs: Sequence[str] | None = None) -> list[Result]:
    set_threads(threads)
    header("2. KD trial: teacher outputs cached per augmentation view vs live teacher")
    note(machine())
    if pairs is None:
        pairs = ["resnet20:resnet8"] if quick else ["resnet56:resnet8", "resnet20:resnet8"]
    results: list[Result] = []
    for p in pairs:
        teacher, student = p.split(":")
        results += measure(teacher, student, n_train=40 if quick else 142,
                           epochs=2 if quick else 10, repeats=1 if quick else 5)
    return results


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 repeat: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--pair", action="append", metavar="TEACHER:STUDENT",
                        help="model presets, e.g. resnet56:resnet8 (repeatable)")
    args = parser.parse_args(argv)
    return run(args.quick, args.threads, args.pair)


if __name__ == "__main__":
    main()
