"""Checks that many functions share: of arguments on the host, and of values on the device.

An argument check (:func:`check_count`) raises at once, naming the argument. A value check is
a :class:`Check`: a flag computed on the device and the error it stands for, returned with
the result it judges. The function that computes it never raises; its caller decides when to
read the flag (:meth:`Check.raise_if_failed` reads it at once; the training loop reads the
flags of a step when it next reads the device anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["Check", "check_count", "first_failure", "nonfinite_log_lik"]


class Check(NamedTuple):
    """A value check computed on the device, judged by whoever reads it.

    Attributes
    ----------
    failed : Tensor, shape (), bool
        Whether the check failed, on the device of the values it looked at.
    error : callable
        ``() -> Exception``: the error the failure stands for, built only once the flag is
        known to be set (building it may read the device again, for the details).
    """

    failed: Tensor
    error: Callable[[], Exception]

    def raise_if_failed(self) -> None:
        """Read the flag (one synchronisation with the device) and raise if it is set."""
        if bool(self.failed):
            raise self.error()


def first_failure(checks: tuple[Check, ...], flags: list[bool]) -> Exception | None:
    """The error of the first failed check, given their ``failed`` flags read on the host."""
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


def nonfinite_log_lik(log_lik: Tensor, sample_dim: int) -> Check:
    """Whether any data point's log-likelihood is NaN or infinite for some sample.

    Parameters
    ----------
    log_lik
        Shape ``(B, S)`` or ``(S, B)``: data points along one dimension, samples along
        ``sample_dim``.

    Returns
    -------
    Check
        Its error, a :class:`FloatingPointError`, names (up to ten of) the data points.
    """
    finite = torch.isfinite(log_lik.detach()).all(sample_dim)

    def error() -> FloatingPointError:
        bad = torch.nonzero(~finite).flatten().tolist()
        return FloatingPointError(f"log-likelihood is NaN or infinite for data points {bad[:10]}")

    return Check(~finite.all(), error)
