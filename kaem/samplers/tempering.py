"""Power posteriors, temperature schedules and replica-exchange moves (eqs. 12, 22, 25, 40).

The power posterior at temperature ``t`` is ``p_t(z | x) ∝ p(x | z)^t pi(z)`` (eq. 12): the
prior at ``t = 0`` and the posterior at ``t = 1``. A population holds ``B`` chains (one per
data point ``x_b``) at each of ``K`` temperatures; positions have shape ``(K, B, *event)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from kaem.samplers.langevin import (
    Bounds,
    NonFiniteError,
    _broadcast_step,
    _chain_indices,
    _check_bounds,
    _check_steps,
    _langevin_proposal,
    _nonfinite_chains,
)

__all__ = [
    "SwapInfo",
    "TemperingInfo",
    "cosine_exponent_schedule",
    "power_temperatures",
    "replica_swap",
    "tempered_ula",
]


class SwapInfo(NamedTuple):
    """Diagnostics of one :func:`replica_swap`.

    Attributes
    ----------
    pair : int
        ``k``: the swap was proposed between temperatures ``k`` and ``k + 1``.
    accepted : Tensor, shape (B,), bool
        Which chains swapped.
    acceptance_prob : Tensor, shape (B,)
        Per-chain acceptance probability (eq. 25).
    """

    pair: int
    accepted: Tensor
    acceptance_prob: Tensor


class TemperingInfo(NamedTuple):
    """Diagnostics of :func:`tempered_ula`.

    Attributes
    ----------
    swap_acceptance_rate : Tensor, shape (K - 1,)
        Fraction of chains that swapped, over the attempts at each adjacent pair ``(k, k + 1)``;
        NaN for a pair never attempted.
    swap_attempts : Tensor, shape (K - 1,), int64
        Number of swap attempts at each pair.
    log_lik : Tensor, shape (K, B)
        ``log p(x_b | z_kb)`` at the returned positions.
    log_prior : Tensor, shape (K, B)
        ``log pi(z_kb)`` at the returned positions.
    n_nonfinite : int
        Number of (chain, evaluation) pairs with a non-finite value or gradient; always 0 when
        ``check_finite`` is on (the sampler raises instead).
    """

    swap_acceptance_rate: Tensor
    swap_attempts: Tensor
    log_lik: Tensor
    log_prior: Tensor
    n_nonfinite: int


def power_temperatures(
    n_temps: int, exponent: float, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Power-law temperature ladder ``t_k = (k / N_t)^p``, ``k = 0..N_t`` (eqs. 22, 40).

    ``p > 1`` packs temperatures near the prior (``t = 0``), ``p < 1`` near the posterior.

    Parameters
    ----------
    n_temps : int
        ``N_t >= 1``, the number of intervals; ``N_t + 1`` temperatures are returned.
    exponent : float
        ``p > 0``.
    dtype : torch.dtype
        Floating dtype of the result.

    Returns
    -------
    Tensor, shape (N_t + 1,)
        Increasing temperatures with ``t_0 = 0`` and ``t_{N_t} = 1`` exactly.
    """
    if isinstance(n_temps, bool) or not isinstance(n_temps, int) or n_temps < 1:
        raise ValueError(f"n_temps must be an int >= 1, got {n_temps!r}")
    if not (math.isfinite(exponent) and exponent > 0):
        raise ValueError(f"exponent must be finite and > 0, got {exponent!r}")
    k = torch.arange(n_temps + 1, dtype=torch.float64)
    return ((k / n_temps) ** exponent).to(dtype)


