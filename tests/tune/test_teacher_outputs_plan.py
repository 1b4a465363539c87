"""The sweep's driver computes the teacher's outputs once, and per augmentation view only
when its trials would otherwise run more teacher passes per sample than there are views."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from kdtune.config import TrainConfig
from kdtune.teacher import save_teacher, view_key
from kdtune.trainer import load_data, train
from kdtune.tune.prepare import prepare_context
from kdtune.tune.space import load_space
from kdtune.tune.stores import Store


@pytest.fixture(scope="module")
def synthetic_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(dataset="synthetic", model="mlp", hidden=(8,), method="none", epochs=1,
                      augment=False, device="cpu")
    result = train(cfg, measure_latency=False)
    return save_teacher(result.model, {"name": "mlp", "kwargs": {"hidden": [8]}},
                        result.data_spec, result.metrics, tmp_path_factory.mktemp("t"))


def space_file(tmp_path: Path, teacher: Path, **fixed: object) -> Path:
    extra = "".join(f"  {k}: {v}\n" for k, v in fixed.items())
    path = tmp_path / "space.yaml"
    path.write_text(f"""name: plan
fixed:
  dataset: synthetic
  model: mlp
  hidden: [8]
  epochs: 2
{extra}teacher: {{path: {teacher}}}
parameters:
  method: {{type: categorical, choices: [vanilla]}}
  alpha: {{type: float, low: 0.1, high: 0.9}}
objective: {{metric: val_accuracy, mode: max}}
search: {{num_samples: 2, sampler: random}}
scheduler: {{type: none}}
""")
    return path


def plan(tmp_path: Path, teacher: Path, num_samples: int, **fixed: object) -> set[str]:
    space = load_space(space_file(tmp_path, teacher, **fixed))
    store = Store.resolve(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "ray"))
    context = prepare_context(space, store, Console(quiet=True), num_samples)
    assert context.teacher is not None
    return set(context.teacher.outputs)


def test_views_are_computed_when_trials_would_run_the_teacher_more(
        tmp_path: Path, synthetic_teacher: Path) -> None:
    data = load_data(TrainConfig(dataset="synthetic"))
    assert data.augment is not None and data.augment.num_views == 162
    # 100 trials x 2 epochs = 200 teacher passes per sample >= 162 views: precompute them
    assert view_key(data, data.augment) in plan(tmp_path, synthetic_teacher, num_samples=100)


def test_few_trials_keep_the_teacher_live(tmp_path: Path, synthetic_teacher: Path) -> None:
    assert plan(tmp_path, synthetic_teacher, num_samples=2) == set()  # 4 passes < 162 views


def test_teacher_outputs_in_fixed_decide(tmp_path: Path, synthetic_teacher: Path) -> None:
    data = load_data(TrainConfig(dataset="synthetic"))
    key = view_key(data, data.augment)
    assert key in plan(tmp_path, synthetic_teacher, 2, teacher_outputs="cached")
    assert plan(tmp_path, synthetic_teacher, 100, teacher_outputs="live") == set()


def test_unaugmented_training_gets_the_plain_logits(tmp_path: Path,
                                                    synthetic_teacher: Path) -> None:
    data = load_data(TrainConfig(dataset="synthetic", augment=False))
    assert plan(tmp_path, synthetic_teacher, 2, augment="false") == {data.key}


def test_embeddings_too_when_a_feature_method_reads_them(tmp_path: Path,
                                                        synthetic_teacher: Path) -> None:
    """pkt reads the teacher's embeddings: the driver computes them once, and they reach the
    trials with the teacher; a method reading stage maps (fitnet) runs the teacher live."""
    data = load_data(TrainConfig(dataset="synthetic", augment=False))
    embedding = f"{data.key}-embedding"
    assert plan(tmp_path, synthetic_teacher, 2, augment="false", feature_method="pkt") == \
        {data.key, embedding}
    assert plan(tmp_path, synthetic_teacher, 2, augment="false", feature_method="fitnet") == \
        {data.key}


def test_the_teacher_is_timed_as_a_trial_times_its_student(tmp_path: Path,
                                                          synthetic_teacher: Path) -> None:
    """speedup = teacher / student latency at batch 256: the driver times the teacher once,
    by the policy a trial times its student by: one torch thread, whatever the trials' CPUs
    (here 2, the threads they train with) or the driver's own threads."""
    import torch

    from kdtune.metrics import LATENCY_POLICY

    path = space_file(tmp_path, synthetic_teacher, augment="false")
    path.write_text(path.read_text() + "resources: {cpus: 2, gpus: 0}\n")
    space = load_space(path)
    store = Store.resolve(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "ray"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        context = prepare_context(space, store, Console(quiet=True), 2)
        assert torch.get_num_threads() == 2  # the driver's own threads, back
    finally:
        torch.set_num_threads(before)
    assert context.settings.overrides["threads"] == 2  # the trials train with their CPUs
    assert context.teacher is not None
    figure = context.teacher.latency(256)
    assert figure.threads == LATENCY_POLICY.threads == 1
    assert figure.passes >= 1 and figure.ms > 0 and figure.iqr_ms >= 0


def test_a_resumed_or_finalized_sweep_keeps_the_teacher_latency_its_trials_reported(
        tmp_path: Path, synthetic_teacher: Path) -> None:
    """speedup = teacher / student latency: the teacher's figure, with its spread, is the one
    the sweep's trials reported (the first they logged), not a new measurement of the driver
    that resumes or finalizes it."""
    import math

    import pandas as pd

    space = load_space(space_file(tmp_path, synthetic_teacher, augment="false"))
    store = Store.resolve(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "ray"))
    recorded = pd.DataFrame({"metrics.teacher_latency_ms_b256": [float("nan"), 12.5, 12.5],
                             "metrics.teacher_latency_ms_b256_iqr": [float("nan"), 0.5, 0.5]})
    context = prepare_context(space, store, Console(quiet=True), 2, recorded=recorded)
    assert context.teacher is not None
    figure = context.teacher.latency(256)
    assert (figure.ms, figure.iqr_ms) == (12.5, 0.5)
    # a figure recorded without a spread keeps its figure; its spread is unknown
    without = recorded.drop(columns=["metrics.teacher_latency_ms_b256_iqr"])
    older = prepare_context(space, store, Console(quiet=True), 2, recorded=without)
    assert older.teacher is not None and older.teacher.latency(256).ms == 12.5
    assert math.isnan(older.teacher.latency(256).iqr_ms)
    fresh = prepare_context(space, store, Console(quiet=True), 2)  # a new sweep measures it
    assert fresh.teacher is not None and 0 < fresh.teacher.latency(256).ms != 12.5
