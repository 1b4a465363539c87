"""Datasets as in-memory tensors, seeded stratified splits, and batched view augmentation.

``kdtune.data.fake`` (imported explicitly) writes tiny datasets in torchvision's formats.
"""

from __future__ import annotations

from kdtune.data.augment import Augmentation
from kdtune.data.datasets import (
    DATASETS,
    DatasetSpec,
    DataSplits,
    Normalisation,
    RawData,
    SyntheticSpec,
    list_datasets,
    load_dataset,
    register_dataset,
    unregister_dataset,
)

#: The names of the ``kdtune.datasets`` entry points loaded (each registers its datasets).
PLUGINS = DATASETS.load_plugins()

__all__ = ["DATASETS", "PLUGINS", "Augmentation", "DataSplits", "DatasetSpec", "Normalisation",
           "RawData", "SyntheticSpec", "list_datasets", "load_dataset", "register_dataset",
           "unregister_dataset"]
