"""Quadrature rules and the exact inverse CDF, by search and through a guide table."""

import math

import numpy as np
import pytest
import torch

from kaem import quadrature as quad


@pytest.mark.parametrize("domain", [(-1.0, 1.0), (-0.3, 2.5), (0.0, 4.0)])
def test_gauss_legendre_exact_for_polynomials(domain) -> None:
    a, b = domain
    nodes, weights = quad.nodes_and_weights(10, a, b, dtype=torch.float64)
    for k in range(19):  # exact up to degree 2N - 1
        exact = (b ** (k + 1) - a ** (k + 1)) / (k + 1)
        assert float((weights * nodes**k).sum()) == pytest.approx(exact, rel=1e-10, abs=1e-10)


def test_trapezium_rule() -> None:
    nodes, weights = quad.nodes_and_weights(101, -1.0, 3.0, "trapezium", dtype=torch.float64)
    assert float(weights.sum()) == pytest.approx(4.0)
    approx = float((weights * torch.exp(nodes)).sum())
    assert approx == pytest.approx(np.exp(3) - np.exp(-1), rel=1e-3)


@pytest.mark.parametrize("rule", ["gauss_legendre", "trapezium"])
def test_nodes_lie_in_their_cells(rule) -> None:
    nodes, weights = quad.nodes_and_weights(50, -0.5, 2.0, rule, dtype=torch.float64)
    edges = quad.cell_edges(weights, -0.5)
    assert float(edges[-1]) == pytest.approx(2.0)
    tol = 1e-12
    assert bool(((edges[:-1] - tol <= nodes) & (nodes <= edges[1:] + tol)).all())


def test_bad_arguments_named() -> None:
    with pytest.raises(ValueError, match="high > low"):
        quad.nodes_and_weights(10, 1.0, 1.0)
    with pytest.raises(ValueError, match="'simpson'"):
        quad.nodes_and_weights(10, 0.0, 1.0, "simpson")
    with pytest.raises(ValueError, match="n_points=0"):
        quad.guide_points(0)


def _table(mass: list[float], edges: list[float]) -> quad.CDFTable:
    e = torch.tensor(edges, dtype=torch.float64)
    m = torch.tensor(mass, dtype=torch.float64)
    return quad.build_cdf((m / e.diff()).log(), e.diff().log(), e)


def test_inverse_cdf_is_exact_for_piecewise_constant_density() -> None:
    # Three cells [0, 1], [1, 3], [3, 4] with masses 0.2, 0.5, 0.3.
    table = _table([0.2, 0.5, 0.3], [0.0, 1.0, 3.0, 4.0])
    torch.testing.assert_close(table.cdf, torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64))
    torch.testing.assert_close(table.slope, torch.tensor([5.0, 4.0, 1 / 0.3], dtype=torch.float64))
    u = torch.tensor([0.0, 0.1, 0.2, 0.45, 0.7, 0.85, 0.999999], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0 - 1e-6 / 0.3], dtype=torch.float64)
    torch.testing.assert_close(quad.inverse_cdf(u, table), expected)
    rows = torch.zeros(len(u), dtype=torch.int64)
    torch.testing.assert_close(quad.inverse_cdf_rows(rows, u, table), expected)
    for m in (1, 2, 7):  # coarse grids put several edges in one interval: searched
        guide = quad.guide_table(table, m)
        torch.testing.assert_close(quad.guided_inverse_cdf(u[None], table, guide)[0], expected)


def test_cdf_from_masses_is_the_cdf_of_build_cdf_in_any_scale() -> None:
    table = _table([0.2, 0.5, 0.3], [0.0, 1.0, 3.0, 4.0])
    for scale in (1.0, 7.0, 1e-30):
        mass = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64) * scale
        for got, want in zip(quad.cdf_from_masses(mass, table.edges), table, strict=True):
            torch.testing.assert_close(got, want)


def test_every_path_skips_empty_cells() -> None:
    table = _table([0.5, 0.0, 0.5], [0.0, 1.0, 2.0, 3.0])
    u = torch.linspace(0, 0.999, 1000, dtype=torch.float64)
    guide = quad.guide_table(table, 16)
    for z in (
        quad.inverse_cdf(u, table),
        quad.inverse_cdf_rows(torch.zeros(1000, dtype=torch.int64), u, table),
        quad.guided_inverse_cdf(u[None], table, guide)[0],
    ):
        assert not bool(((z > 1.0) & (z < 2.0)).any())


