"""What a prepared dataset is: its name, image shape, default split sizes, classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DATASETS", "FORMAT_VERSION", "DataError", "DatasetSpec"]

FORMAT_VERSION = 1
"""Version of the HDF5 layout written by :func:`prepare_dataset`."""


class DataError(RuntimeError):
    """A data file is missing, corrupt or not what it claims to be; the message names it."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like once prepared.

    Parameters
    ----------
    name : str
        Key in :data:`DATASETS`.
    image_shape : tuple of int
        ``(C, H, W)`` of one image.
    n_train, n_test : int
        Default split sizes (the paper's).
    num_classes : int
        Number of class labels; 0 for unlabelled data (CelebA, labels stored as -1).
    """

    name: str
    image_shape: tuple[int, int, int]
    n_train: int
    n_test: int
    num_classes: int


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "mnist": DatasetSpec("mnist", (1, 28, 28), 50_000, 100, 10),
        "fashion_mnist": DatasetSpec("fashion_mnist", (1, 28, 28), 50_000, 100, 10),
        "svhn": DatasetSpec("svhn", (3, 32, 32), 20_000, 100, 10),
        "celeba": DatasetSpec("celeba", (3, 64, 64), 20_000, 100, 0),
        # The official split: all 50,000 training images, the 10,000 of the test batch.
        "cifar10": DatasetSpec("cifar10", (3, 32, 32), 50_000, 10_000, 10),
        "tiny": DatasetSpec("tiny", (1, 8, 8), 1_500, 100, 10),
    }
)
"""The datasets :func:`prepare_dataset` knows, by name."""
