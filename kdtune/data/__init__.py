"""Datasets as in-memory tensors, seeded stratified splits, and batched view augmentation.

``kdtune.data.fake`` (imported explicitly) writes tiny datasets in torchvision's formats.
"""

from __future__ import annotations

from kdtune.data.augment import Augmentation
from kdtune.data.datasets import (
    DataSplits,
    Normalisation,
    SyntheticSpec,
    list_datasets,
    load_dataset,
)

__all__ = ["Augmentation", "DataSplits", "Normalisation", "SyntheticSpec", "list_datasets",
           "load_dataset"]
