"""CIFAR-10 from its python archive, ``cifar-10-python.tar.gz`` (Krizhevsky 2009).

The archive holds ``cifar-10-batches-py/`` with five training batches ``data_batch_1..5``
(10,000 images each) and ``test_batch`` (10,000): pickles of a dict with ``data``, uint8
``(n, 3072)`` stored as the red, green and blue 32x32 planes of each image in turn, and
``labels``, a list of ints in 0..9. Only numpy arrays and plain containers are unpickled,
so a data file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from kaem.data.readers import NumpyUnpickler
from kaem.data.spec import DataError

__all__ = ["CIFAR10_ARCHIVE", "read_cifar10"]

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
"""The file name under which the archive is distributed."""

_FOLDER = "cifar-10-batches-py"
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = "test_batch"
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError)


def _batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch as uint8 images ``(n, 3, 32, 32)`` and int64 labels ``(n,)``."""
    try:
        batch = NumpyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{where}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        raise DataError(f"{where}: not a CIFAR-10 batch (no data and labels)")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{where}: data has dtype {data.dtype} and shape {data.shape}, expected uint8 (n, 3072)"
        )
    if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max() < 10):
        raise DataError(f"{where}: labels do not match the {len(data)} images or leave 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _members(path: Path) -> dict[str, bytes]:
    """The raw bytes of every batch, from the archive or from its extracted folder."""
    names = (*_TRAIN, _TEST)
    if path.is_dir():
        folder = path / _FOLDER if (path / _FOLDER).is_dir() else path
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder}: missing CIFAR-10 batch file(s) {missing}")
        return {n: (folder / n).read_bytes() for n in names}
    try:
        with tarfile.open(path, "r:*") as tar:
            found = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in found]
            if missing:
                raise DataError(f"{path}: the archive has no CIFAR-10 batch(es) {missing}")
            return {n: tar.extractfile(found[n]).read() for n in names}
    except _READ_ERRORS as exc:
        raise DataError(
            f"{path}: not a readable {CIFAR10_ARCHIVE} ({type(exc).__name__}: {exc}); "
            "download it again"
        ) from exc


def read_cifar10(
    path: str | os.PathLike,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read CIFAR-10's training and test sets.

    Parameters
    ----------
    path : path-like
        ``cifar-10-python.tar.gz``, or the folder it extracts to (or the folder holding that).

    Returns
    -------
    train, test : (images, labels)
        Images uint8 ``(n, 3, 32, 32)``, labels int64 ``(n,)``: the five training batches
        in order, and the test batch.

    Raises
    ------
    DataError
        A missing, truncated or corrupt archive, or a batch that is not what CIFAR-10 holds;
        the message names the file and, where it is one, the batch.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raw = _members(path)
    parts = [_batch(raw[n], f"{path}: {n}") for n in (*_TRAIN, _TEST)]
    train = tuple(np.concatenate(x) for x in zip(*parts[:-1], strict=True))
    return (train[0], train[1]), parts[-1]
