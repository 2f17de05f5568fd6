"""Posterior and power-posterior sampling for a KAEM (eqs. 10-12, 25).

The samplers of :mod:`kaem.samplers` know nothing of models: they take log-density callables.
This module builds those callables for a KAEM and a data batch, starts chains from exact
inverse-transform prior samples, keeps them on the prior's domain (reflection at its ends, so
they target the same model that inverse-transform sampling and importance sampling use), and
handles non-finite values as configured: ``raise`` returns, with the samples, a
:class:`~kaem.checks.Check` whose error names the step, temperature and chain (the caller
reads it when it decides: the training loop when it next reads the device), and
``halve_and_retry`` halves the step size and runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, TypeVar

import torch
from torch import Tensor

from kaem.checks import Check
from kaem.model import KAEM
from kaem.samplers import NonFiniteError, mala, nonfinite_error, tempered, ula

__all__ = [
    "Levels",
    "NonFinitePolicy",
    "PopulationSample",
    "PosteriorSample",
    "check_langevin_prior",
    "log_likelihood_fn",
    "sample_posterior",
    "sample_power_posteriors",
]

NonFinitePolicy = Literal["raise", "halve_and_retry"]
Result = TypeVar("Result")


def check_langevin_prior(model: KAEM, what: str = "a Langevin sampler") -> None:
    """Refuse a prior whose samples do not follow its ``log_prob``.

    A Langevin chain targets ``log_prob``; the univariate prior with ``shared_uniforms``
    samples comonotone coordinates (one ``u_p`` for every ``q``, eq. 13) whose joint law has no
    density, so chains started from its samples would target a different prior from the one
    that is sampled.

    Raises
    ------
    ValueError
        Naming the setting and the fix.
    """
    if not model.prior.samples_follow_log_prob:
        raise ValueError(
            f"{what} runs Langevin chains on the prior's log density, but this univariate "
            "prior draws one u_p shared across q (model.prior.shared_uniforms: true, the "
            "paper's eq. 13): its samples are comonotone and have no such density, so the "
            "chains would target another prior than the one sampled. Set "
            "model.prior.shared_uniforms: false (independent draws), or train by importance "
            "sampling"
        )


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
        Mean MALA acceptance rate, shape ``()`` (NaN for ULA).
    check
        Whether a chain met a non-finite value; its error names the step and the chains
        (:meth:`~kaem.checks.Check.raise_if_failed` reads it at once).
    """

    z: Tensor
    step_size: float
    retries: int
    acceptance: Tensor
    check: Check


def _failure(
    err: NonFiniteError, describe: Callable[[NonFiniteError], str], step_size: float, retries: int
) -> FloatingPointError:
    extra = f" after {retries} halvings of the step size" if retries else ""
    failure = FloatingPointError(
        f"{describe(err)} (step size {step_size:g}){extra}; lower "
        "train.langevin.step_size or set train.langevin.nonfinite: halve_and_retry"
    )
    failure.__cause__ = err
    return failure


