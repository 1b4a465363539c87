"""Tiny fake MNIST / Fashion-MNIST / CIFAR files in torchvision's on-disk formats.

They let tests and benchmarks run the real loaders (``torchvision.datasets.*``) without the
internet. Images are class-dependent (a fixed random prototype per class, plus noise), so a
model can learn them.

* MNIST / Fashion-MNIST: uncompressed idx files in ``root/MNIST/raw/`` or
  ``root/FashionMNIST/raw/``, the names torchvision looks for after unpacking its download.
  torchvision checks only that these files exist, so they load as they are.
* CIFAR-10 / CIFAR-100: the python-pickle batches in ``root/cifar-10-batches-py/`` or
  ``root/cifar-100-python/``. torchvision verifies the md5 of every file against the checksums
  of the real download, which fake files cannot match: load them inside
  :func:`fake_cifar_checksums`, which temporarily swaps the expected checksums of torchvision's
  class for those of the fake files (the integrity check itself still runs).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["fake_cifar_checksums", "write_fake_cifar", "write_fake_mnist"]


def _prototypes(num_classes: int, h: int, w: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """One blocky random image (h, w, c) per class, values 0..255."""
    block = 4
    low = rng.integers(0, 256, size=(num_classes, -(-h // block), -(-w // block), c))
    return low.repeat(block, axis=1).repeat(block, axis=2)[:, :h, :w, :].astype(np.float64)


def _class_images(
    n: int, protos: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (n, h, w, c) and balanced labels: class prototype + noise."""
    labels = rng.permutation(np.arange(n) % len(protos)).astype(np.int64)
    images = protos[labels] + rng.normal(0.0, 40.0, size=(n, *protos.shape[1:]))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format (big-endian header: magic 0x08 type, ndim)."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fake_mnist(
    root: str | Path, *, n_train: int = 60, n_test: int = 20, seed: int = 0, fashion: bool = False
) -> Path:
    """Write a fake MNIST (or Fashion-MNIST) under ``root``; returns the raw folder written."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / ("FashionMNIST" if fashion else "MNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    protos = _prototypes(10, 28, 28, 1, rng)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _class_images(n, protos, rng)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images[..., 0]))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels.astype(np.uint8)))
    return raw


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_cifar(
    root: str | Path, *, n_train: int = 50, n_test: int = 20, seed: int = 0,
    cifar100: bool = False,
) -> Path:
    """Write a fake CIFAR-10 (or CIFAR-100) under ``root``; returns the batch folder written.

    Load it inside :func:`fake_cifar_checksums` (torchvision checks md5 sums).
    """
    rng = np.random.default_rng(seed)
    k = 100 if cifar100 else 10
    folder = Path(root) / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    protos = _prototypes(k, 32, 32, 3, rng)

    def batch(n: int, name: str) -> dict:
        images, labels = _class_images(n, protos, rng)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3 * 32 * 32)  # rows of R, G, B planes
        entry: dict = {"batch_label": name, "data": data,
                       "filenames": [f"fake_{i}.png" for i in range(n)]}
        if cifar100:
            entry["fine_labels"] = labels.tolist()
            entry["coarse_labels"] = (labels // 5).tolist()
        else:
            entry["labels"] = labels.tolist()
        return entry

    if cifar100:
        _dump(folder / "train", batch(n_train, "training batch 1 of 1"))
        _dump(folder / "test", batch(n_test, "testing batch 1 of 1"))
        _dump(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(k)],
                                "coarse_label_names": [f"super_{i}" for i in range(k // 5)]})
    else:
        for i, n in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            _dump(folder / f"data_batch_{i}", batch(len(n), f"training batch {i} of 5"))
        _dump(folder / "test_batch", batch(n_test, "testing batch 1 of 1"))
        _dump(folder / "batches.meta", {"label_names": [f"class_{i}" for i in range(k)],
                                        "num_cases_per_batch": -(-n_train // 5),
                                        "num_vis": 3 * 32 * 32})
    return folder


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@contextmanager
def fake_cifar_checksums(root: str | Path, *, cifar100: bool = False) -> Iterator[None]:
    """Make torchvision's CIFAR class expect the md5 sums of the files under ``root``.

    Inside the block ``torchvision.datasets.CIFAR10`` (or ``CIFAR100``) verifies files against
    the checksums of the fake files written by :func:`write_fake_cifar`; on exit the real
    checksums are restored. Affects the whole process while active: for tests and benchmarks only.
    """
    from torchvision import datasets

    cls = datasets.CIFAR100 if cifar100 else datasets.CIFAR10
    folder = Path(root) / cls.base_folder
    saved = {attr: cls.__dict__[attr] for attr in ("train_list", "test_list", "meta")}
    try:
        cls.train_list = [[name, _md5(folder / name)] for name, _ in saved["train_list"]]
        cls.test_list = [[name, _md5(folder / name)] for name, _ in saved["test_list"]]
        cls.meta = {**saved["meta"], "md5": _md5(folder / saved["meta"]["filename"])}
        yield
    finally:
        for attr, value in saved.items():
            setattr(cls, attr, value)
