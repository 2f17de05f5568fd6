"""Bases: gradients (gradcheck), shapes, and grid refits."""

import pytest
import torch

from kaem.model.bases import BASES, adaptive_grid, build_basis

ALL = sorted(BASES)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_input_and_bandwidth(name: str) -> None:
    torch.manual_seed(0)
    basis = build_basis(name, 3, grid_size=5, grid_range=(-1.0, 2.0)).double()
    # Keep away from B-spline knots, where the derivative jumps.
    x = (torch.rand(4, 3, dtype=torch.float64) * 2.6 - 0.8).requires_grad_()
    if name == "bspline":
        x = x.detach().add_(0.013).requires_grad_()
    params = [p for p in basis.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: basis(x), (x, *params))


@pytest.mark.parametrize("name", ALL)
def test_shape_contract(name: str) -> None:
    basis = build_basis(name, 4, grid_size=6)
    out = basis(torch.randn(2, 5, 4))
    assert out.shape == (2, 5, 4, basis.num_bases)
    with pytest.raises(ValueError, match="last dimension 4"):
        basis(torch.randn(5, 3))


def test_rbf_is_gaussian_bump_on_grid() -> None:
    basis = build_basis("rbf", 1, grid_size=5, grid_range=(0.0, 4.0), tau=1.0)
    out = basis(torch.tensor([[2.0]]))[0, 0]
    # Spacing 1: centres 0..4; value exp(-d^2 / 2).
    expected = torch.exp(-0.5 * torch.tensor([4.0, 1.0, 0.0, 1.0, 4.0]))
    torch.testing.assert_close(out, expected)


def test_bspline_partition_of_unity_inside_grid() -> None:
    basis = build_basis("bspline", 2, grid_size=7, grid_range=(-3.0, 1.0), degree=3)
    x = torch.linspace(-2.99, 0.99, 101)[:, None].expand(-1, 2)
    torch.testing.assert_close(basis(x).sum(-1), torch.ones(101, 2))


def test_chebyshev_matches_cosine_form() -> None:
    basis = build_basis("chebyshev", 1, degree=4, grid_range=(-1.0, 1.0))
    x = torch.linspace(-2, 2, 9)[:, None]
    t = torch.tanh(x)
    expected = torch.stack([torch.cos(k * torch.arccos(t)) for k in range(5)], -1)
    torch.testing.assert_close(basis(x), expected, atol=1e-5, rtol=1e-5)


def test_adaptive_grid_mixes_uniform_and_quantiles() -> None:
    x = torch.randn(1000, 1).exp()  # skewed samples
    g0 = adaptive_grid(x, 11, 0.0)
    g1 = adaptive_grid(x, 11, 1.0)
    torch.testing.assert_close(g0[0], torch.quantile(x[:, 0], torch.linspace(0, 1, 11)))
    torch.testing.assert_close(g1[0], torch.linspace(float(x.min()), float(x.max()), 11))
    mixed = adaptive_grid(x, 11, 0.05)
    torch.testing.assert_close(mixed, 0.05 * g1 + 0.95 * g0)
    with pytest.raises(ValueError, match="grid_update_ratio"):
        adaptive_grid(x, 11, 1.5)


def test_unknown_basis_named() -> None:
    with pytest.raises(ValueError, match="'wavelet'"):
        build_basis("wavelet", 2)


@pytest.mark.parametrize("name", ALL)
def test_weighted_sum_matches_autograd_of_the_plain_sum(name: str) -> None:
    # The contrastive-divergence term of every step goes through weighted_sum: its value and
    # its gradient (the bandwidth's closed-form derivative for centred bases) must equal
    # those of sum_s w_s B(x_s) differentiated by autograd.
    torch.manual_seed(0)
    basis = build_basis(name, 3, grid_size=5, grid_range=(-1.0, 2.0)).double()
    x = torch.rand(50, 4, 3, dtype=torch.float64) * 2.6 - 0.8
    w = torch.randn(50, dtype=torch.float64)
    probe = torch.randn(4, 3, basis.num_bases, dtype=torch.float64)
    params = [p for p in basis.parameters() if p.requires_grad]
    fast = basis.weighted_sum(x, w)
    plain = torch.tensordot(w, basis(x), dims=1)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)
    if params:  # e.g. the trainable bandwidth tau
        g_fast = torch.autograd.grad((fast * probe).sum(), params)
        g_plain = torch.autograd.grad((plain * probe).sum(), params)
        for a, b in zip(g_fast, g_plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
