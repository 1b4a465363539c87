"""The per-view teacher table spread over Ray tasks is the table one pass computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdtune.config import TrainConfig
from kdtune.data import DataSplits, SyntheticSpec, load_dataset
from kdtune.teacher import load_teacher, save_teacher, view_key, view_logits
from kdtune.trainer import train
from kdtune.tune.view_table import distributed_view_logits, plan_shards

SYNTH = SyntheticSpec(num_classes=3, in_shape=(3, 16, 16), n_train=40, n_test=8, seed=2)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_dataset("synthetic", synthetic=SYNTH)


@pytest.fixture(scope="module")
def teacher_file(data: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = TrainConfig(dataset="synthetic", model="resnet", blocks=(1, 0, 0, 0), width=4,
                      method="none", epochs=1, batch_size=16, device="cpu")
    result = train(cfg, data=data, measure_latency=False)
    return save_teacher(result.model, {"name": "resnet", "kwargs": {"blocks": [1, 0, 0, 0],
                                                                    "width": 4}},
                        result.data_spec, result.metrics, tmp_path_factory.mktemp("teacher"))


def test_tasks_compute_exactly_the_single_pass_table(ray_session: None, data: DataSplits,
                                                     teacher_file: Path, tmp_path: Path) -> None:
    assert data.augment is not None and data.augment.num_views == 162
    alone = view_logits(load_teacher(teacher_file), data, data.augment, root=tmp_path,
                        batch_size=16)
    teacher = load_teacher(teacher_file)
    spread = distributed_view_logits(teacher, data, data.augment, shards=5, batch_size=16)
    assert spread.shape == (len(data.x_train), 162, 3) and spread.dtype == torch.float16
    assert torch.equal(spread, alone)  # same chunks, one view at a time: the same numbers
    assert teacher.outputs[view_key(data, data.augment)] is spread  # ships with the teacher
    # cached (memory, then disk): asking again starts no task
    assert distributed_view_logits(teacher, data, data.augment, shards=5) is spread
    again = load_teacher(teacher_file)
    assert torch.equal(distributed_view_logits(again, data, data.augment, shards=5), alone)


def test_one_machine_without_gpus_computes_on_the_driver(ray_session: None) -> None:
    assert plan_shards(162, cpus_per_task=1, gpus=0) == 1  # one node: the driver's threads
    assert plan_shards(162, cpus_per_task=1, gpus=0.5) == 1  # no GPU in this cluster
