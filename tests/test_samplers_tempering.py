"""Temperature ladders (eqs. 22, 40), replica swaps (eq. 25) and tempered ULA (eqs. 11, 12).

The test model is linear-Gaussian: prior N(0, 1) and likelihood N(x_b; z, sigma^2), so every
power posterior p_t(z | x_b) ∝ N(x_b; z, sigma^2)^t N(z; 0, 1) is Gaussian with precision
1 + t / sigma^2 and mean (t x_b / sigma^2) / (1 + t / sigma^2).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from kaem.samplers import (
    NonFiniteError,
    cosine_exponent_schedule,
    nonfinite_check,
    power_temperatures,
    replica_swap,
    tempered,
    tempered_mala,
    tempered_ula,
)
from kaem.samplers.langevin import ula_kernel

SIGMA = 0.5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _log_prior(z):
    return -0.5 * z.reshape(len(z), -1).pow(2).sum(-1)


def _log_lik_fn(x):
    """log N(x_b; z, sigma^2) up to a constant, for z of shape (K, B, 1) -> (K, B)."""

    def log_lik(z):
        return -0.5 * (x - z[..., 0]) ** 2 / SIGMA**2

    return log_lik


def _power_posterior(x, temperatures):
    """Means (K, B) and standard deviations (K, 1) of p_t(z | x_b)."""
    precision = 1 + temperatures[:, None] / SIGMA**2
    return (temperatures[:, None] * x / SIGMA**2) / precision, precision.rsqrt()


def _population(n_chains, temperatures, seed):
    g = _gen(seed)
    x = 1.5 * torch.randn(n_chains, generator=g, dtype=torch.float64)
    mean, std = _power_posterior(x, temperatures)
    z = mean + std * torch.randn(mean.shape, generator=g, dtype=torch.float64)
    return x, z


def test_power_temperatures():
    t = power_temperatures(4, 2.0)
    assert t.shape == (5,) and t.dtype == torch.float32
    assert t[0].item() == 0.0 and t[-1].item() == 1.0
    torch.testing.assert_close(t, torch.tensor([0.0, 1 / 16, 1 / 4, 9 / 16, 1.0]))
    for p in (0.3, 1.0, 4.0):
        assert (torch.diff(power_temperatures(10, p, dtype=torch.float64)) > 0).all()
    # p > 1 packs temperatures near the prior, p < 1 near the posterior.
    assert power_temperatures(10, 3.0)[1] < 0.1 < power_temperatures(10, 0.3)[1]
    assert power_temperatures(1, 5.0).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="n_temps must be an int >= 1, got 0"):
        power_temperatures(0, 1.0)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="exponent must be finite and > 0"):
            power_temperatures(3, bad)


def test_cosine_exponent_schedule():
    total = 300
    # No cycles: monotone from p_start at i = 0 to p_end at i = I (the paper: 2 -> 0.5).
    p = [cosine_exponent_schedule(i, total, 2.0, 0.5, 0) for i in range(total + 1)]
    assert p[0] == pytest.approx(2.0) and p[-1] == pytest.approx(0.5)
    assert (np.diff(p) <= 1e-12).all()
    assert p[total // 2] == pytest.approx(1.25)
    rising = [cosine_exponent_schedule(i, total, 0.5, 2.0, 0) for i in range(total + 1)]
    assert (np.diff(rising) >= -1e-12).all()
    # One cycle: p_end at I/3, back to p_start at 2I/3, p_end again at I.
    at = [cosine_exponent_schedule(i, total, 2.0, 0.5, 1) for i in (0, 100, 200, 300)]
    assert at == pytest.approx([2.0, 0.5, 2.0, 0.5])
    with pytest.raises(ValueError, match="step"):
        cosine_exponent_schedule(total + 1, total, 2.0, 0.5, 0)
    with pytest.raises(ValueError, match="n_cycles"):
        cosine_exponent_schedule(0, total, 2.0, 0.5, -1)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_exponent_schedule(0, 0, 2.0, 0.5, 0)


def test_swap_probability_is_the_metropolis_ratio_of_power_posteriors():
    temperatures = power_temperatures(3, 1.5, dtype=torch.float64)
    x, z = _population(500, temperatures, seed=1)
    z = z + 0.5 * torch.randn(z.shape, generator=_gen(2), dtype=torch.float64)  # off-target too
    log_lik = _log_lik_fn(x)(z[..., None])

    def log_p(t, zz):  # unnormalised log p_t(zz | x_b), prior included
        return t * _log_lik_fn(x)(zz[..., None]) - 0.5 * zz**2

    for seed in range(4):
        new_z, new_ll, info = replica_swap(z[..., None], log_lik, temperatures, _gen(seed))
        k = info.pair
        t_lo, t_hi = temperatures[k], temperatures[k + 1]
        log_ratio = (
            log_p(t_lo, z[k + 1]) + log_p(t_hi, z[k]) - log_p(t_lo, z[k]) - log_p(t_hi, z[k + 1])
        )
        torch.testing.assert_close(info.acceptance_prob, log_ratio.exp().clamp(max=1))
        acc = info.accepted
        assert 0 < acc.sum() < len(acc), "decisions must be per chain"
        # Accepted chains exchanged positions and log-likelihoods; the rest did not move.
        torch.testing.assert_close(new_z[k, acc, 0], z[k + 1, acc])
        torch.testing.assert_close(new_z[k + 1, acc, 0], z[k, acc])
        torch.testing.assert_close(new_z[k, ~acc, 0], z[k, ~acc])
        torch.testing.assert_close(new_ll[k], _log_lik_fn(x)(new_z)[k])
        others = [j for j in range(len(temperatures)) if j not in (k, k + 1)]
        torch.testing.assert_close(new_z[others, :, 0], z[others])


def test_swaps_leave_product_of_tempered_gaussians_invariant():
    n_chains = 4_000
    temperatures = power_temperatures(4, 2.0, dtype=torch.float64)
    x, z = _population(n_chains, temperatures, seed=3)
    mean, std = _power_posterior(x, temperatures)
    log_lik = _log_lik_fn(x)
    z = z[..., None]
    g = _gen(4)
    rates = []
    for _ in range(300):
        z, ll, info = replica_swap(z, log_lik(z), temperatures, g)
        rates.append(info.accepted.double().mean().item())
        torch.testing.assert_close(ll, log_lik(z))
    assert 0.1 < np.mean(rates) < 0.95, "swaps must actually happen for the test to mean anything"
    standardised = (z[..., 0] - mean) / std  # N(0, 1) at every temperature if invariant
    for k in range(len(temperatures)):
        assert stats.kstest(standardised[k].numpy(), "norm").pvalue > 1e-3, f"temperature {k}"


def test_tempered_ula_without_swaps_matches_ula_closed_form_per_temperature():
    # Per-temperature steps; ULA on N(m, v) has stationary variance v / (1 - eta / (2 v)).
    n_chains = 4_000
    temperatures = power_temperatures(3, 1.0, dtype=torch.float64)
    # eta * precision / 2 is 0.2 to 0.275: a 25-38% variance inflation, still stable (< 1).
    step = torch.tensor([0.4, 0.2, 0.15, 0.1], dtype=torch.float64)
    x, _ = _population(n_chains, temperatures, seed=5)
    mean, std = _power_posterior(x, temperatures)
    z0 = torch.zeros(4, n_chains, 1, dtype=torch.float64)
    z, info = tempered_ula(
        _log_prior,
        _log_lik_fn(x),
        z0,
        temperatures,
        step_size=step,
        n_steps=100,
        generator=_gen(6),
        swap_every=1_000,
    )
    assert z.shape == z0.shape and not z.requires_grad
    var = std[:, 0] ** 2
    ula_var = var / (1 - step / (2 * var))
    standardised = (z[..., 0] - mean) / ula_var.sqrt()[:, None]
    se_mean, se_var = 1 / math.sqrt(n_chains), math.sqrt(2 / (n_chains - 1))
    assert (standardised.mean(1).abs() < 5 * se_mean).all(), standardised.mean(1)
    assert ((standardised.var(1) - 1).abs() < 5 * se_var).all(), standardised.var(1)
    # The ULA bias is visible: the exact variances are rejected at these steps.
    assert ((ula_var / var - 1) > 10 * se_var).all()
    assert info.swap_attempts.sum() == 0 and torch.isnan(info.swap_acceptance_rate).all()
    torch.testing.assert_close(info.log_lik, _log_lik_fn(x)(z))
    torch.testing.assert_close(info.log_prior, _log_prior(z.flatten(0, 1)).reshape(4, n_chains))


def test_tempered_ula_with_swaps_targets_power_posteriors():
    n_chains = 3_000
    temperatures = power_temperatures(4, 2.0, dtype=torch.float64)
    x, _ = _population(n_chains, temperatures, seed=7)
    mean, std = _power_posterior(x, temperatures)
    z0 = torch.randn(5, n_chains, 1, generator=_gen(8), dtype=torch.float64)  # prior draws
    step = 0.01
    z, info = tempered_ula(
        _log_prior, _log_lik_fn(x), z0, temperatures, step_size=step, n_steps=400, generator=_gen(9)
    )
    standardised = (z[..., 0] - mean) / std
    # Small step: ULA's variance bias is at most 1 / (1 - 0.01 * 5 / 2) - 1 = 2.6%.
    assert (standardised.mean(1).abs() < 5 / math.sqrt(n_chains)).all(), standardised.mean(1)
    assert ((standardised.var(1) - 1).abs() < 0.026 + 5 * math.sqrt(2 / n_chains)).all()
    assert info.swap_attempts.sum() == 400 and (info.swap_attempts > 0).all()
    assert ((info.swap_acceptance_rate > 0.2) & (info.swap_acceptance_rate <= 1)).all()
    assert info.n_nonfinite == 0


def test_tempered_ula_names_nonfinite_chain():
    temperatures = power_temperatures(2, 1.0)
    x = torch.zeros(4)

    def log_lik(z):
        out = _log_lik_fn(x)(z)
        return torch.where(z[..., 0] > 1e6, torch.nan, out)

    z0 = torch.zeros(3, 4, 1)
    z0[2, 1] = 2e6
    _, info = tempered_ula(
        _log_prior, log_lik, z0, temperatures, step_size=0.1, n_steps=3, generator=_gen()
    )
    with pytest.raises(NonFiniteError, match=r"step 0 .*\(2, 1\)"):
        nonfinite_check(info.first_nonfinite).raise_if_failed()


def test_tempering_validation():
    t = power_temperatures(2, 1.0)
    z = torch.zeros(3, 4, 1)
    with pytest.raises(ValueError, match="temperatures must have shape"):
        replica_swap(z, torch.zeros(3, 4), t[:2], _gen())
    with pytest.raises(ValueError, match="log_lik must have shape"):
        replica_swap(z, torch.zeros(4, 3), t, _gen())
    with pytest.raises(ValueError, match="K >= 2"):
        replica_swap(z[:1], torch.zeros(1, 4), t[:1], _gen())
    with pytest.raises(ValueError, match=r"log_lik_fn must return shape \(3, 4\)"):
        tempered_ula(
            _log_prior,
            lambda z: z.sum(-1).flatten(),
            z,
            t,
            step_size=0.1,
            n_steps=1,
            generator=_gen(),
        )
    with pytest.raises(ValueError, match="swap_every"):
        tempered_ula(
            _log_prior,
            _log_lik_fn(torch.zeros(4)),
            z,
            t,
            step_size=0.1,
            n_steps=1,
            generator=_gen(),
            swap_every=0,
        )


def test_tempered_mala_is_exact_where_tempered_ula_is_biased():
    # At eta = 0.2 the t = 1 posterior (variance 0.2) gets ULA's variance doubled,
    # 1 / (1 - 0.2 / (2 * 0.2)) = 2; MALA's accept/reject removes that bias at every
    # temperature, with swaps on.
    n_chains = 3_000
    temperatures = power_temperatures(4, 2.0, dtype=torch.float64)
    x, _ = _population(n_chains, temperatures, seed=11)
    mean, std = _power_posterior(x, temperatures)
    z0 = torch.randn(5, n_chains, 1, generator=_gen(12), dtype=torch.float64)
    settings = {"step_size": 0.2, "n_steps": 300}
    z, info = tempered_mala(
        _log_prior, _log_lik_fn(x), z0, temperatures, generator=_gen(13), **settings
    )
    standardised = (z[..., 0] - mean) / std
    se_mean, se_var = 1 / math.sqrt(n_chains), math.sqrt(2 / (n_chains - 1))
    assert (standardised.mean(1).abs() < 5 * se_mean).all(), standardised.mean(1)
    assert ((standardised.var(1) - 1).abs() < 5 * se_var).all(), standardised.var(1)
    assert ((info.acceptance_rate > 0.3) & (info.acceptance_rate < 1)).all(), info.acceptance_rate
    assert (info.swap_attempts > 0).all() and info.n_nonfinite == 0
    z_ula, info_ula = tempered_ula(
        _log_prior, _log_lik_fn(x), z0, temperatures, generator=_gen(13), **settings
    )
    assert ((z_ula[-1, :, 0] - mean[-1]) / std[-1]).var() > 1 + 10 * se_var  # ULA: 1.4
    assert torch.isnan(info_ula.acceptance_rate).all()


def test_tempered_any_kernel_and_nonfinite_record_without_raising():
    temperatures = power_temperatures(2, 1.0)
    x = torch.zeros(4)

    def log_lik(z):
        out = _log_lik_fn(x)(z)
        return torch.where(z[..., 0] > 1e6, torch.nan, out)

    z0 = torch.zeros(3, 4, 1)
    z0[2, 1] = 2e6
    calls = []

    def kernel(evaluate, state, step, generator, bounds):  # a custom move: stay put
        calls.append(step.shape)
        return state, ula_kernel(evaluate, state, step, generator, bounds)[1]

    z, info = tempered(
        kernel,
        _log_prior,
        log_lik,
        z0,
        temperatures,
        step_size=0.1,
        n_steps=3,
        generator=_gen(),
        swap_every=10,
    )
    assert len(calls) == 3 and torch.equal(z, z0)
    expected = torch.full((3, 4), -1)
    expected[2, 1] = 0  # the start, and every step after (the count)
    assert torch.equal(info.first_nonfinite, expected) and info.n_nonfinite == 4
    with pytest.raises(ValueError, match="kernel must be 'ula', 'mala' or a callable, got 'hmc'"):
        tempered(
            "hmc", _log_prior, log_lik, z0, temperatures, step_size=0.1, n_steps=1, generator=_gen()
        )


def test_kernel_sees_each_chain_at_its_own_temperature_after_swaps():
    # A swap moves chains between temperatures: the log density and drift a kernel receives
    # must be recombined at the new temperature, t ll + log pi, not carried from the old one.
    n_chains = 200
    temperatures = power_temperatures(3, 1.0, dtype=torch.float64)
    x, _ = _population(n_chains, temperatures, seed=14)
    z0 = torch.randn(4, n_chains, 1, generator=_gen(15), dtype=torch.float64)
    t = temperatures[:, None]
    seen = []

    def checked(evaluate, state, step, generator, bounds):
        seen.append(
            torch.allclose(state.log_density, t * state.log_lik + state.log_prior)
            and torch.allclose(state.grad, t[..., None] * state.grad_lik + state.grad_prior)
        )
        return ula_kernel(evaluate, state, step, generator, bounds)

    _, info = tempered(
        checked,
        _log_prior,
        _log_lik_fn(x),
        z0,
        temperatures,
        step_size=0.05,
        n_steps=20,
        generator=_gen(16),
    )
    assert info.swap_acceptance_rate.nan_to_num().sum() > 0, "swaps must happen"
    assert len(seen) == 20 and all(seen)
