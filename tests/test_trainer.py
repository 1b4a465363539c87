"""The shared trainer: determinism, callbacks, stop-and-resume, final metrics, teacher outputs.

Everything runs on the CPU with tiny models (a few hundred milliseconds per run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from method_values import valid_params

from kdtune.config import TrainConfig
from kdtune.data import DataSplits, SyntheticSpec, load_dataset
from kdtune.errors import KdtuneError
from kdtune.methods import get_method, list_methods
from kdtune.teacher import Teacher, load_teacher, save_teacher
from kdtune.trainer import (
    TrainingRun,
    TrainResult,
    load_data,
    lr_schedule,
    resolve_device,
    train,
)
from kdtune.vocabulary import LATENCY_SPREAD_METRICS, TEACHER_LATENCY_SPREAD

# Metrics that measure wall time: they differ between identical runs.
TIMED = {"train_time_s", "elapsed_s", "latency_ms_b1", "latency_ms_b256", "speedup",
         "teacher_latency_ms_b256", *LATENCY_SPREAD_METRICS, TEACHER_LATENCY_SPREAD}
SYNTH = SyntheticSpec(num_classes=4, in_shape=(3, 16, 16), n_train=96, n_test=24, seed=1)


class Stop(Exception):
    """Raised by a callback to stop a run mid-way, as a killed process would."""


def untimed(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMED}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data(TrainConfig())


@pytest.fixture(scope="module")
def synthetic() -> DataSplits:
    return load_dataset("synthetic", synthetic=SYNTH)


@pytest.fixture(scope="module")
def synthetic_teacher(synthetic: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP teacher on the synthetic 3x16x16 set (trained without augmentation)."""
    cfg = TrainConfig(dataset="synthetic", model="mlp", hidden=(32,), method="none", epochs=3,
                      augment=False, batch_size=32, device="cpu")
    result = train(cfg, data=synthetic, measure_latency=False)
    return save_teacher(result.model, {"name": "mlp", "kwargs": {"hidden": [32]}},
                        result.data_spec, result.metrics, tmp_path_factory.mktemp("synth-t"))


# -- determinism ----------------------------------------------------------------------------
def test_same_config_and_seed_give_identical_runs(tiny_student, teacher: Teacher,
                                                  digits: DataSplits) -> None:
    cfg = tiny_student(dropout=0.2, epochs=3)
    a = train(cfg, teacher=teacher, data=digits, measure_latency=False)
    b = train(cfg, teacher=teacher, data=digits, measure_latency=False)
    assert untimed(a.metrics) == untimed(b.metrics)
    assert [untimed(h) for h in a.history] == [untimed(h) for h in b.history]
    assert same_weights(a.model, b.model)

    c = train(cfg.replace(seed=1), teacher=teacher, data=digits, measure_latency=False)
    assert not same_weights(a.model, c.model)
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


def test_teacher_by_path_or_object_gives_the_same_run(tiny_student, teacher: Teacher) -> None:
    # Loading the teacher inside the run must not shift the student's RNG (dropout stream).
    cfg = tiny_student(dropout=0.3, epochs=2)
    by_path = train(cfg, measure_latency=False)
    by_object = train(cfg, teacher=teacher, measure_latency=False)
    assert untimed(by_path.metrics) == untimed(by_object.metrics)
    assert same_weights(by_path.model, by_object.model)


# -- callbacks and history ------------------------------------------------------------------
def test_callbacks_run_once_per_epoch(tiny_student, digits: DataSplits) -> None:
    seen: list[tuple[dict, TrainingRun]] = []
    result = train(tiny_student(epochs=3), [lambda m, run: seen.append((dict(m), run))],
                   data=digits, measure_latency=False)
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3]
    for metrics, run in seen:
        assert {"train_loss", "val_accuracy", "epoch", "elapsed_s"} <= metrics.keys()
        assert isinstance(run, TrainingRun) and run is seen[0][1]
        assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["train_loss"] > 0
    elapsed = [m["elapsed_s"] for m, _ in seen]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert [m for m, _ in seen] == result.history


def test_history_never_holds_test_metrics(tiny_student, digits: DataSplits) -> None:
    result = train(tiny_student(epochs=2), data=digits, measure_latency=False)
    assert all(not any("test" in key for key in h) for h in result.history)


