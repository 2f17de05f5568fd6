"""Argument checks that many functions share, each raising with the argument's name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DeferredCheck",
    "check_count",
    "check_finite_log_lik",
    "check_later",
    "deferred_checks",
    "first_failure",
]


class DeferredCheck(NamedTuple):
    """A check computed on the device and judged later, when the host next looks.

    Attributes
    ----------
    failed : Tensor, shape (), bool
        Whether the check failed, on the device of the data it looked at.
    error : callable
        ``() -> Exception``: the exception the check raises, built only once it is known to
        have failed (building it may read the device).
    """

    failed: Tensor
    error: Callable[[], Exception]


_PENDING: ContextVar[list[DeferredCheck] | None] = ContextVar("kaem_deferred_checks", default=None)


@contextmanager
def deferred_checks() -> Iterator[list[DeferredCheck]]:
    """Collect the checks of the code inside instead of reading each result on the host.

    Outside this context :func:`check_later` reads its flag at once (one synchronisation with
    the device per check) and raises; inside it only appends the check to the yielded list,
    so the code runs without waiting for the device, and the caller judges the list once
    (:func:`first_failure`).

    Yields
    ------
    list of DeferredCheck
        The checks of the code inside, in the order they were made.
    """
    pending: list[DeferredCheck] = []
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


def check_later(failed: Tensor, error: Callable[[], Exception]) -> None:
    """Raise ``error()`` if ``failed`` holds: now, or when the caller of
    :func:`deferred_checks` judges its checks.

    Parameters
    ----------
    failed : Tensor, shape (), bool
        Computed on the device; reading it is what costs a synchronisation.
    error : callable
        Builds the exception to raise; called only if the check failed.
    """
    pending = _PENDING.get()
    if pending is None:
        if bool(failed):
            raise error()
    else:
        pending.append(DeferredCheck(failed, error))


def first_failure(checks: list[DeferredCheck], flags: list[bool] | None = None) -> Exception | None:
    """The exception of the first failed check, or None; reads all flags in one go.

    ``flags`` are the checks' ``failed`` values if the caller has read them already (with
    other values, in one transfer).
    """
    if not checks:
        return None
    if flags is None:
        flags = torch.stack([c.failed for c in checks]).tolist()
    return next((c.error() for c, bad in zip(checks, flags, strict=True) if bad), None)


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int, if it is an integer (not a bool) of at least ``minimum``.

    Raises
    ------
    ValueError
        ``"{name} must be an int >= {minimum}, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_finite_log_lik(log_lik: Tensor, sample_dim: int) -> None:
    """Raise if any data point's log-likelihood is NaN or infinite for some sample.

    Parameters
    ----------
    log_lik
        Shape ``(B, S)`` or ``(S, B)``: data points along one dimension, samples along
        ``sample_dim``.

    Raises
    ------
    FloatingPointError
        Naming (up to ten of) the data points at fault; inside :func:`deferred_checks`, when
        the checks are judged.
    """
    finite = torch.isfinite(log_lik.detach()).all(sample_dim)

    def error() -> FloatingPointError:
        bad = torch.nonzero(~finite).flatten().tolist()
        return FloatingPointError(f"log-likelihood is NaN or infinite for data points {bad[:10]}")

    check_later(~finite.all(), error)
