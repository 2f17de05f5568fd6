"""The exact inverse CDF by search: from scratch, from a cell index, or one row per draw."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from kaem import memory
from kaem.quadrature import native
from kaem.quadrature.rules import CDFTable

__all__ = [
    "CellIndex",
    "cell_index",
    "inverse_cdf",
    "inverse_cdf_draws",
    "inverse_cdf_rows",
    "uniform_bucket",
]


class CellIndex(NamedTuple):
    """Where the search for a uniform's cell starts: a guide table of counts over buckets of u.

    The uniforms are cut into ``M`` buckets (:func:`uniform_bucket`, fine near 0 and 1,
    where the Gauss-Legendre cells are small and carry little mass), and the edges ``cdf_j``
    (``j >= 1``) are put into the same buckets by the same monotone function. For ``u`` in
    bucket ``k``, ``start[k]``, the number of edges in lower buckets (all ``<= u``), is at most
    its cell, and the cell is reached by stepping over the edges of bucket ``k`` that are
    ``<= u``: with ``M = 2 N`` buckets there is rarely more than one (guide tables, Chen and
    Asau 1974; Devroye 1986, ch. III.2.4).

    Attributes
    ----------
    start
        Shape ``(..., M)``, int32, non-decreasing.
    upper
        The CDF at the upper edge of every cell, ``cdf_1 .. cdf_N``, then ``+inf`` so that
        a step never passes the last cell: shape ``(..., N + 1)``.
    """

    start: Tensor
    upper: Tensor


def uniform_bucket(u: Tensor, n_buckets: int) -> Tensor:
    """The bucket of every ``u`` in ``[0, 1]`` among ``M = n_buckets`` (even).

    ``k = floor(M/2 sqrt(2u))`` on ``[0, 1/2)`` and its mirror image ``M - 1 - k(1 - u)``
    on ``[1/2, 1]`` (int32): buckets of width ``1 / (2 (M/2)^2)`` at the ends and ``2 / M`` in the
    middle. Every step (``1 - u``, doubling, the square root, the product, the clamp) is a
    correctly rounded, monotone floating-point operation, so the buckets are non-decreasing
    in ``u`` as computed, not only in exact arithmetic: what :class:`CellIndex` relies on.
    """
    half = n_buckets // 2
    k = torch.rsub(u, 1.0)
    k = torch.minimum(u, k, out=k)  # u below 1/2, the exact 1 - u above
    k.mul_(2.0 * half * half).sqrt_().clamp_(0, half - 1).floor_()
    return torch.where(u < 0.5, k, torch.rsub(k, 2 * half - 1)).to(torch.int32)


def cell_index(table: CDFTable, n_buckets: int | None = None) -> CellIndex:
    """The :class:`CellIndex` of CDFs: a histogram of their edges' buckets, accumulated.

    Parameters
    ----------
    table
        CDFs with ``cdf`` of shape ``(..., N + 1)``.
    n_buckets
        ``M``, even; ``2 N`` by default.

    Returns
    -------
    CellIndex
    """
    cdf = table.cdf
    m = 2 * (cdf.shape[-1] - 1) if n_buckets is None else n_buckets
    if m < 2 or m % 2:
        raise ValueError(f"a cell index needs an even number of buckets, got n_buckets={m}")
    upper = torch.cat([cdf[..., 1:], cdf.new_full((*cdf.shape[:-1], 1), math.inf)], dim=-1)
    counts = torch.zeros(*cdf.shape[:-1], m + 1, dtype=torch.int32, device=cdf.device)
    one = torch.ones((), dtype=torch.int32, device=cdf.device)
    bucket = uniform_bucket(cdf[..., 1:], m).add_(1).long()  # j counts for buckets above
    counts.scatter_add_(-1, bucket, one.expand(bucket.shape))
    return CellIndex(counts[..., :m].cumsum_(-1), upper)


def _unexpanded(t: Tensor) -> Tensor:
    """``t`` with every broadcast (stride-0) dimension cut to size 1."""
    return t[tuple(slice(0, 1) if st == 0 else slice(None) for st in t.stride())]


def _cells(u: Tensor, table: CDFTable, index: CellIndex | None) -> Tensor:
    """The cell ``c`` with ``cdf_c <= u < cdf_{c+1}`` of every draw, shape of ``u`` (integer).

    Without ``index`` by ``searchsorted``; with it, from the start of ``u``'s bucket: one step
    of linear search, then bisection for the few draws whose bucket holds more edges. Both
    give ``searchsorted(cdf, u, right=True) - 1`` clamped to a cell, so empty cells (zero
    mass) are skipped.
    """
    cdf = table.cdf
    n_cells = cdf.shape[-1] - 1
    if index is None:
        idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True) - 1
        return idx.clamp_(0, n_cells - 1)
    start, upper = index
    bucket = uniform_bucket(_unexpanded(u), start.shape[-1]).expand(u.shape)
    cell = start.gather(-1, bucket)  # no edge above it is <= u ...
    cell += upper.gather(-1, cell) <= u  # ... but the next edge, in u's bucket, may be
    more = upper.gather(-1, cell) <= u
    if bool(more.any()):  # a bucket holding several edges (rare; a host synchronisation)
        where = more.nonzero(as_tuple=True)
        rows = torch.zeros_like(where[-1])
        for i, size in zip(where[:-1], cdf.shape[:-1], strict=True):
            rows = rows * size + i
        found = _bisect(rows, u[where], cdf, cell[where], torch.full_like(rows, n_cells))
        cell[where] = found.to(cell.dtype)
    return cell.clamp_(max=n_cells - 1)


def _bisect(rows: Tensor, u: Tensor, cdf: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The number of edges ``j >= 1`` with ``cdf_j <= u`` in row ``rows`` of ``cdf``, known
    to lie in ``[lo, hi]``, by bisection.

    Parameters
    ----------
    rows, u, lo, hi
        Shape ``(K,)``: each draw's row in the flattened batch of ``cdf``, the draw, and the
        bracket (any integer dtype).
    cdf
        CDFs, shape ``(..., N + 1)``.
    """
    n_edges = cdf.shape[-1]
    flat = cdf.reshape(-1)
    base = rows * n_edges
    # Invariant: cdf[lo] <= u < cdf[hi] (cdf[N + 1] = +inf, never read: lo < mid < hi).
    lo, hi = lo.long(), hi.long() + 1
    for _ in range(max(1, math.ceil(math.log2(n_edges)))):
        mid = (lo + hi) // 2
        right = (flat.take(base + mid) <= u).long()
        lo += right * (mid - lo)
        hi = mid + right * (hi - mid)
    return lo