def test_test_split_does_not_influence_training(tiny_student, teacher: Teacher,
                                                digits: DataSplits) -> None:
    """Scrambling the test set changes test_accuracy only: nothing before the report uses it."""
    g = torch.Generator().manual_seed(0)
    scrambled = dataclasses.replace(
        digits, x_test=torch.randn(digits.x_test.shape, generator=g),
        y_test=torch.randint(0, digits.num_classes, digits.y_test.shape, generator=g))
    cfg = tiny_student(epochs=2)
    real = train(cfg, teacher=teacher, data=digits, measure_latency=False)
    fake = train(cfg, teacher=teacher, data=scrambled, measure_latency=False)
    assert same_weights(real.model, fake.model)
    assert [untimed(h) for h in real.history] == [untimed(h) for h in fake.history]
    assert real.metrics["val_accuracy"] == fake.metrics["val_accuracy"]
    assert real.metrics["test_accuracy"] != fake.metrics["test_accuracy"]


# -- final metrics --------------------------------------------------------------------------
def test_final_metrics_with_teacher(tiny_student, teacher: Teacher,
                                    digits: DataSplits) -> None:
    result = train(tiny_student(epochs=1), teacher=teacher, data=digits)
    assert isinstance(result, TrainResult)
    m = result.metrics
    for key in ("val_accuracy", "test_accuracy", "params", "flops", "latency_ms_b1",
                "latency_ms_b256", "speedup", "train_time_s"):
        assert key in m, key
    assert 0 <= m["val_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1
    # MLP 64 -> 16 -> 10
    assert m["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert m["flops"] == 2 * (64 * 16 + 16 * 10)
    assert m["latency_ms_b1"] > 0 and m["latency_ms_b256"] > 0 and m["train_time_s"] > 0
    assert m["speedup"] > 0 and m["teacher_params"] > m["params"]
    assert result.data_spec == {"dataset": "digits", "split_seed": 0, "val_fraction": 0.1,
                                "num_classes": 10, "in_shape": [1, 8, 8]}


def test_final_metrics_without_teacher(tiny_student, digits: DataSplits) -> None:
    m = train(tiny_student(method="none", teacher=None, epochs=1), data=digits).metrics
    assert "speedup" not in m and "teacher_params" not in m
    assert {"val_accuracy", "test_accuracy", "params", "flops", "latency_ms_b1",
            "latency_ms_b256", "train_time_s"} <= m.keys()


@pytest.mark.parametrize("method", [m for m in list_methods()
                                    if get_method(m).needs_teacher_model])
def test_method_needing_a_teacher_without_one(method: str, digits: DataSplits) -> None:
    cfg = TrainConfig(method=method, method_params=valid_params(method), hidden=(16,), epochs=1)
    with pytest.raises(KdtuneError, match=f"method {method!r} needs a teacher"):
        train(cfg, data=digits)


def test_every_method_trains(tiny_student, teacher: Teacher, digits: DataSplits) -> None:
    for method in list_methods():
        cfg = tiny_student(method=method, method_params=valid_params(method), epochs=1)
        result = train(cfg, teacher=teacher, data=digits, measure_latency=False)
        assert result.history[0]["train_loss"] > 0, method


# -- stop and resume ------------------------------------------------------------------------
@pytest.mark.parametrize(("schedule", "method"), [
    ("multistep", "none"), ("cosine", "none"), ("multistep", "vanilla"), ("cosine", "vanilla"),
])
def test_stop_and_resume_matches_uninterrupted(schedule: str, method: str, tiny_student,
                                               teacher: Teacher, digits: DataSplits,
                                               tmp_path: Path) -> None:
    cfg = tiny_student(schedule=schedule, method=method, dropout=0.2, epochs=5, lr=0.1,
                       teacher=None if method == "none" else tiny_student().teacher)
    full = train(cfg, teacher=teacher, data=digits, measure_latency=False)

    ckpt = tmp_path / "run.pt"

    def stop_at_2(metrics: Mapping[str, float], run: TrainingRun) -> None:
        if metrics["epoch"] == 2:
            run.save_checkpoint(ckpt)
            raise Stop

    with pytest.raises(Stop):
        train(cfg, [stop_at_2], teacher=teacher, data=digits, measure_latency=False)
    torch.manual_seed(12345)  # the resumed process starts from some other RNG state
    torch.rand(7)

    epochs_after: list[int] = []
    resumed = train(cfg, [lambda m, run: epochs_after.append(m["epoch"])], teacher=teacher,
                    data=digits, resume_from=ckpt, measure_latency=False)
    assert epochs_after == [3, 4, 5]
    assert same_weights(full.model, resumed.model)
    assert untimed(full.metrics) == untimed(resumed.metrics)
    assert [untimed(h) for h in full.history] == [untimed(h) for h in resumed.history]
    if schedule == "multistep":  # the lr crossed milestones (2, 3, 4) on both sides of the stop
        assert [h["lr"] for h in resumed.history] == pytest.approx(
            [0.1, 0.02, 0.004, 0.0008, 0.0008])


def test_stop_and_resume_with_augmentation(synthetic: DataSplits, tmp_path: Path) -> None:
    cfg = TrainConfig(dataset="synthetic", model="resnet", blocks=(1, 0, 0, 0), width=4,
                      method="none", epochs=3, batch_size=32, device="cpu", seed=3)
    full = train(cfg, data=synthetic, measure_latency=False)
    ckpt = tmp_path / "aug.pt"

    def stop_at_1(metrics: Mapping[str, float], run: TrainingRun) -> None:
        assert run.augment is not None
        run.save_checkpoint(ckpt)
        raise Stop

    with pytest.raises(Stop):
        train(cfg, [stop_at_1], data=synthetic, measure_latency=False)
    resumed = train(cfg, data=synthetic, resume_from=ckpt, measure_latency=False)
    assert same_weights(full.model, resumed.model)  # BatchNorm buffers included


def test_checkpoint_of_another_config_is_refused(tiny_student, digits: DataSplits,
                                                 tmp_path: Path) -> None:
    cfg = tiny_student(method="none", teacher=None, epochs=2)
    ckpt = tmp_path / "run.pt"
    train(cfg, [lambda m, run: run.save_checkpoint(ckpt)], data=digits, measure_latency=False)
    for other in (cfg.replace(lr=0.01), cfg.replace(seed=1), cfg.replace(epochs=3)):
        with pytest.raises(KdtuneError, match="another config"):
            train(other, data=digits, resume_from=ckpt)


def test_non_checkpoint_is_refused(tiny_student, teacher_path: Path,
                                   digits: DataSplits) -> None:
    cfg = tiny_student(method="none", teacher=None, epochs=1)
    with pytest.raises(KdtuneError, match="not a kdtune training checkpoint"):
        train(cfg, data=digits, resume_from=teacher_path)


def test_checkpoint_loads_weights_only(tiny_student, digits: DataSplits, tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    train(tiny_student(method="none", teacher=None, epochs=3),
          [lambda m, run: run.save_checkpoint(ckpt)], data=digits, measure_latency=False)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 3 and state["format"] == "kdtune-run/1"
    assert not list(tmp_path.glob("*.tmp"))  # atomic save leaves no temp files


# -- schedules and batches ------------------------------------------------------------------
def test_schedules() -> None:
    def lrs(schedule: str, epochs: int) -> list[float]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = lr_schedule(TrainConfig(schedule=schedule, epochs=epochs), opt)
        out = []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("multistep", 10) == pytest.approx([1] * 3 + [0.2] * 3 + [0.04] * 2
                                                 + [0.008] * 2)
    cosine = lrs("cosine", 10)
    assert cosine[0] == 1.0 and cosine == sorted(cosine, reverse=True) and cosine[-1] < 0.05


def test_batches_cover_each_sample_once(tiny_student, digits: DataSplits) -> None:
    run = TrainingRun(tiny_student(method="none", teacher=None, batch_size=64), data=digits)
    batches = list(run.batches())
    n = len(digits.x_train)
    assert all(len(b) == 64 for b in batches) and len(batches) == n // 64
    idx = torch.cat(batches)
    assert len(set(idx.tolist())) == len(idx)


def test_cuda_device_without_gpu_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(KdtuneError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


# -- conv students, augmentation and the live teacher path -----------------------------------
STUDENTS = [
    dict(model="resnet", blocks=(1, 1, 0, 0), width=4, stem_stride=1),
    dict(model="wrn", depth=10, widen_factor=1),
]


@pytest.mark.parametrize("student", STUDENTS, ids=["resnet", "wrn"])
def test_conv_students_on_digits(student: dict, tiny_student, teacher: Teacher,
                                 digits: DataSplits) -> None:
    cfg = tiny_student(hidden=None, epochs=1, batch_size=128, **student)
    run = TrainingRun(cfg, teacher=teacher, data=digits)
    assert run.augment is None and run.teacher_logits is not None
    result = train(cfg, teacher=teacher, data=digits, measure_latency=False)
    assert result.history[0]["train_loss"] > 0 and result.metrics["params"] > 0


def test_digits_cannot_augment(tiny_student, digits: DataSplits) -> None:
    with pytest.raises(KdtuneError, match="no augmentation"):
        TrainingRun(tiny_student(augment=True), data=digits)


@pytest.mark.parametrize("student", STUDENTS, ids=["resnet", "wrn"])
def test_augmented_batches_get_live_teacher_outputs(student: dict, synthetic: DataSplits,
                                                    synthetic_teacher: Path) -> None:
    teacher = load_teacher(synthetic_teacher)
    cfg = TrainConfig(dataset="synthetic", method="vanilla", teacher=str(synthetic_teacher),
                      epochs=1, batch_size=32, device="cpu", **student)
    run = TrainingRun(cfg, teacher=teacher, data=synthetic)
    assert run.augment is not None  # on by default for 3x16x16 images
    # un-augmented logits would belong to another view; per-view logits are not computed
    # for a single run unless asked for (teacher_outputs="cached")
    assert run.teacher_logits is None and run.teacher_mode == "live"

    idx = torch.arange(8)
    views = run.augment.sample_views(8, torch.Generator().manual_seed(0))
    x_aug = run.augment.apply(run.x_train[idx], views)
    assert not torch.equal(x_aug, run.x_train[idx])
    with torch.no_grad():
        expected = teacher.model(x_aug)
    assert torch.equal(run.teacher_outputs(idx, x_aug, views), expected)

    # In a real epoch the teacher sees exactly the (augmented) batch the student sees.
    seen_by: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    hooks = [m.register_forward_pre_hook(lambda mod, args, who=who: seen_by[who].append(
                 args[0].detach().clone()))
             for who, m in (("teacher", teacher.model), ("student", run.model))]
    try:
        metrics = run.train_epoch()
    finally:
        for h in hooks:
            h.remove()
    train_batches = seen_by["student"][: len(seen_by["teacher"])]
    assert len(seen_by["teacher"]) == len(synthetic.x_train) // 32
    assert all(torch.equal(t, s) for t, s in zip(seen_by["teacher"], train_batches, strict=True))
    assert metrics["train_loss"] > 0


def test_unaugmented_run_uses_cached_logits(synthetic: DataSplits,
                                            synthetic_teacher: Path) -> None:
    teacher = load_teacher(synthetic_teacher)
    cfg = TrainConfig(dataset="synthetic", model="resnet", blocks=(1, 0, 0, 0), width=4,
                      method="vanilla", teacher=str(synthetic_teacher), augment=False,
                      epochs=1, batch_size=32, device="cpu")
    run = TrainingRun(cfg, teacher=teacher, data=synthetic)
    assert run.augment is None and run.teacher_logits is not None
    with torch.no_grad():
        assert torch.allclose(run.teacher_logits, teacher.model(synthetic.x_train), atol=1e-5)
    idx = torch.tensor([3, 0, 5])
    assert torch.equal(run.teacher_outputs(idx, run.x_train[idx], None),
                       run.teacher_logits[idx])
    calls: list[int] = []
    hook = teacher.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        run.train_epoch()
    finally:
        hook.remove()
    assert calls == []  # no live teacher forward passes without augmentation
    result = train(cfg, teacher=teacher, data=synthetic, measure_latency=False)
    assert result.metrics["teacher_test_accuracy"] >= 0


def test_teacher_of_other_data_is_refused_by_the_trainer(teacher: Teacher,
                                                         synthetic: DataSplits) -> None:
    cfg = TrainConfig(dataset="synthetic", method="vanilla", hidden=(8,), epochs=1)
    with pytest.raises(KdtuneError) as info:
        TrainingRun(cfg, teacher=teacher, data=synthetic)
    msg = str(info.value)
    assert "num_classes 10 (student: 4)" in msg and "dataset 'digits'" in msg


# -- the warm-up and training progress -----------------------------------------------------
def test_warm_up_scales_the_distillation_term_and_progress_is_the_epoch(
        tiny_student, teacher: Teacher, digits: DataSplits) -> None:
    """With alpha 0 the batch loss is ``min(1, e / kd_warmup) * soft``: the reported epoch
    losses are the recorded soft terms scaled so; ``progress`` is the 0-based epoch."""
    from kdtune.methods import register_method, unregister_method
    from kdtune.trainer import warmup_scale

    seen: list[tuple[int, float, int]] = []

    @register_method("recorded", uses_progress=True, batch_level=True)
    def recorded(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 labels: torch.Tensor, *, temperature: float, progress: int) -> torch.Tensor:
        soft = torch.nn.functional.mse_loss(student_logits, teacher_logits)
        seen.append((progress, soft.item(), len(labels)))
        return soft

    try:
        cfg = tiny_student(method="recorded", alpha=0.0, kd_warmup=3, epochs=4)
        history = train(cfg, teacher=teacher, data=digits, measure_latency=False).history
    finally:
        unregister_method("recorded")
    assert [warmup_scale(e, 3) for e in (1, 2, 3, 4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert warmup_scale(1, 0) == 1.0
    assert sorted({p for p, _, _ in seen}) == [0, 1, 2, 3]
    for epoch, row in enumerate(history):
        batches = [(soft, n) for p, soft, n in seen if p == epoch]
        scale = warmup_scale(epoch + 1, 3)
        expected = sum(scale * soft * n for soft, n in batches) / sum(n for _, n in batches)
        assert row["train_loss"] == pytest.approx(expected, rel=1e-5)
