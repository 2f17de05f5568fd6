"""The Numba kernels behind :mod:`kaem.quadrature.native`, compiled on first use.

Kept in a module of their own, at module level, so that Numba's on-disk cache holds them
across processes and ``import kaem`` never imports Numba. Each kernel documents the shapes it
takes; :mod:`kaem.quadrature.native` checks its inputs and converts tensors.
"""

import math

import numba
import numpy as np

jit = numba.njit(cache=True, nogil=True)


@jit
def bucket(x, n_buckets):
    """The bucket of ``x`` in ``[0, 1]``: ``floor(L/2 sqrt(2x))`` below 1/2, mirrored above
    (as :func:`~kaem.quadrature.uniform_bucket`), so buckets are fine where the grid is."""
    half = n_buckets // 2
    b = min(int(half * math.sqrt(2.0 * min(x, 1.0 - x))), half - 1)
    return b if x < 0.5 else n_buckets - 1 - b


@jit
def buckets(grid, m):
    """``start[b]``, the number of grid points ``u_j`` (``j >= 1``) in buckets below ``b``
    (``L = 2 m`` buckets, at most ``m - 1``). Bucketing is monotone, so for ``x`` in
    bucket ``b`` every such point is below ``x``, and the interval of ``x`` is ``start[b]``
    or, if the one grid point of bucket ``b`` is at or below ``x``, the next. Grid points per
    unit of bucket, ``dk/db = 2 sqrt(2) m / (pi L sqrt(1 - u))`` below 1/2 (and mirrored),
    is at most ``4 m / (pi L) = 2 / pi`` for ``L = 2 m``, so no bucket holds two points in
    exact arithmetic; checked here as computed, since the kernels take one step only."""
    n_buckets = 2 * m
    count = np.zeros(n_buckets + 1, np.int64)
    for j in range(1, m + 1):
        count[bucket(grid[j], n_buckets) + 1] += 1
    if count.max() > 1:
        raise ValueError("a bucket of the guide grid holds two grid points")
    start = np.minimum(np.cumsum(count[:n_buckets]), m - 1)
    return start


@jit
def position(x, grid, start, m):
    """``k`` with ``grid[k] <= x < grid[k + 1]`` (``k`` in ``[0, m)``), without a branch."""
    k = start[bucket(x, start.shape[0])]
    return min(k + (x >= grid[k + 1]), m - 1)


@jit
def search(x, cdf, edges, slope):
    """:func:`inverse_cdf_rows` of one draw: bisection for the last ``cdf_c <= x``, c < N."""
    lo, hi = 0, slope.shape[0]  # cdf[lo] <= x < cdf[hi]; cdf[N] is never read
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cdf[mid] <= x:
            lo = mid
        else:
            hi = mid
    return min(max(edges[lo] + (x - cdf[lo]) * slope[lo], edges[0]), edges[-1])


@jit
def entries_of(cdf, edges, slope, grid, max_ratio, nan, tol, out, ends):
    """The guide entries of one CDF row into ``out`` (``(M, 4)``, any strides), and
    ``ends[k] |= `` whether the inverse on interval ``k`` comes within ``tol`` of an end.

    One merge of the interior edges ``cdf_1 .. cdf_{N-1}`` into the grid. The cell of
    ``u_k`` is the number of interior edges at or below it (``searchsorted(right=True) -
    1``, empty cells skipped); interval ``k`` holds the edges strictly between ``u_k`` and
    ``u_{k+1}``: none, one (its kink) or more (``jump = NaN``: search). The arithmetic is
    :func:`~kaem.quadrature.guide_table`'s, with exact comparisons where it locates edges
    by the grid's closed-form inverse.
    """
    n_cells, m = slope.shape[0], out.shape[0]
    low, high = edges[0] + tol, edges[-1] - tol
    j = 1  # the first interior edge above u_k
    previous = edges[0]
    for k in range(m + 1):
        g = grid[k]
        while j < n_cells and cdf[j] <= g:
            j += 1
        lo = j - 1
        start = edges[lo] + (g - cdf[lo]) * slope[lo]  # the exact inverse at u_k
        if k > 0:
            ends[k - 1] |= (previous < low) | (start > high)
        previous = start
        if k == m:
            break
        after = j
        while after < n_cells and cdf[after] < grid[k + 1]:
            after += 1
        s_lo = slope[lo]
        kink, jump = grid[m], grid[0]  # 1 and 0, in the table's dtype
        if after - j == 1:
            kink = cdf[j] - g
            jump = slope[j] - s_lo  # the cell above edge j is cell j
            ratio = slope[j] / s_lo
            if ratio > max_ratio or ratio < 1.0 / max_ratio:
                jump = nan
        elif after - j > 1:
            jump = nan
        out[k, 0] = start - kink * jump if jump == jump else start
        out[k, 1] = s_lo
        out[k, 2] = kink
        out[k, 3] = jump