def _retrying(
    run: Callable[[float], tuple[Result, Tensor]],
    step_size: float,
    policy: NonFinitePolicy,
    max_retries: int,
    describe: Callable[[NonFiniteError], str],
    quantity: str = "log density or gradient",
) -> tuple[Result, float, int, Check]:
    """``run(step_size)``, halving the step and running again while a chain is not finite.

    ``run`` returns its result and the record of its chains' first non-finite steps
    (:attr:`~kaem.samplers.NonFiniteRecord.first`). With ``raise`` it runs once and nothing
    waits for the device: the record becomes the returned check. Halving needs the verdict,
    so each run of ``halve_and_retry`` costs one synchronisation, and the last one raises.

    Returns
    -------
    result, step_size, retries, check
        The last run's result, its step size, the number of halvings and the check of its
        record.
    """
    if policy not in ("raise", "halve_and_retry"):
        raise ValueError(f"nonfinite policy must be 'raise' or 'halve_and_retry', got {policy!r}")
    retries = 0
    while True:
        result, first = run(step_size)
        check = Check(
            (first >= 0).any(),
            lambda first=first, eta=step_size, n=retries: _failure(
                nonfinite_error(first, quantity), describe, eta, n
            ),
        )
        if policy == "raise":
            return result, step_size, retries, check
        if not bool(check.failed):
            return result, step_size, retries, check
        if retries >= max_retries:
            raise check.error()
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

    Chains start from exact inverse-transform prior samples, one per data point, and are
    reflected at the ends of the prior's domain, so they never leave its support.

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
        ``raise``: a non-finite log density or gradient fails the returned ``check``, whose
        error names the step and chain (nothing waits for the device);
        ``halve_and_retry``: the whole short run is redone from the same start with half
        the step size, at most ``max_retries`` times (one synchronisation per run, to
        decide), and then raises.
    generator
        Randomness for the start and the Langevin noise.
    """
    check_langevin_prior(model, "posterior sampling")
    if sampler not in ("ula", "mala"):
        raise ValueError(f"sampler must be 'ula' or 'mala', got {sampler!r}")
    log_lik = log_likelihood_fn(model, x)
    prior = model.prior
    log_prior = prior.frozen_log_prob()

    def log_density(z: Tensor) -> Tensor:
        return log_prior(z) + log_lik(z[None])[0]

    z0 = prior.sample(x.shape[0], generator)
    state = generator.get_state() if generator is not None else None
    kw = {"n_steps": n_steps, "generator": generator, "bounds": prior.domain}

    def run(eta: float) -> tuple[tuple[Tensor, Tensor], Tensor]:
        if state is not None:  # a retry replays the same noise at the smaller step
            generator.set_state(state)
        if sampler == "mala":
            z, info = mala(log_density, z0, step_size=eta, **kw)
            return (z, info.acceptance_rate.mean()), info.first_nonfinite
        z, info = ula(log_density, z0, step_size=eta, grad_norm=False, **kw)
        return (z, torch.full((), torch.nan, dtype=z.dtype, device=z.device)), info.first_nonfinite

    def describe(err: NonFiniteError) -> str:
        return (
            f"posterior {sampler.upper()} produced a non-finite {err.quantity} at step "
            f"{err.step} in chain(s) {err.chains[:10]} (data points of the batch)"
        )

    (z, acceptance), eta, retries, check = _retrying(
        run, step_size, nonfinite, max_retries, describe
    )
    return PosteriorSample(z, eta, retries, acceptance, check)


class _TraceMoments:
    """Mean and unbiased variance of a stream of values per chain, shifted for accuracy.

    Log-likelihoods are large (hundreds of nats) and their spread small, so the sums are
    taken relative to the first value of each chain (no cancellation in float32).
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift = self.total = self.total_sq = None

    def add(self, values: Tensor) -> None:
        if self.shift is None:
            self.shift = values.detach().clone()
            self.total, self.total_sq = torch.zeros_like(values), torch.zeros_like(values)
        centred = values.detach() - self.shift
        self.total.add_(centred)
        self.total_sq.add_(centred.square())
        self.count += 1

    def moments(self) -> tuple[Tensor, Tensor]:
        """``(mean, variance)``; the variance is 0 for fewer than two values."""
        if self.shift is None:
            raise ValueError("no values were recorded (too few steps after burn-in)")
        mean = self.total / self.count
        if self.count < 2:
            return mean + self.shift, torch.zeros_like(mean)
        var = (self.total_sq - self.count * mean.square()) / (self.count - 1)
        return mean + self.shift, var.clamp_min(0.0)


class Levels(NamedTuple):
    """What a population holds at each of ``K`` temperatures (``S`` chains per data point,
    ``B`` data points).

    Attributes
    ----------
    z : Tensor, shape (K, S, B, *event)
    log_lik : Tensor, shape (K, S, B)
        ``log p(x_b | z)`` of ``z``.
    trace_mean, trace_var : Tensor, shape (K, B)
        Mean and unbiased variance of ``log p(x_b | z)`` along each chain, averaged over the
        ``S`` chains (see :class:`PopulationSample`).
    swap_rate : Tensor, shape (K - 1,)
        Acceptance rate of the swaps between levels ``k`` and ``k + 1``.
    acceptance : Tensor, shape (K,)
        MALA's acceptance rate at each level (NaN for ULA).
    """

    z: Tensor
    log_lik: Tensor
    trace_mean: Tensor
    trace_var: Tensor
    swap_rate: Tensor
    acceptance: Tensor


