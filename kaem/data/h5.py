"""HDF5 files of images: prepared datasets and generated image sets, read with validation.

A prepared dataset (:func:`kaem.data.prepare_dataset`) is laid out as::

    /train/images        uint8  (n_train, C, H, W)
    /train/labels        int64  (n_train,)    class labels; -1 where the source has none
    /train/source_index  int64  (n_train,)    position of each image in its source pool
    /test/...            the same for the test split
    attrs: name, source, seed, n_train, n_test, image_shape, num_classes,
           pool_sizes, format_version

A generated image set (:func:`write_samples`) is laid out as::

    /images   uint8 (n, C, H, W)   round(255 x) of the model's [0, 1] output
    attrs:    n, image_shape, batch_size, generate_seconds, format_version, and what the
              caller adds

Both are written under a temporary name and renamed into place when complete, so a killed
job never leaves a truncated file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kaem.checks import check_count
from kaem.data.spec import FORMAT_VERSION, DataError
from kaem.io import atomic_path

__all__ = [
    "SAMPLES_FORMAT_VERSION",
    "as_uint8_images",
    "iter_samples",
    "load_images",
    "read_metadata",
    "read_samples",
    "samples_metadata",
    "to_uint8",
    "write_h5",
    "write_samples",
]

SAMPLES_FORMAT_VERSION = 1
"""Version of the layout written by :func:`write_samples`."""

_SPLITS = ("train", "test")

# One HDF5 chunk holds about 1 MiB of images: small enough for partial reads, large
# enough that gzip sees whole images.
_CHUNK_BYTES = 1 << 20


def write_h5(
    out_path: Path,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    attrs: Mapping[str, Any],
) -> None:
    """Write groups of arrays and file attributes to ``out_path``, atomically.

    A reader sees either the old file or the complete new one; on any error (including
    KeyboardInterrupt) the temporary file is removed and ``out_path`` is left untouched.
    Image arrays (4-D) are chunked by about 1 MiB and gzipped.
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


def _open_h5(path: Path, version: int, what: str, required: str | None = None) -> h5py.File:
    """Open an HDF5 file for reading, checking its ``format_version`` (and a dataset)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc
    found = _plain(f.attrs.get("format_version"))
    if found != version or (required is not None and required not in f):
        f.close()
        raise DataError(f"{path}: format_version {found!r}, expected {version} ({what})")
    return f


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value: arrays to tuples, numpy scalars to Python
    numbers, bytes to str."""
    if isinstance(value, np.ndarray):
        return tuple(_plain(v) for v in value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def _open_dataset(path: Path) -> h5py.File:
    return _open_h5(path, FORMAT_VERSION, "dataset: prepare it again with prepare_dataset")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The file attributes of a prepared dataset (name, source, seed, sizes, image shape...).

    Array attributes come back as tuples of int, strings as str.
    """
    with _open_dataset(Path(path)) as f:
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
    with _open_dataset(path) as f:
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


def as_uint8_images(images: np.ndarray | torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate uint8 images of shape ``(n, C, H, W)`` and return them as a tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (n, C, H, W) in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (n, C, H, W), got {tuple(images.shape)}")
    return images


def to_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Quantise images in [0, 1] to uint8 in [0, 255] (``round(255 x)``); uint8 passes through.

    Parameters
    ----------
    images : array or tensor, shape (n, C, H, W)
        Float images in [0, 1] (values outside are clamped) or uint8 images.

    Returns
    -------
    torch.Tensor, shape (n, C, H, W), uint8
        Rounding (not truncation) matches how images are written to PNG for clean-fid.

    Raises
    ------
    FloatingPointError
        If a value is NaN or infinite (a model that diverged), rather than quantise it.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
    bad = int((~torch.isfinite(images)).sum())
    if bad:  # NaN would become 0, a black pixel nobody asked for
        raise FloatingPointError(f"{bad} of {images.numel()} pixel values are NaN or infinite")
    return (images.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


@torch.no_grad()
def write_samples(
    model: nn.Module,
    path: str | os.PathLike,
    n: int,
    *,
    generator: torch.Generator,
    batch_size: int = 500,
    progress: bool = True,
    attrs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Draw ``n`` images from ``model.generate`` in batches and write them to ``path``.

    Parameters
    ----------
    model
        A trained model with ``generate(b, generator=...)`` returning images in ``[0, 1]`` of
        shape ``(b, C, H, W)`` (KAEM: exact prior samples through the generator, eq. 2).
        It is used on the device its parameters are on.
    path
        The HDF5 file to write (replaced atomically).
    n
        Number of images.
    generator
        Source of all randomness, on the model's device.
    batch_size
        Images per call of ``generate`` (and per HDF5 chunk).
    progress
        Show a progress bar over images.
    attrs
        Extra file attributes (e.g. the cell name); values must be HDF5-storable or
        JSON-serialisable (mappings are stored as JSON text).
    options
        Keywords of ``model.generate`` beyond the count and the generator (a DDPM's
        ``scheduler``, ``steps`` and ``eta``).

    Returns
    -------
    Path
        ``path``. Its ``generate_seconds`` attribute is the time the ``generate`` calls took,
        until their images were on the host (so a GPU's queued work is counted), without the
        writes: divided by ``n``, the generation time per image at this ``batch_size``.
    """
    for what, value in (("n", n), ("batch_size", batch_size)):
        check_count(what, value)
    path = Path(path)
    model.eval()
    bar = tqdm(total=n, desc="sample", unit="img", disable=not progress)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        images, seconds = None, 0.0
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            t0 = time.perf_counter()
            batch = to_uint8(model.generate(b, generator=generator, **(options or {})))
            batch = batch.cpu().numpy()
            seconds += time.perf_counter() - t0
            if batch.ndim != 4 or batch.shape[0] != b:
                raise ValueError(
                    f"model.generate({b}) returned shape {batch.shape}, expected ({b}, C, H, W)"
                )
            if images is None:
                images = f.create_dataset(
                    "images",
                    shape=(n, *batch.shape[1:]),
                    dtype=np.uint8,
                    chunks=(min(batch_size, n), *batch.shape[1:]),
                )
                f.attrs["image_shape"] = np.asarray(batch.shape[1:], dtype=np.int64)
            images[start : start + b] = batch
            bar.update(b)
        bar.close()
        f.attrs["n"] = n
        f.attrs["batch_size"] = batch_size
        f.attrs["generate_seconds"] = seconds
        f.attrs["format_version"] = SAMPLES_FORMAT_VERSION
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value) if isinstance(value, Mapping) else value
    return path


def _open_samples(path: Path) -> h5py.File:
    return _open_h5(path, SAMPLES_FORMAT_VERSION, "not a samples file", required="images")


def samples_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of a samples file as plain Python values."""
    with _open_samples(Path(path)) as f:
        return {key: _plain(value) for key, value in f.attrs.items()}


def read_samples(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Images ``start:stop`` of a samples file, uint8 ``(m, C, H, W)``."""
    with _open_samples(Path(path)) as f:
        return f["images"][start:stop]


def iter_samples(path: str | os.PathLike, batch_size: int = 500) -> Iterator[np.ndarray]:
    """The images of a samples file in batches of uint8 ``(b, C, H, W)``, in order."""
    check_count("batch_size", batch_size)
    with _open_samples(Path(path)) as f:
        images = f["images"]
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
