"""Quadrature rules and the exact inverse CDF (eqs. 13, 20)."""

import math

import numpy as np
import pytest
import torch

from kaem.model import quadrature as quad


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


def test_cdf_from_masses_is_the_cdf_of_build_cdf_in_any_scale() -> None:
    table = _table([0.2, 0.5, 0.3], [0.0, 1.0, 3.0, 4.0])
    for scale in (1.0, 7.0, 1e-30):
        mass = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64) * scale
        for got, want in zip(quad.cdf_from_masses(mass, table.edges), table, strict=True):
            torch.testing.assert_close(got, want)


def test_every_path_skips_empty_cells() -> None:
    table = _table([0.5, 0.0, 0.5], [0.0, 1.0, 2.0, 3.0])
    u = torch.linspace(0, 0.999, 1000, dtype=torch.float64)
    for z in (
        quad.inverse_cdf(u, table),
        quad.inverse_cdf_rows(torch.zeros(1000, dtype=torch.int64), u, table),
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
    for z in (
        quad.inverse_cdf(u, table),
        quad.inverse_cdf_rows(torch.zeros(3, dtype=torch.int64), u, table),
    ):
        assert bool(z.isfinite().all()), z
        assert edges[first] <= z[0] <= edges[first + 1] and edges[first] <= z[1] <= edges[first + 1]


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
def test_inversion_is_exact_to_rounding_on_rough_densities(dtype) -> None:
    _, weights = quad.nodes_and_weights(200, -1.5, 1.5, dtype=dtype)
    log_density = _rough_log_density(12, 200, seed=1, dtype=dtype)
    table = quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -1.5))
    u = torch.rand(12, 20_000, generator=torch.Generator().manual_seed(2), dtype=dtype)
    # Draws on the CDF's values themselves and one float below them, where a cell changes.
    below = table.cdf.nextafter(torch.zeros((), dtype=dtype))
    u = torch.cat([u, table.cdf, below], dim=-1)
    u = torch.where(u < 1.0, u, 0.5)
    z = quad.inverse_cdf(u, table)
    _assert_exact(z, u, table)
    assert float(z.min()) >= -1.5 and float(z.max()) <= 1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_draws_and_draws_with_their_own_row_invert_exactly(dtype) -> None:
    _, weights = quad.nodes_and_weights(100, -1.0, 2.0, dtype=dtype)
    q, p = 5, 3
    log_density = _rough_log_density(q * p, 100, seed=3, dtype=dtype).view(q, p, 100)
    table = quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -1.0))
    g = torch.Generator().manual_seed(4)
    # Draws shared across q, as the univariate prior makes them: an expanded view.
    u = torch.rand(p, 5000, generator=g, dtype=dtype).expand(q, p, 5000)
    _assert_exact(quad.inverse_cdf(u, table), u, table)
    # One chosen row per draw, as the mixture's component-wise sampler makes them.
    rows = torch.randint(0, q * p, (20_000,), generator=g)
    ur = torch.rand(20_000, generator=g, dtype=dtype)
    chosen = quad.CDFTable(
        table.cdf.reshape(q * p, -1)[rows], table.edges, table.slope.reshape(q * p, -1)[rows]
    )
    _assert_exact(quad.inverse_cdf_rows(rows, ur, table)[:, None], ur[:, None], chosen)


def test_gap_between_modes_gets_its_exact_mass() -> None:
    # Two modes and a valley of small mass between them, in float32: a table interpolating
    # the inverse CDF linearly in u (1,024 points) gives the valley 11 times its mass (224
    # standard errors over these draws); the exact inverse gives it its own.
    edges = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64)
    x = (edges[1:] + edges[:-1]) / 2
    log_density = torch.logaddexp(-(((x + 0.5) / 0.12) ** 2), -(((x - 0.5) / 0.12) ** 2))
    table = quad.build_cdf(log_density.float(), edges.diff().log().float(), edges.float())
    valley = x.abs() < 0.19  # whole cells, so the exact mass is a sum of cell masses
    mass = float(table.cdf.double().diff()[valley].sum())
    assert 1e-4 < mass < 2e-4
    n = 4_000_000
    z = quad.inverse_cdf(torch.rand(n, generator=torch.Generator().manual_seed(5)), table)
    hits = float((z.abs() < 0.19).sum())
    z_score = (hits - n * mass) / math.sqrt(n * mass)
    assert abs(z_score) < 4.5, f"valley got {hits:.0f} draws, expected {n * mass:.0f}"
