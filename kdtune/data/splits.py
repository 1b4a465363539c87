"""Seeded, stratified index splits (deterministic across runs and platforms).

Every function works on a 1-D array of integer labels and returns sorted index arrays, so the
selected samples keep their original order. Randomness comes from ``numpy``'s PCG64 generator
seeded with ``(split_seed, stream)``, one independent stream per kind of split.
"""

from __future__ import annotations

import numpy as np

from kdtune.errors import KdtuneError

__all__ = ["STREAM_PER_CLASS", "STREAM_TEST", "STREAM_VAL", "per_class_subset",
           "stratified_split"]

STREAM_TEST = 0
STREAM_VAL = 1
STREAM_PER_CLASS = 2


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _as_labels(labels: object) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def stratified_split(
    labels: object, n_carve: int, seed: int, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``n_carve`` samples out of ``labels``, keeping class proportions.

    Each class gives ``floor(n_c * n_carve / N)`` samples, and the samples still missing go to the
    classes with the largest remainders (ties: lower class first); no class gives away its last
    sample. Which samples of a class are carved is drawn from the seeded stream.
    Returns ``(kept, carved)`` sorted index arrays.
    """
    y = _as_labels(labels)
    n = len(y)
    classes, counts = np.unique(y, return_counts=True)
    if not 0 < n_carve <= n - len(classes):
        raise KdtuneError(
            f"cannot carve {n_carve} of {n} samples ({len(classes)} classes) "
            "into a stratified split"
        )
    exact = counts * (n_carve / n)
    take = np.minimum(np.floor(exact).astype(np.int64), counts - 1)
    missing = n_carve - int(take.sum())
    order = np.argsort(-(exact - take), kind="stable")
    for i in order:
        if missing == 0:
            break
        if take[i] < counts[i] - 1:
            take[i] += 1
            missing -= 1
    rng = _rng(seed, stream)
    carved = []
    for cls, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(y == cls)
        carved.append(idx[rng.permutation(len(idx))[:k]])
    carved_idx = np.sort(np.concatenate(carved))
    mask = np.ones(n, dtype=bool)
    mask[carved_idx] = False
    return np.flatnonzero(mask), carved_idx


def per_class_subset(
    labels: object, per_class: int, seed: int, stream: int, num_classes: int | None = None
) -> np.ndarray:
    """Pick ``per_class`` samples of every class (seeded); sorted positions into ``labels``.

    Labels are class ids ``0..num_classes-1``; a class with fewer than ``per_class`` samples
    (none at all included) is an error naming the class and its count.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise KdtuneError(f"train_per_class must be an integer >= 1, got {per_class!r}")
    y = _as_labels(labels)
    counts = np.bincount(y, minlength=num_classes or 0)
    classes = np.arange(len(counts))
    short = [(int(c), int(k)) for c, k in zip(classes, counts, strict=True) if k < per_class]
    if short:
        c, k = short[0]
        raise KdtuneError(
            f"train_per_class {per_class} is too large: class {c} has only {k} training samples"
        )
    rng = _rng(seed, stream)
    picked = []
    for cls in classes:
        idx = np.flatnonzero(y == cls)
        picked.append(idx[rng.permutation(len(idx))[:per_class]])
    return np.sort(np.concatenate(picked))
