"""Langevin samplers: unadjusted (ULA, eq. 11) and Metropolis-adjusted (MALA).

Conventions shared by every function here:

- ``log_density_fn(z) -> Tensor`` maps positions of shape ``(n_chains, *event_shape)`` to
  log densities of shape ``(n_chains,)``, up to an additive constant. Chains must be
  independent (chain ``i``'s value depends on ``z[i]`` only), because the per-chain gradients
  are taken as the gradient of the sum.
- All chains advance together as one batched tensor.
- Gradients come from ``torch.autograd.grad`` with respect to the positions only, so the
  parameters inside ``log_density_fn`` never accumulate ``.grad``; returned positions are
  detached.
- A state caches ``(position, log_density, grad)`` so that each step evaluates the target
  once, at the new position.
- Every kernel returns ``(state, info)`` and never raises on a value; ``info.nonfinite`` marks
  the chains whose new log density or gradient is not finite. The runners record the first
  such step of every chain on the device (``info.first_nonfinite``), with no host
  synchronisation, and the caller decides: :func:`kaem.samplers.nonfinite_check` turns the
  record into a check to read now or later.
- ``bounds=(low, high)`` confines every coordinate to ``[low, high]`` (a KAEM prior's domain):
  proposals are reflected at both ends, so chains never leave the support. Reflection is the
  boundary condition of the Langevin diffusion whose stationary law is the target restricted
  to the box; ULA discretises it with the usual ``O(eta)`` bias, and MALA corrects exactly
  with the reflected (folded) proposal density in its acceptance ratio.

The kernels :func:`ula_kernel` and :func:`mala_kernel` take an ``evaluate`` callable rather
than a log density, so the same code moves one population (:func:`ula`, :func:`mala`) and a
tempered one (:mod:`kaem.samplers.tempering`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from kaem.samplers.base import (
    Bounds,
    LogDensityFn,
    NonFiniteRecord,
    State,
    broadcast_step,
    check_bounds,
    check_reflected_step,
    check_steps,
    langevin_proposal,
    log_proposal,
    max_reflected_step,
    nonfinite_chains,
    select,
    value_and_grads,
)

__all__ = [
    "KERNELS",
    "LangevinInfo",
    "LangevinState",
    "MALAInfo",
    "MALAStepInfo",
    "ULAStepInfo",
    "langevin_init",
    "mala",
    "mala_kernel",
    "mala_step",
    "ula",
    "ula_kernel",
    "ula_step",
]

# Robbins-Monro gain c t^-kappa for the per-chain log step size. Each chain sees a single,
# noisy acceptance probability per step, so the gain must decay (kappa in (0.5, 1]) while
# staying large enough early on to travel several e-folds from a poor initial step. With these
# values 100 warm-up steps bring the acceptance rate within 0.01 of the target on Gaussians of
# dimension 1 to 50, from a start 100x too small. (Dual averaging with its usual constants
# was tried and froze steps too small: its iterates keep fluctuating at this noise level, and
# by Jensen's inequality the averaged step is biased, up to +0.07 in acceptance at 0.8.)
_RM_GAIN = 8.0
_RM_KAPPA = 0.8


class LangevinState(NamedTuple):
    """Position of every chain with its cached log density and gradient.

    Attributes
    ----------
    position : Tensor, shape (n_chains, *event_shape)
    log_density : Tensor, shape (n_chains,)
    grad : Tensor, shape (n_chains, *event_shape)
        ``grad_z log p(z)`` at ``position``.
    """

    position: Tensor
    log_density: Tensor
    grad: Tensor


class ULAStepInfo(NamedTuple):
    """Diagnostics of one ULA step.

    Attributes
    ----------
    nonfinite : Tensor, batch shape, bool
        Chains whose new log density or gradient is not finite.
    """

    nonfinite: Tensor


class MALAStepInfo(NamedTuple):
    """Diagnostics of one MALA step.

    Attributes
    ----------
    acceptance_prob : Tensor, batch shape
        Metropolis-Hastings acceptance probability of each proposal.
    accepted : Tensor, batch shape, bool
    nonfinite : Tensor, batch shape, bool
        Proposals whose log density or gradient was not finite (rejected).
    """

    acceptance_prob: Tensor
    accepted: Tensor
    nonfinite: Tensor


class LangevinInfo(NamedTuple):
    """Diagnostics of :func:`ula`.

    Attributes
    ----------
    log_density : Tensor, shape (n_chains,)
        Log density at the returned positions.
    grad_norm : Tensor, shape (n_steps,)
        Mean over chains of ``||grad log p||_2`` at the start of each step; shape ``(0,)``
        unless asked for.
    n_nonfinite : Tensor, shape (), int64
        Number of (chain, evaluation) pairs with a non-finite log density or gradient.
    first_nonfinite : Tensor, shape (n_chains,), int64
        The first step at which each chain was not finite (0 = the start), -1 if never.
    """

    log_density: Tensor
    grad_norm: Tensor
    n_nonfinite: Tensor
    first_nonfinite: Tensor


class MALAInfo(NamedTuple):
    """Diagnostics of :func:`mala`.

    Attributes
    ----------
    acceptance_rate : Tensor, shape (n_chains,)
        Fraction of accepted proposals over the ``n_steps`` steps after warm-up (NaN when
        ``n_steps == 0``).
    step_size : Tensor, shape (n_chains,)
        The (frozen) per-chain step sizes used after warm-up.
    log_density : Tensor, shape (n_chains,)
        Log density at the returned positions.
    n_nonfinite, first_nonfinite : Tensor
        As in :class:`LangevinInfo`; here the evaluations are the start and the proposals
        (a non-finite proposal is rejected).
    """

    acceptance_rate: Tensor
    step_size: Tensor
    log_density: Tensor
    n_nonfinite: Tensor
    first_nonfinite: Tensor


class Kernel(Protocol):
    """``(evaluate, state, step, generator, bounds) -> (state, info)``: one Markov move."""

    def __call__(
        self,
        evaluate: Callable[[Tensor], State],
        state: State,
        step: Tensor,
        generator: torch.Generator | None,
        bounds: Bounds | None,
    ) -> tuple[State, ULAStepInfo | MALAStepInfo]: ...


def langevin_init(log_density_fn: LogDensityFn, position: Tensor) -> LangevinState:
    """Evaluate the target at ``position`` and cache log density and gradient.

    Parameters
    ----------
    log_density_fn : callable
        ``(n_chains, *event_shape) -> (n_chains,)``.
    position : Tensor, shape (n_chains, *event_shape)

    Returns
    -------
    LangevinState
        Non-finite values are kept as they are (see :func:`nonfinite_chains`).
    """
    if position.ndim < 1 or not position.is_floating_point():
        raise ValueError(
            f"position must be a floating tensor of shape (n_chains, *event_shape), got "
            f"{position.dtype} of shape {tuple(position.shape)}"
        )
    [(log_density, grad)] = value_and_grads(
        [log_density_fn], position, [position.shape[:1]], ["log-density function"]
    )
    return LangevinState(position.detach(), log_density, grad)


def ula_kernel(
    evaluate: Callable[[Tensor], State],
    state: State,
    step: Tensor,
    generator: torch.Generator | None,
    bounds: Bounds | None,
) -> tuple[State, ULAStepInfo]:
    """One unadjusted Langevin move (eq. 11) of any state; ``step`` already broadcast."""
    proposal, _ = langevin_proposal(state.position, state.grad, step, generator, bounds)
    new = evaluate(proposal)
    return new, ULAStepInfo(nonfinite_chains(new.log_density, new.grad))


def mala_kernel(
    evaluate: Callable[[Tensor], State],
    state: State,
    step: Tensor,
    generator: torch.Generator | None,
    bounds: Bounds | None,
) -> tuple[State, MALAStepInfo]:
    """One Metropolis-adjusted Langevin move of any state; ``step`` already broadcast.

    The ULA move is the proposal ``q(z' | z) = N(z + eta grad log p(z), 2 eta I)``, reflected
    into ``bounds`` (then ``q`` is the folded density), accepted per chain with probability
    ``min(1, p(z') q(z | z') / (p(z) q(z' | z)))``. Non-finite proposals are rejected.
    """
    batch_dims = state.log_density.ndim
    proposal, forward_mean = langevin_proposal(state.position, state.grad, step, generator, bounds)
    new = evaluate(proposal)
    backward_mean = proposal + step * new.grad
    log_q_forward = log_proposal(proposal, forward_mean, step, bounds, batch_dims)
    log_q_backward = log_proposal(state.position, backward_mean, step, bounds, batch_dims)
    log_ratio = new.log_density - state.log_density + log_q_backward - log_q_forward
    # A NaN ratio can only come from a non-finite proposal: reject it.
    nonfinite = nonfinite_chains(new.log_density, new.grad)
    log_ratio = torch.where(nonfinite | torch.isnan(log_ratio), -math.inf, log_ratio)
    acceptance_prob = torch.exp(log_ratio.clamp(max=0.0))
    u = torch.rand(
        acceptance_prob.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device
    )
    accepted = u < acceptance_prob
    return select(accepted, new, state), MALAStepInfo(acceptance_prob, accepted, nonfinite)


#: The per-population moves, by the names the configuration uses.
KERNELS: dict[str, Kernel] = {"ula": ula_kernel, "mala": mala_kernel}


def _evaluator(log_density_fn: LogDensityFn) -> Callable[[Tensor], LangevinState]:
    return lambda z: langevin_init(log_density_fn, z)


def ula_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    *,
    step_size: float | Tensor,
    generator: torch.Generator | None,
    bounds: Bounds | None = None,
) -> tuple[LangevinState, ULAStepInfo]:
    """One unadjusted Langevin step, eq. 11: ``z <- z + eta grad log p(z) + sqrt(2 eta) xi``.

    Parameters
    ----------
    log_density_fn : callable
        ``(n_chains, *event_shape) -> (n_chains,)``.
    state : LangevinState
        Current positions with cached log density and gradient.
    step_size : float or Tensor
        ``eta``; a scalar or per-chain, shape ``(n_chains,)``.
    generator : torch.Generator or None
        Source of the Gaussian noise ``xi``.
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.

    Returns
    -------
    state : LangevinState
        The new positions, evaluated.
    info : ULAStepInfo
    """
    step = broadcast_step(step_size, state.position)
    return ula_kernel(_evaluator(log_density_fn), state, step, generator, check_bounds(bounds))


def mala_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    *,
    step_size: float | Tensor,
    generator: torch.Generator | None,
    bounds: Bounds | None = None,
) -> tuple[LangevinState, MALAStepInfo]:
    """One Metropolis-adjusted Langevin step, per chain (:func:`mala_kernel`).

    The proposal is asymmetric, so both ``q`` terms enter the acceptance ratio. With
    ``bounds`` the proposal is reflected into the box and ``q`` is the reflected (folded)
    Gaussian density, so the chain is exact for the target on the box; steps are then limited
    to ``(high - low)^2 / 16``.

    Parameters
    ----------
    log_density_fn : callable
        ``(n_chains, *event_shape) -> (n_chains,)``.
    state : LangevinState
        Current positions with cached log density and gradient.
    step_size : float or Tensor
        ``eta``; a scalar or per-chain, shape ``(n_chains,)``.
    generator : torch.Generator or None
        Source of the proposal noise and of the acceptance uniforms.
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.

    Returns
    -------
    state : LangevinState
    info : MALAStepInfo
    """
    bounds = check_bounds(bounds)
    check_reflected_step(step_size, bounds)
    step = broadcast_step(step_size, state.position)
    return mala_kernel(_evaluator(log_density_fn), state, step, generator, bounds)


def ula(
    log_density_fn: LogDensityFn,
    z0: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    bounds: Bounds | None = None,
    grad_norm: bool = True,
) -> tuple[Tensor, LangevinInfo]:
    """Run the unadjusted Langevin algorithm (eq. 11) on all chains at once.

    ULA has no accept/reject step, so its stationary law is biased by ``O(eta)``; on
    ``N(m, s^2)`` it is ``N(m, s^2 / (1 - eta / (2 s^2)))``. With ``bounds`` the proposals
    are reflected at the ends, which discretises the reflected diffusion whose stationary law
    is the target on the box (with the same ``O(eta)`` bias).

    Parameters
    ----------
    log_density_fn : callable
        ``(n_chains, *event_shape) -> (n_chains,)``, unnormalised log density.
    z0 : Tensor, shape (n_chains, *event_shape)
        Initial positions.
    step_size : float or Tensor
        ``eta``; a scalar or per-chain, shape ``(n_chains,)``.
    n_steps : int
        Number of Langevin steps.
    generator : torch.Generator or None
        Source of randomness, on the device of ``z0``.
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.
    grad_norm : bool
        Record the mean gradient norm of every step (``info.grad_norm``); off, it is empty
        and costs nothing.

    Returns
    -------
    z : Tensor, shape (n_chains, *event_shape)
        Final positions, detached.
    info : LangevinInfo
    """
    check_steps(n_steps)
    bounds = check_bounds(bounds)
    step = broadcast_step(step_size, z0)
    evaluate = _evaluator(log_density_fn)
    state = evaluate(z0)
    record = NonFiniteRecord(state.log_density.shape, z0.device)
    record.update(nonfinite_chains(state.log_density, state.grad), 0)
    grad_norms = []
    for i in range(n_steps):
        if grad_norm:
            grad_norms.append(state.grad.reshape(len(z0), -1).norm(dim=-1).mean())
        state, info = ula_kernel(evaluate, state, step, generator, bounds)
        record.update(info.nonfinite, i + 1)
    norms = torch.stack(grad_norms) if grad_norms else z0.new_zeros(0)
    return state.position, LangevinInfo(state.log_density, norms, record.count, record.first)


def mala(
    log_density_fn: LogDensityFn,
    z0: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    n_warmup: int = 0,
    target_accept: float = 0.574,
    bounds: Bounds | None = None,
) -> tuple[Tensor, MALAInfo]:
    """Run MALA on all chains, with per-chain step-size adaptation during warm-up.

    During the ``n_warmup`` first steps each chain's ``log eta`` follows a Robbins-Monro
    recursion (Andrieu and Thoms 2008),
    ``log eta <- log eta + c t^-kappa (alpha_t - target_accept)``, driven by the chain's own
    acceptance probability ``alpha_t`` (0.574 is optimal for MALA in high dimension, Roberts
    and Rosenthal 1998). The step sizes are then frozen for the ``n_steps`` sampling steps, so
    those steps form an exact MALA chain whose stationary law is the target.

    Parameters
    ----------
    log_density_fn : callable
        ``(n_chains, *event_shape) -> (n_chains,)``, unnormalised log density.
    z0 : Tensor, shape (n_chains, *event_shape)
        Initial positions.
    step_size : float or Tensor
        Initial ``eta``; a scalar or per-chain, shape ``(n_chains,)``.
    n_steps : int
        Number of sampling steps after warm-up.
    generator : torch.Generator or None
        Source of randomness, on the device of ``z0``.
    n_warmup : int
        Number of adaptation steps before sampling.
    target_accept : float
        Target acceptance probability in (0, 1).
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends
        (see :func:`mala_step`); adaptation keeps the steps within the limit there.

    Returns
    -------
    z : Tensor, shape (n_chains, *event_shape)
        Final positions, detached.
    info : MALAInfo
    """
    check_steps(n_steps)
    check_steps(n_warmup, "n_warmup")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    n_chains = len(z0)
    bounds = check_bounds(bounds)
    check_reflected_step(step_size, bounds)
    step = broadcast_step(step_size, z0).reshape(-1).expand(n_chains).clone()  # (n_chains,)
    max_log_step = math.inf if bounds is None else math.log(max_reflected_step(bounds))
    event_ones = [1] * (z0.ndim - 1)
    evaluate = _evaluator(log_density_fn)
    state = evaluate(z0)
    record = NonFiniteRecord(state.log_density.shape, z0.device)
    record.update(nonfinite_chains(state.log_density, state.grad), 0)

    # Stochastic approximation on log eta, independently per chain.
    log_step = step.log()
    for i in range(n_warmup):
        eta = log_step.exp().reshape(n_chains, *event_ones)
        state, info = mala_kernel(evaluate, state, eta, generator, bounds)
        record.update(info.nonfinite, i + 1)
        gain = _RM_GAIN * (i + 1) ** -_RM_KAPPA
        log_step = (log_step + gain * (info.acceptance_prob - target_accept)).clamp(
            max=max_log_step
        )
    step = log_step.exp()
    eta = step.reshape(n_chains, *event_ones)
    n_accepted = torch.zeros_like(step)
    for i in range(n_steps):
        state, info = mala_kernel(evaluate, state, eta, generator, bounds)
        record.update(info.nonfinite, n_warmup + i + 1)
        n_accepted = n_accepted + info.accepted.to(step.dtype)
    acceptance_rate = n_accepted / n_steps if n_steps > 0 else torch.full_like(step, math.nan)
    return state.position, MALAInfo(
        acceptance_rate, step, state.log_density, record.count, record.first
    )