@numba.njit(cache=True, nogil=True, parallel=True)
def table(cdf, edges, slope, grid, max_ratio, nan, out):
    """Guide entries of every row: ``cdf (R, N + 1)``, ``slope (R, N)``, ``out (R, M, 4)``."""
    m = out.shape[1]
    for r in numba.prange(cdf.shape[0]):
        entries_of(
            cdf[r], edges, slope[r], grid, max_ratio, nan, 0.0, out[r], np.zeros(m, np.bool_)
        )


@numba.njit(cache=True, nogil=True, parallel=True)
def shared_table(cdf, edges, slope, grid, max_ratio, nan, tol, rows, ends):
    """The :class:`~kaem.quadrature.SharedGuide` layout: ``cdf (Q, P, N + 1)``, ``slope
    (Q, P, N)``, ``rows (P, M, 4, Q)`` and ``ends (P, M)``."""
    n_q, n_p = cdf.shape[0], cdf.shape[1]
    m = rows.shape[1]
    for p in numba.prange(n_p):
        own = np.empty((n_q, m, 4), rows.dtype)  # row by row, then interleaved over q
        for q in range(n_q):
            entries_of(cdf[q, p], edges, slope[q, p], grid, max_ratio, nan, tol, own[q], ends[p])
        for k in range(m):
            for f in range(4):
                for q in range(n_q):
                    rows[p, k, f, q] = own[q, k, f]


@numba.njit(cache=True, nogil=True, parallel=True)
def draws(u, grid, fields, cdf, edges, cell_slope, searched, out):
    """``out[s, r] = F_r^{-1}(u[s, r])``: ``u, out`` of shape ``(S, R)``, ``fields``
    ``(R, M, 4)`` (base, slope, kink, jump), ``cdf (R, N + 1)``, ``cell_slope (R, N)``."""
    n_draws, n_rows = u.shape
    m = fields.shape[1]
    low, high = edges[0], edges[-1]
    start = buckets(grid, m)
    for s in numba.prange(n_draws):
        for r in range(n_rows):
            x = u[s, r]
            k = position(x, grid, start, m)
            d = x - grid[k]
            z = fields[r, k, 0] + d * fields[r, k, 1] + max(d, fields[r, k, 2]) * fields[r, k, 3]
            out[s, r] = min(max(z, low), high)
    if searched:  # jump = NaN marks a draw to search, and min and max keep the NaN
        for s in numba.prange(n_draws):
            for r in range(n_rows):
                if math.isnan(out[s, r]):
                    out[s, r] = search(u[s, r], cdf[r], edges, cell_slope[r])


@numba.njit(cache=True, nogil=True, parallel=True)
def shared(u, grid, rows, fix, cdf, edges, cell_slope, out):
    """``out[p, s, q] = F_qp^{-1}(u[s, p])``: ``u (n, P)``, ``rows (P, M, 4 Q)``,
    ``fix (P, M)``, ``cdf (Q, P, N + 1)``, ``cell_slope (Q, P, N)``, ``out (P, n, Q)``."""
    n_draws, n_p = u.shape
    n_q, m = out.shape[2], rows.shape[1]
    low, high = edges[0], edges[-1]
    start = buckets(grid, m)
    for p in numba.prange(n_p):  # one p's slice of the table stays in cache
        for s in range(n_draws):
            x = u[s, p]
            k = position(x, grid, start, m)
            d = x - grid[k]
            e, o = rows[p, k], out[p, s]
            for q in range(n_q):
                o[q] = e[q] + d * e[n_q + q] + max(d, e[2 * n_q + q]) * e[3 * n_q + q]
            if fix[p, k]:  # an entry to search, or values within rounding of an end
                for q in range(n_q):
                    if math.isnan(o[q]):
                        o[q] = search(x, cdf[q, p], edges, cell_slope[q, p])
                    else:
                        o[q] = min(max(o[q], low), high)


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")  # 0 / 0 is NaN
def cdf_rows(mass, width, big, cdf, slope):
    """:func:`~kaem.quadrature.cdf_from_masses` of every row: ``mass (R, N)``, ``width (N,)``
    (the cell widths, rounded once to the masses' dtype), ``big`` the dtype's largest value,
    ``cdf (R, N + 1)`` and ``slope (R, N)``. The same operations in the same order: masses
    summed in float64 from the left, each sum divided by the total and rounded once, slopes
    from the stored CDF, so the tables are equal bit for bit."""
    n_rows, n_cells = mass.shape
    for r in numba.prange(n_rows):
        m, c, sl = mass[r], cdf[r], slope[r]
        running = np.empty(n_cells, np.float64)  # the one sequential pass
        total = 0.0
        for j in range(n_cells):
            total += np.float64(m[j])
            running[j] = total
        c[0] = 0.0
        for j in range(n_cells):  # the rest vectorises
            c[j + 1] = running[j] / total
        for j in range(n_cells):
            cell = c[j + 1] - c[j]
            v = width[j] / cell
            v = v if math.isnan(v) else min(v, big)
            sl[j] = np.inf if cell == 0 else v


