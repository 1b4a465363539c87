"""The real loaders on every dataset (fake torchvision files in a temp dir; nothing downloads)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from kdtune.data import (
    DATASETS,
    Augmentation,
    DataSplits,
    RawData,
    SyntheticSpec,
    list_datasets,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from kdtune.data.datasets import (
    dataset_augments,
    dataset_reads_files,
    dataset_shape,
    list_file_datasets,
)
from kdtune.data.fake import fake_cifar_checksums, write_fake_cifar, write_fake_mnist
from kdtune.errors import KdtuneError

SMALL_SYNTH = SyntheticSpec(num_classes=4, in_shape=(3, 16, 16), n_train=120, n_test=40, seed=1)
TORCHVISION_SETS = ["mnist", "fashion_mnist", "cifar10", "cifar100"]
EXPECTED = {  # name: (in_shape, num_classes, training part size, test size, augment)
    "digits": ((1, 8, 8), 10, 1797 - 359, 359, None),
    "synthetic": ((3, 16, 16), 4, 120, 40, Augmentation(4, True)),
    "mnist": ((1, 28, 28), 10, 60, 20, None),
    "fashion_mnist": ((1, 28, 28), 10, 60, 20, None),
    "cifar10": ((3, 32, 32), 10, 50, 20, Augmentation(4, True)),
    "cifar100": ((3, 32, 32), 100, 300, 100, Augmentation(4, True)),
}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake_data")
    write_fake_mnist(root, seed=1)
    write_fake_mnist(root, seed=2, fashion=True)
    write_fake_cifar(root, seed=3)
    write_fake_cifar(root, n_train=300, n_test=100, seed=4, cifar100=True)
    return root


@pytest.fixture
def load(fake_root: Path) -> Iterator:
    """``load(name, **kw)``: load_dataset with the fake root (and CIFAR checksums) in place."""

    def _load(name: str, **kw: object) -> DataSplits:
        if name == "synthetic":
            kw.setdefault("synthetic", SMALL_SYNTH)
        if name in TORCHVISION_SETS:
            kw.setdefault("data_root", fake_root)
        ctx = (fake_cifar_checksums(fake_root, cifar100=name == "cifar100")
               if name.startswith("cifar") else nullcontext())
        with ctx:
            return load_dataset(name, **kw)

    yield _load


def row_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def test_list_datasets() -> None:
    assert list_datasets()[:6] == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100",
                                   "synthetic"]


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_is_what_its_spec_says(load, name: str) -> None:
    """Parametrized over the registry: a new dataset (a plugin's too) is checked without
    naming it here."""
    spec = DATASETS.get(name)
    if spec.reads_files and name not in TORCHVISION_SETS:
        pytest.skip("no fake files of a dataset this suite does not know")
    d = load(name, synthetic=SyntheticSpec()) if name == "synthetic" else load(name)
    assert (d.num_classes, d.in_shape) == (spec.num_classes, spec.in_shape)
    assert dataset_shape(name) == (spec.num_classes, spec.in_shape)
    assert (d.augment is not None) == spec.augments == dataset_augments(name)
    assert dataset_reads_files(name) == spec.reads_files == (name in list_file_datasets())
    assert len(d.y_train) and len(d.y_val) and len(d.y_test)
    with pytest.raises(KdtuneError, match=f"did you mean {name!r}"):
        load_dataset(name + "x")


def test_register_dataset_adds_one() -> None:
    def tiny(split_seed: int, **_: object) -> RawData:
        x = torch.arange(2 * 20 * 4, dtype=torch.float32).view(40, 1, 2, 2)
        y = np.arange(40) % 2
        return RawData(x[:30], y[:30], x[30:], y[30:], scale=1.0, num_classes=2, augment=None)

    register_dataset("_tiny_test_set", num_classes=2, in_shape=(1, 2, 2), augments=False)(tiny)
    try:
        assert "_tiny_test_set" in list_datasets()
        d = load_dataset("_tiny_test_set")
        assert d.in_shape == (1, 2, 2) and len(d.y_test) == 10
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("_tiny_test_set", num_classes=2, in_shape=(1, 2, 2),
                             augments=False)(tiny)
    finally:
        unregister_dataset("_tiny_test_set")
    assert "_tiny_test_set" not in list_datasets()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_loads(load, name: str) -> None:
    in_shape, k, n_pool, n_test, augment = EXPECTED[name]
    d = load(name)
    assert d.name == name and d.num_classes == k and d.in_shape == in_shape
    assert d.augment == augment
    assert isinstance(d.key, str) and len(d.key) == 16
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), *in_shape) and x.is_contiguous()
        assert int(y.min()) >= 0 and int(y.max()) < k
    assert len(d.y_train) + len(d.y_val) == n_pool
    assert len(d.y_val) == round(0.1 * n_pool)
    assert len(d.y_test) == n_test
    # normalised with the statistics of the training part (train + val)
    pool = torch.cat([d.x_train, d.x_val])
    assert torch.allclose(pool.mean(dim=(0, 2, 3)), torch.zeros(in_shape[0]), atol=1e-4)
    assert torch.allclose(pool.std(dim=(0, 2, 3)), torch.ones(in_shape[0]), atol=1e-2)
    # the three parts are disjoint (every image is distinct in these sets)
    parts = [row_keys(d.x_train), row_keys(d.x_val), row_keys(d.x_test)]
    assert sum(map(len, parts)) == n_pool + n_test
    assert len(set().union(*parts)) == n_pool + n_test
    assert "DataSplits(name=" in repr(d)


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10", "synthetic"])
def test_split_seed(load, name: str) -> None:
    a, b, c = load(name), load(name), load(name, split_seed=1)
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, part), getattr(b, part)), part
    assert a.key == b.key != c.key
    assert row_keys(a.x_val) != row_keys(c.x_val)
    if name in ("digits", "synthetic"):  # test carved by split_seed
        assert row_keys(a.x_test) != row_keys(c.x_test)
    else:  # official test split, only normalisation statistics could differ (they do not)
        assert torch.equal(a.x_test, c.x_test)


def test_val_fraction_stratified(load) -> None:
    d = load("digits", val_fraction=0.25)
    n_pool = len(d.y_train) + len(d.y_val)
    assert len(d.y_val) == round(0.25 * n_pool)
    pool_counts = torch.bincount(torch.cat([d.y_train, d.y_val]), minlength=10)
    val_counts = torch.bincount(d.y_val, minlength=10)
    assert torch.all((val_counts - 0.25 * pool_counts).abs() <= 1)
    assert d.key != load("digits").key


@pytest.mark.parametrize("name", ["digits", "mnist", "synthetic"])
def test_train_per_class(load, name: str) -> None:
    full = load(name)
    small = load(name, train_per_class=2)
    k = full.num_classes
    assert torch.equal(torch.bincount(small.y_train, minlength=k), torch.full((k,), 2))
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.y_val, full.y_val)
    assert torch.equal(small.x_test, full.x_test)
    assert row_keys(small.x_train) <= row_keys(full.x_train)
    assert small.key != full.key
    again = load(name, train_per_class=2)
    assert torch.equal(again.x_train, small.x_train)
    other = load(name, train_per_class=2, split_seed=3)
    assert row_keys(other.x_train) != row_keys(small.x_train)


def test_train_per_class_too_large(load) -> None:
    with pytest.raises(KdtuneError, match=r"train_per_class 1000 is too large: class \d+ has only"):
        load("digits", train_per_class=1000)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(KdtuneError, match="train_per_class must be an integer >= 1"):
            load("digits", train_per_class=bad)


@pytest.mark.parametrize("bad", [0, 0.0, 0.51, -0.1, 1.0, float("nan"), "0.1"])
def test_bad_val_fraction(bad: object) -> None:
    with pytest.raises(KdtuneError, match=r"val_fraction must be in \(0, 0.5\]"):
        load_dataset("digits", val_fraction=bad)


def test_val_fraction_half(load) -> None:
    d = load("digits", val_fraction=0.5)
    assert abs(len(d.y_val) - len(d.y_train)) <= 1


def test_unknown_dataset() -> None:
    with pytest.raises(KdtuneError, match="unknown dataset 'cifar11'; choose one of: digits") as e:
        load_dataset("cifar11")
    assert "did you mean 'cifar10'" in str(e.value)


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_data_root(tmp_path: Path, name: str) -> None:
    for root in (None, tmp_path, tmp_path / "does-not-exist"):
        with pytest.raises(KdtuneError) as e:
            load_dataset(name, data_root=root)
        msg = str(e.value)
        assert "--data-root" in msg and "--download" in msg and "\n" not in msg
        if root is not None:
            assert str(root) in msg


@pytest.mark.parametrize("bad", [-1, 1.5, "0", None])
def test_bad_split_seed(bad: object) -> None:
    with pytest.raises(KdtuneError, match="split_seed must be an integer >= 0"):
        load_dataset("digits", split_seed=bad)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_tensor_conversion_matches_torchvision(fake_root: Path, name: str) -> None:
    """Whole-array conversion gives what torchvision's own per-sample path gives."""
    import torchvision.datasets
    from torchvision.transforms.functional import pil_to_tensor

    from kdtune.data.datasets import _TORCHVISION, _torchvision_part

    tv = _TORCHVISION[name]
    with fake_cifar_checksums(fake_root) if name == "cifar10" else nullcontext():
        x, y = _torchvision_part(tv, fake_root, False, False)
        ds = getattr(torchvision.datasets, tv.cls_name)(str(fake_root), train=False)
    assert x.dtype == torch.uint8 and x.shape == (len(ds), *tv.in_shape)
    for i in (0, 7, len(ds) - 1):
        img, label = ds[i]
        assert torch.equal(x[i], pil_to_tensor(img)) and int(y[i]) == label


def test_download_needs_root() -> None:
    with pytest.raises(KdtuneError, match="--download needs --data-root"):
        load_dataset("mnist", download=True)


def test_cifar_checksums_still_verified(fake_root: Path) -> None:
    # without the fake checksums torchvision rejects the files (md5 of the real download)
    with pytest.raises(KdtuneError, match=r"files missing or corrupted.*--data-root"):
        load_dataset("cifar10", data_root=fake_root)
    from torchvision.datasets import CIFAR10

    before = [list(row) for row in CIFAR10.train_list]
    with fake_cifar_checksums(fake_root):
        assert CIFAR10.train_list != before
    assert CIFAR10.train_list == before


def test_unreadable_mnist(tmp_path: Path) -> None:
    raw = write_fake_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")
    with pytest.raises(KdtuneError, match="unreadable MNIST files"):
        load_dataset("mnist", data_root=tmp_path)


def nearest_centroid_accuracy(d: DataSplits) -> float:
    flat = d.x_train.flatten(1)
    centroids = torch.stack([flat[d.y_train == c].mean(0) for c in range(d.num_classes)])
    pred = torch.cdist(d.x_test.flatten(1), centroids).argmin(1)
    return float((pred == d.y_test).float().mean())


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "synthetic"])
def test_fake_data_is_learnable(load, name: str) -> None:
    assert nearest_centroid_accuracy(load(name)) > 0.8


