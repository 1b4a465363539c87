"""Teacher checkpoints: round trip, fingerprint, refusal of altered or mismatched files, the
teacher-output cache, and reuse by ``obtain_teacher``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from kdtune.config import TrainConfig
from kdtune.data import SyntheticSpec, load_dataset
from kdtune.errors import KdtuneError
from kdtune.metrics import predict
from kdtune.models import create_model
from kdtune.teacher import (
    FORMAT,
    Teacher,
    cache_dir,
    check_compatible,
    data_spec,
    fingerprint,
    load_teacher,
    read_checkpoint,
    save_teacher,
    train_logits,
    weights_hash,
)
from kdtune.teacher_store import find_teacher, obtain_teacher
from kdtune.trainer import load_data

DIGITS_SPEC = {"dataset": "digits", "split_seed": 0, "val_fraction": 0.1, "num_classes": 10,
               "in_shape": [1, 8, 8]}
MLP_SPEC = {"name": "mlp", "kwargs": {"hidden": [8]}}


class Evil:
    """Any pickled class: a ``weights_only`` load must refuse it."""


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", 10, (1, 8, 8), hidden=[8])


class ForwardCounter:
    """Counts real forward passes of a module with a forward hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._hook = module.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._hook.remove()


# -- checkpoint round trip and fingerprint --------------------------------------------------
def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = small_model()
    path = save_teacher(model, MLP_SPEC, DIGITS_SPEC, {"test_accuracy": 0.5}, tmp_path)
    teacher = load_teacher(path)
    assert path.name == f"teacher-mlp-{teacher.fingerprint}.pt"
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[key], value)
    assert teacher.spec["data"] == DIGITS_SPEC and teacher.spec["metrics"]["test_accuracy"] == 0.5
    assert teacher.in_shape == (1, 8, 8)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(teacher.model(x), model.eval()(x))


def test_checkpoint_loads_with_weights_only(teacher_path: Path) -> None:
    ckpt = torch.load(teacher_path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == FORMAT
    assert {"fingerprint", "model", "data", "metrics", "state_dict"} <= ckpt.keys()
    assert ckpt["data"] == DIGITS_SPEC


def test_fingerprint_is_stable_and_tracks_weights_and_split(tmp_path: Path) -> None:
    model = small_model()
    first = save_teacher(model, MLP_SPEC, DIGITS_SPEC, {}, tmp_path / "a")
    again = save_teacher(model, MLP_SPEC, DIGITS_SPEC, {"other": 1.0}, tmp_path / "b")
    assert first.name == again.name  # metrics are not part of the identity

    wh = weights_hash(model.state_dict())
    assert fingerprint(MLP_SPEC, DIGITS_SPEC, wh) == fingerprint(MLP_SPEC, dict(DIGITS_SPEC), wh)
    other_split = {**DIGITS_SPEC, "split_seed": 1}
    assert fingerprint(MLP_SPEC, other_split, wh) != fingerprint(MLP_SPEC, DIGITS_SPEC, wh)
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert weights_hash(model.state_dict()) != wh
    assert save_teacher(model, MLP_SPEC, DIGITS_SPEC, {}, tmp_path / "c").name != first.name


def test_one_teacher_serves_every_student_seed_but_one_split(teacher: Teacher) -> None:
    digits = load_data(TrainConfig(seed=7))
    check_compatible(teacher, data_spec(digits, 0, 0.1))  # student seed plays no part
    with pytest.raises(KdtuneError, match=r"split_seed 0 \(student: 1\)"):
        check_compatible(teacher, data_spec(load_data(TrainConfig(split_seed=1)), 1, 0.1))
    with pytest.raises(KdtuneError, match=r"val_fraction 0.1 \(student: 0.2\)"):
        check_compatible(teacher, data_spec(digits, 0, 0.2))


def test_teacher_of_other_dataset_is_refused(teacher: Teacher) -> None:
    synth = load_dataset("synthetic", synthetic=SyntheticSpec(
        num_classes=5, in_shape=(1, 8, 8), n_train=50, n_test=10))
    with pytest.raises(KdtuneError) as info:
        check_compatible(teacher, data_spec(synth, 0, 0.1))
    msg = str(info.value)
    assert teacher.fingerprint in msg
    assert "dataset 'digits' (student: 'synthetic')" in msg
    assert "num_classes 10 (student: 5)" in msg
    assert "\n" not in msg


# -- altered and missing files --------------------------------------------------------------
def test_tampered_weights_are_refused(teacher_path: Path, tmp_path: Path) -> None:
    ckpt = torch.load(teacher_path, weights_only=True)
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
    bad = tmp_path / "tampered.pt"
    torch.save(ckpt, bad)
    with pytest.raises(KdtuneError, match="fingerprint does not match"):
        load_teacher(bad)


def test_tampered_data_spec_is_refused(teacher_path: Path, tmp_path: Path) -> None:
    ckpt = torch.load(teacher_path, weights_only=True)
    ckpt["data"]["split_seed"] = 3  # pretending to be another split is caught too
    bad = tmp_path / "tampered.pt"
    torch.save(ckpt, bad)
    with pytest.raises(KdtuneError, match="fingerprint does not match"):
        read_checkpoint(bad)


@pytest.mark.parametrize("content", ["garbage", "pickled-code", "other-format", "incomplete"])
def test_bad_files_are_refused(content: str, teacher_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    if content == "garbage":
        data = bytearray(teacher_path.read_bytes())
        data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
        bad.write_bytes(bytes(data))
    elif content == "pickled-code":
        torch.save({"format": FORMAT, "payload": Evil()}, bad)
    elif content == "other-format":
        torch.save({"format": "something/1"}, bad)
    else:
        ckpt = torch.load(teacher_path, weights_only=True)
        del ckpt["state_dict"]
        torch.save(ckpt, bad)
    with pytest.raises(KdtuneError) as info:
        load_teacher(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(KdtuneError, match=r"does not exist.*kdtune teacher"):
        load_teacher(tmp_path / "nope.pt")


# -- cached teacher outputs -----------------------------------------------------------------
def test_train_logits_are_computed_once_and_cached(teacher_path: Path,
                                                   kdtune_cache: Path) -> None:
    data = load_data(TrainConfig())
    teacher = load_teacher(teacher_path)
    counter = ForwardCounter(teacher.model)
    logits = train_logits(teacher, data)
    assert counter.calls >= 1
    assert logits.shape == (len(data.x_train), 10) and logits.dtype == torch.float32
    assert torch.allclose(logits, predict(teacher.model, data.x_train))
    cache_file = cache_dir() / f"{teacher.fingerprint}-{data.key}.pt"
    assert cache_file.is_file() and cache_file.is_relative_to(kdtune_cache)
    counter.close()

    counter = ForwardCounter(teacher.model)
    assert train_logits(teacher, data) is logits  # kept on the teacher object
    assert counter.calls == 0
    counter.close()

    fresh = load_teacher(teacher_path)  # a new process: the disk cache serves it
    counter = ForwardCounter(fresh.model)
    assert torch.equal(train_logits(fresh, data), logits)
    assert counter.calls == 0
    counter.close()


def test_cache_is_keyed_by_training_set(teacher: Teacher, kdtune_cache: Path) -> None:
    full = train_logits(teacher, load_data(TrainConfig()))
    reduced_data = load_data(TrainConfig(train_per_class=5))
    reduced = train_logits(teacher, reduced_data)
    assert reduced.shape == (50, 10) and full.shape[0] > 50
    assert len(list((kdtune_cache / "teacher-outputs").glob("*.pt"))) == 2


@pytest.mark.parametrize("damage", ["corrupt", "wrong-shape"])
def test_bad_cache_file_is_recomputed(damage: str, teacher_path: Path) -> None:
    data = load_data(TrainConfig())
    good = train_logits(load_teacher(teacher_path), data)
    cache_file = cache_dir() / f"{load_teacher(teacher_path).fingerprint}-{data.key}.pt"
    if damage == "corrupt":
        cache_file.write_bytes(b"not a tensor file")
    else:
        torch.save(torch.zeros(3, 10), cache_file)

    fresh = load_teacher(teacher_path)
    counter = ForwardCounter(fresh.model)
    assert torch.equal(train_logits(fresh, data), good)
    assert counter.calls >= 1
    counter.close()
    assert torch.equal(torch.load(cache_file, weights_only=True), good)  # rewritten


def test_student_runs_share_the_cached_logits(teacher_path: Path, tiny_student) -> None:
    from kdtune.trainer import TrainingRun

    first = load_teacher(teacher_path)
    TrainingRun(tiny_student(), teacher=first)
    second = load_teacher(teacher_path)
    counter = ForwardCounter(second.model)
    run = TrainingRun(tiny_student(seed=4), teacher=second)
    assert counter.calls == 0 and run.teacher_logits is not None
    counter.close()


def test_latency_is_measured_once(teacher: Teacher) -> None:
    first = teacher.latency(4)
    assert first.ms > 0 and first.iqr_ms >= 0 and teacher.latency(4) is first


def test_the_teacher_is_timed_with_the_policy_threads(teacher: Teacher) -> None:
    """speedup = teacher / student latency: the teacher is timed by the students' policy
    (one torch thread), whatever threads the process that times it runs with."""
    import torch

    from kdtune.metrics import LATENCY_POLICY

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        figure = teacher.latency(3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert figure.threads == LATENCY_POLICY.threads == 1


def test_test_accuracy_is_evaluated_once_per_teacher_and_data(teacher_path: Path,
                                                              teacher_config) -> None:
    """Every trial reports the teacher's test accuracy; a worker evaluates it once."""
    from kdtune.metrics import evaluate

    data = load_data(teacher_config)
    teacher = load_teacher(teacher_path)
    expected = evaluate(teacher.model, data.x_test, data.y_test)[0]
    assert teacher.test_accuracy(data) == expected > 0.8
    calls: list[int] = []
    again = load_teacher(teacher_path)  # another copy, as a trial gets: same fingerprint
    again.model.register_forward_hook(lambda *args: calls.append(1))
    assert again.test_accuracy(data) == expected and calls == []
    other = load_data(teacher_config.replace(split_seed=1))  # other data: evaluated
    again.test_accuracy(other)
    assert calls


# -- obtain_teacher -------------------------------------------------------------------------
def test_obtain_teacher_reuses_and_retrains(tmp_path: Path) -> None:
    cfg = TrainConfig(hidden=(8,), method="none", epochs=2, device="cpu")
    epochs: list[float] = []

    def count(m: Mapping[str, float], run: object) -> None:
        epochs.append(m["epoch"])

    path, metrics, reused = obtain_teacher(cfg, out=tmp_path, callbacks=[count])
    assert not reused and epochs == [1, 2] and path.parent == tmp_path.resolve()
    assert read_checkpoint(path)["train_config"] == cfg.replace(device="auto").to_dict()

    again, metrics2, reused2 = obtain_teacher(cfg.replace(out="elsewhere", seed=0),
                                              out=tmp_path, callbacks=[count])
    assert reused2 and again == path and epochs == [1, 2]
    assert metrics2 == metrics

    retrained, _, reused3 = obtain_teacher(cfg, out=tmp_path, retrain=True, callbacks=[count])
    assert not reused3 and epochs == [1, 2, 1, 2]
    assert retrained == path  # same config and seed: same weights, same fingerprint

    other, _, reused4 = obtain_teacher(cfg.replace(seed=1), out=tmp_path)
    assert not reused4 and other != path
    assert find_teacher(cfg.replace(seed=1), tmp_path) == other
    assert find_teacher(cfg.replace(epochs=3), tmp_path) is None


def test_obtain_teacher_skips_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "teacher-mlp-broken.pt").write_bytes(b"junk")
    cfg = TrainConfig(hidden=(8,), method="none", epochs=1, device="cpu")
    assert find_teacher(cfg, tmp_path) is None
    path, _, reused = obtain_teacher(cfg, out=tmp_path)
    assert not reused and find_teacher(cfg, tmp_path) == path


def test_session_teacher_is_reused(teacher_config: TrainConfig, teacher_path: Path) -> None:
    path, metrics, reused = obtain_teacher(teacher_config, out=teacher_path.parent)
    assert reused and path == teacher_path
    assert metrics["val_accuracy"] > 0.8