def _exact_prior_level(
    model: KAEM, x: Tensor, n_chains: int, draws: int, generator: torch.Generator | None
) -> Levels:
    """The ``t = 0`` level drawn exactly, as :class:`Levels` of one level without swaps.

    ``z`` and ``log_lik`` are ``S`` exact prior draws per data point; the trace moments use
    the same estimator as the chains': ``S`` groups of ``T = draws`` values, here independent
    exact draws (shared by the batch, so each costs one decode). No chain moves, so the
    acceptance is NaN.
    """
    batch = x.shape[0]
    with torch.no_grad():
        z = model.prior.sample(n_chains * batch, generator)
        ll = log_likelihood_fn(model, x)(z[None])[0].reshape(n_chains, batch)
        decoded = model.decode(model.prior.sample(n_chains * draws, generator))
        ll_draws = model.likelihood.pairwise_log_prob(x, decoded)  # (B, S T)
        trace = _TraceMoments()
        for group in ll_draws.reshape(batch, n_chains, draws).permute(2, 1, 0):
            trace.add(group)  # (S, B) per draw
        mean, var = (m.mean(0) for m in trace.moments())
    z = z.reshape(1, n_chains, batch, *z.shape[1:])
    nan = ll.new_full((1,), float("nan"))
    return Levels(z, ll[None], mean[None], var[None], ll.new_zeros(0), nan)


