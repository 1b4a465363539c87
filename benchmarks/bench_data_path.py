"""Benchmark 4: samples/s of the data path alone vs the student's own training throughput.

The data path is exactly what :meth:`kdtune.trainer.TrainingRun.train_epoch` does before the
student sees a batch: shuffled index batches (``run.batches()``), gathering the images from
the in-memory tensor, drawing a view per sample and applying pad-4 crop + flip as one batched
gather (``Augmentation.sample_views`` / ``apply``), and looking the teacher's logits up in
the per-view fp16 table (``run.teacher_outputs``). The student side is forward + KD loss +
backward + SGD step on batches prepared beforehand. The two are interleaved epoch by epoch.

CIFAR-shaped synthetic data (3x32x32, 162 views), batch 64; students ResNet-8 (the benchmark's
small ResNet) and an MLP 64 (a very cheap student on the same images: the hardest case for
the data path). The view table is filled with random fp16 values of the right shape: a
lookup costs the same whatever the values, and computing 162 views of a real teacher is
benchmark 2's business. Target: data path faster than the model (ratio >= 1; the share of a
step it takes is printed too).

    .venv/bin/python -m benchmarks.bench_data_path [--quick]
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

TARGET = 1.0


def measure(name: str, data, student: dict, *, repeats: int, batch_size: int = 64) -> Result:
    import torch

    from kdtune.config import TrainConfig
    from kdtune.methods import distillation_loss
    from kdtune.teacher import load_teacher, view_key
    from kdtune.trainer import TrainingRun

    aug = data.augment
    with scratch("data") as tmp:
        path = make_teacher(data, tmp / "teacher", "resnet", blocks=(1, 0, 0, 0), width=8)
        teacher = load_teacher(path)
        g = torch.Generator().manual_seed(0)
        teacher.outputs[view_key(data, aug)] = torch.randn(
            len(data.x_train), aug.num_views, data.num_classes, generator=g).half()
        cfg = TrainConfig(dataset="synthetic", method="vanilla", alpha=0.5, temperature=4.0,
                          teacher=str(path), teacher_outputs="cached", epochs=1000,
                          batch_size=batch_size, lr=0.01, device="cpu", **student)
        tr = TrainingRun(cfg, teacher=teacher, data=data)
        assert tr.teacher_mode == "views"

    held: list = []

    def data_epoch() -> None:  # the data path of TrainingRun.train_epoch, nothing else
        for idx in tr.batches():
            x, y = tr.x_train[idx], tr.y_train[idx]
            views = tr.augment.sample_views(len(idx), tr.generator)
            x = tr.augment.apply(x, views)
            held[:] = (x, y, tr.teacher_outputs(idx, x, views))

    batches = []
    for idx in tr.batches():
        views = tr.augment.sample_views(len(idx), tr.generator)
        x = tr.augment.apply(tr.x_train[idx], views)
        batches.append((x, tr.y_train[idx], tr.teacher_outputs(idx, x, views)))
    tr.model.train()
    opt = tr.optimizer

    def model_epoch() -> None:  # the student's own work on ready batches
        for x, y, t in batches:
            loss = distillation_loss("vanilla", tr.forward(x).float(), t, y, alpha=0.5,
                                     temperature=4.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t_data, t_model = interleaved(data_epoch, model_epoch, repeats=repeats, warmup=1)
    n = sum(len(b[0]) for b in batches)
    data_sps, model_sps = n / median(t_data), n / median(t_model)
    ratio = data_sps / model_sps
    return emit(Result(
        f"data_path[{name}]", ratio, ">=", TARGET,
        raw=(f"data path {data_sps:,.0f} samples/s vs student {model_sps:,.0f} samples/s; "
             f"data path = {100 / (1 + ratio):.1f}% of a step; epoch of {n}: data "
             f"{spread(t_data)}, model {spread(t_model)}"),
        extra={"data_s": t_data, "model_s": t_model, "samples": n}))


def run(quick: bool = False, threads: int = 1) -> list[Result]:
    from kdtune.data import SyntheticSpec, load_dataset

    set_threads(threads)
    header("4. data path (index + batched augmentation + view lookup) vs student throughput")
    note(machine())
    data = load_dataset("synthetic", synthetic=SyntheticSpec(
        n_train=600 if quick else 5000, n_test=50))
    results = [measure("resnet8", data, {"model": "resnet8"}, repeats=3 if quick else 7),
               measure("mlp64", data, {"model": "mlp", "hidden": (64,)},
                       repeats=3 if quick else 15)]
    note(f"{len(data.x_train)} training images 3x32x32 in memory, batch 64, "
         f"{data.augment.num_views} views, random fp16 view table")
    return results


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    return run(args.quick, args.threads)


if __name__ == "__main__":
    main()
