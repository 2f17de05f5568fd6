"""Quadrature on a bounded interval and inverse-transform sampling from it.

Every univariate density of the prior is known up to its normaliser on a bounded domain
``[a, b]``. A quadrature rule with nodes ``z_n`` and weights ``w_n`` gives the partition
function (eq. 20),

    Z = sum_n w_n exp(f(z_n)) pi_0(z_n),

and the same numbers define a distribution we can sample *exactly*: node ``n`` owns the cell
``[e_{n-1}, e_n]`` with ``e_n = a + w_1 + ... + w_n`` (the cells tile ``[a, b]`` because the
weights sum to ``b - a``; for Gauss-Legendre each node lies inside its own cell by the
Markov-Stieltjes separation theorem), and carries the mass ``m_n = w_n p(z_n) / Z``. The
density is constant inside a cell, so the CDF is piecewise linear and its inverse is found by a
search over cell edges plus linear interpolation inside the cell (eq. 13). All functions here
are pure tensor functions, batched over leading "row" dimensions (one row per univariate
density), with no Python loops over rows or samples.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

QuadratureRule = Literal["gauss_legendre", "trapezium"]

__all__ = [
    "CDFTable",
    "QuadratureRule",
    "build_cdf",
    "cell_edges",
    "inverse_cdf",
    "inverse_cdf_table",
    "log_normaliser",
    "nodes_and_weights",
    "sample_table",
    "sample_table_rows",
]


def nodes_and_weights(
    n_nodes: int,
    low: float,
    high: float,
    rule: QuadratureRule = "gauss_legendre",
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Quadrature nodes and weights on ``[low, high]`` (eq. 20).

    Parameters
    ----------
    n_nodes
        Number of nodes ``N`` (at least 2).
    low, high
        The domain; it need not be symmetric. Gauss-Legendre nodes on ``[-1, 1]`` are mapped by
        the affine map ``(low + high) / 2 + (high - low) / 2 * x``.
    rule
        ``"gauss_legendre"`` or ``"trapezium"`` (equally spaced nodes including both ends).

    Returns
    -------
    nodes, weights
        Shapes ``(N,)`` and ``(N,)``; nodes increase and the weights sum to ``high - low``.
    """
    if n_nodes < 2:
        raise ValueError(f"n_nodes must be at least 2, got {n_nodes}")
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"quadrature domain must be finite with high > low, got [{low}, {high}]")
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(n_nodes)
        half = 0.5 * (high - low)
        nodes = 0.5 * (low + high) + half * x
        weights = half * w
    elif rule == "trapezium":
        nodes = np.linspace(low, high, n_nodes)
        h = (high - low) / (n_nodes - 1)
        weights = np.full(n_nodes, h)
        weights[[0, -1]] = 0.5 * h
    else:
        raise ValueError(f"unknown quadrature rule {rule!r}; use 'gauss_legendre' or 'trapezium'")
    return torch.as_tensor(nodes, dtype=dtype), torch.as_tensor(weights, dtype=dtype)


def cell_edges(weights: Tensor, low: float) -> Tensor:
    """Edges of the cells owned by each node: ``e_0 = low``, ``e_n = low + sum_{j<=n} w_j``.

    Parameters
    ----------
    weights
        Quadrature weights, shape ``(N,)``.
    low
        Left end of the domain.

    Returns
    -------
    Tensor
        Shape ``(N + 1,)``, computed in float64 then cast back so the last edge is ``high`` to
        rounding.
    """
    w = weights.double()
    edges = torch.cat([w.new_zeros(1), torch.cumsum(w, 0)]) + low
    return edges.to(weights.dtype)


def log_normaliser(log_density: Tensor, log_weights: Tensor) -> Tensor:
    """Log partition function ``log Z = log sum_n w_n exp(log p~(z_n))`` (eq. 20).

    Parameters
    ----------
    log_density
        Unnormalised log density at the nodes, shape ``(..., N)``.
    log_weights
        Log quadrature weights, shape ``(N,)``.

    Returns
    -------
    Tensor
        Shape ``(...)``; differentiable.
    """
    return torch.logsumexp(log_density + log_weights, dim=-1)


class CDFTable(NamedTuple):
    """Piecewise-linear CDFs of a batch of cell densities.

    Attributes
    ----------
    cdf
        CDF at the cell edges, shape ``(..., N + 1)``: starts at exactly 0, ends at exactly 1.
    edges
        Cell edges, shape ``(N + 1,)`` (shared by every row).
    """

    cdf: Tensor
    edges: Tensor


def build_cdf(log_density: Tensor, log_weights: Tensor, edges: Tensor) -> CDFTable:
    """CDF at the cell edges from log densities at the nodes (eq. 20).

    The cell masses ``m_n = softmax_n(log p~(z_n) + log w_n)`` are accumulated in float64 so
    that the last value is 1 to rounding, then pinned to exactly 0 and 1 at the ends.

    Parameters
    ----------
    log_density
        Unnormalised log density at the nodes, shape ``(..., N)``.
    log_weights
        Log quadrature weights, shape ``(N,)``.
    edges
        Cell edges from :func:`cell_edges`, shape ``(N + 1,)``.

    Returns
    -------
    CDFTable
    """
    mass = torch.softmax((log_density + log_weights).double(), dim=-1)
    cdf = torch.cumsum(mass, dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1)
    cdf[..., -1] = 1.0
    return CDFTable(cdf.to(log_density.dtype), edges)