def test_a_cell_of_denormal_mass_gives_a_finite_draw() -> None:
    # 100 nats below the mode, the first cell with mass holds about 1e-45 of it in float32:
    # its slope would overflow and u = 0, which lands in it, would become 0 * inf = NaN.
    edges = torch.linspace(-1.0, 1.0, 11)
    log_density = torch.tensor([-200.0, -100.5, -50.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    table = quad.build_cdf(log_density, edges.diff().log(), edges)
    first = int((table.cdf[1:] > 0).nonzero()[0])
    assert 0 < float(table.cdf[first + 1]) < 1e-40  # a denormal mass: the case in point
    u = torch.tensor([0.0, float(table.cdf[first + 1]) / 2, 0.5])
    guide = quad.guide_table(quad.CDFTable(table.cdf[None], edges, table.slope[None]), 64)
    index = quad.cell_index(table)
    for z in (
        quad.inverse_cdf(u, table),
        quad.inverse_cdf(u, table, index),
        quad.inverse_cdf_rows(torch.zeros(3, dtype=torch.int64), u, table),
        quad.guided_inverse_cdf(
            u[None], quad.CDFTable(table.cdf[None], edges, table.slope[None]), guide
        )[0],
    ):
        assert bool(z.isfinite().all()), z
        assert edges[first] <= z[0] <= edges[first + 1] and edges[first] <= z[1] <= edges[first + 1]


def test_guide_position_brackets_every_value() -> None:
    grid = quad.guide_points(384)
    assert float(grid[0]) == 0.0 and float(grid[-1]) == 1.0 and bool((grid.diff() > 0).all())
    # Finer at the ends, where Gauss-Legendre cells are small, than in the middle.
    assert float(grid[1] - grid[0]) < 0.01 * float(grid[193] - grid[192])
    u = torch.cat([torch.rand(100_000, generator=torch.Generator().manual_seed(0)), grid[:-1]])
    k, d = quad.guide_position(u, grid)
    assert int(k.min()) >= 0 and int(k.max()) <= 383
    width = grid.diff()[k]
    # Rounding may put a value on the wrong side of a grid point, never further.
    assert float(d.min()) >= -1e-7 and bool((d <= width + 1e-7).all())


def _rough_log_density(rows: int, cells: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Log densities with peaks, gaps of tiny mass and empty cells: every guide case."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, cells, dtype=torch.float64)
    centres = torch.rand(rows, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    widths = 0.02 + 0.2 * torch.rand(rows, 2, generator=g, dtype=torch.float64)
    bumps = -0.5 * ((x[None, None] - centres[..., None]) / widths[..., None]) ** 2
    log_density = torch.logsumexp(bumps, dim=1)  # bimodal with a deep valley
    log_density = log_density + 0.3 * torch.randn(rows, cells, generator=g, dtype=torch.float64)
    log_density[0, cells // 3 : cells // 3 + 5] = -math.inf  # empty cells
    return log_density.to(dtype)


def _exact_inverse(u: torch.Tensor, table: quad.CDFTable) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of the piecewise-linear CDF through the stored values, in float64, and
    the slope ``dz/du`` of the cell each draw lands in."""
    cdf = table.cdf.double()
    edges = table.edges.double()
    c = torch.searchsorted(cdf, u.double().contiguous(), right=True) - 1
    c = c.clamp(0, len(edges) - 2)
    lo, hi = cdf.gather(-1, c), cdf.gather(-1, c + 1)
    slope = (edges[c + 1] - edges[c]) / (hi - lo)
    return edges[c] + (u.double() - lo) * slope, slope


def _assert_exact(z: torch.Tensor, u: torch.Tensor, table: quad.CDFTable, ulps: int = 8) -> None:
    """``z`` is the exact inverse at ``u`` to the rounding of ``z`` and of ``u`` itself."""
    exact, slope = _exact_inverse(u, table)
    eps = torch.finfo(z.dtype).eps
    err = (z.double() - exact).abs() / (eps * (exact.abs() + slope * u.double().clamp(min=eps)))
    assert float(err.max()) < ulps, f"{float(err.max()):.1f} ulps off the exact inverse"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_points", [16, 384])
def test_guided_inversion_equals_search_to_rounding(dtype, n_points) -> None:
    _, weights = quad.nodes_and_weights(200, -1.5, 1.5, dtype=dtype)
    log_density = _rough_log_density(12, 200, seed=1, dtype=dtype)
    table = quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -1.5))
    guide = quad.guide_table(table, n_points)
    if n_points == 16:  # coarse: many intervals hold several edges and are searched
        assert float(torch.isnan(guide.jump).float().mean()) > 0.3
    u = torch.rand(12, 20_000, generator=torch.Generator().manual_seed(2), dtype=dtype)
    exact = quad.inverse_cdf(u, table)
    guided = quad.guided_inverse_cdf(u, table, guide)
    for z in (exact, guided):
        _assert_exact(z, u, table)
        assert float(z.min()) >= -1.5 and float(z.max()) <= 1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_and_row_guided_inversion_equal_search(dtype) -> None:
    _, weights = quad.nodes_and_weights(100, -1.0, 2.0, dtype=dtype)
    q, p = 5, 3
    log_density = _rough_log_density(q * p, 100, seed=3, dtype=dtype).view(q, p, 100)
    table = quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -1.0))
    g = torch.Generator().manual_seed(4)
    # Draws shared across q, as the univariate prior makes them.
    u = torch.rand(5000, p, generator=g, dtype=dtype)
    shared = quad.guided_inverse_cdf_shared(u, table, quad.shared_guide_table(table, 64))
    assert shared.shape == (p, 5000, q)
    u_rows = u.T[None].expand(q, p, -1)
    _assert_exact(shared.permute(2, 0, 1), u_rows, table)
    _assert_exact(quad.inverse_cdf(u_rows, table), u_rows, table)
    # One chosen row per draw, as the mixture's component-wise sampler makes them.
    rows = torch.randint(0, q * p, (20_000,), generator=g)
    ur = torch.rand(20_000, generator=g, dtype=dtype)
    by_rows = quad.inverse_cdf_rows(rows, ur, table)
    chosen = quad.CDFTable(
        table.cdf.reshape(q * p, -1)[rows], table.edges, table.slope.reshape(q * p, -1)[rows]
    )
    one_by_one = quad.inverse_cdf(ur[:, None], chosen)[:, 0]
    torch.testing.assert_close(by_rows, one_by_one, rtol=0, atol=0)
    guided = quad.guided_inverse_cdf_rows(rows, ur, table, quad.guide_table(table, 64))
    _assert_exact(guided[:, None], ur[:, None], chosen)


def test_uniform_buckets_are_monotone_as_computed() -> None:
    # Dense runs of consecutive floats where rounding could break the order: at the ends,
    # around 1/2 and at random places, in both dtypes.
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(6)
        u = torch.rand(200_000, generator=g, dtype=dtype)
        for x in (0.0, 0.5, 1.0, *torch.rand(20, generator=g).tolist()):
            run = torch.full((400,), x, dtype=dtype)
            for _ in range(1, 200):
                run[200 + _] = run[199 + _].nextafter(torch.tensor(2.0, dtype=dtype))
                run[200 - _] = run[201 - _].nextafter(torch.tensor(-1.0, dtype=dtype))
            u = torch.cat([u, run.clamp(0.0, 1.0)])
        u = u.sort().values
        for m in (2, 10, 400):
            b = quad.uniform_bucket(u, m)
            assert int(b.min()) == 0 and int(b.max()) == m - 1
            assert bool((b.diff() >= 0).all()), f"buckets not monotone for M = {m}"
    with pytest.raises(ValueError, match="even number of buckets, got n_buckets=3"):
        quad.cell_index(_table([0.5, 0.5], [0.0, 1.0, 2.0]), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_buckets", [2, 8, None])
def test_indexed_search_finds_the_cells_searchsorted_finds(dtype, n_buckets) -> None:
    # Two buckets crowd every edge into one (every draw is bisected), eight crowd many, the
    # default 2N few; the cells, and so the samples, must be those of the plain search.
    _, weights = quad.nodes_and_weights(200, -1.5, 1.5, dtype=dtype)
    log_density = _rough_log_density(12, 200, seed=7, dtype=dtype).view(3, 4, 200)
    table = quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -1.5))
    index = quad.cell_index(table, n_buckets)
    g = torch.Generator().manual_seed(8)
    u = torch.rand(3, 4, 3000, generator=g, dtype=dtype)
    # Draws on the edges themselves and one float below them, where a cell changes (those in
    # [0, 1): the float32 CDF reaches 1 a few cells before the end).
    below = table.cdf.nextafter(torch.zeros((), dtype=dtype))
    u = torch.cat([u, table.cdf, below], dim=-1)
    u = torch.where(u < 1.0, u, 0.5)
    torch.testing.assert_close(
        quad.inverse_cdf(u, table, index), quad.inverse_cdf(u, table), rtol=0, atol=0
    )
    # Draws shared across the first dimension, as an expanded view.
    shared = torch.rand(1, 4, 500, generator=g, dtype=dtype).expand(3, 4, 500)
    torch.testing.assert_close(
        quad.inverse_cdf(shared, table, index), quad.inverse_cdf(shared, table), rtol=0, atol=0
    )


def test_gap_between_modes_gets_its_exact_mass() -> None:
    # Two modes and a valley of small mass between them, in float32: a table interpolating
    # the inverse CDF linearly in u (1,024 points) gives the valley 11 times its mass (224
    # standard errors over these draws); both exact paths give it its own.
    edges = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64)
    x = (edges[1:] + edges[:-1]) / 2
    log_density = torch.logaddexp(-(((x + 0.5) / 0.12) ** 2), -(((x - 0.5) / 0.12) ** 2))
    table = quad.build_cdf(log_density.float(), edges.diff().log().float(), edges.float())
    valley = x.abs() < 0.19  # whole cells, so the exact mass is a sum of cell masses
    mass = float(table.cdf.double().diff()[valley].sum())
    assert 1e-4 < mass < 2e-4
    n = 4_000_000
    u = torch.rand(1, n, generator=torch.Generator().manual_seed(5))
    batched = quad.CDFTable(table.cdf[None], table.edges, table.slope[None])
    guide = quad.guide_table(batched, 384)
    for z in (quad.inverse_cdf(u[0], table), quad.guided_inverse_cdf(u, batched, guide)[0]):
        hits = float((z.abs() < 0.19).sum())
        z_score = (hits - n * mass) / math.sqrt(n * mass)
        assert abs(z_score) < 4.5, f"valley got {hits:.0f} draws, expected {n * mass:.0f}"
