"""Gaussian observation model ``p(x | z) = N(x; G(z), sigma^2 I)`` (eqs. 7-8)."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["GaussianLikelihood"]


class GaussianLikelihood:
    """Isotropic Gaussian likelihood with a fixed variance (eq. 8).

    ``log p(x | z) = -||x - x_hat||^2 / (2 sigma^2) - D/2 log(2 pi sigma^2)``, with ``D`` the
    number of pixels times channels. The constant is kept so that log-evidence estimates are
    comparable across models.

    Parameters
    ----------
    variance
        ``sigma^2`` (the paper's ``generator_variance``: 0.1 for NIST, 0.25 for SVHN/CelebA).
    """

    def __init__(self, variance: float) -> None:
        if not (math.isfinite(variance) and variance > 0):
            raise ValueError(f"likelihood variance must be positive and finite, got {variance}")
        self.variance = float(variance)

    def __repr__(self) -> str:
        return f"GaussianLikelihood(variance={self.variance})"

    def _constant(self, dim: int) -> float:
        return -0.5 * dim * math.log(2.0 * math.pi * self.variance)

    def log_prob(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Paired log-likelihoods: ``x, x_hat`` of shape ``(n, ...)`` give ``(n,)``.

        Broadcasting over leading dimensions is allowed (e.g. ``x`` of ``(B, ...)`` against
        ``x_hat`` of ``(K, B, ...)`` gives ``(K, B)``); the last three dimensions are summed.
        """
        if x.shape[-3:] != x_hat.shape[-3:]:
            raise ValueError(
                f"image shapes differ: data {tuple(x.shape[-3:])} vs generated "
                f"{tuple(x_hat.shape[-3:])}"
            )
        sq = (x - x_hat).square().sum(dim=(-3, -2, -1))
        return -sq / (2.0 * self.variance) + self._constant(x.shape[-3:].numel())

    def pairwise_log_prob(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """All pairs: ``x`` of ``(B, C, H, W)`` and ``x_hat`` of ``(S, C, H, W)`` give ``(B, S)``.

        Uses ``||x||^2 - 2 x.x_hat + ||x_hat||^2`` so the cost is one ``(B, D) x (D, S)``
        matrix product instead of a ``(B, S, D)`` tensor (importance sampling, eqs. 36-38).
        """
        if x.shape[1:] != x_hat.shape[1:]:
            raise ValueError(
                f"image shapes differ: data {tuple(x.shape[1:])} vs generated "
                f"{tuple(x_hat.shape[1:])}"
            )
        xf = x.reshape(x.shape[0], -1)
        gf = x_hat.reshape(x_hat.shape[0], -1)
        sq = xf.square().sum(1, keepdim=True) - 2.0 * xf @ gf.T + gf.square().sum(1)
        return -sq.clamp_min(0.0) / (2.0 * self.variance) + self._constant(xf.shape[1])
