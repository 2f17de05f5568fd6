"""ULA (eq. 11) and MALA: moments on Gaussians, ULA's closed-form bias, adaptation, errors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kaem.samplers import (
    LangevinState,
    NonFiniteError,
    langevin_init,
    mala,
    mala_step,
    nonfinite_check,
    ula,
    ula_step,
)

N_CHAINS = 20_000

# Anisotropic, correlated 2-D Gaussian target.
MEAN_2D = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV_2D = torch.tensor([[4.0, 1.2], [1.2, 0.5]], dtype=torch.float64)
PREC_2D = torch.linalg.inv(COV_2D)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_1d(mean: float, std: float):
    def log_density_fn(z):
        return -0.5 * ((z[:, 0] - mean) / std) ** 2

    return log_density_fn


def _gaussian_2d(z):
    d = z - MEAN_2D
    return -0.5 * ((d @ PREC_2D) * d).sum(-1)


def _ula_stationary_var(var: float, step: float) -> float:
    """ULA on N(m, s^2): z' - m = (1 - eta/s^2)(z - m) + sqrt(2 eta) xi has stationary variance
    2 eta / (1 - (1 - eta/s^2)^2) = s^2 / (1 - eta / (2 s^2))."""
    return var / (1 - step / (2 * var))


def _assert_moments_1d(z, mean, var, n_se=5.0):
    n = z.shape[0]
    z = z[:, 0].double()
    assert abs(z.mean().item() - mean) < n_se * math.sqrt(var / n), z.mean()
    # Var of the sample variance of a Gaussian: 2 s^4 / (n - 1).
    assert abs(z.var().item() - var) < n_se * var * math.sqrt(2 / (n - 1)), z.var()


def _assert_moments_2d(z, mean, cov, n_se=5.0):
    n = z.shape[0]
    z = z.double()
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((z.mean(0) - mean).abs() < n_se * se_mean).all(), z.mean(0)
    # Var of a sample covariance entry of a Gaussian: (S_ii S_jj + S_ij^2) / n.
    diag = torch.diagonal(cov)
    se_cov = torch.sqrt((diag[:, None] * diag[None, :] + cov**2) / n)
    sample_cov = torch.cov(z.T)
    assert ((sample_cov - cov).abs() < n_se * se_cov).all(), sample_cov


def test_ula_recovers_gaussian_1d_with_closed_form_bias():
    step = 0.2
    z, info = ula(
        _gaussian_1d(1.0, 2.0),
        torch.zeros(N_CHAINS, 1),
        step_size=step,
        n_steps=300,
        generator=_gen(1),
    )
    # ULA's mean is exact on a Gaussian; its variance is inflated by 1 / (1 - eta / (2 s^2)).
    _assert_moments_1d(z, 1.0, _ula_stationary_var(4.0, step))
    assert not z.requires_grad
    assert info.log_density.shape == (N_CHAINS,)
    torch.testing.assert_close(info.log_density, _gaussian_1d(1.0, 2.0)(z))
    assert info.grad_norm.shape == (300,) and info.n_nonfinite == 0
    # Chains start at 0 where |grad| = |0 - 1| / 4; at stationarity E|z - 1| / 4 is
    # sd sqrt(2/pi) / 4.
    assert info.grad_norm[0].item() == pytest.approx(0.25)
    stationary = math.sqrt(_ula_stationary_var(4.0, step) * 2 / math.pi) / 4
    assert info.grad_norm[-1].item() == pytest.approx(stationary, rel=0.02)


def test_ula_large_step_bias_matches_closed_form_and_mala_is_exact():
    # eta = 1 on N(0, 1): ULA's stationary variance is 1 / (1 - 1/2) = 2, twice the target.
    target = _gaussian_1d(0.0, 1.0)
    z0 = torch.zeros(N_CHAINS, 1)
    z_ula, _ = ula(target, z0, step_size=1.0, n_steps=100, generator=_gen(2))
    _assert_moments_1d(z_ula, 0.0, _ula_stationary_var(1.0, 1.0))
    z_mala, info = mala(target, z0, step_size=1.0, n_steps=100, generator=_gen(3))
    _assert_moments_1d(z_mala, 0.0, 1.0)
    assert 0.5 < info.acceptance_rate.mean().item() < 0.95
    torch.testing.assert_close(info.step_size, torch.ones(N_CHAINS))


def test_ula_anisotropic_2d_matches_closed_form():
    step = 0.1
    z, _ = ula(
        _gaussian_2d,
        torch.zeros(N_CHAINS, 2, dtype=torch.float64),
        step_size=step,
        n_steps=300,
        generator=_gen(4),
    )
    # z' = (I - eta P) z + ... has stationary covariance (P - eta/2 P^2)^{-1} = S (I - eta/2 P)^-1.
    ula_cov = torch.linalg.inv(PREC_2D - step / 2 * PREC_2D @ PREC_2D)
    _assert_moments_2d(z, MEAN_2D, ula_cov)
    # The bias is real at this step size: the exact covariance is rejected.
    with pytest.raises(AssertionError):
        _assert_moments_2d(z, MEAN_2D, COV_2D)


def test_mala_recovers_anisotropic_2d_exactly():
    z, info = mala(
        _gaussian_2d,
        torch.zeros(N_CHAINS, 2, dtype=torch.float64),
        step_size=0.1,
        n_steps=100,
        n_warmup=100,
        generator=_gen(5),
    )
    _assert_moments_2d(z, MEAN_2D, COV_2D)
    assert abs(info.acceptance_rate.mean().item() - 0.574) < 0.03


@pytest.mark.parametrize("target_accept", [0.574, 0.8])
def test_mala_adapts_to_target_acceptance(target_accept):
    z, info = mala(
        _gaussian_1d(1.0, 2.0),
        torch.zeros(4_000, 1),
        step_size=0.01,
        n_steps=200,
        n_warmup=150,
        target_accept=target_accept,
        generator=_gen(6),
    )
    assert abs(info.acceptance_rate.mean().item() - target_accept) < 0.03
    assert info.step_size.shape == (4_000,)
    # A higher target needs a smaller step; the step grew from its tiny start either way.
    assert (info.step_size > 0.1).all()
    _assert_moments_1d(z, 1.0, 4.0)


def test_mala_step_size_scales_with_target_width():
    # Per-chain adaptation: chains whose targets are 10x wider get about 100x larger steps.
    std = torch.cat([torch.ones(500), torch.full((500,), 10.0)])

    def log_density_fn(z):
        return -0.5 * (z[:, 0] / std) ** 2

    _, info = mala(
        log_density_fn,
        torch.zeros(1_000, 1),
        step_size=0.5,
        n_steps=10,
        n_warmup=300,
        generator=_gen(7),
    )
    ratio = info.step_size[500:].median() / info.step_size[:500].median()
    assert 50 < ratio.item() < 200


def test_per_chain_step_sizes_and_event_shape():
    # Half the chains step with eta = 0.2, half with eta = 1.0, on N(0, I) with event (2, 3).
    n = 10_000
    step = torch.cat([torch.full((n // 2,), 0.2), torch.full((n // 2,), 1.0)])

    def log_density_fn(z):
        return -0.5 * (z**2).sum(dim=(1, 2))

    z, _ = ula(log_density_fn, torch.zeros(n, 2, 3), step_size=step, n_steps=100, generator=_gen(8))
    assert z.shape == (n, 2, 3)
    for half, eta in ((z[: n // 2], 0.2), (z[n // 2 :], 1.0)):
        _assert_moments_1d(half.reshape(-1, 1), 0.0, _ula_stationary_var(1.0, eta))


def test_step_functions_compose():
    target = _gaussian_1d(1.0, 2.0)
    state = langevin_init(target, torch.zeros(N_CHAINS, 1))
    assert isinstance(state, LangevinState)
    torch.testing.assert_close(state.grad[:, 0], torch.full((N_CHAINS,), 0.25))
    g = _gen(9)
    for _ in range(150):
        state, ula_info = ula_step(target, state, step_size=0.2, generator=g)
    assert ula_info.nonfinite.shape == (N_CHAINS,) and not ula_info.nonfinite.any()
    for _ in range(150):
        state, step_info = mala_step(target, state, step_size=0.2, generator=g)
    assert step_info.accepted.dtype == torch.bool and step_info.acceptance_prob.shape == (N_CHAINS,)
    _assert_moments_1d(state.position, 1.0, 4.0)


def test_mala_acceptance_probability_closed_form():
    # From z = 0 on N(0, 1) with eta = 1 the proposal is z' = sqrt(2) xi. The reverse move
    # from z' has mean z' - z' = 0, so log q(0 | z') = 0 and log q(z' | 0) = -z'^2 / 4 (up to
    # the same constant), and p(z') / p(0) = exp(-z'^2 / 2): alpha = exp(-z'^2 / 4).
    # Dropping the q terms would give exp(-z'^2 / 2) instead.
    n = 20_000
    target = _gaussian_1d(0.0, 1.0)
    state = langevin_init(target, torch.zeros(n, 1, dtype=torch.float64))
    new, info = mala_step(target, state, step_size=1.0, generator=_gen(10))
    accepted = info.accepted
    expected = torch.exp(-(new.position[accepted, 0] ** 2) / 4)
    torch.testing.assert_close(info.acceptance_prob[accepted], expected)
    # Over all proposals, E[exp(-z'^2 / 4)] with z' ~ N(0, 2) is 1 / sqrt(2).
    rate = accepted.double().mean().item()
    assert abs(rate - 1 / math.sqrt(2)) < 5 * math.sqrt(0.5 * (1 - 0.5) / n)


def test_no_parameter_gradients_and_detached_outputs():
    mu = torch.nn.Parameter(torch.tensor([0.5]))

    def log_density_fn(z):
        return -0.5 * ((z - mu) ** 2).sum(-1)

    z0 = torch.zeros(64, 1)
    with torch.no_grad():  # samplers must work inside no_grad blocks too
        z_ula, info_ula = ula(log_density_fn, z0, step_size=0.1, n_steps=5, generator=_gen(11))
    z_mala, info_mala = mala(
        log_density_fn, z0, step_size=0.1, n_steps=5, n_warmup=3, generator=_gen(12)
    )
    assert mu.grad is None
    for t in (z_ula, z_mala, info_ula.log_density, info_mala.log_density, info_mala.step_size):
        assert not t.requires_grad and t.grad_fn is None


def test_reproducible_with_generator():
    target = _gaussian_1d(0.0, 1.0)
    z0 = torch.zeros(10, 1)
    a, _ = mala(target, z0, step_size=0.3, n_steps=5, n_warmup=5, generator=_gen(13))
    b, _ = mala(target, z0, step_size=0.3, n_steps=5, n_warmup=5, generator=_gen(13))
    c, _ = mala(target, z0, step_size=0.3, n_steps=5, n_warmup=5, generator=_gen(14))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _nan_on_call(call: int, chains: list[int]):
    """Standard normal log density that returns NaN for `chains` from the `call`-th call on."""
    calls = {"n": 0}

    def log_density_fn(z):
        calls["n"] += 1
        out = -0.5 * (z**2).sum(-1)
        if calls["n"] >= call:
            mask = torch.zeros(len(z), dtype=torch.bool)
            mask[chains] = True
            out = torch.where(mask, torch.nan, out)
        return out

    return log_density_fn


@pytest.mark.parametrize("sampler", [ula, mala])
def test_a_non_finite_run_returns_a_check_naming_step_and_chains(sampler):
    # Call 1 evaluates the start (step 0); call 4 evaluates the position after step 3. The
    # kernel never raises: its record fails the check, whose error names step and chains.
    _, info = sampler(
        _nan_on_call(4, [2, 5]), torch.zeros(8, 1), step_size=0.1, n_steps=10, generator=_gen(15)
    )
    check = nonfinite_check(info.first_nonfinite)
    assert bool(check.failed)
    with pytest.raises(NonFiniteError, match=r"step 3 .*chain\(s\) \[2, 5\]") as excinfo:
        check.raise_if_failed()
    err = excinfo.value
    assert isinstance(err, FloatingPointError)
    assert err.step == 3 and err.chains == [2, 5]
    _, info = sampler(
        _nan_on_call(1, [0]), torch.zeros(8, 1), step_size=0.1, n_steps=10, generator=_gen(15)
    )
    with pytest.raises(NonFiniteError, match="step 0"):
        nonfinite_check(info.first_nonfinite).raise_if_failed()
    _, info = sampler(
        _nan_on_call(99, [0]), torch.zeros(8, 1), step_size=0.1, n_steps=10, generator=_gen(15)
    )
    assert not bool(nonfinite_check(info.first_nonfinite).failed)


def test_non_finite_values_are_counted():
    z, info = ula(
        _nan_on_call(4, [2]),
        torch.zeros(8, 1),
        step_size=0.1,
        n_steps=5,
        generator=_gen(16),
    )
    # Chain 2 is NaN at evaluations 4, 5, 6 (steps 3, 4, 5).
    assert info.n_nonfinite == 3
    # MALA rejects the non-finite proposals: chain 2 stays finite, the others move on.
    z, info = mala(
        _nan_on_call(4, [2]),
        torch.zeros(8, 1),
        step_size=0.1,
        n_steps=5,
        generator=_gen(16),
    )
    assert torch.isfinite(z).all() and info.n_nonfinite == 3
    assert info.acceptance_rate[2].item() <= 2 / 5 + 1e-6


def test_input_validation():
    target = _gaussian_1d(0.0, 1.0)
    z0 = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="step_size"):
        ula(target, z0, step_size=-0.1, n_steps=1, generator=_gen())
    with pytest.raises(ValueError, match=r"step_size of shape \(3,\)"):
        ula(target, z0, step_size=torch.ones(3), n_steps=1, generator=_gen())
    with pytest.raises(ValueError, match="n_steps"):
        ula(target, z0, step_size=0.1, n_steps=-1, generator=_gen())
    with pytest.raises(ValueError, match="target_accept"):
        mala(target, z0, step_size=0.1, n_steps=1, target_accept=1.2, generator=_gen())
    with pytest.raises(ValueError, match=r"must return shape \(4,\)"):
        ula(lambda z: z, z0, step_size=0.1, n_steps=1, generator=_gen())


# -- chains on a bounded support -----------------------------------------------------------
BOX = (-1.5, 1.5)  # the default domain of the Gaussian reference prior


def _tilted(z):
    """A truncated Gaussian tilted toward the right end: much of its mass sits on the edge."""
    return -0.5 * z[:, 0] ** 2 + 1.5 * z[:, 0]


def _box_cdf(z: torch.Tensor) -> torch.Tensor:
    """CDF of ``exp(_tilted)`` on BOX by trapezium quadrature on a fine grid."""
    grid = torch.linspace(*BOX, 200_001, dtype=torch.float64)
    dens = torch.exp(-0.5 * grid**2 + 1.5 * grid)
    steps = (dens[1:] + dens[:-1]) / 2 * grid.diff()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
    cdf = cdf / cdf[-1]
    return torch.from_numpy(np.interp(z.numpy(), grid.numpy(), cdf.numpy()))


def _ks_pvalue(z: torch.Tensor) -> float:
    return stats.kstest(z.double().numpy(), lambda s: _box_cdf(torch.as_tensor(s)).numpy()).pvalue


def test_reflect_folds_into_the_box_and_is_periodic():
    from kaem.samplers import reflect

    x = torch.tensor([-1.5, 1.5, 0.3, 1.7, -1.9, 4.6, -7.8, 1.5 + 6.0], dtype=torch.float64)
    expected = torch.tensor([-1.5, 1.5, 0.3, 1.3, -1.1, -1.4, -1.2, 1.5], dtype=torch.float64)
    torch.testing.assert_close(reflect(x, *BOX), expected)
    shifted = reflect(x + 2 * (BOX[1] - BOX[0]), *BOX)
    torch.testing.assert_close(shifted, expected)
    torch.testing.assert_close(reflect(2 * BOX[0] - x, *BOX), expected)  # mirror image


@pytest.mark.parametrize("eta", [0.1, 9 / 16])  # noise std 0.45, and at the limit 1.06
@pytest.mark.parametrize("mean", [0.0, 1.4, -1.6, 4.0])
def test_folded_proposal_density_integrates_to_one(mean, eta):
    from kaem.samplers.base import log_proposal

    step = torch.tensor(eta, dtype=torch.float64)
    y = torch.linspace(*BOX, 30_001, dtype=torch.float64)[:, None]
    log_q = log_proposal(y, torch.full_like(y, mean), step, BOX, batch_dims=1)
    density = torch.exp(log_q) / math.sqrt(4 * math.pi * float(step))  # the dropped constant
    mass = float(torch.trapezoid(density, y[:, 0]))
    assert mass == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sampler", ["ula", "mala"])
def test_langevin_on_a_box_samples_the_truncated_density(sampler):
    z0 = (torch.rand(4000, 1, generator=_gen(0), dtype=torch.float64) - 0.5) * 3.0
    if sampler == "ula":
        z, _ = ula(_tilted, z0, step_size=0.002, n_steps=1500, generator=_gen(1), bounds=BOX)
    else:
        z, info = mala(
            _tilted, z0, step_size=0.3, n_steps=300, n_warmup=50, generator=_gen(1), bounds=BOX
        )
        assert float(info.step_size.max()) <= 9 / 16
    assert float(z.min()) >= BOX[0] and float(z.max()) <= BOX[1]
    assert _ks_pvalue(z[:, 0]) > 1e-4
    # The test has power: the untruncated target N(1.5, 1) is rejected.
    assert stats.kstest(z[:, 0].numpy(), stats.norm(1.5, 1).cdf).pvalue < 1e-6


def test_reflected_proposals_follow_the_folded_density_mala_uses():
    # MALA on a box is exact only if its acceptance ratio uses the density of the proposal it
    # actually makes: the Gaussian reflected at both ends, i.e. folded over its mirror images.
    from kaem.samplers.base import langevin_proposal, log_proposal

    n, eta, mean = 200_000, 0.3, 1.3  # noise std 0.77 from a mean near the right end
    start = torch.full((n, 1), mean, dtype=torch.float64)
    step = torch.tensor(eta, dtype=torch.float64)
    y, _ = langevin_proposal(start, torch.zeros_like(start), step, _gen(3), BOX)
    grid = torch.linspace(*BOX, 20_001, dtype=torch.float64)[:, None]

    def cdf_of(log_density):
        dens = torch.exp(log_density)
        steps = (dens[1:] + dens[:-1]) / 2 * grid[:, 0].diff()
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
        return lambda s: np.interp(s, grid[:, 0].numpy(), (cdf / cdf[-1]).numpy())

    folded = log_proposal(grid, torch.full_like(grid, mean), step, BOX, batch_dims=1)
    assert stats.kstest(y[:, 0].numpy(), cdf_of(folded)).pvalue > 1e-4
    plain = log_proposal(grid, torch.full_like(grid, mean), step, None, 1)  # truncated only
    assert stats.kstest(y[:, 0].numpy(), cdf_of(plain)).pvalue < 1e-6


def test_unbounded_ula_leaves_the_box():
    z0 = (torch.rand(4000, 1, generator=_gen(0), dtype=torch.float64) - 0.5) * 3.0
    z, _ = ula(_tilted, z0, step_size=0.002, n_steps=1500, generator=_gen(1))
    assert float((z.abs() > 1.5).double().mean()) > 0.2


def test_mala_step_beyond_the_folding_limit_is_refused():
    z0 = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"at most \(high - low\)\^2 / 16"):
        mala(_tilted, z0, step_size=1.0, n_steps=1, generator=_gen(0), bounds=BOX)
    with pytest.raises(ValueError, match="bounds must be finite"):
        ula(_tilted, z0, step_size=0.1, n_steps=1, generator=_gen(0), bounds=(1.0, 1.0))


@pytest.mark.parametrize("sampler", [ula, mala])
def test_first_nonfinite_step_recorded_per_chain(sampler):
    # Chains 1 and 6 fail from the 3rd evaluation (step 2) on; nothing is raised.
    _, info = sampler(
        _nan_on_call(3, [1, 6]),
        torch.zeros(8, 1),
        step_size=0.1,
        n_steps=6,
        generator=_gen(17),
    )
    expected = torch.full((8,), -1)
    expected[[1, 6]] = 2
    assert torch.equal(info.first_nonfinite, expected)
    assert info.n_nonfinite == 2 * 5  # two chains, evaluations 3 to 7
