"""Preparation of a dataset: a reproducible train/test split written as one HDF5 file.

The split is drawn with ``numpy.random.default_rng(seed)`` from the source's pool of
images. MNIST and Fashion-MNIST keep the source's own train/test division (train images
come from its training set, test images from its test set); SVHN (``train_32x32.mat``),
CelebA and the tiny set have one pool from which disjoint test and train sets are drawn.
In both cases the test set does not depend on ``n_train`` and a smaller training set is a
subset of a larger one drawn with the same seed, so runs at different scales share data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kaem.checks import check_count
from kaem.data.h5 import write_h5
from kaem.data.sources import Source, resolve_source
from kaem.data.spec import DATASETS, FORMAT_VERSION, DataError

__all__ = ["prepare_dataset"]


def _draw_split(
    rng: np.random.Generator, source: Source, n_train: int, n_test: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted source positions of the train and test images.

    The test set is drawn first (or from its own pool) so that it does not depend on
    ``n_train``, and the training set is a prefix of a permutation, so a smaller one is a
    subset of a larger one. Sorting keeps reads from zip archives sequential.
    """
    if source.test is None:
        size = source.train.size
        if n_train + n_test > size:
            raise ValueError(
                f"n_train={n_train} + n_test={n_test} exceeds the {size} images of "
                f"{source.description}"
            )
        perm = rng.permutation(size)
        return np.sort(perm[n_test : n_test + n_train]), np.sort(perm[:n_test])
    for what, n, pool in (("n_train", n_train, source.train), ("n_test", n_test, source.test)):
        if n > pool.size:
            raise ValueError(f"{what}={n} exceeds the {pool.size} images in {source.description}")
    train = np.sort(rng.permutation(source.train.size)[:n_train])
    test = np.sort(rng.permutation(source.test.size)[:n_test])
    return train, test


def prepare_dataset(
    name: str,
    out_path: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Draw a reproducible train/test split of a dataset and write it as one HDF5 file.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    out_path : path-like
        The HDF5 file to write (atomically; an existing file is replaced).
    source : path-like, optional
        Where the user keeps the raw data: for MNIST/Fashion-MNIST a folder of idx files or
        the classic ``mnist.pkl.gz``; for SVHN ``train_32x32.mat`` (or its folder); for
        CelebA ``img_align_celeba.zip`` or a folder of its JPEGs. A given source that fails
        raises at once instead of falling back, so a bad file is never silently replaced.
    root : path-like, optional
        torchvision's cache folder; ``out_path``'s folder / ``"downloads"`` by default.
    n_train, n_test : int, optional
        Split sizes; the paper's defaults from :data:`DATASETS` when None.
    seed : int
        Seed of the numpy Generator that draws the split.
    download : bool
        Let torchvision download into ``root`` (otherwise it only looks there).
    progress : bool
        Progress bars on slow steps (decoding CelebA).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ValueError
        Unknown ``name``, or split sizes the source cannot supply.
    DataError
        A corrupt given source, or no source worked (the message lists each try and why).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    n_train = check_count("n_train", spec.n_train if n_train is None else n_train, 1)
    n_test = check_count("n_test", spec.n_test if n_test is None else n_test, 1)
    seed = check_count("seed", seed, 0)
    out_path = Path(out_path)
    root = out_path.parent / "downloads" if root is None else Path(root)

    src = resolve_source(name, spec, source, root, download, progress)
    train_idx, test_idx = _draw_split(np.random.default_rng(seed), src, n_train, n_test)
    test_pool = src.train if src.test is None else src.test
    splits = {}
    for split, pool, idx in (("train", src.train, train_idx), ("test", test_pool, test_idx)):
        images, labels = pool.take(idx)
        if images.shape[1:] != spec.image_shape or images.dtype != np.uint8:
            raise DataError(
                f"{src.description}: images have shape {images.shape[1:]} and dtype "
                f"{images.dtype}, expected uint8 {spec.image_shape}"
            )
        splits[split] = {
            "images": np.ascontiguousarray(images),
            "labels": np.asarray(labels, dtype=np.int64),
            "source_index": idx.astype(np.int64),
        }
    pool_sizes = [src.train.size] + ([] if src.test is None else [src.test.size])
    attrs = {
        "name": name,
        "source": src.description,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "image_shape": np.asarray(spec.image_shape, dtype=np.int64),
        "num_classes": spec.num_classes,
        "pool_sizes": np.asarray(pool_sizes, dtype=np.int64),
        "format_version": FORMAT_VERSION,
    }
    write_h5(out_path, splits, attrs)
    return out_path
