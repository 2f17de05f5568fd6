"""Power posteriors, temperature ladders and replica exchange around any kernel (eqs. 12-25).

The power posterior at temperature ``t`` is ``p_t(z | x) ∝ p(x | z)^t pi(z)`` (eq. 12): the
prior at ``t = 0`` and the posterior at ``t = 1``. A population holds ``B`` chains (one per
data point ``x_b``) at each of ``K`` temperatures; positions have shape ``(K, B, *event)``.

:func:`tempered` wraps a swap move around any per-temperature kernel of
:mod:`kaem.samplers.langevin` (:func:`tempered_ula`, :func:`tempered_mala`): the kernel moves
all ``K * B`` chains as one batch on their own power posteriors, then one adjacent pair of
temperatures proposes swaps. Nothing in a step synchronises with the device: the swap pair is
chosen through masks and non-finite values are recorded, then checked once after the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from kaem.checks import check_count
from kaem.samplers.base import (
    Bounds,
    NonFiniteRecord,
    broadcast_step,
    check_bounds,
    check_reflected_step,
    check_steps,
    nonfinite_chains,
    value_and_grads,
)
from kaem.samplers.langevin import KERNELS, Kernel, mala_kernel

__all__ = [
    "SwapInfo",
    "TemperedState",
    "TemperingInfo",
    "cosine_exponent_schedule",
    "power_temperatures",
    "replica_swap",
    "tempered",
    "tempered_mala",
    "tempered_ula",
]


class SwapInfo(NamedTuple):
    """Diagnostics of one :func:`replica_swap`.

    Attributes
    ----------
    pair : Tensor, shape (), int64
        ``k``: the swap was proposed between temperatures ``k`` and ``k + 1``.
    accepted : Tensor, shape (B,), bool
        Which chains swapped.
    acceptance_prob : Tensor, shape (B,)
        Per-chain acceptance probability (eq. 25).
    """

    pair: Tensor
    accepted: Tensor
    acceptance_prob: Tensor


class TemperingInfo(NamedTuple):
    """Diagnostics of :func:`tempered`.

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
    n_nonfinite : Tensor, shape (), int64
        Number of (chain, evaluation) pairs with a non-finite value or gradient.
    first_nonfinite : Tensor, shape (K, B), int64
        The first step at which each chain met a non-finite value (0 = the start), -1 if never.
    acceptance_rate : Tensor, shape (K,)
        Mean acceptance rate of the kernel's moves per temperature (NaN for ULA, which
        accepts every move).
    """

    swap_acceptance_rate: Tensor
    swap_attempts: Tensor
    log_lik: Tensor
    log_prior: Tensor
    n_nonfinite: Tensor
    first_nonfinite: Tensor
    acceptance_rate: Tensor


class TemperedState(NamedTuple):
    """A population on the power posteriors, its terms kept apart.

    ``log_density`` and ``grad`` are those of ``p_t`` at each chain's temperature; the prior
    and likelihood terms are kept separately because a swap moves a chain to another
    temperature, where its drift ``t grad ll + grad log pi`` is recombined without evaluating
    the model again.

    Attributes
    ----------
    position : Tensor, shape (K, B, *event)
    log_density : Tensor, shape (K, B)
        ``t_k log p(x_b | z_kb) + log pi(z_kb)``.
    grad : Tensor, shape (K, B, *event)
    log_prior, log_lik : Tensor, shape (K, B)
    grad_prior, grad_lik : Tensor, shape (K, B, *event)
    """

    position: Tensor
    log_density: Tensor
    grad: Tensor
    log_prior: Tensor
    log_lik: Tensor
    grad_prior: Tensor
    grad_lik: Tensor


def power_temperatures(
    n_temps: int,
    exponent: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
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
    device : torch.device, optional
        Where to compute them (the CPU if not given): built there, they need no copy from
        the host.

    Returns
    -------
    Tensor, shape (N_t + 1,)
        Increasing temperatures with ``t_0 = 0`` and ``t_{N_t} = 1`` exactly.
    """
    check_count("n_temps", n_temps)
    if not (math.isfinite(exponent) and exponent > 0):
        raise ValueError(f"exponent must be finite and > 0, got {exponent!r}")
    device = torch.device("cpu" if device is None else device)
    work = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    k = torch.arange(n_temps + 1, dtype=work, device=device)
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
    check_count("total_steps", total_steps)
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must lie in [0, total_steps={total_steps}], got {step!r}")
    check_count("n_cycles", n_cycles, 0)
    phase = math.pi * (2 * n_cycles + 1) * step / total_steps
    return p_start + (p_end - p_start) * (1 - math.cos(phase)) / 2