def test_synthetic_default_and_spec(load) -> None:
    d = load_dataset("synthetic")
    assert d.in_shape == (3, 32, 32) and d.num_classes == 10
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (900, 100, 200)
    assert d.augment == Augmentation()
    assert nearest_centroid_accuracy(d) > 0.5
    tiny = load_dataset("synthetic", synthetic=SyntheticSpec(in_shape=(1, 8, 8), n_train=40,
                                                             n_test=10))
    assert tiny.augment is None and tiny.in_shape == (1, 8, 8)
    other = load("synthetic", synthetic=SyntheticSpec(num_classes=4, in_shape=(3, 16, 16),
                                                      n_train=120, n_test=40, seed=2))
    assert other.key != load("synthetic").key
    assert not torch.equal(other.x_train, load("synthetic").x_train)


def test_synthetic_spec_errors() -> None:
    with pytest.raises(KdtuneError, match="num_classes"):
        SyntheticSpec(num_classes=1)
    with pytest.raises(KdtuneError, match="in_shape"):
        SyntheticSpec(in_shape=(3, 32))  # type: ignore[arg-type]
    with pytest.raises(KdtuneError, match="n_train"):
        SyntheticSpec(n_train=5)
    with pytest.raises(KdtuneError, match="only to 'synthetic'"):
        load_dataset("digits", synthetic=SyntheticSpec())
    assert SyntheticSpec(in_shape=[1, 8, 8]).in_shape == (1, 8, 8)  # type: ignore[arg-type]
