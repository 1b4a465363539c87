"""The dataset registry, without torch: each dataset's name, shape, classes and what it reads.

A :class:`DatasetSpec` holds what is known of a dataset without loading it, and its loader
(the function itself, or a :class:`~kdtune.registry.Ref` ``"module:name"`` imported when
first called). The built-in sets are declared here with refs to :mod:`kdtune.data.datasets`;
a package outside kdtune registers its own with :func:`register_dataset` from the module
its entry point in the group ``kdtune.datasets`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdtune.registry import Ref, Registry

__all__ = ["DATASETS", "DatasetSpec", "dataset_augments", "dataset_reads_files",
           "dataset_shape", "list_datasets", "list_file_datasets", "register_dataset",
           "unregister_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and what is known without loading it.

    ``load(data_root, download, split_seed, synthetic)`` (keywords; it may ignore any)
    returns a :class:`~kdtune.data.datasets.RawData`. ``augments``: the dataset has an
    augmentation (``augment`` turns it on or off). ``reads_files``: it reads files
    (``data_root``, ``download``). ``num_classes``/``in_shape``: ``synthetic``'s defaults.
    """

    name: str
    load: Callable[..., Any]
    num_classes: int
    in_shape: tuple[int, int, int]
    augments: bool
    reads_files: bool = False


#: The registered datasets, in registration order; plugins: the group ``kdtune.datasets``.
DATASETS: Registry[DatasetSpec] = Registry("dataset", plugins="kdtune.datasets")


def register_dataset(name: str, *, num_classes: int, in_shape: tuple[int, int, int],
                     augments: bool, reads_files: bool = False
                     ) -> Callable[[Any], Any]:
    """Register the loader of dataset ``name`` (a function, or ``"module:name"``; see
    :class:`DatasetSpec`)."""

    def decorate(load: Any) -> Any:
        DATASETS.add(name, DatasetSpec(name, Ref(load) if isinstance(load, str) else load,
                                       num_classes, (in_shape[0], in_shape[1], in_shape[2]),
                                       augments, reads_files))
        return load

    return decorate


def unregister_dataset(name: str) -> None:
    """Remove the dataset ``name`` (for tests)."""
    DATASETS.remove(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`~kdtune.data.load_dataset`."""
    return DATASETS.names()


def list_file_datasets() -> list[str]:
    """The datasets read from files (``data_root``, ``download``); the others are built in."""
    return [name for name, spec in DATASETS.items() if spec.reads_files]


def dataset_reads_files(name: str) -> bool:
    """Whether dataset ``name`` reads files, so that ``data_root`` and ``download`` matter."""
    return name in DATASETS and DATASETS.get(name).reads_files


def dataset_augments(name: str) -> bool:
    """Whether dataset ``name`` has an augmentation (``augment`` turns it on or off)."""
    return name in DATASETS and DATASETS.get(name).augments


def dataset_shape(name: str) -> tuple[int, tuple[int, int, int]]:
    """``(num_classes, (C, H, W))`` of dataset ``name`` without loading it (``synthetic``:
    its defaults)."""
    spec = DATASETS.get(name)
    return spec.num_classes, spec.in_shape


# -- the built-in sets (kdtune.data.datasets loads them) -------------------------------------
register_dataset("digits", num_classes=10, in_shape=(1, 8, 8), augments=False,
                 )("kdtune.data.datasets:load_digits")
for _name, _classes, _shape, _augments in (("mnist", 10, (1, 28, 28), False),
                                            ("fashion_mnist", 10, (1, 28, 28), False),
                                            ("cifar10", 10, (3, 32, 32), True),
                                            ("cifar100", 100, (3, 32, 32), True)):
    register_dataset(_name, num_classes=_classes, in_shape=_shape, augments=_augments,
                     reads_files=True)(f"kdtune.data.datasets:load_{_name}")
register_dataset("synthetic", num_classes=10, in_shape=(3, 32, 32), augments=True,
                 )("kdtune.data.datasets:load_synthetic")