def _propose_swap(
    log_lik: Tensor, temperatures: Tensor, generator: torch.Generator | None
) -> SwapInfo:
    """Draw the pair and the per-chain swap decisions (eq. 25), without a host sync."""
    n_temps = len(temperatures)
    pair = torch.randint(n_temps - 1, (), generator=generator, device=log_lik.device)
    pairs = torch.stack([pair, pair + 1])
    # Swapping z_k <-> z_{k+1} has Metropolis ratio
    #   p_{t_k}(z_{k+1}) p_{t_{k+1}}(z_k) / (p_{t_k}(z_k) p_{t_{k+1}}(z_{k+1}))
    #   = exp((t_{k+1} - t_k) (ll_k - ll_{k+1})),
    # since the prior factors cancel: a better fit (higher ll) moves towards t = 1.
    t_lo, t_hi = temperatures.index_select(0, pairs)
    ll_lo, ll_hi = log_lik.index_select(0, pairs)
    log_ratio = (t_hi - t_lo) * (ll_lo - ll_hi)  # (B,)
    # NaN (e.g. -inf - -inf) means no evidence either way: do not swap.
    log_ratio = torch.where(torch.isnan(log_ratio), -math.inf, log_ratio)
    acceptance_prob = torch.exp(log_ratio.clamp(max=0.0))
    u = torch.rand(
        log_lik.shape[1], generator=generator, dtype=log_lik.dtype, device=log_lik.device
    )
    return SwapInfo(pair, u < acceptance_prob, acceptance_prob)


def _swap_source(swap: SwapInfo, n_temps: int) -> Tensor:
    """Row each entry comes from after the swap, shape (K, B): one-hot masks, no indexing."""
    rows = torch.arange(n_temps, device=swap.accepted.device)[:, None]
    moved = swap.accepted[None].long()
    return rows + (rows == swap.pair) * moved - (rows == swap.pair + 1) * moved