def inverse_cdf(u: Tensor, table: CDFTable, index: CellIndex | None = None) -> Tensor:
    """Exact inverse of the piecewise-linear CDF (eq. 13).

    The cell ``c`` with ``cdf_c <= u < cdf_{c+1}`` is found by ``searchsorted``, or through
    a :func:`cell_index` (a faster search on a CPU; the same cells); inside it
    ``z = e_c + (u - cdf_c) * slope_c``. Empty cells (zero mass) are never returned.

    Parameters
    ----------
    u, table
        Uniform draws in ``[0, 1)``, shape ``(..., S)``, one row of draws per density of the
        CDFs ``table`` (``cdf`` of shape ``(..., N + 1)``). ``u`` may be an expanded view.
    index
        The :func:`cell_index` of ``table``, or None to search.

    Returns
    -------
    Tensor
        Samples, shape ``(..., S)``, inside ``[edges[0], edges[-1]]``.
    """
    cdf, edges, slope = table
    idx = _cells(u, table, index)
    start = torch.gather(edges.expand(*cdf.shape), -1, idx)  # gather on an expanded view
    offset = u - torch.gather(cdf, -1, idx)
    z = torch.addcmul(start, offset, torch.gather(slope, -1, idx))
    return z.clamp_(edges[0], edges[-1])


def inverse_cdf_draws(u: Tensor, table: CDFTable, index: CellIndex | None = None) -> Tensor:
    """:func:`inverse_cdf` of draws laid out draw by draw, as samples are returned.

    Parameters
    ----------
    u
        Uniform draws in ``[0, 1)``, shape ``(S, *C)``: draw ``s`` of the densities of
        ``table`` (``cdf`` of shape ``(*L, *C, N + 1)``), shared across the leading batch
        dimensions ``L`` (the univariate prior's ``u_p``, shared across ``q``).
    table, index
        As for :func:`inverse_cdf`.

    Returns
    -------
    Tensor
        Samples, shape ``(S, *L, *C)``: ``out[s, l, c] = F_lc^{-1}(u[s, c])``, the same
        values as :func:`inverse_cdf`. On a CPU (:func:`kaem.quadrature.native.usable`) the
        compiled search writes them in this layout; elsewhere it is a view of
        :func:`inverse_cdf`'s result.
    """
    cdf, edges, slope = table
    batch, n_draws = cdf.shape[:-1], u.shape[0]
    if native.usable(u, cdf, edges, slope) and u.is_contiguous() and cdf.is_contiguous():
        out = memory.empty((n_draws, *batch), dtype=u.dtype, device=u.device)
        rows = cdf.shape[-1]
        native.searched_draws(
            u.view(n_draws, -1),
            cdf.view(-1, rows),
            edges,
            slope.reshape(-1, rows - 1),
            out.view(n_draws, -1),
        )
        return out
    return inverse_cdf(u.movedim(0, -1).expand(*batch, n_draws), table, index).movedim(-1, 0)


def inverse_cdf_rows(rows: Tensor, u: Tensor, table: CDFTable) -> Tensor:
    """:func:`inverse_cdf` for draws that each have their own row, by bisection.

    The same cell as ``searchsorted(cdf[row], u, right=True) - 1`` (empty cells are never
    returned) and the same inversion inside it, without copying any row.

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
        Shape ``(K,)``.
    """
    cdf, edges, slope = table
    n_cells = slope.shape[-1]
    flat = cdf.reshape(-1)
    lo = _bisect(rows, u, cdf, torch.zeros_like(rows), torch.full_like(rows, n_cells - 1))
    offset = u - flat.take(rows * (n_cells + 1) + lo)
    z = torch.addcmul(edges.take(lo), offset, slope.reshape(-1).take(rows * n_cells + lo))
    return z.clamp_(edges[0], edges[-1])
