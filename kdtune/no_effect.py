"""Config values a user gave that would change nothing for the chosen input: each is refused.

``kdtune train --data-root my_images`` on the embedded digits, ``temperature: 2`` beside
``method: none``, ``augment: true`` for a set without augmentation would otherwise train
exactly what the user did not ask for, and exit 0. Where CLI flags or YAML keys become a
config (``kdtune train``/``teacher``, a search space's ``fixed`` and ``teacher`` sections),
every key the user gave is asked :func:`no_effect`; a value equal to the field's default is not
the user's input (a saved config repeats every default).
"""

from __future__ import annotations

from collections.abc import Mapping

from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError

#: Keys :func:`no_effect` knows to depend on the input (any other key has an effect).
CHECKED = ("data_root", "download", "augment", "alpha", "temperature", "kd_warmup",
           "teacher_outputs", "amp", "channels_last")


def no_effect(config: TrainConfig, key: str) -> str | None:
    """Why ``key`` changes nothing in a run of ``config`` (one clause), or None."""
    if key not in CHECKED:
        return None
    from kdtune.data.catalog import dataset_augments, dataset_reads_files, list_file_datasets

    if key in ("data_root", "download") and not dataset_reads_files(config.dataset):
        return (f"dataset {config.dataset!r} reads no files (it is built in); datasets that "
                f"read them: {', '.join(list_file_datasets())}")
    if key == "augment" and not dataset_augments(config.dataset):
        return f"dataset {config.dataset!r} has no augmentation"
    if key in ("alpha", "temperature", "kd_warmup", "teacher_outputs"):
        return _method_reason(config, key)
    if key == "amp" and config.device == "cpu":
        return "autocast runs on CUDA only, and device is cpu"
    if key == "channels_last" and not _has_conv(config):
        return f"model {config.model!r} has no convolution"
    return None


def refuse_no_effect(config: TrainConfig, given: Mapping[str, str]) -> None:
    """A one-line error for the first key the user gave (``given``: key -> how the input
    showed it, e.g. ``--data-root`` or ``run.yaml: data_root``) that changes nothing in
    ``config``. A key whose value is its field's default is not the user's input."""
    defaults = TrainConfig()
    for key, shown in given.items():
        if key not in CHECKED or getattr(config, key) == getattr(defaults, key):
            continue
        reason = no_effect(config, key)
        if reason is not None:
            raise KdtuneError(f"{shown} has no effect here: {reason}; drop it")


def _method_reason(config: TrainConfig, key: str) -> str | None:
    from kdtune.methods import get_feature_method, get_method

    spec, fspec = get_method(config.method), get_feature_method(config.feature_method)
    if key == "teacher_outputs":
        if spec.needs_teacher_model or fspec.needs_teacher:
            return None
        return (f"method {config.method!r} with feature method {config.feature_method!r} "
                "reads no teacher outputs")
    if key == "kd_warmup":
        if spec.reads(key) or fspec.reads(key):
            return None
        return (f"neither method {config.method!r} nor feature method "
                f"{config.feature_method!r} has a distillation term to warm up")
    if spec.reads(key):
        return None
    return f"method {config.method!r} does not use {key}"


def _has_conv(config: TrainConfig) -> bool:
    """Whether the model of ``config`` has a convolution (built on the meta device)."""
    import torch
    from torch import nn

    from kdtune.data.catalog import dataset_shape
    from kdtune.models import create_model

    num_classes, in_shape = dataset_shape(config.dataset)
    with torch.device("meta"):
        model = create_model(config.model, num_classes, in_shape, **config.model_kwargs())
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