def _stack_levels(low: Levels, high: Levels) -> Levels:
    """The levels of ``low`` below those of ``high``, joined by a pair that never swapped."""
    nan = high.swap_rate.new_full((1,), float("nan"))
    swap_rate = torch.cat([low.swap_rate, nan, high.swap_rate])
    rest = (torch.cat([a, b]) for a, b in zip(low, high, strict=True))
    z, log_lik, mean, var, _, acceptance = rest
    return Levels(z, log_lik, mean, var, swap_rate, acceptance)


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
        ``E_t[log p(x_b | z)]`` and ``Var_t[...]`` per temperature, ``(K, B)``, for
        thermodynamic integration (eqs. 21, 55-56). One estimator at every temperature: the
        mean and the unbiased variance of ``T`` log-likelihoods per chain, averaged over the
        ``S`` chains, where the ``T`` values are the second half of the chain's trajectory at
        ``t > 0`` and ``T`` independent exact prior draws at ``t = 0``.
    swap_rate
        Acceptance rate of swaps per adjacent pair, ``(K - 1,)``; NaN for the pair
        ``(t_0 = 0, t_1)`` when ``t_0 = 0``, whose samples are exact prior draws, not a chain.
    step_size, retries
        As in :class:`PosteriorSample`.
    acceptance
        MALA's acceptance rate per temperature, ``(K,)``; NaN for ULA and for the exact
        ``t_0 = 0`` level.
    check
        Whether a chain met a non-finite value; its error names the step, the temperature
        and the data point.
    """

    z: Tensor
    temperatures: Tensor
    log_lik: Tensor
    trace_mean: Tensor
    trace_var: Tensor
    swap_rate: Tensor
    step_size: float
    retries: int
    acceptance: Tensor
    check: Check


def _population_runner(
    model: KAEM,
    log_lik: Callable[[Tensor], Tensor],
    z0: Tensor,
    chained: Tensor,
    generator: torch.Generator | None,
    *,
    n_chains: int,
    sampler: Literal["ula", "mala"],
    n_steps: int,
    swap_every: int,
    on_step: Callable[[], None] | None,
) -> Callable[[float], tuple[Levels, Tensor]]:
    """``run(eta)`` for :func:`_retrying`: the tempered chains from ``z0`` (``(K, S B,
    *event)``, ``S = n_chains``) at the temperatures ``chained`` (every run replays the same
    noise), as :class:`Levels` with the trace moments of the second half of each chain, and
    the record of non-finite chains (``(K, S B)``)."""
    state = generator.get_state() if generator is not None else None
    burn_in = n_steps // 2
    shape = (z0.shape[0], n_chains, z0.shape[1] // n_chains)  # (K, S, B)

    def run(eta: float) -> tuple[Levels, Tensor]:
        if state is not None:
            generator.set_state(state)
        trace = _TraceMoments()

        def accumulate(step: int, ll: Tensor) -> None:
            if step > burn_in:
                trace.add(ll)
            if on_step is not None:
                on_step()

        z, info = tempered(
            sampler,
            model.prior.frozen_log_prob(),
            log_lik,
            z0,
            chained,
            step_size=eta,
            generator=generator,
            callback=accumulate,
            bounds=model.prior.domain,
            n_steps=n_steps,
            swap_every=swap_every,
        )
        mean, var = (m.reshape(shape).mean(1) for m in trace.moments())
        levels = Levels(
            z.reshape(*shape, *z.shape[2:]),
            info.log_lik.reshape(shape),
            mean,
            var,
            info.swap_acceptance_rate,
            info.acceptance_rate,
        )
        return levels, info.first_nonfinite

    return run


def sample_power_posteriors(
    model: KAEM,
    x: Tensor,
    temperatures: Tensor,
    *,
    n_chains: int = 1,
    n_steps: int = 40,
    step_size: float = 0.005,
    swap_every: int = 1,
    sampler: Literal["ula", "mala"] = "ula",
    nonfinite: NonFinitePolicy = "raise",
    max_retries: int = 3,
    generator: torch.Generator | None = None,
    on_step: Callable[[], None] | None = None,
    exact_prior: bool | None = None,
) -> PopulationSample:
    """Population Langevin on ``p_t(z | x) ∝ p(x | z)^t pi(z)`` with replica swaps (eqs. 12, 25).

    All chains start from exact prior samples and advance as one batched tensor (ULA as in the
    paper, or MALA, exact at every temperature, with fixed steps); every
    ``swap_every`` steps one random adjacent pair of temperatures proposes swaps, decided per
    chain. At ``t_0 = 0`` the power posterior is the prior, so its samples are drawn exactly by
    the inverse transform rather than by a chain: a population of ``N_t + 1`` temperatures runs
    ``N_t`` Langevin chains per data point. Chains are reflected at the ends of the prior's
    domain.

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
    n_steps, step_size, swap_every, sampler, nonfinite, max_retries, generator
        As in :func:`sample_posterior`; a non-finite value is reported with its temperature.
    on_step
        Called after every step of the population (a progress bar's update); host-side only.
    exact_prior
        Whether ``temperatures[0]`` is exactly 0 (so that level is drawn exactly), as it is
        for :func:`~kaem.samplers.power_temperatures`; read from the tensor if not given, which
        costs a synchronisation when it lives on an accelerator.
    """
    check_langevin_prior(model, "power-posterior sampling")
    if sampler not in ("ula", "mala"):
        raise ValueError(f"sampler must be 'ula' or 'mala', got {sampler!r}")
    temperatures = torch.as_tensor(temperatures, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    if n_chains < 1:
        raise ValueError(f"n_chains must be at least 1, got {n_chains}")
    log_lik = log_likelihood_fn(model, x)
    # p_0 is the prior itself: its samples come exactly from the inverse transform, so only
    # the temperatures t > 0 need Langevin chains (and the population costs N_t chains, not
    # N_t + 1).
    if exact_prior is None:
        exact_prior = bool(temperatures[0] == 0)
    chained = temperatures[1:] if exact_prior else temperatures
    n_chained = chained.shape[0]
    z0 = model.prior.sample(n_chained * n_chains * batch, generator)
    z0 = z0.reshape(n_chained, n_chains * batch, *z0.shape[1:])
    run = _population_runner(
        model,
        log_lik,
        z0,
        chained,
        generator,
        n_chains=n_chains,
        sampler=sampler,
        n_steps=n_steps,
        swap_every=swap_every,
        on_step=on_step,
    )

    def describe(err: NonFiniteError) -> str:
        where = [(float(chained[k]), b % batch) for k, b in err.chains[:10]]
        return (
            f"power-posterior {sampler.upper()} produced a non-finite {err.quantity} at step "
            f"{err.step} in chain(s) (temperature, data point) {where}"
        )

    quantity = "log prior, log-likelihood or gradient"
    levels, eta, retries, check = _retrying(
        run, step_size, nonfinite, max_retries, describe, quantity
    )
    if exact_prior:
        draws = max(n_steps - n_steps // 2, 2)
        levels = _stack_levels(_exact_prior_level(model, x, n_chains, draws, generator), levels)
    z, ll, mean, var, swap_rate, acceptance = levels
    return PopulationSample(
        z, temperatures, ll, mean, var, swap_rate, eta, retries, acceptance, check
    )