def cosine_exponent_schedule(
    step: int, total_steps: int, p_start: float, p_end: float, n_cycles: int
) -> float:
    """Temperature exponent at parameter update ``i`` (eq. 40, cyclic annealing).

    ``p_i = p_start + (p_end - p_start) (1 - cos(pi (2 N_cycles + 1) i / I)) / 2``: with no
    cycles it moves monotonically from ``p_start`` at ``i = 0`` to ``p_end`` at ``i = I``; each
    cycle adds a return to ``p_start`` and back. It always ends at ``p_end``.

    Parameters
    ----------
    step : int
        ``i`` in ``[0, I]``.
    total_steps : int
        ``I >= 1``, the total number of parameter updates.
    p_start, p_end : float
        Exponents at the start and at the end.
    n_cycles : int
        ``N_cycles >= 0``.

    Returns
    -------
    float
        ``p_i``.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must lie in [0, total_steps={total_steps}], got {step!r}")
    if isinstance(n_cycles, bool) or not isinstance(n_cycles, int) or n_cycles < 0:
        raise ValueError(f"n_cycles must be an int >= 0, got {n_cycles!r}")
    phase = math.pi * (2 * n_cycles + 1) * step / total_steps
    return p_start + (p_end - p_start) * (1 - math.cos(phase)) / 2


def _swap_rows(x: Tensor, pair: int, accepted: Tensor) -> Tensor:
    """Exchange rows ``pair`` and ``pair + 1`` of ``x`` (K, B, ...) in the chains ``accepted``."""
    keep = accepted.reshape(-1, *([1] * (x.ndim - 2)))
    lower, upper = x[pair], x[pair + 1]
    out = x.clone()
    out[pair] = torch.where(keep, upper, lower)
    out[pair + 1] = torch.where(keep, lower, upper)
    return out


def _propose_swap(
    log_lik: Tensor, temperatures: Tensor, generator: torch.Generator | None
) -> SwapInfo:
    """Draw the pair and the per-chain swap decisions (eq. 25)."""
    n_temps = len(temperatures)
    pair = int(torch.randint(n_temps - 1, (1,), generator=generator, device=log_lik.device).item())
    # Swapping z_k <-> z_{k+1} has Metropolis ratio
    #   p_{t_k}(z_{k+1}) p_{t_{k+1}}(z_k) / (p_{t_k}(z_k) p_{t_{k+1}}(z_{k+1}))
    #   = exp((t_{k+1} - t_k) (ll_k - ll_{k+1})),
    # since the prior factors cancel: a better fit (higher ll) moves towards t = 1.
    dt = temperatures[pair + 1] - temperatures[pair]
    log_ratio = dt * (log_lik[pair] - log_lik[pair + 1])  # (B,)
    # NaN (e.g. -inf - -inf) means no evidence either way: do not swap.
    log_ratio = torch.where(torch.isnan(log_ratio), -math.inf, log_ratio)
    acceptance_prob = torch.exp(log_ratio.clamp(max=0.0))
    u = torch.rand(
        log_lik.shape[1], generator=generator, dtype=log_lik.dtype, device=log_lik.device
    )
    return SwapInfo(pair, u < acceptance_prob, acceptance_prob)


def _check_population(z: Tensor, log_lik: Tensor | None, temperatures: Tensor) -> None:
    if z.ndim < 2:
        raise ValueError(f"z must have shape (K, B, *event), got shape {tuple(z.shape)}")
    if temperatures.shape != z.shape[:1]:
        raise ValueError(
            f"temperatures must have shape (K,) = ({z.shape[0]},), got {tuple(temperatures.shape)}"
        )
    if log_lik is not None and log_lik.shape != z.shape[:2]:
        raise ValueError(
            f"log_lik must have shape (K, B) = {tuple(z.shape[:2])}, got {tuple(log_lik.shape)}"
        )


def replica_swap(
    z: Tensor, log_lik: Tensor, temperatures: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, SwapInfo]:
    """Replica-exchange move between one random adjacent pair of temperatures (eq. 25).

    One pair ``(k, k + 1)`` is drawn uniformly; then each chain ``b`` swaps
    ``z_kb <-> z_{k+1,b}`` independently with probability
    ``min(1, exp((t_{k+1} - t_k) (log p(x_b | z_kb) - log p(x_b | z_{k+1,b}))))``. This leaves
    the product of power posteriors ``prod_k p_{t_k}(z_kb | x_b)`` invariant. Deciding per
    chain (rather than once for the batch, as the paper's code does) keeps each data point's
    chain a valid Markov chain.

    Parameters
    ----------
    z : Tensor, shape (K, B, *event)
        Positions at each temperature.
    log_lik : Tensor, shape (K, B)
        ``log p(x_b | z_kb)``.
    temperatures : Tensor, shape (K,)
        ``t_k``; ``K >= 2``.
    generator : torch.Generator or None
        Source of randomness, on the device of ``z``.

    Returns
    -------
    z : Tensor, shape (K, B, *event)
        Positions after the swap.
    log_lik : Tensor, shape (K, B)
        Log-likelihoods permuted alongside.
    info : SwapInfo
    """
    _check_population(z, log_lik, temperatures)
    if len(temperatures) < 2:
        raise ValueError(f"replica_swap needs K >= 2 temperatures, got {len(temperatures)}")
    info = _propose_swap(log_lik, temperatures.to(log_lik), generator)
    return (
        _swap_rows(z, info.pair, info.accepted),
        _swap_rows(log_lik, info.pair, info.accepted),
        info,
    )


class _TemperedState(NamedTuple):
    position: Tensor  # (K, B, *event)
    log_prior: Tensor  # (K, B)
    log_lik: Tensor  # (K, B)
    grad_prior: Tensor  # (K, B, *event)
    grad_lik: Tensor  # (K, B, *event)


def _tempered_init(
    log_prior_fn: Callable[[Tensor], Tensor],
    log_lik_fn: Callable[[Tensor], Tensor],
    position: Tensor,
    check_finite: bool,
) -> _TemperedState:
    """Evaluate prior and likelihood with separate gradients.

    The gradients are kept apart because a swap moves a chain to another temperature, where
    its drift ``t grad ll + grad log pi`` must be recombined without re-evaluating the model.
    """
    n_temps, n_chains = position.shape[:2]
    with torch.enable_grad():
        z = position.detach().requires_grad_(True)
        log_prior = log_prior_fn(z.flatten(0, 1))
        if not isinstance(log_prior, Tensor) or log_prior.shape != (n_temps * n_chains,):
            got = tuple(log_prior.shape) if isinstance(log_prior, Tensor) else log_prior
            raise ValueError(
                f"log_prior_fn must return shape ({n_temps * n_chains},) for input of shape "
                f"{(n_temps * n_chains, *position.shape[2:])}, got {got}"
            )
        log_prior = log_prior.reshape(n_temps, n_chains)
        log_lik = log_lik_fn(z)
        if not isinstance(log_lik, Tensor) or log_lik.shape != (n_temps, n_chains):
            got = tuple(log_lik.shape) if isinstance(log_lik, Tensor) else log_lik
            raise ValueError(
                f"log_lik_fn must return shape ({n_temps}, {n_chains}) for input of shape "
                f"{tuple(position.shape)}, got {got}"
            )
        grads = []
        for value in (log_prior, log_lik):
            grad = None
            if value.requires_grad:
                # retain_graph: the two terms may share part of their graph.
                (grad,) = torch.autograd.grad(value.sum(), z, retain_graph=True, allow_unused=True)
            grads.append(torch.zeros_like(position) if grad is None else grad.detach())
    state = _TemperedState(position.detach(), log_prior.detach(), log_lik.detach(), *grads)
    if check_finite:
        bad = _nonfinite_chains(state.log_prior + state.log_lik, *grads)
        if bool(bad.any()):
            raise NonFiniteError(
                _chain_indices(bad), quantity="log prior, log-likelihood or gradient"
            )
    return state


def tempered_ula(
    log_prior_fn: Callable[[Tensor], Tensor],
    log_lik_fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    temperatures: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    swap_every: int = 1,
    check_finite: bool = True,
    callback: Callable[[int, Tensor], None] | None = None,
    bounds: Bounds | None = None,
) -> tuple[Tensor, TemperingInfo]:
    """Population ULA on the power posteriors with replica swaps (eqs. 11, 12, 25).

    All ``K * B`` chains take ULA steps (eq. 11) on
    ``log p_t(z | x_b) = t log p(x_b | z) + log pi(z)`` as one batched tensor; after every
    ``swap_every`` steps one adjacent pair of temperatures attempts a per-chain
    :func:`replica_swap`.

    Parameters
    ----------
    log_prior_fn : callable
        ``log pi``: ``(n, *event) -> (n,)``, called on the ``n = K * B`` flattened chains.
    log_lik_fn : callable
        ``log p(x | z)``: ``(K, B, *event) -> (K, B)``. It receives the population unflattened
        because chain ``(k, b)`` is scored against its own data point ``x_b``: entry ``[k, b]``
        must be ``log p(x_b | z[k, b])`` (e.g. broadcast ``x`` of shape (B, ...) against
        the decoded ``G(z)`` of shape (K, B, ...)).
    z0 : Tensor, shape (K, B, *event)
        Initial positions (e.g. prior samples).
    temperatures : Tensor, shape (K,)
        ``t_k``, e.g. from :func:`power_temperatures`.
    step_size : float or Tensor
        ``eta``: a scalar, per temperature ``(K,)``, or per chain ``(K, B)``. A step size
        belongs to its temperature slot, not to the chain that swaps through it.
    n_steps : int
        Number of ULA steps.
    generator : torch.Generator or None
        Source of randomness, on the device of ``z0``.
    swap_every : int
        Attempt a swap after every ``swap_every`` steps (the paper: 1). Ignored when ``K = 1``.
    check_finite : bool
        Raise :class:`NonFiniteError` (naming the step and ``(k, b)`` chains) on a non-finite
        value or gradient; when off, only count them.
    callback : callable, optional
        Called as ``callback(step, log_lik)`` after every step (and its swap) with the
        population's log-likelihoods ``(K, B)``, e.g. to accumulate per-temperature averages
        along the trajectory for thermodynamic integration. Diagnostics only: never fed back.
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends (see
        :mod:`kaem.samplers.langevin`); swaps exchange positions, so they never leave it.

    Returns
    -------
    z : Tensor, shape (K, B, *event)
        Final positions, detached.
    info : TemperingInfo
    """
    _check_steps(n_steps)
    bounds = _check_bounds(bounds)
    if isinstance(swap_every, bool) or not isinstance(swap_every, int) or swap_every < 1:
        raise ValueError(f"swap_every must be an int >= 1, got {swap_every!r}")
    temperatures = torch.as_tensor(temperatures, dtype=z0.dtype, device=z0.device)
    _check_population(z0, None, temperatures)
    n_temps = len(temperatures)
    step = _broadcast_step(step_size, z0, batch_dims=2)
    t = temperatures.reshape(n_temps, *([1] * (z0.ndim - 1)))

    def evaluate(position: Tensor, i: int) -> _TemperedState:
        try:
            return _tempered_init(log_prior_fn, log_lik_fn, position, check_finite)
        except NonFiniteError as err:
            raise err.at_step(i) from None

    def count_bad(state: _TemperedState) -> Tensor:
        return _nonfinite_chains(
            state.log_prior + state.log_lik, state.grad_prior, state.grad_lik
        ).sum()

    state = evaluate(z0, 0)
    n_bad = count_bad(state)
    n_pairs = max(n_temps - 1, 0)
    attempts = torch.zeros(n_pairs, dtype=torch.int64, device=z0.device)
    swapped = torch.zeros(n_pairs, dtype=z0.dtype, device=z0.device)
    for i in range(n_steps):
        drift = t * state.grad_lik + state.grad_prior  # grad log p_t, (K, B, *event)
        proposal, _ = _langevin_proposal(state.position, drift, step, generator, bounds)
        state = evaluate(proposal, i + 1)
        if not check_finite:
            n_bad = n_bad + count_bad(state)
        if n_temps > 1 and (i + 1) % swap_every == 0:
            info = _propose_swap(state.log_lik, temperatures, generator)
            # Cached values do not depend on t, so they travel with their chains.
            state = _TemperedState(*(_swap_rows(x, info.pair, info.accepted) for x in state))
            attempts[info.pair] += 1
            swapped[info.pair] += info.accepted.to(z0.dtype).mean()
        if callback is not None:
            callback(i + 1, state.log_lik)
    rate = torch.where(attempts > 0, swapped / attempts.clamp(min=1), math.nan)
    return state.position, TemperingInfo(rate, attempts, state.log_lik, state.log_prior, int(n_bad))
