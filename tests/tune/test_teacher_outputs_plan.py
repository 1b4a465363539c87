"""The sweep's driver computes the teacher's outputs once, and per augmentation view only
when its trials would otherwise run more teacher passes per sample than there are views."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from kdtune.config import TrainConfig
from kdtune.teacher import save_teacher, view_key
from kdtune.trainer import load_data, train
from kdtune.tune.space import load_space
from kdtune.tune.sweep import Store, prepare_context


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


def test_the_teacher_is_timed_with_the_threads_a_trial_times_its_student_with(
        tmp_path: Path, synthetic_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """speedup = teacher / student latency at batch 256: the student is timed in its trial
    with the trial's CPUs as torch threads, so the teacher (timed once, on the driver) is too."""
    import torch

    from kdtune import metrics

    seen: list[int] = []
    real = metrics._time_forward

    def recording(*args: object, **kwargs: object) -> float:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "_time_forward", recording)
    monkeypatch.setattr(metrics, "_LATENCY_MS", {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plan(tmp_path, synthetic_teacher, num_samples=2, augment="false")
        assert seen == [1]  # resources.cpus defaults to 1
        assert torch.get_num_threads() == 2  # the driver's own threads, back
    finally:
        torch.set_num_threads(before)


def test_a_resumed_or_finalized_sweep_keeps_the_teacher_latency_its_trials_reported(
        tmp_path: Path, synthetic_teacher: Path) -> None:
    """speedup = teacher / student latency: the teacher's figure is the one the sweep's trials
    reported (the first they logged), not a new measurement of the driver that resumes or
    finalizes it."""
    import pandas as pd

    space = load_space(space_file(tmp_path, synthetic_teacher, augment="false"))
    store = Store.resolve(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "ray"))
    recorded = pd.DataFrame({"metrics.teacher_latency_ms_b256": [float("nan"), 12.5, 12.5]})
    context = prepare_context(space, store, Console(quiet=True), 2, recorded=recorded)
    assert context.teacher is not None and context.teacher.latency_ms(256) == 12.5
    fresh = prepare_context(space, store, Console(quiet=True), 2)  # a new sweep measures it
    assert fresh.teacher is not None and 0 < fresh.teacher.latency_ms(256) != 12.5
