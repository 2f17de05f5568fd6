"""Quadrature rules and the piecewise-linear inverse CDF."""

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


def test_inverse_cdf_is_exact_for_piecewise_constant_density() -> None:
    # Three cells [0, 1], [1, 3], [3, 4] with masses 0.2, 0.5, 0.3.
    edges = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    weights = edges.diff()
    mass = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    log_density = (mass / weights).log()
    table = quad.build_cdf(log_density, weights.log(), edges)
    torch.testing.assert_close(table.cdf, torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64))
    u = torch.tensor([0.0, 0.1, 0.2, 0.45, 0.7, 0.85, 0.999999], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0 - 1e-6 / 0.3], dtype=torch.float64)
    torch.testing.assert_close(quad.inverse_cdf(u, table), expected)


def test_inverse_cdf_skips_empty_cells() -> None:
    edges = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    log_density = torch.tensor([0.0, -float("inf"), 0.0], dtype=torch.float64)
    table = quad.build_cdf(log_density, torch.zeros(3, dtype=torch.float64), edges)
    z = quad.inverse_cdf(torch.linspace(0, 0.999, 1000, dtype=torch.float64), table)
    assert not bool(((z > 1.0) & (z < 2.0)).any())


def test_table_agrees_with_search() -> None:
    g = torch.Generator().manual_seed(0)
    _nodes, weights = quad.nodes_and_weights(60, -2.0, 1.0, dtype=torch.float64)
    log_density = torch.randn(5, 60, generator=g, dtype=torch.float64).cumsum(-1) * 0.3
    table = quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -2.0))
    inverse = quad.inverse_cdf_table(table, 4096)
    u = torch.rand(5, 2000, generator=g, dtype=torch.float64)
    exact = quad.inverse_cdf(u, table)
    approx = quad.sample_table(inverse, u)
    # Equal at grid points; between them the difference is below one cell's width.
    assert float((exact - approx).abs().max()) < float(weights.max())
    grid_u = torch.linspace(0, 1 - 1e-12, 4097, dtype=torch.float64)[:-1].expand(5, -1)
    torch.testing.assert_close(quad.sample_table(inverse, grid_u), quad.inverse_cdf(grid_u, table))
    rows = torch.randint(0, 5, (300,), generator=g)
    uu = torch.rand(300, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        quad.sample_table_rows(inverse, rows, uu),
        quad.sample_table(inverse[rows], uu[:, None])[:, 0],
    )