def inverse_cdf(u: Tensor, table: CDFTable) -> Tensor:
    """Exact inverse of the piecewise-linear CDF by search and in-cell interpolation (eq. 13).

    Parameters
    ----------
    u
        Uniform draws in ``[0, 1)``, shape ``(..., S)``, with the same leading dimensions as
        ``table.cdf`` (one row of draws per density).
    table
        CDFs with ``cdf`` of shape ``(..., N + 1)``.

    Returns
    -------
    Tensor
        Samples, shape ``(..., S)``, inside ``[edges[0], edges[-1]]``.
    """
    cdf, edges = table
    n_cells = cdf.shape[-1] - 1
    # Cell index c with cdf[c] <= u < cdf[c + 1]; empty cells (zero mass) are skipped because
    # `right=True` returns the last edge equal to u.
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True) - 1
    idx = idx.clamp_(0, n_cells - 1)
    edges = edges.expand(*cdf.shape)  # gather on an expanded view beats fancy indexing
    c_lo, e_lo = torch.gather(cdf, -1, idx), torch.gather(edges, -1, idx)
    idx += 1
    c_hi, e_hi = torch.gather(cdf, -1, idx), torch.gather(edges, -1, idx)
    frac = (u - c_lo).div_((c_hi - c_lo).clamp_min_(torch.finfo(cdf.dtype).tiny)).clamp_(0.0, 1.0)
    return torch.lerp(e_lo, e_hi, frac)


def inverse_cdf_table(table: CDFTable, n_points: int) -> Tensor:
    """Tabulate the inverse CDF on the uniform grid ``u_k = k / M``, ``k = 0..M``.

    Sampling from the table is a lookup plus linear interpolation in ``u``: constant time per
    draw, independent of the number of cells, and friendly to gathers of whole rows. The table
    agrees with :func:`inverse_cdf` at every grid point; between grid points it interpolates
    linearly, so the CDF of table samples differs from the exact piecewise-linear CDF by less
    than ``1 / M`` (and only in grid intervals that contain a cell edge).

    The cell of every grid point is found by merging rather than searching: cell edge ``j``
    is passed by the grid points ``k >= ceil(M cdf_j)``, so a histogram of those first indices,
    accumulated along the grid, counts the edges at or below each ``u_k`` (as
    ``searchsorted(..., right=True)`` would, skipping empty cells) in linear time.

    Parameters
    ----------
    table
        CDFs with ``cdf`` of shape ``(..., N + 1)``.
    n_points
        ``M``, the number of grid intervals.

    Returns
    -------
    Tensor
        Inverse CDF values, shape ``(..., M + 1)``.
    """
    cdf, edges = table
    batch = cdf.shape[:-1]
    cdf = cdf.reshape(-1, cdf.shape[-1])
    n_cells = cdf.shape[-1] - 1
    first = torch.ceil(cdf * n_points).long().clamp_(0, n_points + 1)
    hist = torch.zeros(cdf.shape[0], n_points + 2, dtype=torch.int32, device=cdf.device)
    hist.scatter_add_(1, first, torch.ones_like(first, dtype=torch.int32))
    idx = hist.cumsum(1, dtype=torch.int32)[:, : n_points + 1].long().sub_(1).clamp_(0, n_cells - 1)
    u = torch.linspace(0.0, 1.0, n_points + 1, dtype=cdf.dtype, device=cdf.device)
    edges = edges.expand(cdf.shape[0], -1)  # gather on an expanded view beats fancy indexing
    c_lo, e_lo = torch.gather(cdf, 1, idx), torch.gather(edges, 1, idx)
    idx += 1
    c_hi, e_hi = torch.gather(cdf, 1, idx), torch.gather(edges, 1, idx)
    frac = (u - c_lo).div_((c_hi - c_lo).clamp_min_(torch.finfo(cdf.dtype).tiny)).clamp_(0.0, 1.0)
    return torch.lerp(e_lo, e_hi, frac).reshape(*batch, n_points + 1)


def sample_table(inverse_table: Tensor, u: Tensor) -> Tensor:
    """Evaluate a tabulated inverse CDF at ``u`` by linear interpolation.

    Parameters
    ----------
    inverse_table
        Shape ``(R, M + 1)``: one tabulated inverse CDF per row.
    u
        Shape ``(R, S)``: draws for each row.

    Returns
    -------
    Tensor
        Shape ``(R, S)``.
    """
    m = inverse_table.shape[-1] - 1
    x = u * m
    idx = x.long().clamp_(0, m - 1)  # truncation is floor for u >= 0
    frac = x.sub_(idx)
    lo = torch.gather(inverse_table, -1, idx)
    hi = torch.gather(inverse_table, -1, idx.add_(1))
    return torch.lerp(lo, hi, frac, out=lo)


def sample_table_rows(inverse_table: Tensor, rows: Tensor, u: Tensor) -> Tensor:
    """Evaluate tabulated inverse CDFs, one chosen row per draw.

    Parameters
    ----------
    inverse_table
        Shape ``(R, M + 1)``.
    rows
        Row of each draw, shape ``(K,)`` (int64).
    u
        Draws, shape ``(K,)``.

    Returns
    -------
    Tensor
        Shape ``(K,)``. Only the two table entries around each draw are read, so memory is
        ``O(K)`` however many rows there are.
    """
    m = inverse_table.shape[-1] - 1
    x = u * m
    idx = x.long().clamp_(0, m - 1)  # truncation is floor for u >= 0
    frac = x.sub_(idx)
    flat = inverse_table.reshape(-1)
    pos = idx.add_(rows * (m + 1))
    lo = flat[pos]
    return torch.lerp(lo, flat[pos.add_(1)], frac, out=lo)
