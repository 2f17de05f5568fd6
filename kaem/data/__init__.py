"""Datasets: readers of the raw formats, where the pixels come from, preparation into HDF5.

``prepare_dataset(name, path)`` draws a reproducible train/test split of MNIST,
Fashion-MNIST, SVHN, CelebA, CIFAR-10 or the tiny 8x8 digits from a path the user gives,
torchvision's download or a copy a package ships (:mod:`kaem.data.sources`), and writes it
as one HDF5 file (:mod:`kaem.data.h5`); ``load_images(path, split)`` reads it back,
validated. Generated image sets live in the same kind of file (:func:`write_samples`).
"""

from kaem.data.cifar import CIFAR10_ARCHIVE, read_cifar10
from kaem.data.h5 import (
    SAMPLES_FORMAT_VERSION,
    as_uint8_images,
    iter_samples,
    load_images,
    read_metadata,
    read_samples,
    samples_metadata,
    to_uint8,
    write_samples,
)
from kaem.data.prepare import prepare_dataset
from kaem.data.readers import (
    CELEBA_CROP,
    load_tiny,
    read_celeba,
    read_celeba_dir,
    read_celeba_zip,
    read_idx,
    read_mnist_idx_dir,
    read_mnist_pickle,
    read_svhn_mat,
)
from kaem.data.sources import FASHION_MNIST_DEBIAN_DIR, find_packaged_source
from kaem.data.spec import DATASETS, FORMAT_VERSION, DataError, DatasetSpec

__all__ = [
    "CELEBA_CROP",
    "CIFAR10_ARCHIVE",
    "DATASETS",
    "FASHION_MNIST_DEBIAN_DIR",
    "FORMAT_VERSION",
    "SAMPLES_FORMAT_VERSION",
    "DataError",
    "DatasetSpec",
    "as_uint8_images",
    "find_packaged_source",
    "iter_samples",
    "load_images",
    "load_tiny",
    "prepare_dataset",
    "read_celeba",
    "read_celeba_dir",
    "read_celeba_zip",
    "read_cifar10",
    "read_idx",
    "read_metadata",
    "read_mnist_idx_dir",
    "read_mnist_pickle",
    "read_samples",
    "read_svhn_mat",
    "samples_metadata",
    "to_uint8",
    "write_samples",
]
