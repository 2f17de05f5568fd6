"""Readers of the raw formats, each validating what it reads and naming the file at fault.

MNIST-style idx files, the classic ``mnist.pkl.gz`` (only numpy arrays are unpickled), SVHN's
``.mat`` files, CelebA's JPEGs (in ``img_align_celeba.zip`` or an extracted folder, centre
cropped and resized) and scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm

from kaem.checks import check_count
from kaem.data.spec import DataError

__all__ = [
    "CELEBA_CROP",
    "JpegStore",
    "NumpyUnpickler",
    "load_tiny",
    "read_celeba",
    "read_celeba_dir",
    "read_celeba_zip",
    "read_idx",
    "read_mnist_idx_dir",
    "read_mnist_pickle",
    "read_svhn_mat",
]

CELEBA_CROP = 140
"""Side of the centre square cut from each aligned 178x218 CelebA image before resizing."""

_GZIP_MAGIC = b"\x1f\x8b"

_IDX_UBYTE = 0x08


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


class NumpyUnpickler(pickle.Unpickler):
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
            obj = NumpyUnpickler(stream, encoding="latin1").load()
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
    check_count("size", size)
    check_count("crop", crop)


def _select(names: list[str], limit: int | None, indices: Sequence[int] | None) -> list[str]:
    if limit is not None:
        check_count("limit", limit, 0)
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
            raise ValueError(f"indices must lie in [0, {len(names)}), got {idx.min()}..{idx.max()}")
        names = [names[i] for i in idx]
    return names if limit is None else names[:limit]


class JpegStore:
    """The ``.jpg`` images of a zip archive or of a folder, in sorted order of name.

    Parameters
    ----------
    path
        ``img_align_celeba.zip`` (or any zip of JPEGs) or a folder of JPEG files.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.zipped = not self.path.is_dir()
        self.names = self._zip_names() if self.zipped else self._dir_names()

    def __len__(self) -> int:
        return len(self.names)

    def _zip_names(self) -> list[str]:
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = [n for n in zf.namelist() if _is_jpeg_name(n) and not n.endswith("/")]
        except FileNotFoundError as exc:
            raise DataError(f"{self.path}: no such file") from exc
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{self.path}: unreadable zip archive ({exc})") from exc
        if not names:
            raise DataError(f"{self.path}: the zip archive holds no .jpg images")
        return sorted(names)

    def _dir_names(self) -> list[str]:
        names = sorted(p.name for p in self.path.iterdir() if p.is_file() and _is_jpeg_name(p.name))
        if not names:
            raise DataError(f"{self.path}: the folder holds no .jpg images")
        return names

    def read(
        self,
        size: int,
        *,
        limit: int | None = None,
        indices: Sequence[int] | None = None,
        crop: int = CELEBA_CROP,
        progress: bool = True,
    ) -> np.ndarray:
        """Decode, centre-crop and resize the selected images: uint8 ``(N, 3, size, size)``."""
        _check_size_crop(size, crop)
        names = _select(self.names, limit, indices)
        if not self.zipped:
            opener: Callable[[str], AbstractContextManager[IO[bytes]]] = lambda n: open(  # noqa: E731
                self.path / n, "rb"
            )
            return _decode_images(names, opener, str(self.path), size, crop, progress)
        try:
            with zipfile.ZipFile(self.path) as zf:
                return _decode_images(names, zf.open, str(self.path), size, crop, progress)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{self.path}: unreadable zip archive ({exc})") from exc


def read_celeba(
    path: str | os.PathLike,
    size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    *,
    indices: Sequence[int] | None = None,
    crop: int = CELEBA_CROP,
) -> np.ndarray:
    """Read CelebA images from ``img_align_celeba.zip`` (without extracting it) or a folder.

    Each image is centre-cropped to a ``crop`` x ``crop`` square (the customary 140 for the
    aligned 178x218 images; smaller images use their short side) and resized to
    ``size`` x ``size`` with Pillow's antialiased bicubic filter.

    Parameters
    ----------
    path : path-like
        The zip archive or the folder of JPEGs; images are taken in sorted order of name.
    size : int
        Output side in pixels.
    limit : int, optional
        Read at most this many images (after ``indices``).
    progress : bool
        Show a progress bar.
    indices : sequence of int, optional
        Positions (in sorted order of name) of the images to read; all when None.
    crop : int
        Side of the centre square.

    Returns
    -------
    np.ndarray
        uint8 ``(N, 3, size, size)``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return JpegStore(path).read(size, limit=limit, indices=indices, crop=crop, progress=progress)


def read_celeba_zip(path: str | os.PathLike, *args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`read_celeba` on a zip archive (a folder is refused)."""
    if Path(path).is_dir():
        raise DataError(f"{path}: a folder, not a zip archive of JPEG images")
    return read_celeba(path, *args, **kwargs)


def read_celeba_dir(directory: str | os.PathLike, *args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`read_celeba` on an extracted folder of JPEGs (``img_align_celeba/``)."""
    if not Path(directory).is_dir():
        raise DataError(f"{directory}: not a folder of JPEG images")
    return read_celeba(directory, *args, **kwargs)


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
