"""Argument checks that many functions share, each raising with the argument's name."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_count", "check_finite_log_lik"]


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
        Naming (up to ten of) the data points at fault.
    """
    finite = torch.isfinite(log_lik.detach()).all(sample_dim)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise FloatingPointError(f"log-likelihood is NaN or infinite for data points {bad[:10]}")
