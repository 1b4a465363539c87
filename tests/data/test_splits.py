"""Seeded stratified index splits."""

from __future__ import annotations

import numpy as np
import pytest

from kdtune.data.splits import per_class_subset, stratified_split
from kdtune.errors import KdtuneError


def labels() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(5), [40, 30, 20, 7, 3]))


def test_stratified_split_partition_and_proportions() -> None:
    y = labels()
    kept, carved = stratified_split(y, 20, seed=0, stream=1)
    assert len(carved) == 20
    assert np.array_equal(np.sort(np.concatenate([kept, carved])), np.arange(len(y)))
    assert not set(kept) & set(carved)
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(carved) > 0)
    per_class = np.bincount(y[carved], minlength=5)
    assert np.abs(per_class - np.bincount(y) * 0.2).max() <= 1
    assert np.all(np.bincount(y[kept], minlength=5) >= 1)


def test_stratified_split_seeded() -> None:
    y = labels()
    a = stratified_split(y, 20, seed=0, stream=1)[1]
    b = stratified_split(y, 20, seed=0, stream=1)[1]
    c = stratified_split(y, 20, seed=1, stream=1)[1]
    d = stratified_split(y, 20, seed=0, stream=2)[1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_stratified_split_keeps_one_per_class() -> None:
    y = np.array([0, 0, 0, 1, 2, 2])
    kept, _ = stratified_split(y, 3, seed=0, stream=0)
    assert set(y[kept]) == {0, 1, 2}
    with pytest.raises(KdtuneError, match="cannot carve"):
        stratified_split(y, 4, seed=0, stream=0)


def test_per_class_subset() -> None:
    y = labels()
    pick = per_class_subset(y, 3, seed=0, stream=2)
    assert np.array_equal(np.bincount(y[pick]), [3] * 5)
    assert np.array_equal(pick, per_class_subset(y, 3, seed=0, stream=2))
    assert not np.array_equal(pick, per_class_subset(y, 3, seed=5, stream=2))
    with pytest.raises(KdtuneError, match="class 4 has only 3"):
        per_class_subset(y, 4, seed=0, stream=2)
    with pytest.raises(KdtuneError, match="class 5 has only 0"):
        per_class_subset(y, 1, seed=0, stream=2, num_classes=6)
    with pytest.raises(KdtuneError, match=">= 1"):
        per_class_subset(y, 0, seed=0, stream=2)
