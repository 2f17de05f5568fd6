"""The compiled CPU kernels of guided inversion against the eager path and the exact inverse."""

import math
import os
import subprocess
import sys

import pytest
import torch
from scipy import stats
from test_quadrature import _assert_exact, _rough_log_density

from kaem import quadrature as quad
from kaem.model import build_model
from kaem.presets import preset
from kaem.quadrature import native


@pytest.fixture
def eager():
    """Run the body with the kernels off (the eager PyTorch path), then restore them."""
    previous = native.set_enabled(False)
    yield
    native.set_enabled(previous)


def _rough_table(rows: int, cells: int, seed: int, dtype: torch.dtype, shape=None):
    _, weights = quad.nodes_and_weights(cells, -1.5, 1.5, dtype=dtype)
    log_density = _rough_log_density(rows, cells, seed=seed, dtype=dtype)
    if shape is not None:
        log_density = log_density.view(*shape, cells)
    return quad.build_cdf(log_density, weights.log(), quad.cell_edges(weights, -1.5))


def _both_paths(fn):
    """``fn()`` with the kernels on, then off."""
    assert native.enabled()
    on = fn()
    previous = native.set_enabled(False)
    try:
        return on, fn()
    finally:
        native.set_enabled(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_cdf_build_is_the_eager_one_bit_for_bit(dtype) -> None:
    # Rough log densities over 40 orders of magnitude, empty cells, cells of denormal mass
    # (slopes capped at the largest float) and a row of one cell: every CDF value and slope
    # equal, not merely close, so every sample is the same on both paths.
    g = torch.Generator().manual_seed(11)
    edges = quad.cell_edges(quad.nodes_and_weights(200, -1.5, 1.5)[1], -1.5).to(dtype)
    log_density = 30 * torch.randn(3, 7, 200, generator=g, dtype=dtype)
    log_density[0, 0, ::3] = -math.inf  # empty cells
    log_density[0, 1] = torch.linspace(-120, 0, 200, dtype=dtype)  # from float32's denormals
    log_density[0, 2] = -math.inf
    log_density[0, 2, 17] = 0.0  # all the mass in one cell
    log_weights = torch.log(quad.nodes_and_weights(200, -1.5, 1.5)[1]).to(dtype)
    on, off = _both_paths(lambda: quad.build_cdf(log_density, log_weights, edges))
    mixture = torch.softmax(log_density[1], dim=-1)  # masses out of log space, (7, 200)
    on_mix, off_mix = _both_paths(lambda: quad.cdf_from_masses(mixture, edges))
    for a, b in ((on, off), (on_mix, off_mix)):
        assert a.cdf.dtype == a.slope.dtype == dtype and a.cdf.shape[:-1] == a.slope.shape[:-1]
        assert torch.equal(a.cdf, b.cdf)
        assert torch.equal(a.slope, b.slope)
    assert torch.isinf(on.slope[0, 0, ::3]).all() and torch.isinf(on.slope[0, 2, :17]).all()
    assert on.cdf[0, 2, 17] == 0 and (on.cdf[0, 2, 18:] == 1).all()
    if dtype == torch.float32:
        assert (on.slope[0, 1] == torch.finfo(dtype).max).any()  # a capped slope was tested


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_points", [16, 384])
def test_kernels_equal_the_eager_path_and_the_exact_inverse(dtype, n_points) -> None:
    # Coarse grids mark most intervals for search (several edges, steep kinks); fine ones few.
    table = _rough_table(12, 200, seed=1, dtype=dtype)
    (guide, eager_guide) = _both_paths(lambda: quad.guide_table(table, n_points))
    u = torch.rand(12, 20_000, generator=torch.Generator().manual_seed(2), dtype=dtype)
    for g in (guide, eager_guide):  # either table, either path: the exact inverse
        on, off = _both_paths(lambda g=g: quad.guided_inverse_cdf(u, table, g))
        _assert_exact(on, u, table)
        _assert_exact(off, u, table)
        torch.testing.assert_close(on, off, rtol=4 * torch.finfo(dtype).eps, atol=1e-6)
    # A transposed output and transposed draws: the layout the priors use.
    out = torch.empty(20_000, 12, dtype=dtype)
    quad.guided_inverse_cdf(u.T.contiguous().T, table, guide, out=out.T)
    _assert_exact(out.T, u, table)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_kernels_equal_the_eager_path_and_the_exact_inverse(dtype) -> None:
    q, p = 7, 5
    table = _rough_table(q * p, 100, seed=3, dtype=dtype, shape=(q, p))
    for n_points in (16, 64, 384):
        guide, eager_guide = _both_paths(lambda n=n_points: quad.shared_guide_table(table, n))
        assert torch.equal(guide.fix, eager_guide.fix) or n_points == 16
        u = torch.rand(3000, p, generator=torch.Generator().manual_seed(n_points), dtype=dtype)
        ends = [torch.finfo(torch.float32).tiny, 1.0 - torch.finfo(torch.float32).eps]
        u[:2] = torch.tensor(ends, dtype=dtype)[:, None]  # near either end of the domain
        u_rows = u.T[None].expand(q, p, -1)
        for g in (guide, eager_guide):
            on, off = _both_paths(lambda g=g, u=u: quad.guided_inverse_cdf_shared(u, table, g))
            for z in (on, off):
                _assert_exact(z.permute(2, 0, 1), u_rows, table)
                assert float(z.min()) >= -1.5 and float(z.max()) <= 1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_on_and_beside_grid_points_find_their_interval(dtype) -> None:
    # Where the interval is decided: u exactly at a grid point, and one float either side.
    table = _rough_table(3, 200, seed=5, dtype=dtype)
    for n_points in (1, 2, 3, 17, 384, 1000):
        guide = quad.guide_table(table, n_points)
        grid = guide.grid
        up = torch.nextafter(grid, torch.ones_like(grid))
        down = torch.nextafter(grid, torch.zeros_like(grid))
        u = torch.cat([grid, up, down]).clamp(0.0, 1.0 - torch.finfo(dtype).eps / 2)
        u = u[None].expand(3, -1).contiguous()
        _assert_exact(quad.guided_inverse_cdf(u, table, guide), u, table)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
def test_compiled_search_equals_the_eager_search_and_the_exact_inverse(dtype, shared) -> None:
    # Draws at every cell edge and one float either side (where a cell is decided), in rows
    # with empty cells and tails of tiny mass (buckets crowded with edges), and random draws;
    # uniforms shared across q (u of shape (S, P)) or one per density (S, Q, P).
    q, p, cells = 6, 4, 200
    table = _rough_table(q * p, cells, seed=7, dtype=dtype, shape=(q, p))
    log_tail = _rough_log_density(1, cells, seed=8, dtype=dtype)[0]
    log_tail[: cells // 2] -= 80.0  # half the cells hold about e^-80 of the mass
    _, weights = quad.nodes_and_weights(cells, -1.5, 1.5, dtype=dtype)
    tail = quad.build_cdf(log_tail, weights.log(), quad.cell_edges(weights, -1.5))
    cdf = table.cdf.clone()
    cdf[0, 0] = tail.cdf  # the first density of the table: the crowded one
    slope = table.slope.clone()
    slope[0, 0] = tail.slope
    table = quad.CDFTable(cdf, table.edges, slope)
    edges = cdf[0, :2].reshape(-1)  # two densities' edges, then random draws
    near = torch.cat(
        [edges, torch.nextafter(edges, torch.ones_like(edges)), edges.nextafter(-edges)]
    )
    near = near.clamp(0.0, 1.0 - torch.finfo(dtype).eps / 2)
    g = torch.Generator().manual_seed(3)
    width = (p,) if shared else (q, p)
    u = torch.rand(5000, *width, generator=g, dtype=dtype)
    u[: len(near)] = near.view(-1, *[1] * len(width))
    on, off = _both_paths(lambda: quad.inverse_cdf_draws(u, table))
    assert on.shape == off.shape == (5000, q, p) and on.is_contiguous()
    torch.testing.assert_close(on, off, rtol=4 * torch.finfo(dtype).eps, atol=1e-6)
    u_rows = (u[:, None] if shared else u).expand(-1, q, p).permute(1, 2, 0)
    _assert_exact(on.permute(1, 2, 0), u_rows, table)


def test_guide_grid_buckets_hold_one_grid_point_at_most() -> None:
    # The kernels take one step from a draw's bucket to its interval: that needs at most one
    # grid point per bucket, for every grid size and dtype.
    from kaem.quadrature import _kernels

    for dtype in (torch.float32, torch.float64):
        for m in [*range(1, 400), 1024, 4096]:
            grid = quad.guide_points(m, dtype=dtype).numpy()
            start = _kernels.buckets(grid, m)
            assert start[0] == 0 and start[-1] <= m - 1
    crowded = quad.guide_points(8, dtype=torch.float64).numpy()
    crowded[3] = crowded[4] - 1e-9  # two points in one bucket: the kernels would go wrong
    with pytest.raises(ValueError, match="two grid points"):
        _kernels.buckets(crowded, 8)


@pytest.mark.parametrize("sampling", ["table", "search"])
@pytest.mark.parametrize("name", ["nist", "svhn"])
def test_priors_sample_the_same_with_and_without_kernels(name, sampling) -> None:
    # The univariate prior (uniforms shared across q, and independent) and the mixture: the
    # same uniforms give the same samples on both paths, to float rounding.
    model = preset(name)["model"]
    if name == "nist":
        model["prior"]["n_nodes"] = 60  # a smaller table; the same code
    prior = build_model(model).prior
    priors = [prior]
    if hasattr(prior, "shared_uniforms"):
        independent = build_model(model).prior
        independent.shared_uniforms = False
        priors.append(independent)
    for pr in priors:
        pr.sampling = sampling
        pr._uniform = lambda shape, g: torch.rand(shape, generator=torch.Generator().manual_seed(9))
        on, off = _both_paths(lambda pr=pr: pr.sample(500))
        torch.testing.assert_close(on, off, rtol=1e-6, atol=1e-6)
        assert on.shape == off.shape == (500, *pr.event_shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_uniforms_are_uniform_independent_and_reproducible(dtype) -> None:
    n = 1_000_000
    u = native.uniform_(torch.empty(n, dtype=dtype), torch.Generator().manual_seed(0))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    se = 1 / math.sqrt(n)
    assert abs(float(u.mean()) - 0.5) < 5 * se * math.sqrt(1 / 12)
    assert abs(float(u.var()) * 12 - 1) < 5 * se * math.sqrt(4 / 5)  # var of 12 u^2-ish
    x = u.double() - 0.5
    for lag in (1, 2, 81):  # neighbours in the stream: the coordinates of one draw
        assert abs(float((x[:-lag] * x[lag:]).mean()) * 12) < 5 * se
    counts = torch.histc(u.double(), bins=100, min=0, max=1).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    # The generator's state decides the stream and moves on; the thread count does not.
    g = torch.Generator().manual_seed(0)
    first = native.uniform_(torch.empty(4, 1000, dtype=dtype), g)
    assert not torch.equal(first, native.uniform_(torch.empty(4, 1000, dtype=dtype), g))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = native.uniform_(torch.empty(4, 1000, dtype=dtype), torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, again)
    assert torch.equal(first.view(-1), u[:4000])
    # Every bit of the mantissa is random: float64 values are not float32 ones.
    bits = 24 if dtype == torch.float32 else 53
    scaled = u.double() * 2.0**bits
    assert torch.equal(scaled, scaled.floor())
    assert bool((scaled % 2 == 1).any()) and (
        dtype == torch.float32 or u.float().double().ne(u).any()
    )


def _splitmix64(seed: int, count: int) -> list[int]:
    """SplitMix64 written from its definition with Python integers: the reference stream."""
    mask, out, state = 2**64 - 1, [], seed
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_parallel_uniforms_are_splitmix64_of_a_seed_from_the_generator() -> None:
    g = torch.Generator().manual_seed(5)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=g))
    expected = _splitmix64(seed, 1000)
    for dtype, bits in ((torch.float32, 24), (torch.float64, 53)):
        u = native.uniform_(torch.empty(1000, dtype=dtype), torch.Generator().manual_seed(5))
        top = [z >> (64 - bits) for z in expected]
        assert (u.double() * 2.0**bits).long().tolist() == top


def test_parallel_uniforms_refuse_what_they_cannot_fill() -> None:
    for bad in (torch.empty(3, 4).T, torch.empty(3, dtype=torch.int64), torch.empty(3).half()):
        with pytest.raises(ValueError, match="contiguous CPU float32 or float64"):
            native.uniform_(bad)


def test_kernels_take_cpu_floats_without_gradient_only() -> None:
    x = torch.zeros(3)
    assert native.usable(x, x.double().float())
    assert not native.usable(x.double(), x)  # mixed dtypes
    assert not native.usable(x.half())
    assert not native.usable(torch.zeros(3, dtype=torch.int64))
    assert not native.usable(torch.zeros(3, requires_grad=True))
    assert not native.usable(torch.zeros(3, device="meta"))


def test_kernels_turned_off(eager) -> None:
    assert not native.enabled() and not native.usable(torch.zeros(3))
    assert native.set_enabled(True) is False and native.enabled()
    native.set_enabled(False)
    code = "from kaem.quadrature import native; print(native.enabled())"
    env = {**os.environ, "KAEM_NATIVE": "off"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr
