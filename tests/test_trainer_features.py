"""The trainer with a feature term: every feature method trains and resumes bit-identical with
its extra parts, teacher features come from the right source, the student alone is counted.

A conv pair on a small synthetic set (a 2-stage ResNet teacher, a 1-stage ResNet student:
stages pair from the last one backwards), everything on the CPU in about a second per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from kdtune.config import TrainConfig
from kdtune.data import DataSplits, SyntheticSpec, load_dataset
from kdtune.errors import KdtuneError
from kdtune.methods import list_feature_methods
from kdtune.metrics import count_params
from kdtune.resolve import config_from_dict, replace_config
from kdtune.teacher import load_teacher, save_teacher
from kdtune.trainer import TrainingRun, train

SYNTH = SyntheticSpec(num_classes=4, in_shape=(3, 16, 16), n_train=96, n_test=24, seed=2)
FEATURE_METHODS = [m for m in list_feature_methods() if m != "none"]
TIMED = {"train_time_s", "elapsed_s"}


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def synth() -> DataSplits:
    return load_dataset("synthetic", synthetic=SYNTH)


@pytest.fixture(scope="module")
def conv_teacher(synth: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kwargs = {"blocks": [1, 1, 0, 0], "width": 8}
    cfg = TrainConfig(dataset="synthetic", model="resnet", method="none", epochs=2,
                      augment=False, batch_size=32, device="cpu", **kwargs)
    result = train(cfg, data=synth, measure_latency=False)
    return save_teacher(result.model, {"name": "resnet", "kwargs": kwargs}, result.data_spec,
                        result.metrics, tmp_path_factory.mktemp("conv-t"))


def student(teacher_path: Path, **changes: object) -> TrainConfig:
    base: dict = dict(dataset="synthetic", model="resnet", blocks=(1, 0, 0, 0), width=4,
                      method="vanilla", teacher=str(teacher_path), augment=False, epochs=3,
                      batch_size=32, device="cpu", seed=1, lr=0.05)
    base.update(changes)
    return config_from_dict({k: list(v) if isinstance(v, tuple) else v
                             for k, v in base.items()})


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("feature_method", FEATURE_METHODS)
def test_trains_and_resumes_bit_identical_with_its_parts(feature_method: str, synth: DataSplits,
                                                         conv_teacher: Path,
                                                         tmp_path: Path) -> None:
    teacher = load_teacher(conv_teacher)
    cfg = student(conv_teacher, feature_method=feature_method, feature_weight=1.0)
    runs: list[TrainingRun] = []
    full = train(cfg, [lambda m, run: runs.append(run)], teacher=teacher, data=synth,
                 measure_latency=False)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in full.history)
    ckpt = tmp_path / "run.pt"

    def stop_at_1(metrics: Mapping[str, float], run: TrainingRun) -> None:
        run.save_checkpoint(ckpt)
        raise Stop

    with pytest.raises(Stop):
        train(cfg, [stop_at_1], teacher=teacher, data=synth, measure_latency=False)
    torch.manual_seed(999)
    after: list[TrainingRun] = []
    resumed = train(cfg, [lambda m, run: after.append(run)], teacher=teacher, data=synth,
                    resume_from=ckpt, measure_latency=False)
    a, b = _state(full.model), _state(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = _state(runs[-1].parts), _state(after[-1].parts)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    strip = [{k: v for k, v in h.items() if k not in TIMED} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMED} for h in resumed.history]


def test_adapters_train_with_the_student_but_are_not_the_student(synth: DataSplits,
                                                                 conv_teacher: Path) -> None:
    teacher = load_teacher(conv_teacher)
    plain = TrainingRun(student(conv_teacher, feature_method="none"), teacher=teacher,
                        data=synth)
    run = TrainingRun(student(conv_teacher, feature_method="fitnet"), teacher=teacher,
                      data=synth)
    adapter = run.parts["feature"].adapters[0]
    assert isinstance(adapter, torch.nn.Sequential)  # 1x1 conv + BN, 4 -> 16 channels
    before = _state(run.parts)
    # the student is initialised as without the adapter; the optimiser holds both
    assert all(torch.equal(a, b) for a, b in zip(_state(plain.model).values(),
                                                 _state(run.model).values(), strict=True))
    held = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in run.parts.parameters()} <= held
    run.train_epoch()
    assert any(not torch.equal(before[k], v) for k, v in run.parts.state_dict().items())
    metrics = run.cost_metrics(measure_latency=False)
    assert metrics == plain.cost_metrics(measure_latency=False)
    assert metrics["params"] == count_params(run.model)


def test_embeddings_cached_unaugmented_live_when_augmented(synth: DataSplits,
                                                           conv_teacher: Path) -> None:
    teacher = load_teacher(conv_teacher)
    run = TrainingRun(student(conv_teacher, feature_method="pkt"), teacher=teacher,
                      data=synth)
    assert run.feature_mode == "cached" and run.teacher_mode == "cached"
    with torch.no_grad():
        expected = teacher.model.forward_features(synth.x_train).embedding
    assert torch.allclose(run.teacher_embeddings, expected, atol=1e-5)
    calls: list[int] = []
    hook = teacher.model.stem.register_forward_hook(lambda *a: calls.append(1))
    try:
        run.train_epoch()
    finally:
        hook.remove()
    assert calls == []  # no teacher pass at all

    for changes in ({"feature_method": "pkt", "augment": True},
                    {"feature_method": "at", "augment": False}):
        run = TrainingRun(student(conv_teacher, **changes), teacher=teacher, data=synth)
        assert run.feature_mode == "live" and run.teacher_mode == "live"
        idx = torch.arange(5)
        views = (run.augment.sample_views(5, torch.Generator().manual_seed(0))
                 if run.augment is not None else None)
        x = run.x_train[idx] if views is None else run.augment.apply(run.x_train[idx], views)
        logits, feats = run.teacher_features(idx, x, views)
        with torch.no_grad():
            out = teacher.model.forward_features(x)
        assert torch.equal(logits, out.logits)
        wanted = [out.embedding] if changes["feature_method"] == "pkt" else out.stages
        assert all(torch.equal(a, b) for a, b in zip(feats, wanted, strict=True))


def test_feature_term_needs_a_teacher_and_maps(synth: DataSplits, conv_teacher: Path,
                                               tmp_path: Path) -> None:
    cfg = student(conv_teacher, method="none", feature_method="sp", teacher=None)
    with pytest.raises(KdtuneError, match="feature method 'sp' needs a teacher"):
        TrainingRun(cfg, data=synth)
    mlp = student(conv_teacher, model="mlp", blocks=None, width=None, hidden=(8,),
                  feature_method="at")
    with pytest.raises(KdtuneError, match="'at' needs feature maps"):
        TrainingRun(mlp, teacher=load_teacher(conv_teacher), data=synth)


def test_warm_up_scales_the_feature_term(synth: DataSplits, conv_teacher: Path) -> None:
    teacher = load_teacher(conv_teacher)
    losses = {}
    for warmup in (0, 4):
        cfg = student(conv_teacher, method="none", feature_method="sp", kd_warmup=warmup,
                      epochs=1)
        losses[warmup] = TrainingRun(cfg, teacher=teacher, data=synth).train_epoch()
    plain = TrainingRun(student(conv_teacher, method="none", epochs=1), data=synth)
    base = plain.train_epoch()["train_loss"]
    assert losses[0]["train_loss"] > losses[4]["train_loss"] > base


def test_dml_peers_train_together_resume_bit_identical_and_are_not_the_student(
        synth: DataSplits, tmp_path: Path) -> None:
    cfg = TrainConfig(dataset="synthetic", model="resnet", blocks=(1, 0, 0, 0), width=4,
                      method="dml", method_params={"dml_peers": 3}, alpha=0.5, temperature=2,
                      augment=True, epochs=3, batch_size=32, device="cpu", seed=4)
    runs: list[TrainingRun] = []
    full = train(cfg, [lambda m, run: runs.append(run)], data=synth, measure_latency=False)
    run = runs[-1]
    assert run.teacher is None and len(run.parts["logit"].peers) == 2
    assert full.metrics["best_peer_val_accuracy"] >= full.metrics["val_accuracy"]
    assert all("best_peer_val_accuracy" in h for h in full.history)
    alone = TrainingRun(replace_config(cfg, method="none"), data=synth)
    assert run.cost_metrics(measure_latency=False) == alone.cost_metrics(measure_latency=False)
    ckpt = tmp_path / "dml.pt"

    def stop_at_1(metrics: Mapping[str, float], run: TrainingRun) -> None:
        run.save_checkpoint(ckpt)
        raise Stop

    with pytest.raises(Stop):
        train(cfg, [stop_at_1], data=synth, measure_latency=False)
    torch.manual_seed(5)
    after: list[TrainingRun] = []
    resumed = train(cfg, [lambda m, run: after.append(run)], data=synth, resume_from=ckpt,
                    measure_latency=False)
    for a, b in ((full.model, resumed.model), (run.parts, after[-1].parts)):
        sa, sb = _state(a), _state(b)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert full.metrics["best_peer_val_accuracy"] == resumed.metrics["best_peer_val_accuracy"]


def test_dml_step_is_the_sum_of_the_peers_losses() -> None:
    from kdtune.methods import training_loss
    from kdtune.methods.dml import Peers

    torch.manual_seed(0)
    peers = Peers(lambda: torch.nn.Linear(4, 3), 2)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    z0 = torch.randn(5, 3)

    def loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return training_loss("dml", z, target, y, alpha=0.3, temperature=2.0)

    z1, z2 = peers.peers[0](x), peers.peers[1](x)
    expected = sum((loss(a, b.detach()) + loss(a, c.detach())) / 2
                   for a, b, c in ((z0, z1, z2), (z1, z0, z2), (z2, z0, z1)))
    assert torch.allclose(peers(x, z0, loss), expected)
    vanilla = training_loss("vanilla", z0, z1, y, alpha=0.3, temperature=2.0)
    assert torch.allclose(loss(z0, z1), vanilla)  # the one-peer term is vanilla's KL
