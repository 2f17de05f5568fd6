"""Files that are whole or absent, folders held by one process, results that are numbers.

* :func:`atomic_path` and its users write a file under a temporary name beside it and move
  it into place, so a reader never sees half of it; a temporary file left by a writer that
  was killed is removed by the next write of the same file.
* :func:`folder_lock` lets one process at a time work in a folder (a training run).
* :func:`non_finite` and :func:`check_finite_tensors` refuse NaN and infinite results and
  models before they are written, drawn or scored.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import uuid
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "LOCK_NAME",
    "FolderInUseError",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "check_finite_parameters",
    "check_finite_tensors",
    "folder_lock",
    "non_finite",
    "read_checkpoint",
]


def _temporary_name(path: Path) -> Path:
    """``.NAME.PID@HOST.RANDOM.tmp`` beside ``path``: whose it is, so a stale one can go."""
    owner = f"{os.getpid()}@{socket.gethostname()}"
    return path.with_name(f".{path.name}.{owner}.{uuid.uuid4().hex[:12]}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files of ``path`` whose writer, on this host, no longer runs."""
    prefix, host = f".{path.name}.", socket.gethostname()
    with contextlib.suppress(OSError):
        for tmp in path.parent.iterdir():
            name = tmp.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            owner, _, _ = name[len(prefix) : -len(".tmp")].rpartition(".")
            pid, _, where = owner.partition("@")
            if pid.isdigit() and where == host and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    The temporary file lives in the same folder (so ``os.replace`` is atomic), is flushed to
    disk before the move, and is removed if the block raises or the process is interrupted
    by an exception; an :class:`OSError` of the block (a full disk) names ``path``, not the
    temporary file. A process killed outright leaves its hidden ``.NAME.PID@HOST.*.tmp``
    file behind; the next write of ``path`` on that host removes it, once no process of that
    id runs. ``path`` itself is never truncated.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno is None or exc.filename not in (None, str(tmp), tmp):
                raise
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the file asked for
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``.

    The bytes go through a Python file object, so a failed write (a full disk) raises the
    :class:`OSError` that names it rather than PyTorch's own ``RuntimeError``.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            # PyTorch's zip writer, closed after a failed write, raises a RuntimeError of
            # its own over the OSError that says what happened.
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically, with ``\\n`` line ends on every platform."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, newline="\n")


# ----------------------------------------------------------------------------- locks

#: The lock file :func:`folder_lock` keeps in a folder.
LOCK_NAME = ".lock"

#: Folders this process holds, with how many nested :func:`folder_lock` blocks hold each.
_HELD: dict[Path, int] = {}


class FolderInUseError(RuntimeError):
    """Another process holds the folder (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder`` for this process: an exclusive ``flock`` on ``folder/.lock``.

    The folder must exist. The lock is released when the block ends or the process dies (the
    kernel drops it), so a killed run never leaves a folder locked. Nested blocks of one
    process on one folder share the lock.

    Raises
    ------
    FolderInUseError
        If another process holds the folder, naming the folder and that process.
    """
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FolderInUseError(
                f"{folder} is in use by {holder}; wait until it ends, or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield folder
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- finiteness


def non_finite(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of every NaN or infinite number in nested mappings and lists.

    Parameters
    ----------
    data
        A result: numbers, strings, None, mappings, lists, tuples, NumPy scalars or arrays.
    prefix
        Prepended to every key.

    Returns
    -------
    list of str
        ``key = nan`` (or ``inf``, ``-inf``) for each, e.g. ``["importance.mean = nan"]``.
    """
    if isinstance(data, Mapping):
        return [
            bad
            for k, v in data.items()
            for bad in non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(data, list | tuple):
        return [bad for i, v in enumerate(data) for bad in non_finite(v, f"{prefix}[{i}]")]
    if isinstance(data, np.ndarray) and data.dtype.kind in "fc":
        count = int((~np.isfinite(data)).sum())
        return [f"{prefix} ({count} of {data.size} values)"] if count else []
    if isinstance(data, np.generic):
        data = data.item()
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{prefix} = {data}"]
    return []


def check_finite_tensors(
    tensors: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    *,
    infinity_allowed: Collection[str] = (),
) -> None:
    """Refuse named tensors that hold NaN, or infinity where it is not allowed.

    Parameters
    ----------
    tensors
        Name -> tensor, e.g. a model's state dict.
    source
        What they are, for the message (``checkpoint RUN/checkpoint.pt``).
    infinity_allowed
        Names that may hold an infinity (a buffer such as the log density of a reference at
        the end of its domain); NaN is refused everywhere.

    Raises
    ------
    FloatingPointError
        Naming ``source`` and, for the first few tensors at fault, how many values are bad.
    """
    bad = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = 0 if name in infinity_allowed else int(torch.isinf(tensor).sum())
        if nan or inf:
            what = " and ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "infinite")) if n)
            bad.append(f"{name} ({what} of {tensor.numel()})")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FloatingPointError(
            f"{source} holds non-finite parameters: {shown}; the model cannot be used"
        )


def check_finite_parameters(model: nn.Module, source: str | os.PathLike) -> None:
    """Refuse a model whose parameters hold NaN or infinity, or whose buffers hold NaN
    (:func:`check_finite_tensors`; a buffer may hold an infinity)."""
    buffers = dict(model.named_buffers())
    check_finite_tensors(
        {**dict(model.named_parameters()), **buffers}, source, infinity_allowed=buffers
    )


# ----------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`kaem.train`, with a clear error if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise RuntimeError(f"checkpoint {path} is corrupt or not a kaem checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise RuntimeError(f"checkpoint {path} is not a kaem checkpoint (no model state)")
    return state
