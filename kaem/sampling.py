"""Generated image sets: drawn in batches from a trained model into one HDF5 file.

A samples file is laid out as::

    /images   uint8 (n, C, H, W)   generated images, round(255 x) of the model's [0, 1] output
    attrs:    n, image_shape, seed, batch_size, format_version, and what the caller adds

It is written under a temporary name and renamed into place when complete, so a killed job
never leaves a truncated set. The images are drawn with one explicit generator, so the same
model, seed and batch size give the same file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kaem.features import to_uint8
from kaem.io import atomic_path

__all__ = [
    "SAMPLES_FORMAT_VERSION",
    "iter_samples",
    "read_samples",
    "samples_metadata",
    "write_samples",
]

SAMPLES_FORMAT_VERSION = 1
"""Version of the layout written by :func:`write_samples`."""


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


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

    Returns
    -------
    Path
        ``path``.
    """
    for what, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    path = Path(path)
    model.eval()
    bar = tqdm(total=n, desc="sample", unit="img", disable=not progress)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        images = None
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            batch = to_uint8(model.generate(b, generator=generator)).cpu().numpy()
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
        f.attrs["format_version"] = SAMPLES_FORMAT_VERSION
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value) if isinstance(value, Mapping) else value
    return path


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no samples file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc
    version = _plain(f.attrs.get("format_version"))
    if version != SAMPLES_FORMAT_VERSION or "images" not in f:
        f.close()
        raise ValueError(
            f"{path}: not a samples file of format {SAMPLES_FORMAT_VERSION} "
            f"(format_version {version!r})"
        )
    return f


def samples_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of a samples file as plain Python values."""
    with _open(Path(path)) as f:
        return {key: _plain(value) for key, value in f.attrs.items()}


def read_samples(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Images ``start:stop`` of a samples file, uint8 ``(m, C, H, W)``."""
    with _open(Path(path)) as f:
        return f["images"][start:stop]


def iter_samples(path: str | os.PathLike, batch_size: int = 500) -> Iterator[np.ndarray]:
    """The images of a samples file in batches of uint8 ``(b, C, H, W)``, in order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    with _open(Path(path)) as f:
        images = f["images"]
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
