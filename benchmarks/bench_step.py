"""Benchmark 1: a KD training step with cached teacher logits vs a plain CE step.

Two :class:`kdtune.trainer.TrainingRun` objects train the *same* student (same model, seed,
batches) on the same data: one with ``method: none`` (cross-entropy only), one with
``method: vanilla`` whose teacher logits come from kdtune's cache (``teacher_outputs:
cached``). Their epochs are interleaved and timed with the trainer's own clock
(``run.elapsed``: the training loop only, not the validation pass that ``train_epoch`` runs
after it). Target: KD step <= 1.05x the CE step.

Two settings:

* ``mlp-digits``: MLP 64 student on digits (no augmentation: the un-augmented logits table,
  ``teacher_mode == "cached"``) -- tiny steps, where the fixed per-step cost of the KD loss
  weighs most;
* ``resnet8-synthetic``: ResNet-8 on CIFAR-shaped synthetic data with pad-4 crop + flip
  (``teacher_mode == "views"``: per-(sample, view) fp16 logits looked up per batch).

The teacher's weights are untrained: in cached mode it never runs during the step.

    .venv/bin/python -m benchmarks.bench_step [--quick]
"""

from __future__ import annotations

import argparse
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

TARGET = 1.05


def measure(name: str, data, student: dict, teacher: dict, *, epochs_per_sample: int,
            repeats: int, batch_size: int = 64) -> Result:
    from kdtune.config import TrainConfig
    from kdtune.teacher import load_teacher
    from kdtune.trainer import TrainingRun

    with scratch("step") as tmp:
        path = make_teacher(data, tmp / "teacher", **teacher)
        tchr = load_teacher(path)
        base = dict(dataset=data.name, device="cpu", seed=0, batch_size=batch_size,
                    epochs=100_000, lr=0.01, teacher=str(path), **student)
        ce = TrainingRun(TrainConfig(**base, method="none"), teacher=tchr, data=data)
        kd = TrainingRun(TrainConfig(**base, method="vanilla", alpha=0.5, temperature=4.0,
                                     teacher_outputs="cached"), teacher=tchr, data=data)
        assert ce.teacher_mode == "none" and kd.teacher_mode in ("cached", "views")

        def epochs(run: TrainingRun):
            def go() -> float:
                before = run.elapsed
                for _ in range(epochs_per_sample):
                    run.train_epoch()
                return run.elapsed - before  # the training loop only (trainer's own clock)
            return go

        t_ce, t_kd = interleaved(epochs(ce), epochs(kd), repeats=repeats, warmup=1)
    steps = (len(data.x_train) // batch_size) * epochs_per_sample
    ratio = median(t_kd) / median(t_ce)
    loss_ce, loss_kd = loss_only(batch_size, data.num_classes, repeats=200)
    result = emit(Result(
        f"step[{name}]", ratio, "<=", TARGET,
        raw=(f"KD ({kd.teacher_mode}) {1e3 * median(t_kd) / steps:.3f} ms/step vs CE "
             f"{1e3 * median(t_ce) / steps:.3f} ms/step; per sample of {epochs_per_sample} "
             f"epoch(s): KD {spread(t_kd)}, CE {spread(t_ce)}"),
        extra={"kd_s": t_kd, "ce_s": t_ce, "steps": steps}))
    diff_ms = 1e3 * (median(t_kd) - median(t_ce)) / steps
    note(f"where the difference goes: the loss alone (forward + backward on {batch_size}x"
         f"{data.num_classes} logits) costs CE {1e3 * loss_ce:.3f} ms, KD {1e3 * loss_kd:.3f} ms "
         f"(+{1e3 * (loss_kd - loss_ce):.3f} ms); the measured step difference is "
         f"{diff_ms:+.3f} ms")
    return result


def loss_only(batch_size: int, classes: int, *, repeats: int) -> tuple[float, float]:
    """Median seconds of ``distillation_loss`` forward + backward alone, CE vs vanilla KD."""
    import torch

    from kdtune.methods import distillation_loss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(batch_size, classes, generator=g).requires_grad_(True)
    t = torch.randn(batch_size, classes, generator=g).half()
    y = torch.randint(0, classes, (batch_size,), generator=g)

    def step(method: str, teacher: torch.Tensor | None):
        def go() -> None:
            loss = distillation_loss(method, s, None if teacher is None else teacher.float(), y,
                                     alpha=0.5, temperature=4.0)
            loss.backward()
            s.grad = None
        return go

    ce, kd = interleaved(step("none", None), step("vanilla", t), repeats=repeats, warmup=5)
    return median(ce), median(kd)


def run(quick: bool = False, threads: int = 1) -> list[Result]:
    from kdtune.data import SyntheticSpec, load_dataset

    set_threads(threads)
    header("1. KD step with cached teacher logits vs plain CE step (same student)")
    note(machine())
    digits = load_dataset("digits")
    synth = load_dataset("synthetic", synthetic=SyntheticSpec(
        n_train=400 if quick else 1200, n_test=50))
    results = [
        measure("mlp-digits", digits, {"model": "mlp", "hidden": (64,)},
                {"model": "mlp", "hidden": (1200, 1200)},
                epochs_per_sample=2 if quick else 10, repeats=5 if quick else 21),
        measure("resnet8-synthetic", synth, {"model": "resnet8"},
                {"model": "resnet", "blocks": (1, 0, 0, 0), "width": 8},
                epochs_per_sample=1, repeats=3 if quick else 11),
    ]
    note("both sides: same student, seed and batches; times from the trainer's own clock "
         "(training loop only); teacher logits fp16 table, looked up per batch")
    return results


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    return run(args.quick, args.threads)


if __name__ == "__main__":
    main()
