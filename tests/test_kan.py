"""KAN layer: edges, forward, activations, layer norm, grid updates."""

import pytest
import torch

from kaem.model.bases import build_basis
from kaem.model.kan import ACTIVATIONS, KANLayer


def _layer(basis="rbf", act="relu", d_in=3, d_out=4, **kw) -> KANLayer:
    g = torch.Generator().manual_seed(1)
    b = build_basis(basis, d_in, grid_size=6, grid_range=(-1.0, 1.0))
    layer = KANLayer(d_in, d_out, b, base_activation=act, generator=g, **kw)
    with torch.no_grad():  # non-trivial coefficients
        layer.coef.normal_(generator=g)
    return layer


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_forward_is_sum_of_edges(act: str) -> None:
    layer = _layer(act=act)
    x = torch.randn(7, 3)
    torch.testing.assert_close(layer(x), layer.edges(x).sum(-2), atol=1e-5, rtol=1e-5)
    if act == "none":
        assert layer.w_base is None


def test_edges_at_matches_edges() -> None:
    layer = _layer()
    x = torch.randn(5, 3)
    shared = layer.edges(x)  # (5, in, out)
    at = layer.edges_at(x[:, None, :].expand(5, 4, 3))  # (5, out, in)
    torch.testing.assert_close(at, shared.transpose(1, 2), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="trailing shape"):
        layer.edges_at(torch.randn(5, 3, 4))


@pytest.mark.parametrize("act", ["relu", "none"])
def test_edges_on_grid_are_the_edges_input_last_with_their_gradients(act: str) -> None:
    layer = _layer(act=act).double()
    x = torch.randn(9, 3, dtype=torch.float64)
    grid = layer.edges_on_grid(x)  # (out, in, n)
    assert grid.shape == (4, 3, 9) and grid.stride()[-1] == 1
    torch.testing.assert_close(grid, layer.edges(x).permute(2, 1, 0))
    weights = torch.randn(4, 3, 9, dtype=torch.float64)
    params = [p for p in layer.parameters() if p.requires_grad]
    got = torch.autograd.grad((grid * weights).sum(), params)
    want = torch.autograd.grad((layer.edges(x).permute(2, 1, 0) * weights).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"\(n, in\) inputs"):
        layer.edges_on_grid(torch.randn(2, 9, 3))


def test_layer_norm_normalises_outputs() -> None:
    layer = _layer(layer_norm=True, d_out=16)
    y = layer(torch.randn(8, 3))
    torch.testing.assert_close(y.mean(-1), torch.zeros(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("basis", ["rbf", "bspline"])
@pytest.mark.parametrize("grid_size", [10, 20])
def test_grid_update_keeps_function_on_sample_range(basis: str, grid_size: int) -> None:
    """Liu et al.'s grid update moves the grid to the samples but keeps each edge's values."""
    g = torch.Generator().manual_seed(0)
    b = build_basis(basis, 3, grid_size=grid_size, grid_range=(-1.0, 1.0))
    layer = KANLayer(3, 4, b, base_activation="silu", generator=g)
    # Give every edge a smooth non-trivial shape: fit sin(k x) + x^2 on the initial grid.
    dense = torch.linspace(-1, 1, 200)[:, None].expand(-1, 3)
    k = torch.arange(1, 5, dtype=torch.float32)
    target = torch.sin(dense[..., None] * k) + dense[..., None] ** 2  # (200, in, out)
    design = b(dense).transpose(0, 1)  # (in, 200, G)
    with torch.no_grad():
        layer.coef.copy_(torch.linalg.lstsq(design, target.transpose(0, 1)).solution)
    coef_before = layer.coef.detach().clone()
    # Samples concentrated on a skewed sub-range, as posterior samples would be.
    x = 1.2 * torch.rand(500, 3, generator=g).pow(2) - 0.9
    before = layer(x).detach()
    grid_before = b.grid.clone()
    layer.update_grid(x, uniform_ratio=0.05)
    after = layer(x).detach()
    assert not torch.equal(grid_before, b.grid)
    # The grid now spans the samples (B-spline knots extend k intervals beyond them).
    inner = b.grid[:, b.degree : -b.degree] if basis == "bspline" else b.grid
    torch.testing.assert_close(inner[:, 0], x.min(0).values, atol=2e-3 * 1.2, rtol=0)
    torch.testing.assert_close(inner[:, -1], x.max(0).values, atol=2e-3 * 1.2, rtol=0)

    def rel(a: torch.Tensor) -> float:
        return float((a - before).pow(2).mean().sqrt() / before.pow(2).mean().sqrt())

    # RBFs only approximate the smooth shapes (to ~1-2% here); B-splines nearly reproduce them.
    tol = {"rbf": 0.03, "bspline": 1e-3}[basis]
    assert rel(after) < tol, f"{basis}: relative RMS change {rel(after):.3g}"
    # Moving the grid without refitting the coefficients would change the function a lot.
    with torch.no_grad():
        stale = layer.coef.clone()
        layer.coef.copy_(coef_before)
        moved = layer(x)
        layer.coef.copy_(stale)
    assert rel(moved) > 10 * rel(after)


@pytest.mark.parametrize("basis", ["morlet", "mexican_hat", "dog", "chebyshev", "fourier"])
def test_grid_update_refused_for_gridless_bases(basis: str) -> None:
    layer = _layer(basis=basis)
    coef = layer.coef.detach().clone()
    with pytest.raises(ValueError, match="grid updating is not defined"):
        layer.update_grid(torch.randn(50, 3))
    assert torch.equal(coef, layer.coef)


def test_unknown_activation() -> None:
    with pytest.raises(ValueError, match="'swish'"):
        _layer(act="swish")


def _edge_by_hand(layer: KANLayer, value: float, i: int, o: int) -> torch.Tensor:
    """phi_io(value) from its definition, evaluating input i of the basis alone."""
    x = torch.zeros(1, layer.in_features, dtype=layer.coef.dtype)
    x[0, i] = value
    spline = layer.basis(x)[0, i] @ layer.coef[i, :, o] * layer.w_spline[i, o]
    if layer.activation is None:
        return spline
    return spline + layer.activation(x[0, i]) * layer.w_base[i, o]


def test_edges_at_evaluates_each_edge_at_its_own_input() -> None:
    layer = _layer(d_in=3, d_out=4).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)  # a different value on every edge
    at = layer.edges_at(x)  # (2, out, in)
    for s in range(2):
        for o in range(4):
            for i in range(3):
                expected = _edge_by_hand(layer, float(x[s, o, i]), i, o)
                torch.testing.assert_close(at[s, o, i], expected)


@pytest.mark.parametrize("act", ["relu", "none"])
@pytest.mark.parametrize("basis", ["rbf", "morlet", "chebyshev", "bspline"])
def test_weighted_edge_sum_matches_autograd_of_the_plain_sum(basis: str, act: str) -> None:
    layer = _layer(basis=basis, act=act, d_in=3, d_out=4).double()
    x = torch.rand(40, 4, 3, dtype=torch.float64) * 1.8 - 0.9
    w = torch.randn(40, dtype=torch.float64)
    params = [p for p in layer.parameters() if p.requires_grad]
    fast = layer.weighted_edge_sum(x, w)
    plain = (w * layer.edges_at(x).sum(dim=(-2, -1))).sum()
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)
    for a, b in zip(
        torch.autograd.grad(fast, params), torch.autograd.grad(plain, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
