"""Quadrature on a bounded interval, and exact inverse-transform sampling from it.

Every univariate density of the prior is known up to its normaliser on a bounded domain
``[a, b]``. A quadrature rule with nodes ``z_n`` and weights ``w_n`` gives the partition
function (eq. 20),

    Z = sum_n w_n exp(f(z_n)) pi_0(z_n),

and the same numbers define a distribution we can sample *exactly*: node ``n`` owns the cell
``[e_{n-1}, e_n]`` with ``e_n = a + w_1 + ... + w_n`` (the cells tile ``[a, b]`` because the
weights sum to ``b - a``; for Gauss-Legendre each node lies inside its own cell by the
Markov-Stieltjes separation theorem), and carries the mass ``m_n = w_n p(z_n) / Z``. The
density is constant inside a cell, so the CDF is piecewise linear through the cell edges, and
its inverse (eq. 13) is a search for the cell plus the cell's linear inverse:

    c = max{c : cdf_c <= u},        z = e_c + (u - cdf_c) * slope_c,

which :func:`inverse_cdf` computes with ``torch.searchsorted`` on any device. That is the
sampler: the quadrature *defines* the prior that is sampled, and the smooth density that
``log_prob`` evaluates differs from it by the quadrature's resolution (measured by
:meth:`kaem.model.prior.EnergyPrior.quadrature_error`).

All functions are pure tensor functions, batched over leading "row" dimensions (one row per
univariate density), with no Python loops over rows or samples.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CDFTable",
    "QuadratureRule",
    "build_cdf",
    "cdf_from_masses",
    "cell_edges",
    "inverse_cdf",
    "inverse_cdf_rows",
    "log_normaliser",
    "nodes_and_weights",
]

QuadratureRule = Literal["gauss_legendre", "trapezium"]


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
    slope
        ``dz/du`` inside each cell, ``(e_{n+1} - e_n) / (cdf_{n+1} - cdf_n)``, shape
        ``(..., N)``; infinite for a cell whose mass is zero (never drawn), and at most the
        largest float for any other.
    """

    cdf: Tensor
    edges: Tensor
    slope: Tensor


def build_cdf(log_density: Tensor, log_weights: Tensor, edges: Tensor) -> CDFTable:
    """CDF at the cell edges from log densities at the nodes (eq. 20).

    The cell masses ``m_n = w_n p~(z_n)``, relative to the largest, go to
    :func:`cdf_from_masses`.

    Parameters
    ----------
    log_density, log_weights
        As for :func:`log_normaliser`: shapes ``(..., N)`` and ``(N,)``.
    edges
        Cell edges from :func:`cell_edges`, shape ``(N + 1,)``.

    Returns
    -------
    CDFTable
    """
    mass = log_density + log_weights
    return cdf_from_masses(mass.sub_(mass.amax(dim=-1, keepdim=True)).exp_(), edges)


def cdf_from_masses(mass: Tensor, edges: Tensor) -> CDFTable:
    """The piecewise-linear CDF of cells of masses ``mass`` (eq. 20), in any common scale.

    The masses are accumulated in float64 and divided by their sum, so the CDF starts at
    exactly 0, ends at exactly 1 and rounds once, when it is stored. The slopes are computed
    from the stored CDF values, so the distribution that is sampled is the piecewise-linear
    CDF through them.

    Parameters
    ----------
    mass
        Non-negative cell masses, shape ``(..., N)``, not all zero in a row.
    edges
        Cell edges from :func:`cell_edges`, shape ``(N + 1,)``.

    Returns
    -------
    CDFTable
    """
    accumulated = mass.cumsum(dim=-1, dtype=torch.float64)
    cdf = mass.new_empty(*mass.shape[:-1], mass.shape[-1] + 1)
    cdf[..., 0] = 0.0
    torch.div(accumulated, accumulated[..., -1:], out=cdf[..., 1:])  # at most 1, then 1
    # A cell of denormal mass would overflow to an infinite slope, and a draw in it (u = 0
    # can land there) to 0 * inf: such slopes are capped at the largest float, so every draw
    # stays finite and inside its cell (its offset u - cdf_c is at most the cell's mass).
    cell_mass = cdf.diff(dim=-1)
    width = edges.double().diff().to(mass.dtype)
    slope = torch.div(width, cell_mass).clamp_(max=torch.finfo(mass.dtype).max)
    return CDFTable(cdf, edges, slope.masked_fill_(cell_mass == 0, math.inf))


def inverse_cdf(u: Tensor, table: CDFTable) -> Tensor:
    """Exact inverse of the piecewise-linear CDF (eq. 13): ``z = F^{-1}(u)``.

    The cell ``c`` with ``cdf_c <= u < cdf_{c+1}`` is found by ``searchsorted`` (so a cell of
    zero mass is never returned), and inside it ``z = e_c + (u - cdf_c) * slope_c``.

    Parameters
    ----------
    u
        Uniform draws in ``[0, 1)``, shape ``(..., S)``: a row of ``S`` draws for each density
        of ``table`` (``cdf`` of shape ``(..., N + 1)``, the same leading dimensions).
    table
        The CDFs (:func:`build_cdf`).

    Returns
    -------
    Tensor
        Samples, shape ``(..., S)``, inside ``[edges[0], edges[-1]]``.
    """
    cdf, edges, slope = table
    cell = torch.searchsorted(cdf, u.contiguous(), right=True).sub_(1)
    cell.clamp_(0, slope.shape[-1] - 1)
    z = edges[cell] + (u - cdf.gather(-1, cell)) * slope.gather(-1, cell)
    return z.clamp_(edges[0], edges[-1])


def inverse_cdf_rows(rows: Tensor, u: Tensor, table: CDFTable) -> Tensor:
    """:func:`inverse_cdf` for draws that each have their own row of ``table``.

    Parameters
    ----------
    rows
        Row of each draw in the flattened batch of ``table``, shape ``(K,)`` (int64).
    u
        Draws, shape ``(K,)``.
    table
        CDFs with ``cdf`` of shape ``(..., N + 1)``.

    Returns
    -------
    Tensor
        Shape ``(K,)``: ``F_{rows[k]}^{-1}(u[k])``.
    """
    cdf, edges, slope = table
    mine = CDFTable(
        cdf.reshape(-1, cdf.shape[-1])[rows], edges, slope.reshape(-1, slope.shape[-1])[rows]
    )
    return inverse_cdf(u[:, None], mine)[:, 0]