#: Rows of a tile of :func:`searches`: a cache line of float32 draws, and the tile's CDF rows
#: and cell indexes stay in the first-level cache while every draw of the tile is found.
TILE = 16


@jit
def cell_starts(cdf, start):
    """``start[b]``: the number of edges ``cdf_j`` (``j >= 1``) in buckets below ``b`` of
    :func:`bucket` (as :func:`~kaem.quadrature.cell_index`), every one below a draw of
    bucket ``b`` since bucketing is monotone; ``start`` has ``2 N`` entries."""
    m = start.shape[0]
    start[:] = 0
    for j in range(1, cdf.shape[0]):
        b = bucket(cdf[j], m) + 1
        if b < m:
            start[b] += 1
    for b in range(1, m):
        start[b] += start[b - 1]


@numba.njit(cache=True, nogil=True, parallel=True)
def searches(u, cdf, edges, cell_slope, out):
    """``out[s, r] = F_r^{-1}(u[s, r % C])``: ``u (S, C)``, ``cdf (R, N + 1)``, ``cell_slope
    (R, N)``, ``out (S, R)``; ``R`` a multiple of ``C``. The cell of :func:`search` (the last
    ``cdf_c <= u``, ``c < N``) from the start of ``u``'s bucket and one step, bisecting on
    from there when the bucket holds more edges; then the same inversion. Tiles of
    :data:`TILE` rows run in parallel, each building its rows' cell starts."""
    n_draws, n_cols = u.shape
    n_rows, n_cells = cell_slope.shape
    low, high = edges[0], edges[-1]
    for tile in numba.prange((n_rows + TILE - 1) // TILE):
        first = tile * TILE
        last = min(first + TILE, n_rows)
        start = np.empty((TILE, 2 * n_cells), np.int64)
        for r in range(first, last):
            cell_starts(cdf[r], start[r - first])
        for r in range(first, last):  # the tile's draws stay in cache from row to row
            row, slope, starts, col = cdf[r], cell_slope[r], start[r - first], r % n_cols
            for s in range(n_draws):
                x = u[s, col]
                c = starts[bucket(x, 2 * n_cells)]  # <= N - 1: cdf_N = 1 > u
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
                out[s, r] = min(max(edges[c] + (x - row[c]) * slope[c], low), high)


@numba.njit(cache=True, nogil=True, parallel=True)
def merged_searches(u, cdf, edges, cell_slope, out):
    """:func:`searches` for draws shared by several rows (``R > C``): each column's draws
    sorted once, then every row's cells found by one merge of its edges with them, ``N + S``
    comparisons in order instead of a bucket and a step per draw; the same cells and the same
    inversion."""
    n_draws, n_cols = u.shape
    n_rows, n_cells = cell_slope.shape
    low, high = edges[0], edges[-1]
    order = np.empty((n_cols, n_draws), np.int64)
    ascending = np.empty((n_cols, n_draws), u.dtype)
    for col in numba.prange(n_cols):
        order[col] = np.argsort(u[:, col])
        for i in range(n_draws):
            ascending[col, i] = u[order[col, i], col]
    for r in numba.prange(n_rows):
        row, slope, col = cdf[r], cell_slope[r], r % n_cols
        xs, at = ascending[col], order[col]
        c = 0  # the last cdf_c <= x (c < N) for the draws so far: it only moves up
        for i in range(n_draws):
            x = xs[i]
            while c < n_cells - 1 and row[c + 1] <= x:
                c += 1
            out[at[i], r] = min(max(edges[c] + (x - row[c]) * slope[c], low), high)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@jit
def splitmix64(state):
    """SplitMix64's output function (Steele, Lea and Flood 2014) of a 64-bit state."""
    z = state
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, parallel=True)
def uniforms(seed, shift, scale, out):
    """``out[i]``: the top ``64 - shift`` bits of SplitMix64's ``i``-th output from ``seed``,
    times ``scale`` (``2^-(64 - shift)``): uniforms on ``[0, 1)``, the same whatever the
    number of threads. ``out`` is one-dimensional."""
    for i in numba.prange(out.shape[0]):
        z = splitmix64(seed + np.uint64(i + 1) * _GOLDEN) >> np.uint64(shift)
        out[i] = z * scale
