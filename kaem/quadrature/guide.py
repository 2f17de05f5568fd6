"""The exact inverse CDF through a guide table: one lookup and a few multiply-adds a draw."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from kaem import memory
from kaem.quadrature import native
from kaem.quadrature.rules import CDFTable
from kaem.quadrature.search import inverse_cdf_rows

__all__ = [
    "MAX_SLOPE_RATIO",
    "GuideTable",
    "SharedGuide",
    "guide_points",
    "guide_position",
    "guide_table",
    "guided_inverse_cdf",
    "guided_inverse_cdf_rows",
    "guided_inverse_cdf_shared",
    "shared_guide_table",
]


def _like(t: Tensor) -> dict:
    """``dtype`` and ``device`` of ``t``, for :func:`kaem.memory.empty`."""
    return {"dtype": t.dtype, "device": t.device}


class GuideTable(NamedTuple):
    """The exact inverse CDF on every interval of a fixed grid of uniforms (indexed search).

    The grid ``u_k = (1 - cos(pi k / M)) / 2`` is finer near 0 and 1, where Gauss-Legendre
    cells are small. On ``[u_k, u_{k+1})`` the inverse CDF of a row is piecewise linear with a
    kink at every cell edge that falls inside. With at most one such edge it is, for
    ``d = u - u_k``,

        z = base + d * slope + max(d, kink) * jump,

    where ``slope`` is that of the cell holding ``u_k``, ``kink`` the distance from ``u_k`` to
    the edge, ``jump`` the change of slope there and ``base = start - kink * jump`` with
    ``start`` the exact inverse at ``u_k``: the same cells and slopes as :func:`inverse_cdf`,
    so both agree to float rounding. An interval that holds two or more edges, or whose slope
    changes by more than :data:`MAX_SLOPE_RATIO` (where this form would lose digits), has
    ``jump = NaN``, and its draws are inverted by search.

    Attributes
    ----------
    grid
        ``u_0 = 0 < ... < u_M = 1``, shape ``(M + 1,)``.
    entries
        ``(base, slope, kink, jump)`` of every interval, shape ``(..., M, 4)``: one lookup
        reads the four together. ``kink = 1`` (beyond any ``d``) and ``jump = 0`` where no
        edge falls inside. :attr:`base`, :attr:`slope`, :attr:`kink` and :attr:`jump` are
        views of it, shape ``(..., M)`` each.
    """

    grid: Tensor
    entries: Tensor

    @property
    def base(self) -> Tensor:
        return self.entries[..., 0]

    @property
    def slope(self) -> Tensor:
        return self.entries[..., 1]

    @property
    def kink(self) -> Tensor:
        return self.entries[..., 2]

    @property
    def jump(self) -> Tensor:
        return self.entries[..., 3]


class SharedGuide(NamedTuple):
    """A guide table of ``(Q, P)`` densities laid out for uniforms shared across ``q``.

    Attributes
    ----------
    grid
        As in :class:`GuideTable`.
    rows
        Shape ``(P, M, 4 * Q)``: ``rows[p, k]`` holds ``(base, slope, kink, jump)`` of
        interval ``k`` for every ``q`` (``(4, Q)`` flattened), so one draw ``u_p`` reads one
        contiguous row.
    search
        Shape ``(P, M, Q)``, bool: the entries to invert by search (``jump = NaN``).
    fix
        Shape ``(P, M)``, bool: intervals with an entry to search, or whose values come
        within rounding of the domain's ends (their draws are clamped into it).
    """

    grid: Tensor
    rows: Tensor
    search: Tensor
    fix: Tensor


#: Largest change of slope at a kink that the guide's closed form takes: beyond it the
#: intercept ``base`` would cancel digits of the sample, so such intervals are searched.
MAX_SLOPE_RATIO = 16.0


def guide_points(
    n_points: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """The guide grid ``u_k = (1 - cos(pi k / M)) / 2``, ``k = 0..M``, shape ``(M + 1,)``."""
    if n_points < 1:
        raise ValueError(f"a guide table needs at least one interval, got n_points={n_points}")
    k = torch.arange(n_points + 1, dtype=torch.float64, device=device)
    grid = (1.0 - torch.cos(math.pi * k / n_points)) / 2.0
    grid[0], grid[-1] = 0.0, 1.0
    return grid.to(dtype)


def guide_position(u: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
    """Interval ``k`` of the guide grid that holds ``u``, and the offset ``d = u - u_k``.

    The cosine grid inverts in closed form, ``k = floor(M acos(1 - 2u) / pi)``. Rounding can
    put a value within about 1e-7 of a grid point on the wrong side (then ``d`` is slightly
    negative or slightly beyond the interval); the inverse CDF is continuous, so that moves
    the sample by no more than the rounding of ``u`` itself does.

    Parameters
    ----------
    u
        Values in ``[0, 1]``, any shape.
    grid
        From :func:`guide_points`, shape ``(M + 1,)``, of ``u``'s dtype.

    Returns
    -------
    k, d
        Shapes of ``u``: int64 in ``[0, M)`` and ``u``'s dtype.
    """
    m = grid.shape[0] - 1
    cos = torch.rsub(u, 1.0, alpha=2.0).clamp_(-1.0, 1.0)
    k = cos.acos_().mul_(m / math.pi).long().clamp_(0, m - 1)
    return k, u - grid.take(k)


def _guide_entries(table: CDFTable, n_points: int) -> tuple[list[Tensor], Tensor]:
    """The fields ``(base, slope, kink, jump)`` of every interval, each ``(R, M)``, and the
    exact inverse at every grid point, ``(R, M + 1)``.

    Everything is found by merging the cell edges into the grid rather than by searching:
    interior edge ``j`` lies in interval ``k_j`` (:func:`guide_position`). A histogram of the
    first grid index at or above each edge, accumulated along the grid, counts the edges at
    or below each ``u_k``: the cell of ``u_k``, as ``searchsorted(..., right=True)`` would
    give it (empty cells skipped). Bin ``k + 1`` of the same histogram counts the edges
    inside interval ``k``: one is its kink, more make it an interval to search.
    """
    cdf, edges, slope = table
    n_cells, m = slope.shape[-1], n_points
    cdf, slope = cdf.reshape(-1, n_cells + 1), slope.reshape(-1, n_cells)
    rows = cdf.shape[0]
    grid = guide_points(m, dtype=cdf.dtype, device=cdf.device)
    inner = cdf[:, 1:-1]  # interior edges j = 1..N-1
    k_edge, d_edge = guide_position(inner, grid)
    inside = d_edge > 0  # strictly above u_k: inside interval k (or at its end, u = 1)
    hist = torch.zeros(rows, m + 2, dtype=torch.int32, device=cdf.device)
    hist.scatter_add_(1, k_edge + inside, torch.ones_like(k_edge, dtype=torch.int32))
    lo = hist[:, : m + 1].cumsum(1).clamp_(max=n_cells - 1)  # cell of u_k, k = 0..M
    start = torch.gather(edges.expand(rows, -1), 1, lo)
    s_lo = slope.gather(1, lo)
    start.addcmul_(grid - cdf.gather(1, lo), s_lo)  # the exact inverse at every u_k
    s_lo = s_lo[:, :m]
    # Kinks: the interval of each inside edge, or the spare column m for the others.
    col = k_edge.masked_fill_(~inside, m)
    kink = torch.ones(rows, m + 1, dtype=cdf.dtype, device=cdf.device).scatter_(1, col, d_edge)
    kink = kink[:, :m]
    after = torch.zeros(rows, m + 1, dtype=cdf.dtype, device=cdf.device)
    after = after.scatter_(1, col, slope[:, 1:])[:, :m]  # the cell above edge j is cell j
    no_kink = after == 0
    jump = (after - s_lo).masked_fill_(no_kink, 0.0)
    base = start[:, :m] - kink * jump  # kink = 1, jump = 0 where no edge falls inside
    ratio = after / s_lo
    steep = ((ratio > MAX_SLOPE_RATIO) | (ratio < 1.0 / MAX_SLOPE_RATIO)) & ~no_kink
    jump.masked_fill_((hist[:, 1 : m + 1] > 1) | steep, math.nan)
    return [base, s_lo, kink, jump], start


#: Rows of CDFs turned into guide entries at a time: temporaries stay in cache (and in the
#: allocator's free lists) instead of faulting in fresh pages for every table.
_GUIDE_ROWS = 512


def _row_chunks(table: CDFTable, size: int):
    """``(start, stop, sub-table)`` over blocks of ``size`` rows of a flattened table."""
    cdf, edges, slope = table
    cdf, slope = cdf.reshape(-1, cdf.shape[-1]), slope.reshape(-1, slope.shape[-1])
    for start in range(0, cdf.shape[0], size):  # reshape copies a non-contiguous slope once
        stop = min(start + size, cdf.shape[0])
        yield start, stop, CDFTable(cdf[start:stop], edges, slope[start:stop])


def guide_table(table: CDFTable, n_points: int) -> GuideTable:
    """Tabulate the exact inverse CDF on the ``M = n_points`` intervals of the guide grid.

    Parameters
    ----------
    table
        CDFs with ``cdf`` of shape ``(..., N + 1)``.
    n_points
        ``M``, the number of grid intervals.

    Returns
    -------
    GuideTable
        Entries of shape ``(..., M, 4)``.
    """
    cdf = table.cdf
    entries = memory.empty((math.prod(cdf.shape[:-1]), n_points, 4), **_like(cdf))
    grid = guide_points(n_points, dtype=cdf.dtype, device=cdf.device)
    if native.usable(cdf, table.slope):
        flat = cdf.reshape(-1, cdf.shape[-1]), table.edges, table.slope.reshape(len(entries), -1)
        native.guide_entries(*flat, grid, MAX_SLOPE_RATIO, entries)
        return GuideTable(grid, entries.view(*cdf.shape[:-1], n_points, 4))
    for start, stop, sub in _row_chunks(table, _GUIDE_ROWS):
        entries[start:stop] = torch.stack(_guide_entries(sub, n_points)[0], dim=-1)
    return GuideTable(grid, entries.view(*cdf.shape[:-1], n_points, 4))


def shared_guide_table(table: CDFTable, n_points: int) -> SharedGuide:
    """:func:`guide_table` of ``(Q, P)`` densities, laid out as a :class:`SharedGuide`.

    Parameters
    ----------
    table
        CDFs with ``cdf`` of shape ``(Q, P, N + 1)``.
    n_points
        ``M``.
    """
    cdf, edges = table.cdf, table.edges
    q, p = cdf.shape[:2]
    rows = memory.empty((p, n_points, 4, q), **_like(cdf))
    near_end = torch.zeros(p, n_points, dtype=torch.bool, device=cdf.device)
    low, high = float(edges[0]), float(edges[-1])
    tol = 1e-4 * (high - low)  # far beyond the rounding of any sample
    grid = guide_points(n_points, dtype=cdf.dtype, device=cdf.device)
    if native.usable(cdf, table.slope):
        native.shared_guide_entries(*table, grid, MAX_SLOPE_RATIO, tol, rows, near_end)
        search = torch.isnan(rows[:, :, 3])  # (P, M, Q)
        return SharedGuide(grid, rows.view(p, n_points, 4 * q), search, search.any(2) | near_end)
    # Rows (p, q) with p outermost, so each block of p's fills a contiguous block of the layout.
    by_p = CDFTable(cdf.transpose(0, 1).contiguous(), edges, table.slope.transpose(0, 1))
    per_p = max(1, _GUIDE_ROWS // q)
    for start, stop, sub in _row_chunks(by_p, per_p * q):
        p0, p1 = start // q, stop // q
        fields, inverse = _guide_entries(sub, n_points)
        for j, field in enumerate(fields):
            rows[p0:p1, :, j].copy_(field.view(p1 - p0, q, n_points).transpose(1, 2))
        inverse = inverse.view(p1 - p0, q, n_points + 1)
        ends = (inverse[..., :-1] < low + tol) | (inverse[..., 1:] > high - tol)
        near_end[p0:p1] = ends.any(1)
    search = torch.isnan(rows[:, :, 3])  # (P, M, Q)
    return SharedGuide(grid, rows.view(p, n_points, 4 * q), search, search.any(2) | near_end)


def _evaluate(
    base: Tensor, slope: Tensor, kink: Tensor, jump: Tensor, d: Tensor, out: Tensor
) -> Tensor:
    """``base + d slope + max(d, kink) jump`` into ``out`` (all of one shape)."""
    torch.addcmul(base, d, slope, out=out)
    return out.addcmul_(torch.maximum(d, kink), jump)


def guided_inverse_cdf(
    u: Tensor,
    table: CDFTable,
    guide: GuideTable,
    *,
    out: Tensor | None = None,
    chunk: int = 2**17,
) -> Tensor:
    """:func:`inverse_cdf` through a guide table: one lookup per draw instead of a search.

    Parameters
    ----------
    u
        Uniforms, shape ``(R, S)``, one row of draws per density (as for :func:`inverse_cdf`
        with the batch of ``table`` flattened).
    table, guide
        The CDFs (``cdf`` of shape ``(..., N + 1)``, ``R`` densities) and their
        :func:`guide_table`.
    out
        Where to write the samples, shape ``(R, S)`` with any strides (a transposed view
        saves the caller a copy); a new tensor by default.
    chunk
        Draws per block: every temporary stays small enough for the cache.

    Returns
    -------
    Tensor
        Shape ``(R, S)``; equal to ``inverse_cdf(u, table)`` to float rounding.
    """
    n_rows = u.shape[0]
    entries = guide.entries.reshape(n_rows, -1, 4)
    out = memory.empty(u.shape, **_like(u)) if out is None else out
    searched = bool(torch.isnan(guide.jump).any())  # some interval holds several edges
    if native.usable(u, out, entries, table.cdf):  # the same arithmetic in one pass
        cdf, edges, slope = table
        flat = cdf.reshape(n_rows, -1), edges, slope.reshape(n_rows, -1)
        return native.guided_draws(u, guide.grid, entries, *flat, searched, out)
    fields = entries.unbind(-1)
    low, high = float(table.edges[0]), float(table.edges[-1])
    step = max(1, chunk // n_rows)
    for s in range(0, u.shape[1], step):
        ub, o = u[:, s : s + step], out[:, s : s + step]
        k, d = guide_position(ub, guide.grid)
        base, slope, kink, jump = (f.gather(1, k) for f in fields)
        _evaluate(base, slope, kink, jump, d, o).clamp_(low, high)
        if searched:
            r, c = torch.isnan(jump).nonzero().unbind(1)
            o[r, c] = inverse_cdf_rows(r, ub[r, c], table)
    return out


def guided_inverse_cdf_rows(
    rows: Tensor, u: Tensor, table: CDFTable, guide: GuideTable, *, chunk: int = 2**17
) -> Tensor:
    """Guided inversion with one chosen CDF row per draw (:func:`inverse_cdf_rows`).

    Parameters
    ----------
    rows, u
        As for :func:`inverse_cdf_rows`: each draw's row and the draws, shapes ``(K,)``.
    table, guide
        As for :func:`guided_inverse_cdf`.
    chunk
        Draws per block.

    Returns
    -------
    Tensor
        Shape ``(K,)``. Only the four table entries of each draw's interval are read, so
        memory is ``O(K)`` however many rows there are.
    """
    m = guide.grid.shape[0] - 1
    entries = guide.entries.reshape(-1, 4)
    searched = bool(torch.isnan(guide.jump).any())
    out = memory.empty(u.shape, **_like(u))
    low, high = float(table.edges[0]), float(table.edges[-1])
    for s in range(0, u.shape[0], chunk):
        rb, ub, o = rows[s : s + chunk], u[s : s + chunk], out[s : s + chunk]
        k, d = guide_position(ub, guide.grid)
        base, slope, kink, jump = entries.index_select(0, k.add_(rb * m)).unbind(1)
        _evaluate(base, slope, kink, jump, d, o).clamp_(low, high)
        if searched:
            bad = torch.isnan(jump).nonzero().squeeze(1)
            o[bad] = inverse_cdf_rows(rb[bad], ub[bad], table)
    return out


def guided_inverse_cdf_shared(
    u: Tensor, table: CDFTable, guide: SharedGuide, *, chunk: int = 2**17
) -> Tensor:
    """``z_qp = F_qp^{-1}(u_p)`` for a ``(Q, P)`` table of densities and draws shared across q.

    Equal to ``inverse_cdf(u.T[None].expand(Q, P, n), table)`` to float rounding, laid out
    ``(P, n, Q)``. The draws of one ``p`` read rows of that ``p``'s slice of the
    :class:`SharedGuide` (small enough to stay in cache) and evaluate all ``Q`` densities
    with vector arithmetic; this is what makes 10^4 draws of 3,240 coordinates cost little
    more than writing them.

    Parameters
    ----------
    u
        Draws, shape ``(n, P)``.
    table, guide
        CDFs with ``cdf`` of shape ``(Q, P, N + 1)`` and their :func:`shared_guide_table`.
    chunk
        Target number of ``(draw, q)`` elements per vector operation.

    Returns
    -------
    Tensor
        Shape ``(P, n, Q)``.
    """
    q, p = table.cdf.shape[:2]
    n = u.shape[0]
    out = memory.empty((p, n, q), **_like(guide.rows))
    if native.usable(u, guide.rows, table.cdf):  # the same arithmetic in one pass
        rows = guide.rows.view(p, -1, 4 * q)
        return native.guided_shared(u, guide.grid, rows, guide.fix, *table, out)
    k, d = guide_position(u.T, guide.grid)  # (P, n)
    d = d[..., None]  # (P, n, 1)
    step = min(n, max(1, chunk // q))
    most = guide.rows.new_empty(step, q)
    for rows, kp, dp, op in zip(guide.rows, k, d, out, strict=True):  # one p at a time
        for start in range(0, n, step):
            i, dd, o = kp[start : start + step], dp[start : start + step], op[start : start + step]
            e = rows.index_select(0, i).view(-1, 4, q)
            torch.addcmul(e[:, 0], dd, e[:, 1], out=o)
            o.addcmul_(torch.maximum(dd, e[:, 2], out=most[: len(i)]), e[:, 3])
    flagged = guide.fix.gather(1, k)  # (P, n): draws to search or to clamp
    if bool(flagged.any()):
        pi, s = flagged.nonzero().unbind(1)
        j, qi = guide.search[pi, k[pi, s]].nonzero().unbind(1)
        out[pi[j], s[j], qi] = inverse_cdf_rows(qi * p + pi[j], u[s[j], pi[j]], table)
        out[pi, s] = out[pi, s].clamp_(float(table.edges[0]), float(table.edges[-1]))
    return out
