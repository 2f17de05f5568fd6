"""Posterior and power-posterior sampling for a KAEM (eqs. 10-12, 25).

The samplers of :mod:`kaem.samplers` know nothing of models: they take log-density callables.
This module builds those callables for a KAEM and a data batch, starts chains from exact
inverse-transform prior samples, and handles non-finite values as configured (raise with the
step, temperature and chain, or halve the step size and retry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from kaem.model import KAEM
from kaem.samplers import NonFiniteError, mala, tempered_ula, ula

__all__ = [
    "NonFinitePolicy",
    "PopulationSample",
    "PosteriorSample",
    "log_likelihood_fn",
    "sample_posterior",
    "sample_power_posteriors",
]

NonFinitePolicy = Literal["raise", "halve_and_retry"]


def log_likelihood_fn(model: KAEM, x: Tensor) -> Callable[[Tensor], Tensor]:
    """``z (K, B, *event) -> log p(x_b | z_kb)`` of shape ``(K, B)`` (eq. 8, no training noise).

    Chain ``(k, b)`` is scored against its own data point ``x_b``; ``B`` may be a multiple of
    the batch size (several chains per data point, laid out as ``(S, B)`` flattened), in which
    case chain ``j`` belongs to ``x[j % B]``.
    """
    n_data = x.shape[0]

    def fn(z: Tensor) -> Tensor:
        k, n = z.shape[:2]
        if n % n_data:
            raise ValueError(f"{n} chains per temperature is not a multiple of the batch {n_data}")
        x_hat = model.decode(z.flatten(0, 1)).reshape(k, n // n_data, n_data, *x.shape[1:])
        return model.likelihood.log_prob(x, x_hat).reshape(k, n)

    return fn


class PosteriorSample(NamedTuple):
    """Langevin samples of ``p(z | x_b)``, one chain per data point.

    Attributes
    ----------
    z
        Shape ``(B, *event)``, detached.
    step_size
        The step size that was finally used (smaller than asked if non-finite values forced
        retries).
    retries
        How many times the step size was halved.
    acceptance
        Mean MALA acceptance rate (NaN for ULA).
    """

    z: Tensor
    step_size: float
    retries: int
    acceptance: float


def _retrying(
    run: Callable[[float], tuple],
    step_size: float,
    policy: NonFinitePolicy,
    max_retries: int,
    describe: Callable[[NonFiniteError], str],
) -> tuple[tuple, float, int]:
    """``run(step_size)``, halving the step and running again on :class:`NonFiniteError`."""
    if policy not in ("raise", "halve_and_retry"):
        raise ValueError(f"nonfinite policy must be 'raise' or 'halve_and_retry', got {policy!r}")
    retries = 0
    while True:
        try:
            return run(step_size), step_size, retries
        except NonFiniteError as err:
            if policy == "raise" or retries >= max_retries:
                extra = f" after {retries} halvings of the step size" if retries else ""
                raise FloatingPointError(
                    f"{describe(err)} (step size {step_size:g}){extra}; lower "
                    "train.langevin.step_size or set train.langevin.nonfinite: halve_and_retry"
                ) from err
            step_size /= 2.0
            retries += 1


def sample_posterior(
    model: KAEM,
    x: Tensor,
    *,
    n_steps: int = 40,
    step_size: float = 0.005,
    sampler: Literal["ula", "mala"] = "ula",
    nonfinite: NonFinitePolicy = "raise",
    max_retries: int = 3,
    generator: torch.Generator | None = None,
) -> PosteriorSample:
    """Short-run Langevin samples of ``p(z | x_b) ∝ p(x_b | z) pi(z)`` (eqs. 10-11; App. F.1).

    Chains start from exact inverse-transform prior samples, one per data point.

    Parameters
    ----------
    model
        The KAEM.
    x
        Data batch, shape ``(B, C, H, W)``.
    n_steps, step_size
        Langevin iterations and step size (paper: 40 and 0.005).
    sampler
        ``ula`` (the paper) or ``mala`` (Metropolis-adjusted, the paper's future work).
    nonfinite
        ``raise``: a non-finite log density or gradient stops with an error naming the step
        and chain; ``halve_and_retry``: the whole short run is redone from the same start with
        half the step size, at most ``max_retries`` times.
    generator
        Randomness for the start and the Langevin noise.
    """
    log_lik = log_likelihood_fn(model, x)
    prior = model.prior

    def log_density(z: Tensor) -> Tensor:
        return prior.log_prob(z) + log_lik(z[None])[0]

    z0 = prior.sample(x.shape[0], generator)
    state = generator.get_state() if generator is not None else None

    def run(eta: float) -> tuple:
        if state is not None:  # a retry replays the same noise at the smaller step
            generator.set_state(state)
        if sampler == "mala":
            z, info = mala(log_density, z0, step_size=eta, n_steps=n_steps, generator=generator)
            return z, float(info.acceptance_rate.mean())
        z, _ = ula(log_density, z0, step_size=eta, n_steps=n_steps, generator=generator)
        return z, float("nan")

    def describe(err: NonFiniteError) -> str:
        return (
            f"posterior {sampler.upper()} produced a non-finite {err.quantity} at step "
            f"{err.step} in chain(s) {err.chains[:10]} (data points of the batch)"
        )

    if sampler not in ("ula", "mala"):
        raise ValueError(f"sampler must be 'ula' or 'mala', got {sampler!r}")
    (z, acceptance), eta, retries = _retrying(run, step_size, nonfinite, max_retries, describe)
    return PosteriorSample(z, eta, retries, acceptance)


class PopulationSample(NamedTuple):
    """Samples of every power posterior ``p_t(z | x_b)``.

    Attributes
    ----------
    z
        Shape ``(K, S, B, *event)``: ``K`` temperatures, ``S`` chains per data point and
        temperature, ``B`` data points. Detached.
    temperatures
        ``t_0 = 0 < ... < t_{K-1} = 1``, shape ``(K,)``.
    log_lik
        ``log p(x_b | z)`` of the final samples, ``(K, S, B)``.
    trace_mean, trace_var
        Mean and variance of each chain's log-likelihood over the second half of its
        trajectory, averaged over its ``S`` chains, ``(K, B)``: the per-temperature
        expectations thermodynamic integration needs (eqs. 21, 55-56).
    swap_rate
        Acceptance rate of swaps per adjacent pair, ``(K - 1,)``; NaN for the pair
        ``(t_0 = 0, t_1)`` when ``t_0 = 0``, whose samples are exact prior draws, not a chain.
    step_size, retries
        As in :class:`PosteriorSample`.
    """

    z: Tensor
    temperatures: Tensor
    log_lik: Tensor
    trace_mean: Tensor
    trace_var: Tensor
    swap_rate: Tensor
    step_size: float
    retries: int


def sample_power_posteriors(
    model: KAEM,
    x: Tensor,
    temperatures: Tensor,
    *,
    n_chains: int = 1,
    n_steps: int = 40,
    step_size: float = 0.005,
    swap_every: int = 1,
    nonfinite: NonFinitePolicy = "raise",
    max_retries: int = 3,
    generator: torch.Generator | None = None,
) -> PopulationSample:
    """Population ULA on ``p_t(z | x) ∝ p(x | z)^t pi(z)`` with replica swaps (eqs. 12, 25).

    All chains start from exact prior samples and advance as one batched tensor; every
    ``swap_every`` steps one random adjacent pair of temperatures proposes swaps, decided per
    chain. At ``t_0 = 0`` the power posterior is the prior, so its samples are drawn exactly by
    the inverse transform rather than by a chain: a population of ``N_t + 1`` temperatures runs
    ``N_t`` Langevin chains per data point.

    Parameters
    ----------
    model
        The KAEM.
    x
        Data batch, ``(B, C, H, W)``.
    temperatures
        ``(K,)`` from :func:`kaem.samplers.power_temperatures`.
    n_chains
        ``S``, chains per data point and temperature.
    n_steps, step_size, swap_every, nonfinite, max_retries, generator
        As in :func:`sample_posterior`; a non-finite value is reported with its temperature.
    """
    temperatures = torch.as_tensor(temperatures, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    if n_chains < 1:
        raise ValueError(f"n_chains must be at least 1, got {n_chains}")
    prior = model.prior
    log_lik = log_likelihood_fn(model, x)
    # p_0 is the prior itself: its samples come exactly from the inverse transform, so only
    # the temperatures t > 0 need Langevin chains (and the population costs N_t chains, not
    # N_t + 1).
    exact_prior = bool(temperatures[0] == 0)
    chained = temperatures[1:] if exact_prior else temperatures
    n_chained = chained.shape[0]
    z0 = prior.sample(n_chained * n_chains * batch, generator)
    z0 = z0.reshape(n_chained, n_chains * batch, *z0.shape[1:])
    state = generator.get_state() if generator is not None else None
    burn_in = n_steps // 2

    def run(eta: float) -> tuple:
        if state is not None:
            generator.set_state(state)
        total = torch.zeros(n_chained, n_chains * batch, dtype=x.dtype, device=x.device)
        total_sq = torch.zeros_like(total)
        count = [0]

        def accumulate(step: int, ll: Tensor) -> None:
            if step > burn_in:
                total.add_(ll)
                total_sq.add_(ll.square())
                count[0] += 1

        z, info = tempered_ula(
            prior.log_prob,
            log_lik,
            z0,
            chained,
            step_size=eta,
            n_steps=n_steps,
            generator=generator,
            swap_every=swap_every,
            callback=accumulate,
        )
        mean = total / max(count[0], 1)
        var = (total_sq / max(count[0], 1) - mean.square()).clamp_min(0.0)
        return z, info, mean, var

    def describe(err: NonFiniteError) -> str:
        where = [(float(chained[k]), b % batch) for k, b in err.chains[:10]]
        return (
            f"power-posterior ULA produced a non-finite {err.quantity} at step {err.step} in "
            f"chain(s) (temperature, data point) {where}"
        )

    (z, info, mean, var), eta, retries = _retrying(run, step_size, nonfinite, max_retries, describe)
    shape = (n_chained, n_chains, batch)
    z = z.reshape(*shape, *z.shape[2:])
    ll = info.log_lik.reshape(shape)
    mean, var = mean.reshape(shape).mean(1), var.reshape(shape).mean(1)
    swap_rate = info.swap_acceptance_rate
    if exact_prior:
        with torch.no_grad():
            z_prior = prior.sample(n_chains * batch, generator)
            ll_prior = log_lik(z_prior[None])[0].reshape(n_chains, batch)
            # E_0[ll] and Var_0[ll] for thermodynamic integration, from a shared set of draws.
            draws = model.decode(prior.sample(max(64, n_chains), generator))
            ll_draws = model.likelihood.pairwise_log_prob(x, draws)  # (B, M)
        z = torch.cat([z_prior.reshape(1, n_chains, batch, *z_prior.shape[1:]), z])
        ll = torch.cat([ll_prior[None], ll])
        mean = torch.cat([ll_draws.mean(1)[None], mean])
        var = torch.cat([ll_draws.var(1)[None], var])
        swap_rate = torch.cat([swap_rate.new_full((1,), float("nan")), swap_rate])
    return PopulationSample(z, temperatures, ll, mean, var, swap_rate, eta, retries)