def _gather_rows(x: Tensor, source: Tensor) -> Tensor:
    index = source.reshape(*source.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(0, index)


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
    source = _swap_source(info, len(temperatures))
    return _gather_rows(z, source), _gather_rows(log_lik, source), info


def _at_temperatures(state: TemperedState, temperatures: Tensor) -> TemperedState:
    """``log_density`` and ``grad`` of each chain's power posterior, from the split terms."""
    t = temperatures.reshape(-1, *([1] * (state.log_lik.ndim - 1)))
    t_event = temperatures.reshape(-1, *([1] * (state.grad_lik.ndim - 1)))
    return state._replace(
        log_density=t * state.log_lik + state.log_prior,
        grad=t_event * state.grad_lik + state.grad_prior,
    )


def _tempered_evaluator(
    log_prior_fn: Callable[[Tensor], Tensor],
    log_lik_fn: Callable[[Tensor], Tensor],
    temperatures: Tensor,
) -> Callable[[Tensor], TemperedState]:
    """Positions ``(K, B, *event)`` -> their :class:`TemperedState` (one backward pass)."""

    def evaluate(position: Tensor) -> TemperedState:
        n_temps, n_chains = position.shape[:2]
        (log_prior, grad_prior), (log_lik, grad_lik) = value_and_grads(
            [lambda z: log_prior_fn(z.flatten(0, 1)), log_lik_fn],
            position,
            [(n_temps * n_chains,), (n_temps, n_chains)],
            ["log_prior_fn (on the K * B flattened chains)", "log_lik_fn"],
        )
        log_prior = log_prior.reshape(n_temps, n_chains)
        # log_density and grad are recombined from the split terms by _at_temperatures.
        split = TemperedState(
            position.detach(), log_lik, grad_lik, log_prior, log_lik, grad_prior, grad_lik
        )
        return _at_temperatures(split, temperatures)

    return evaluate


def tempered(
    kernel: str | Kernel,
    log_prior_fn: Callable[[Tensor], Tensor],
    log_lik_fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    temperatures: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    swap_every: int = 1,
    callback: Callable[[int, Tensor], None] | None = None,
    bounds: Bounds | None = None,
) -> tuple[Tensor, TemperingInfo]:
    """A per-temperature kernel on the power posteriors with replica swaps (eqs. 12, 25).

    All ``K * B`` chains move with ``kernel`` on
    ``log p_t(z | x_b) = t log p(x_b | z) + log pi(z)`` as one batched tensor; after every
    ``swap_every`` steps one adjacent pair of temperatures attempts a per-chain
    :func:`replica_swap`. The swap leaves the product of the power posteriors invariant and
    so does each kernel's move, hence their alternation.

    Parameters
    ----------
    kernel : str or callable
        ``"ula"``, ``"mala"`` (:data:`kaem.samplers.langevin.KERNELS`) or any callable with
        the signature of :func:`kaem.samplers.langevin.ula_kernel`. MALA's steps are fixed
        here (no warm-up adaptation).
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
        Number of kernel steps.
    generator : torch.Generator or None
        Source of randomness, on the device of ``z0``.
    swap_every : int
        Attempt a swap after every ``swap_every`` steps (the paper: 1). Ignored when ``K = 1``.
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
    if not (callable(kernel) or kernel in KERNELS):
        raise ValueError(f"kernel must be 'ula', 'mala' or a callable, got {kernel!r}")
    move = KERNELS[kernel] if isinstance(kernel, str) else kernel
    check_steps(n_steps)
    bounds = check_bounds(bounds)
    check_count("swap_every", swap_every)
    temperatures = torch.as_tensor(temperatures, dtype=z0.dtype, device=z0.device)
    _check_population(z0, None, temperatures)
    n_temps = len(temperatures)
    if move is mala_kernel:
        check_reflected_step(step_size, bounds)
    step = broadcast_step(step_size, z0, batch_dims=2)
    evaluate = _tempered_evaluator(log_prior_fn, log_lik_fn, temperatures)
    state = evaluate(z0)
    record = NonFiniteRecord(state.log_density.shape, z0.device)
    record.update(nonfinite_chains(state.log_density, state.grad), 0)
    n_pairs = max(n_temps - 1, 0)
    attempts = torch.zeros(n_pairs, dtype=torch.int64, device=z0.device)
    swapped = torch.zeros(n_pairs, dtype=z0.dtype, device=z0.device)
    accepted = torch.zeros(n_temps, dtype=z0.dtype, device=z0.device)
    adjusted = False  # whether the kernel accepts and rejects (MALA) or always moves (ULA)
    pair_ids = torch.arange(n_pairs, device=z0.device)
    for i in range(n_steps):
        state, info = move(evaluate, state, step, generator, bounds)
        record.update(info.nonfinite, i + 1)
        if hasattr(info, "accepted"):
            adjusted = True
            accepted = accepted + info.accepted.to(z0.dtype).mean(1)
        if n_temps > 1 and (i + 1) % swap_every == 0:
            swap = _propose_swap(state.log_lik, temperatures, generator)
            source = _swap_source(swap, n_temps)
            # Cached terms do not depend on t, so they travel with their chains.
            moved = TemperedState(*(_gather_rows(x, source) for x in state))
            state = _at_temperatures(moved, temperatures)
            at_pair = pair_ids == swap.pair
            attempts = attempts + at_pair
            swapped = swapped + at_pair * swap.accepted.to(z0.dtype).mean()
        if callback is not None:
            callback(i + 1, state.log_lik)
    rate = torch.where(attempts > 0, swapped / attempts.clamp(min=1), math.nan)
    moves = accepted / n_steps if adjusted else torch.full_like(accepted, math.nan)
    return state.position, TemperingInfo(
        rate, attempts, state.log_lik, state.log_prior, record.count, record.first, moves
    )


def tempered_ula(
    log_prior_fn: Callable[[Tensor], Tensor],
    log_lik_fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    temperatures: Tensor,
    **settings,
) -> tuple[Tensor, TemperingInfo]:
    """Population ULA on the power posteriors with replica swaps (eqs. 11, 12, 25).

    :func:`tempered` with the ULA kernel; ``settings`` are its keyword arguments.
    """
    return tempered("ula", log_prior_fn, log_lik_fn, z0, temperatures, **settings)


def tempered_mala(
    log_prior_fn: Callable[[Tensor], Tensor],
    log_lik_fn: Callable[[Tensor], Tensor],
    z0: Tensor,
    temperatures: Tensor,
    **settings,
) -> tuple[Tensor, TemperingInfo]:
    """Population MALA on the power posteriors with replica swaps: exact at every temperature.

    :func:`tempered` with the MALA kernel; ``settings`` are its keyword arguments.
    """
    return tempered("mala", log_prior_fn, log_lik_fn, z0, temperatures, **settings)
