"""Teacher outputs cached per augmentation view: same logits as live, right view mapping,
invalidated when the teacher changes, and chosen automatically by the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdtune.config import TrainConfig
from kdtune.data import DataSplits, SyntheticSpec, load_dataset
from kdtune.methods import distillation_loss
from kdtune.teacher import load_teacher, save_teacher, view_key, view_logits
from kdtune.trainer import TrainingRun, train

SYNTH = SyntheticSpec(num_classes=4, in_shape=(3, 16, 16), n_train=96, n_test=32, seed=1)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_dataset("synthetic", synthetic=SYNTH)


def _teacher(data: DataSplits, folder: Path, seed: int) -> Path:
    cfg = TrainConfig(dataset="synthetic", model="resnet", blocks=(1, 0, 0, 0), width=8,
                      method="none", epochs=2, batch_size=32, device="cpu", seed=seed)
    result = train(cfg, data=data, measure_latency=False)
    spec = {"name": "resnet", "kwargs": {"blocks": [1, 0, 0, 0], "width": 8}}
    return save_teacher(result.model, spec, result.data_spec, result.metrics, folder)


@pytest.fixture(scope="module")
def teacher_file(data: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _teacher(data, tmp_path_factory.mktemp("teacher"), seed=0)


def student(teacher_file: Path, **changes: object) -> TrainConfig:
    base = dict(dataset="synthetic", model="mlp", hidden=(16,), method="vanilla", alpha=0.3,
                temperature=4.0, teacher=str(teacher_file), epochs=1, batch_size=32,
                device="cpu")
    return TrainConfig(**{**base, **changes})


def test_view_logits_match_the_teacher_on_each_view(data: DataSplits, teacher_file: Path) -> None:
    teacher = load_teacher(teacher_file)
    aug = data.augment
    assert aug is not None and aug.num_views == 162
    table = view_logits(teacher, data, aug)
    assert table.shape == (len(data.x_train), 162, 4) and table.dtype == torch.float16
    for i, v in [(0, aug.identity_view), (5, 0), (17, 161), (40, aug.encode(1, 7, 1))]:
        x = aug.apply(data.x_train[i:i + 1], torch.tensor([v]))
        with torch.no_grad():
            live = teacher.model.eval()(x)[0]
        torch.testing.assert_close(table[i, v].float(), live, atol=2e-2, rtol=1e-2)
    # the identity view is the un-augmented image
    with torch.no_grad():
        plain = teacher.model(data.x_train[:8])
    torch.testing.assert_close(table[:8, aug.identity_view].float(), plain, atol=2e-2, rtol=1e-2)


def test_cached_and_live_give_the_same_loss(data: DataSplits, teacher_file: Path) -> None:
    teacher = load_teacher(teacher_file)
    cached = TrainingRun(student(teacher_file, teacher_outputs="cached"), teacher=teacher,
                         data=data)
    live = TrainingRun(student(teacher_file, teacher_outputs="live"), teacher=teacher, data=data)
    assert (cached.teacher_mode, live.teacher_mode) == ("views", "live")
    assert cached.augment is not None
    idx = torch.arange(32)
    views = cached.augment.sample_views(32, torch.Generator().manual_seed(3))
    x = cached.augment.apply(cached.x_train[idx], views)
    t_cached = cached.teacher_outputs(idx, x, views)
    t_live = live.teacher_outputs(idx, x, views)
    torch.testing.assert_close(t_cached, t_live, atol=2e-2, rtol=1e-2)
    s_logits = torch.randn(32, 4, generator=torch.Generator().manual_seed(4))
    y = cached.y_train[idx]
    losses = [distillation_loss("vanilla", s_logits, t, y, alpha=0.3, temperature=4.0)
              for t in (t_cached, t_live)]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-3, rtol=1e-3)


def test_cached_views_run_no_teacher_forward(data: DataSplits, teacher_file: Path) -> None:
    teacher = load_teacher(teacher_file)
    view_logits(teacher, data, data.augment)  # computed once, e.g. on a sweep's driver
    run = TrainingRun(student(teacher_file), teacher=teacher, data=data)  # teacher_outputs=auto
    assert run.teacher_mode == "views"
    calls: list[int] = []
    hook = teacher.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        run.train_epoch()
    finally:
        hook.remove()
    assert calls == []


def test_auto_without_precomputed_views_runs_live(data: DataSplits, teacher_file: Path) -> None:
    run = TrainingRun(student(teacher_file), data=data)
    assert run.teacher_mode == "live" and run.teacher_logits is None


def test_live_is_forced_even_when_views_exist(data: DataSplits, teacher_file: Path) -> None:
    teacher = load_teacher(teacher_file)
    view_logits(teacher, data, data.augment)
    run = TrainingRun(student(teacher_file, teacher_outputs="live"), teacher=teacher, data=data)
    assert run.teacher_mode == "live"


def test_another_teacher_gets_its_own_view_cache(data: DataSplits, teacher_file: Path,
                                                 tmp_path: Path) -> None:
    first = load_teacher(teacher_file)
    other = load_teacher(_teacher(data, tmp_path, seed=1))
    assert other.fingerprint != first.fingerprint
    a = view_logits(first, data, data.augment)
    b = view_logits(other, data, data.augment)
    assert not torch.equal(a, b)
    # the disk cache is keyed by fingerprint: a fresh copy of each teacher finds its own table
    key = view_key(data, data.augment)
    cache = Path(__import__("os").environ["KDTUNE_CACHE"]) / "teacher-outputs"
    assert (cache / f"{first.fingerprint}-{key}.pt").is_file()
    assert (cache / f"{other.fingerprint}-{key}.pt").is_file()
    assert torch.equal(view_logits(load_teacher(teacher_file), data, data.augment), a)


def test_cached_views_train_like_live(data: DataSplits, teacher_file: Path) -> None:
    """Same seed, same views: the cached-view run ends close to the live one (fp16 logits)."""
    teacher = load_teacher(teacher_file)
    runs = {mode: train(student(teacher_file, teacher_outputs=mode, epochs=2), teacher=teacher,
                        data=data, measure_latency=False)
            for mode in ("cached", "live")}
    losses = [runs[m].history[-1]["train_loss"] for m in ("cached", "live")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
