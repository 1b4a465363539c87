"""Datasets as in-memory tensors, seeded stratified splits, and batched view augmentation.

Importing this package imports no torch: the registry (:mod:`kdtune.data.catalog`) says
what each dataset is without loading it; the loaders and tensors (``load_dataset``,
``DataSplits``, ``Augmentation``, ...) are attributes of this package too, imported with
torch on first use. ``kdtune.data.fake`` (imported explicitly) writes tiny datasets in
torchvision's formats.
"""

from __future__ import annotations

import importlib
from typing import Any

from kdtune.data.catalog import (
    DATASETS,
    DatasetSpec,
    list_datasets,
    register_dataset,
    unregister_dataset,
)

#: The names that need torch: name -> the module that defines them.
_TORCH_NAMES = {"Augmentation": "kdtune.data.augment",
                **{name: "kdtune.data.datasets" for name in (
                    "DataSplits", "Normalisation", "RawData", "SyntheticSpec", "load_dataset")}}


def __getattr__(name: str) -> Any:
    """The names of :data:`_TORCH_NAMES`, imported on first use."""
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'kdtune.data' has no attribute {name!r}")


#: The names of the ``kdtune.datasets`` entry points loaded (each registers its datasets).
PLUGINS = DATASETS.load_plugins()

__all__ = ["DATASETS", "PLUGINS", "Augmentation", "DataSplits", "DatasetSpec", "Normalisation",
           "RawData", "SyntheticSpec", "list_datasets", "load_dataset", "register_dataset",
           "unregister_dataset"]
