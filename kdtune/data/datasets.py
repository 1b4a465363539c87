"""Dataset loaders: every set comes back as in-memory tensors (:class:`DataSplits`).

A dataset is a loader registered with what is known without loading it
(:mod:`kdtune.data.catalog`: no torch there); the built-in loaders are here.

Splits (see :mod:`kdtune.data.splits`):

* test: the official test set for MNIST, Fashion-MNIST and CIFAR; for ``digits`` and
  ``synthetic`` a stratified carve (20% of digits, ``n_test`` of synthetic) drawn with
  ``split_seed``;
* validation: a stratified ``val_fraction`` of the remaining training part (never of test), drawn
  with ``split_seed``;
* ``train_per_class``: what is left for training is cut to that many samples per class (seeded
  by ``split_seed``); validation is the same with or without it.

Images are scaled to [0, 1] and normalised with the per-channel mean and std of the whole
training part (train + validation, before ``train_per_class``), so the validation and test
tensors do not depend on ``train_per_class``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kdtune.data.augment import Augmentation
from kdtune.data.catalog import (  # noqa: F401  (the registry side, re-exported)
    DATASETS,
    DatasetSpec,
    dataset_augments,
    dataset_reads_files,
    dataset_shape,
    list_datasets,
    list_file_datasets,
    register_dataset,
    unregister_dataset,
)
from kdtune.data.splits import (
    STREAM_PER_CLASS,
    STREAM_TEST,
    STREAM_VAL,
    per_class_subset,
    stratified_split,
)
from kdtune.errors import KdtuneError

__all__ = ["DATASETS", "DataSplits", "DatasetSpec", "Normalisation", "RawData", "SyntheticSpec",
           "list_datasets", "load_dataset", "register_dataset", "unregister_dataset"]

_KEY_VERSION = 1
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Normalisation:
    """What the loader does to raw images: ``(raw / scale - mean[c]) / std[c]`` per channel.

    ``scale`` is the raw value of full intensity (16 for digits, 255 for the uint8 images of
    torchvision's sets, 1 for synthetic); ``mean`` and ``std`` are per channel, of the images
    scaled to [0, 1], over the whole training part (train + validation).
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw images (N, C, H, W) as the loader hands them to a model (float32)."""
        return _normalise(raw, self.scale, torch.tensor(self.mean, dtype=torch.float64),
                          torch.tensor(self.std, dtype=torch.float64))


@dataclass(frozen=True, eq=False, repr=False)
class DataSplits:
    """A dataset held as tensors: normalised float32 images (N, C, H, W), int64 labels (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_shape: tuple[int, int, int]
    augment: Augmentation | None
    key: str
    normalisation: Normalisation | None = None

    def __repr__(self) -> str:
        return (
            f"DataSplits(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, num_classes={self.num_classes}, "
            f"in_shape={self.in_shape}, augment={self.augment}, key={self.key!r})"
        )


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the ``synthetic`` set: class prototypes plus shifts and noise.

    Each class has a smooth random prototype image; a sample is its class prototype, randomly
    shifted by up to ``H // 8`` pixels and scaled, plus Gaussian noise. Everything is drawn from
    ``seed``; ``n_test`` of the ``n_train + n_test`` samples are carved as test by
    ``split_seed``.
    """

    num_classes: int = 10
    in_shape: tuple[int, int, int] = (3, 32, 32)
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        shape = tuple(self.in_shape)
        if len(shape) != 3 or not all(is_int(s) and s >= 1 for s in shape):
            raise KdtuneError(f"synthetic in_shape must be 3 positive integers (C, H, W), "
                              f"got {self.in_shape!r}")
        object.__setattr__(self, "in_shape", shape)
        if not is_int(self.num_classes) or self.num_classes < 2:
            raise KdtuneError(f"synthetic num_classes must be an integer >= 2, "
                              f"got {self.num_classes!r}")
        if not is_int(self.n_train) or self.n_train < 2 * self.num_classes:
            raise KdtuneError(f"synthetic n_train must be an integer >= 2 * num_classes "
                              f"({2 * self.num_classes}), got {self.n_train!r}")
        if not is_int(self.n_test) or self.n_test < 1:
            raise KdtuneError(f"synthetic n_test must be an integer >= 1, got {self.n_test!r}")
        if not is_int(self.seed):
            raise KdtuneError(f"synthetic seed must be an integer, got {self.seed!r}")


@dataclass
class RawData:
    """What a dataset's loader returns: the data before splitting, unnormalised images (any
    numeric dtype) and labels."""

    x_pool: torch.Tensor  # training part (train + val), (N, C, H, W)
    y_pool: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray
    scale: float  # raw value of full intensity (255 for uint8 images)
    num_classes: int
    augment: Augmentation | None


# --------------------------------------------------------------------------------- loaders


def _carve_test(x: torch.Tensor, y: np.ndarray, n_test: int, split_seed: int) -> tuple:
    pool, test = stratified_split(y, n_test, split_seed, STREAM_TEST)
    return x[torch.from_numpy(pool)], y[pool], x[torch.from_numpy(test)], y[test]


@functools.cache
def _digits_arrays() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's digits, parsed once per process (callers only index into them).

    The CSV shipped inside scikit-learn is read directly: importing ``sklearn.datasets`` costs
    seconds and imports pandas, which ``kdtune train`` must not load.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = (Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
           if spec is not None and spec.origin else None)
    if csv is not None and csv.is_file():
        with gzip.open(csv, "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # an unusual install: let scikit-learn find its data
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1)  # (N,1,8,8)
    return x, np.asarray(target, dtype=np.int64)


def load_digits(split_seed: int, **_: object) -> RawData:
    x, y = _digits_arrays()
    n_test = round(DIGITS_TEST_FRACTION * len(y))
    x_pool, y_pool, x_test, y_test = _carve_test(x, y, n_test, split_seed)
    return RawData(x_pool, y_pool, x_test, y_test, scale=16.0, num_classes=10, augment=None)


def _synthetic_augmentation(spec: SyntheticSpec) -> Augmentation | None:
    """Crop and flip for synthetic images of at least 16 pixels; none for smaller ones."""
    return Augmentation() if spec.in_shape[1] >= 16 else None


def make_synthetic(spec: SyntheticSpec) -> tuple[torch.Tensor, np.ndarray]:
    """Generate all ``n_train + n_test`` synthetic images (float32) and labels from the seed."""
    c, h, w = spec.in_shape
    k = spec.num_classes
    n = spec.n_train + spec.n_test
    g = torch.Generator().manual_seed(spec.seed)
    low = torch.randn(k, c, max(1, h // 4), max(1, w // 4), generator=g)
    protos = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear",
                                             align_corners=False)
    flat = protos.flatten(1)
    protos = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-6))
    protos = protos.view(k, c, h, w)
    y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    shift = Augmentation(pad=h // 8, flip=False)
    x = shift.apply(protos[y], shift.sample_views(n, g))
    x = x * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g))
    x = x + torch.randn(n, c, h, w, generator=g)
    return x.contiguous(), y.numpy().astype(np.int64)


def load_synthetic(split_seed: int, synthetic: SyntheticSpec | None, **_: object) -> RawData:
    spec = synthetic or SyntheticSpec()
    x, y = make_synthetic(spec)
    x_pool, y_pool, x_test, y_test = _carve_test(x, y, spec.n_test, split_seed)
    augment = _synthetic_augmentation(spec)
    return RawData(x_pool, y_pool, x_test, y_test, scale=1.0, num_classes=spec.num_classes,
                augment=augment)


@dataclass(frozen=True)
class _TorchvisionSet:
    cls_name: str  # class in torchvision.datasets
    label: str  # human name used in messages
    num_classes: int
    in_shape: tuple[int, int, int]
    augment: Augmentation | None


_TORCHVISION = {
    "mnist": _TorchvisionSet("MNIST", "MNIST", 10, (1, 28, 28), None),
    "fashion_mnist": _TorchvisionSet("FashionMNIST", "Fashion-MNIST", 10, (1, 28, 28), None),
    "cifar10": _TorchvisionSet("CIFAR10", "CIFAR-10", 10, (3, 32, 32), Augmentation(4, True)),
    "cifar100": _TorchvisionSet("CIFAR100", "CIFAR-100", 100, (3, 32, 32), Augmentation(4, True)),
}


def _missing(tv: _TorchvisionSet, root: Path | None, corrupted: bool = False) -> KdtuneError:
    where = f" under '{root}'" if root is not None else ""
    what = " (files missing or corrupted)" if corrupted else ""
    return KdtuneError(
        f"no {tv.label} data{where}{what}: pass --data-root DIR holding torchvision's "
        f"{tv.label} files, or add --download to fetch them (needs internet)"
    )


def _torchvision_part(tv: _TorchvisionSet, root: Path | None, train: bool,
                      download: bool) -> tuple[torch.Tensor, np.ndarray]:
    """One official part of a torchvision set as (uint8 (N, C, H, W), int64 labels)."""
    if root is None:
        if download:
            raise KdtuneError(f"--download needs --data-root DIR to save {tv.label} into")
        raise _missing(tv, None)
    import torchvision.datasets

    cls = getattr(torchvision.datasets, tv.cls_name)
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:
        msg = str(err)
        if download and msg.startswith("Error downloading"):
            first = msg.splitlines()[0]
            raise KdtuneError(f"could not download {tv.label} into '{root}': {first}") from None
        if "not found" in msg:
            raise _missing(tv, root, corrupted="corrupted" in msg) from None
        raise
    except OSError as err:  # URLError and friends while downloading
        if not download:
            raise
        raise KdtuneError(f"could not download {tv.label} into '{root}': {err}") from None
    except (AssertionError, TypeError, ValueError) as err:  # malformed idx files (MNIST)
        raise KdtuneError(
            f"unreadable {tv.label} files under '{root}': {err or type(err).__name__}"
        ) from None
    data = ds.data
    x = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # MNIST NHW, CIFAR NHWC
    y = np.asarray(ds.targets, dtype=np.int64)
    if tuple(x.shape[1:]) != tv.in_shape or len(y) != len(x) or x.dtype != torch.uint8:
        raise KdtuneError(f"unexpected {tv.label} data under '{root}': images of shape "
                          f"{tuple(x.shape)} ({x.dtype}), {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= tv.num_classes):
        raise KdtuneError(f"{tv.label} labels under '{root}' fall outside 0..{tv.num_classes - 1}")
    return x.contiguous(), y


def _torchvision_loader(name: str) -> Callable[..., RawData]:
    tv = _TORCHVISION[name]

    def load(data_root: Path | None, download: bool, **_: object) -> RawData:
        x_pool, y_pool = _torchvision_part(tv, data_root, True, download)
        x_test, y_test = _torchvision_part(tv, data_root, False, False)
        return RawData(x_pool, y_pool, x_test, y_test, scale=255.0, num_classes=tv.num_classes,
                    augment=tv.augment)

    return load


load_mnist = _torchvision_loader("mnist")
load_fashion_mnist = _torchvision_loader("fashion_mnist")
load_cifar10 = _torchvision_loader("cifar10")
load_cifar100 = _torchvision_loader("cifar100")


# --------------------------------------------------------------------------------- assembly

_CHUNK = 4096


def _channel_stats(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``x / scale`` (chunked; chunk sums added in float64)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), _CHUNK):
        part = x[start:start + _CHUNK].to(torch.float32)
        total += part.sum(dim=(0, 2, 3)).double()
        total_sq += (part * part).sum(dim=(0, 2, 3)).double()
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean / scale, (std / scale).clamp_min(1e-6)


def _normalise(x: torch.Tensor, scale: float, mean: torch.Tensor,
               std: torch.Tensor) -> torch.Tensor:
    """``(x / scale - mean) / std`` per channel, as float32 (chunked to bound memory)."""
    out = torch.empty(x.shape, dtype=torch.float32)
    mul = (1.0 / (scale * std)).to(torch.float32).view(1, -1, 1, 1)
    add = (-mean / std).to(torch.float32).view(1, -1, 1, 1)
    for start in range(0, len(x), _CHUNK):
        part = x[start:start + _CHUNK].to(torch.float32)
        torch.addcmul(add, part, mul, out=out[start:start + _CHUNK])
    return out


def _digest(x: torch.Tensor, y: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((tuple(x.shape), str(x.dtype))).encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def _check_args(name: str, split_seed: int, val_fraction: float, train_per_class: int | None,
                synthetic: SyntheticSpec | None) -> None:
    DATASETS.get(name)  # an unknown name: the choices
    if (isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer))
            or split_seed < 0):
        raise KdtuneError(f"split_seed must be an integer >= 0, got {split_seed!r}")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not math.isfinite(val_fraction) or not 0 < val_fraction <= 0.5):
        raise KdtuneError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    if train_per_class is not None and (
        isinstance(train_per_class, bool) or not isinstance(train_per_class, (int, np.integer))
        or train_per_class < 1
    ):
        raise KdtuneError(f"train_per_class must be an integer >= 1, got {train_per_class!r}")
    if synthetic is not None and name != "synthetic":
        raise KdtuneError(f"a synthetic spec was given for dataset {name!r}; it applies only to "
                          "'synthetic'")
    if synthetic is not None and not isinstance(synthetic, SyntheticSpec):
        raise KdtuneError(f"synthetic must be a SyntheticSpec, got {type(synthetic).__name__}")


def load_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    train_per_class: int | None = None,
    synthetic: SyntheticSpec | None = None,
) -> DataSplits:
    """Load dataset ``name`` and split it into normalised train / val / test tensors.

    Raises :class:`KdtuneError` for an unknown name, bad split parameters, or missing data.
    """
    _check_args(name, split_seed, val_fraction, train_per_class, synthetic)
    root = Path(data_root).expanduser() if data_root is not None else None
    spec = DATASETS.get(name)
    raw = spec.load(data_root=root, download=download, split_seed=int(split_seed),
                         synthetic=synthetic)

    n_pool = len(raw.y_pool)
    n_val = max(1, round(val_fraction * n_pool))
    train_idx, val_idx = stratified_split(raw.y_pool, n_val, int(split_seed), STREAM_VAL)
    if train_per_class is not None:
        keep = per_class_subset(raw.y_pool[train_idx], int(train_per_class), int(split_seed),
                                STREAM_PER_CLASS, num_classes=raw.num_classes)
        train_idx = train_idx[keep]

    mean, std = _channel_stats(raw.x_pool, raw.scale)

    def part(x: torch.Tensor, y: np.ndarray, idx: np.ndarray | None = None):
        if idx is not None:
            x, y = x[torch.from_numpy(idx)], y[idx]
        return _normalise(x, raw.scale, mean, std), torch.from_numpy(np.array(y, dtype=np.int64))

    x_train, y_train = part(raw.x_pool, raw.y_pool, train_idx)
    x_val, y_val = part(raw.x_pool, raw.y_pool, val_idx)
    x_test, y_test = part(raw.x_test, raw.y_test)

    params = {
        "v": _KEY_VERSION,
        "name": name,
        "split_seed": int(split_seed),
        "val_fraction": float(val_fraction),
        "train_per_class": None if train_per_class is None else int(train_per_class),
        "synthetic": asdict(synthetic or SyntheticSpec()) if name == "synthetic" else None,
        "data": _digest(raw.x_pool, raw.y_pool) if spec.reads_files else None,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    c, h, w = raw.x_pool.shape[1:]
    return DataSplits(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        num_classes=raw.num_classes,
        in_shape=(int(c), int(h), int(w)),
        augment=raw.augment,
        key=key,
        normalisation=Normalisation(float(raw.scale), tuple(mean.tolist()), tuple(std.tolist())),
    )
