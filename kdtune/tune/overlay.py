"""A trial's training config: the sweep's ``fixed`` settings overlaid with the trial's
parameters (then the settings the driver decides, then the seed), the one place a search
space's settings and a trial's parameters are merged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdtune.config import TrainConfig
from kdtune.resolve import config_from_dict


def trial_train_config(fixed: Mapping[str, Any], params: Mapping[str, Any], *,
                       seed: int | None = None, where: str = "config",
                       **settings: Any) -> TrainConfig:
    """The :class:`TrainConfig` of ``fixed`` overlaid with ``params``, then ``settings``
    (such as the device, the threads, the teacher) and ``seed`` when given; a bad value is a
    one-line error naming ``where``."""
    data = {**fixed, **params, **settings}
    if seed is not None:
        data["seed"] = seed
    return config_from_dict(data, where=where)
