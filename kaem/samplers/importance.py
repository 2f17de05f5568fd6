"""Self-normalised importance weights and ESS-gated resampling (paper eqs. 33-39).

With the prior as proposal, the importance weight of latent draw ``z_s`` for data point ``x``
is ``w_s = p(x | z_s) / sum_s' p(x | z_s')``, i.e. a softmax of the log-likelihoods over the
sample dimension. Everything here stays in log space until the end so that log-likelihoods of
order -1e4 (images under a Gaussian decoder) do not underflow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from kaem.samplers.resampling import Resampler, get_resampler

__all__ = [
    "EvidenceEstimate",
    "effective_sample_size",
    "log_mean_exp_with_stderr",
    "normalized_log_weights",
    "resample_if_needed",
]


def _shifted(log_w: Tensor, dim: int, validate: bool) -> Tensor:
    """``log_w`` minus its (detached) maximum along ``dim``, after validation if ``validate``.

    Both results below are invariant to this shift. Doing it explicitly (rather than relying on
    logsumexp's internal one) matters in float32: log weights near -1e4 are only resolved to
    about 1e-3, and ``log_w - logsumexp(log_w)`` would inherit that error, whereas the
    difference to a nearby maximum is exact.

    Validation reads the maxima on the host (one synchronisation with the device) and raises
    for a NaN, a ``+inf`` or a row that is ``-inf`` throughout.
    """
    top = log_w.detach().amax(dim=dim, keepdim=True)
    if validate:
        nan, inf, empty = torch.stack(
            [torch.isnan(top).any(), (top == math.inf).any(), (top == -math.inf).any()]
        ).tolist()
        if nan:
            raise ValueError("log weights contain NaN")
        if inf:
            raise ValueError("log weights contain +inf")
        if empty:
            raise ValueError("log weights are all -inf along the normalised dimension for some row")
    return log_w - top


def normalized_log_weights(log_w: Tensor, dim: int = -1, *, validate: bool = True) -> Tensor:
    """Normalise unnormalised log weights in log space (eqs. 33-38).

    ``log w_s - logsumexp_s' log w_s'``: the result exponentiates to weights summing to 1.
    Apply it once; a second softmax of already normalised weights (as in the paper's code)
    flattens them towards uniform.

    Parameters
    ----------
    log_w : Tensor, shape (..., S, ...)
        Unnormalised log weights, e.g. ``log p(x_b | z_s)`` of shape (B, S).
    dim : int
        The sample dimension ``S``.
    validate : bool
        Raise for a NaN, a ``+inf`` or a row of ``-inf`` (one read of the device).

    Returns
    -------
    Tensor, same shape as ``log_w``
        Normalised log weights; ``exp`` sums to 1 along ``dim``.
    """
    shifted = _shifted(log_w, dim, validate)
    return shifted - torch.logsumexp(shifted, dim=dim, keepdim=True)


def effective_sample_size(log_w: Tensor, dim: int = -1, *, validate: bool = True) -> Tensor:
    """Effective sample size ``1 / sum_s w_s^2`` of normalised weights (eq. 38).

    Computed from unnormalised log weights as ``exp(2 logsumexp(log w) - logsumexp(2 log w))``,
    which is invariant to an additive shift of ``log_w`` and never forms ``w`` explicitly.

    Parameters
    ----------
    log_w : Tensor, shape (..., S, ...)
        Unnormalised log weights.
    dim : int
        The sample dimension ``S``.
    validate : bool
        As for :func:`normalized_log_weights`.

    Returns
    -------
    Tensor, shape of ``log_w`` without ``dim``
        ESS in [1, S].
    """
    shifted = _shifted(log_w, dim, validate)
    return torch.exp(2 * torch.logsumexp(shifted, dim=dim) - torch.logsumexp(2 * shifted, dim=dim))


def resample_if_needed(
    log_w: Tensor,
    threshold: float,
    resampler: Resampler | str,
    generator: torch.Generator | None = None,
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Resample the rows whose ESS falls below ``threshold * S`` (eq. 39).

    Parameters
    ----------
    log_w : Tensor, shape (B, S)
        Unnormalised log weights, one row per data point.
    threshold : float
        ``gamma`` in [0, 1]; a row is resampled when ``ESS < gamma * S`` (paper: 0.5).
    resampler : Resampler or str
        A function from :mod:`kaem.samplers.resampling` or its registry name.
    generator : torch.Generator, optional
        Source of randomness, on the device of ``log_w``.
    validate : bool
        Check the log weights first, as :func:`normalized_log_weights` does (one read of the
        device); off, the call never waits for the device.

    Returns
    -------
    ancestors : Tensor, shape (B, S), int64
        Ancestor indices; the identity ``0..S-1`` for rows that were not resampled.
    weights : Tensor, shape (B, S)
        Normalised weights to use with ``z[ancestors]``: uniform ``1/S`` for resampled rows,
        the importance weights otherwise.
    resampled : Tensor, shape (B,), bool
        Which rows were resampled.

    Every row is resampled and the rows that need it are selected on the device; rows whose
    weights are not finite (unchecked) are resampled from uniform weights.
    """
    if log_w.ndim != 2:
        raise ValueError(f"log_w must have shape (B, S), got shape {tuple(log_w.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if isinstance(resampler, str):
        resampler = get_resampler(resampler)
    n_rows, n_samples = log_w.shape

    weights = normalized_log_weights(log_w, dim=-1, validate=validate).exp()
    resampled = effective_sample_size(log_w, dim=-1, validate=False) < threshold * n_samples
    uniform = torch.full_like(weights, 1.0 / n_samples)
    valid = torch.isfinite(weights).all(-1, keepdim=True)
    drawn = resampler(torch.where(valid, weights, uniform), generator, validate=False)  # (B, S)
    identity = torch.arange(n_samples, device=log_w.device).expand(n_rows, n_samples)
    ancestors = torch.where(resampled.unsqueeze(-1), drawn, identity)
    weights = torch.where(resampled.unsqueeze(-1), uniform, weights)
    return ancestors, weights, resampled


class EvidenceEstimate(NamedTuple):
    """``log p(x_b)`` estimates and their Monte Carlo standard errors, each ``(B,)``."""

    estimate: Tensor
    stderr: Tensor


def log_mean_exp_with_stderr(log_w: Tensor, dim: int = -1) -> EvidenceEstimate:
    """``L = log mean_s exp(log_w_s)`` along ``dim`` with its delta-method standard error.

    With ``m = mean_s w_s``, ``se(L) ~= se(m) / m = s / sqrt(S)``, where ``s^2 = sum_s (w_s / m
    - 1)^2 / (S - 1)`` is the sample variance of the normalised weights ``w_s / m = exp(log_w_s
    - L)``. Those ratios never overflow (they are at most ``S``), and the statistics are taken
    in float64, where ratios close to 1 keep their digits. The error measures the spread of
    the estimate, not its downward bias (about ``s^2 / (2 S)``); it is NaN for ``S = 1``,
    where no spread can be seen.

    Parameters
    ----------
    log_w
        Log weights, ``S`` along ``dim``; any shape.
    dim
        The sample dimension.

    Returns
    -------
    EvidenceEstimate
        ``estimate`` and ``stderr`` of ``log_w``'s shape without ``dim``, in its dtype.
    """
    n = log_w.shape[dim]
    lw = log_w.double()
    estimate = torch.logsumexp(lw, dim=dim) - math.log(n)
    if n == 1:
        stderr = torch.full_like(estimate, math.nan)
    else:
        ratio = (lw - estimate.unsqueeze(dim)).exp()  # w_s / m, mean 1 along dim
        stderr = ((ratio - 1.0).square().sum(dim) / (n - 1) / n).sqrt()
    return EvidenceEstimate(estimate.to(log_w.dtype), stderr.to(log_w.dtype))
