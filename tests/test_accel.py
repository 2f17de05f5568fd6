"""The compiled inverse CDF (``model.prior.sampling: compiled``) against the plain one."""

import math

import pytest
import torch
from test_quadrature import _assert_exact, _rough_log_density

from kaem.model import build_model
from kaem.model import quadrature as quad
from kaem.model.accel import cpu
from kaem.presets import preset


def _rough_table(shape: tuple[int, ...], cells: int, seed: int, dtype: torch.dtype):
    _, weights = quad.nodes_and_weights(cells, -1.5, 1.5, dtype=dtype)
    log_density = _rough_log_density(math.prod(shape), cells, seed=seed, dtype=dtype)
    log_density[1, ::2] = -math.inf  # every other cell empty
    log_density[2] = torch.linspace(-120, 0, cells, dtype=dtype)  # from float32's denormals
    table = quad.build_cdf(
        log_density.view(*shape, cells), weights.log(), quad.cell_edges(weights, -1.5)
    )
    return table


def _hard_draws(table: quad.CDFTable, u: torch.Tensor) -> torch.Tensor:
    """``u`` with the CDF values themselves and the floats just below them appended: where a
    draw changes cell, and where a merge or a bucket could stop one edge early or late."""
    dtype = u.dtype
    below = table.cdf.nextafter(torch.zeros((), dtype=dtype))
    u = torch.cat([u, table.cdf, below, torch.zeros_like(u[..., :1])], dim=-1)
    return torch.where(u < 1.0, u, 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_independent_draws_are_the_plain_inverse_bit_for_bit(dtype) -> None:
    table = _rough_table((4, 6), 200, seed=1, dtype=dtype)
    u = torch.rand(4, 6, 5000, generator=torch.Generator().manual_seed(2), dtype=dtype)
    u = _hard_draws(table, u)
    z = cpu.inverse_cdf(u, table)
    assert z.shape == u.shape
    torch.testing.assert_close(z, quad.inverse_cdf(u, table), rtol=0, atol=0)
    _assert_exact(z, u, table)
    # The layout the priors pass: draw-major uniforms seen through a permutation.
    v = torch.rand(3000, 4, 6, generator=torch.Generator().manual_seed(3), dtype=dtype)
    v = v.permute(1, 2, 0)
    torch.testing.assert_close(
        cpu.inverse_cdf(v, table), quad.inverse_cdf(v, table), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 6), (2, 5, 6)])
def test_shared_draws_are_the_plain_inverse_bit_for_bit(dtype, shape) -> None:
    # Draws shared along the leading dimensions (the univariate prior's u_p for every q),
    # sorted once and merged with each row: ties, edges and the floats below them included.
    table = _rough_table(shape, 200, seed=4, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    base = torch.rand(shape[-1], 4000, generator=g, dtype=dtype)
    base = torch.cat([base, base[:, :100]], dim=-1)  # repeated draws
    edge_draws = table.cdf.reshape(-1, table.cdf.shape[-1])[: shape[-1]]
    base = _hard_draws(quad.CDFTable(edge_draws, table.edges, table.slope), base)
    u = base.expand(*shape, base.shape[-1])
    z = cpu.inverse_cdf(u, table)
    torch.testing.assert_close(z, quad.inverse_cdf(u, table), rtol=0, atol=0)
    _assert_exact(z, u, table)


def test_what_the_loops_cannot_take_goes_to_the_plain_path() -> None:
    table = _rough_table((3, 4), 50, seed=6, dtype=torch.float32)
    u = torch.rand(3, 4, 10, generator=torch.Generator().manual_seed(7))
    for odd in (u.requires_grad_(), u.detach().double()):  # gradient; mixed dtypes
        torch.testing.assert_close(cpu.inverse_cdf(odd, table), quad.inverse_cdf(odd, table))
    meta = quad.CDFTable(*(t.to("meta") for t in table))
    assert cpu.inverse_cdf(u.detach().to("meta"), meta).device.type == "meta"


@pytest.mark.parametrize("name", ["nist", "svhn"])
@pytest.mark.parametrize("shared", [True, False])
def test_a_prior_samples_the_same_with_either_setting(name, shared) -> None:
    cfg = preset(name)["model"]
    draws = {}
    for sampling in ("search", "compiled"):
        prior_cfg = {**cfg["prior"], "sampling": sampling, "shared_uniforms": shared}
        prior = build_model({**cfg, "prior": prior_cfg}).prior
        draws[sampling] = prior.sample(700, torch.Generator().manual_seed(8))
    torch.testing.assert_close(draws["compiled"], draws["search"], rtol=0, atol=0)
