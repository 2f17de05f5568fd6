"""The Numba kernels of :mod:`kaem.model.accel.cpu`, compiled on first use and cached on disk.

Kept at module level in a module of their own, so that Numba's cache holds them across
processes and only a caller of the compiled path imports Numba. Each kernel is the search of
:func:`kaem.model.quadrature.inverse_cdf` (the last ``cdf_c <= u`` with ``c < N``) and the same
inversion ``edges[c] + (u - cdf_c) * slope_c``, clamped into the domain, in the same floating-
point operations, so its samples equal the plain path's bit for bit. They run on one thread:
the caller's process (a Snakemake job, a data loader worker) decides the parallelism.
"""

import math

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True)


@jit
def bucket(x, n_buckets):
    """The bucket of ``x`` in ``[0, 1]`` among ``n_buckets`` (even): ``floor(M/2 sqrt(2x))``
    below 1/2 and mirrored above, fine near 0 and 1, where Gauss-Legendre cells are small."""
    half = n_buckets // 2
    b = min(int(half * math.sqrt(2.0 * min(x, 1.0 - x))), half - 1)
    return b if x < 0.5 else n_buckets - 1 - b


@jit
def cell_starts(cdf, start):
    """``start[b]``: the number of edges ``cdf_j`` (``j >= 1``) in buckets below ``b``. The
    bucketing is monotone, so each is below any draw of bucket ``b``: a draw's cell is at
    least ``start[b]``, and with ``2 N`` buckets rarely more than one step above it."""
    m = start.shape[0]
    start[:] = 0
    for j in range(1, cdf.shape[0]):
        b = bucket(cdf[j], m) + 1
        if b < m:
            start[b] += 1
    for b in range(1, m):
        start[b] += start[b - 1]


#: Rows searched together by :func:`searches`: a cache line of float32 draws, and the rows'
#: CDFs and cell starts stay in the first-level cache while every draw of the tile is found.
TILE = 16


@jit
def searches(u, cdf, edges, cell_slope, out):
    """``out[s, r] = F_r^{-1}(u[s, r])`` for ``u (S, R)``, ``cdf (R, N + 1)``, ``cell_slope
    (R, N)``, ``out (S, R)``: the cell starts of a tile of :data:`TILE` rows, then every draw
    of the tile from its bucket's start by one step, bisecting on from there where a bucket
    holds more edges."""
    n_draws = u.shape[0]
    n_rows, n_cells = cell_slope.shape
    low, high = edges[0], edges[-1]
    starts = np.empty((TILE, 2 * n_cells), np.int64)
    for first in range(0, n_rows, TILE):
        last = min(first + TILE, n_rows)
        for r in range(first, last):
            cell_starts(cdf[r], starts[r - first])
        for s in range(n_draws):
            for r in range(first, last):
                row, x = cdf[r], u[s, r]
                c = starts[r - first, bucket(x, 2 * n_cells)]  # <= N - 1: cdf_N = 1 > u
                c += row[c + 1] <= x
                if row[c + 1] <= x:  # a crowded bucket: cdf[c] <= x < cdf[N]
                    hi = n_cells
                    while hi - c > 1:
                        mid = (c + hi) // 2
                        if row[mid] <= x:
                            c = mid
                        else:
                            hi = mid
                c = min(c, n_cells - 1)
                out[s, r] = min(max(edges[c] + (x - row[c]) * cell_slope[r, c], low), high)


@jit
def merged_searches(u, cdf, edges, cell_slope, out):
    """:func:`searches` for draws shared by several rows: ``u (S, C)``, row ``r`` inverting
    column ``r % C`` (``R`` a multiple of ``C``), ``out (R, S)``. Each column is sorted once;
    then each row's cells are found by one merge of its edges with the sorted draws, ``N + S``
    comparisons in order, and written into the row's own span of ``out``."""
    n_draws, n_cols = u.shape
    n_rows, n_cells = cell_slope.shape
    low, high = edges[0], edges[-1]
    order = np.empty((n_cols, n_draws), np.int64)
    ascending = np.empty((n_cols, n_draws), u.dtype)
    for col in range(n_cols):
        order[col] = np.argsort(u[:, col])
        for i in range(n_draws):
            ascending[col, i] = u[order[col, i], col]
    for r in range(n_rows):
        row, slope, col, dest = cdf[r], cell_slope[r], r % n_cols, out[r]
        xs, at = ascending[col], order[col]
        c = 0  # the last cdf_c <= x (c < N) for the draws so far: it only moves up
        for i in range(n_draws):
            x = xs[i]
            while c < n_cells - 1 and row[c + 1] <= x:
                c += 1
            dest[at[i]] = min(max(edges[c] + (x - row[c]) * slope[c], low), high)
