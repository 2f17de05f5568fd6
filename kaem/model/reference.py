"""The reference density ``pi_0`` that every energy tilts, on its bounded domain (eqs. 9, 14)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["DEFAULT_DOMAINS", "ReferenceName", "ReferencePrior"]

ReferenceName = Literal["gaussian", "uniform", "lognormal", "none"]

#: Default bounded domains of the reference priors (those of the paper's code).
DEFAULT_DOMAINS: dict[str, tuple[float, float]] = {
    "gaussian": (-1.5, 1.5),
    "uniform": (0.0, 1.0),
    "lognormal": (0.0, 4.0),
    "none": (-1.2, 1.2),
}

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ReferencePrior:
    """Reference density ``pi_0`` restricted to a bounded domain (eqs. 9, 14).

    Parameters
    ----------
    name
        ``gaussian`` (``N(loc, scale^2)``), ``uniform``, ``lognormal`` (``log z ~ N(loc,
        scale^2)``) or ``none`` (flat: the energy alone shapes the density).
    low, high
        The domain ``[a, b]``; need not be symmetric. Defaults in :data:`DEFAULT_DOMAINS`.
    loc, scale
        Location and scale of the Gaussian / log-normal.

    Notes
    -----
    ``uniform`` and ``none`` differ only by a constant, which the partition function absorbs:
    both give a density proportional to ``exp(f)`` on ``[a, b]``.
    """

    name: ReferenceName = "gaussian"
    low: float | None = None
    high: float | None = None
    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in DEFAULT_DOMAINS:
            raise ValueError(
                f"unknown reference prior {self.name!r}; choose one of {sorted(DEFAULT_DOMAINS)}"
            )
        low, high = DEFAULT_DOMAINS[self.name]
        object.__setattr__(self, "low", float(low if self.low is None else self.low))
        object.__setattr__(self, "high", float(high if self.high is None else self.high))
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise ValueError(
                f"reference prior {self.name!r}: domain must be finite with high > low, "
                f"got [{self.low}, {self.high}]"
            )
        if self.name == "lognormal" and self.low < 0:
            raise ValueError(f"lognormal reference needs a domain in [0, inf), got low={self.low}")
        if not self.scale > 0:
            raise ValueError(f"reference prior scale must be positive, got {self.scale}")

    def log_density(self, z: Tensor) -> Tensor:
        """``log pi_0(z)`` elementwise (normalised on the real line, not on the domain).

        The formula itself ignores the domain (the log-normal gives ``-inf`` for ``z <= 0``);
        the priors restrict it to ``[a, b]``, and their ``log_prob`` is ``-inf`` outside.
        """
        if self.name == "gaussian":
            return -0.5 * ((z - self.loc) / self.scale).square() - (
                math.log(self.scale) + _LOG_SQRT_2PI
            )
        if self.name == "uniform":
            return torch.full_like(z, -math.log(self.high - self.low))
        if self.name == "lognormal":
            logz = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
            out = -logz - 0.5 * ((logz - self.loc) / self.scale).square()
            out = out - (math.log(self.scale) + _LOG_SQRT_2PI)
            return torch.where(z > 0, out, torch.full_like(z, -math.inf))
        return torch.zeros_like(z)
