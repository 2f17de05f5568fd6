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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "LangevinInfo",
    "LangevinState",
    "MALAInfo",
    "MALAStepInfo",
    "NonFiniteError",
    "langevin_init",
    "mala",
    "mala_step",
    "ula",
    "ula_step",
]

LogDensityFn = Callable[[Tensor], Tensor]

# Robbins-Monro gain c t^-kappa for the per-chain log step size. Each chain sees a single,
# noisy acceptance probability per step, so the gain must decay (kappa in (0.5, 1]) while
# staying large enough early on to travel several e-folds from a poor initial step. With these
# values 100 warm-up steps bring the acceptance rate within 0.01 of the target on Gaussians of
# dimension 1 to 50, from a start 100x too small. (Dual averaging with its usual constants
# was tried and froze steps too small: its iterates keep fluctuating at this noise level, and
# by Jensen's inequality the averaged step is biased, up to +0.07 in acceptance at 0.8.)
_RM_GAIN = 8.0
_RM_KAPPA = 0.8

_MAX_LISTED_CHAINS = 20


class NonFiniteError(FloatingPointError):
    """A log density or its gradient became NaN or infinite.

    Attributes
    ----------
    chains : list
        Offending chain indices (ints, or index tuples for multi-dimensional batches).
    step : int or None
        The step at which it happened; 0 is the evaluation of the initial state.
    quantity : str
        What was non-finite.
    """

    def __init__(
        self,
        chains: Sequence[int | tuple[int, ...]],
        step: int | None = None,
        quantity: str = "log density or gradient",
    ) -> None:
        self.chains = list(chains)
        self.step = step
        self.quantity = quantity
        listed = ", ".join(str(c) for c in self.chains[:_MAX_LISTED_CHAINS])
        if len(self.chains) > _MAX_LISTED_CHAINS:
            listed += f", ... ({len(self.chains)} chains in all)"
        where = "" if step is None else f" at step {step} (0 = initial state)"
        super().__init__(f"non-finite {quantity}{where} in chain(s) [{listed}]")

    def at_step(self, step: int) -> NonFiniteError:
        """The same error, tagged with the step of the sampling loop that raised it."""
        return NonFiniteError(self.chains, step, self.quantity)

    def __reduce__(self):  # keep the error picklable despite the custom __init__
        return (NonFiniteError, (self.chains, self.step, self.quantity))


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


class LangevinInfo(NamedTuple):
    """Diagnostics of :func:`ula`.

    Attributes
    ----------
    log_density : Tensor, shape (n_chains,)
        Log density at the returned positions.
    grad_norm : Tensor, shape (n_steps,)
        Mean over chains of ``||grad log p||_2`` at the start of each step.
    n_nonfinite : int
        Number of (chain, evaluation) pairs with a non-finite log density or gradient; always 0
        when ``check_finite`` is on (the sampler raises instead).
    """

    log_density: Tensor
    grad_norm: Tensor
    n_nonfinite: int


class MALAStepInfo(NamedTuple):
    """Diagnostics of one :func:`mala_step`.

    Attributes
    ----------
    acceptance_prob : Tensor, shape (n_chains,)
        Metropolis-Hastings acceptance probability of each proposal.
    accepted : Tensor, shape (n_chains,), bool
    nonfinite : Tensor, shape (n_chains,), bool
        Proposals whose log density or gradient was not finite (rejected; only possible with
        ``check_finite`` off).
    """

    acceptance_prob: Tensor
    accepted: Tensor
    nonfinite: Tensor


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
    n_nonfinite : int
        Number of non-finite proposals (rejected); always 0 when ``check_finite`` is on.
    """

    acceptance_rate: Tensor
    step_size: Tensor
    log_density: Tensor
    n_nonfinite: int


def _check_steps(n_steps: int, name: str = "n_steps") -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n_steps!r}")


def _broadcast_step(step_size: float | Tensor, position: Tensor, batch_dims: int = 1) -> Tensor:
    """Step size(s) shaped to broadcast against ``position``.

    Parameters
    ----------
    step_size : float or Tensor
        A scalar, or a tensor whose shape is a prefix of ``position.shape[:batch_dims]``
        (size-1 entries broadcast), e.g. ``()`` or ``(n_chains,)``; an output of this
        function is accepted again unchanged.
    position : Tensor, shape (*batch, *event_shape)
    batch_dims : int
        Number of leading batch dimensions of ``position``.

    Returns
    -------
    Tensor, shape (*step_shape, 1, ..., 1) with ``position.ndim`` dimensions
    """
    step = torch.as_tensor(step_size, dtype=position.dtype, device=position.device)
    batch = position.shape[:batch_dims]
    if step.ndim == position.ndim and all(s == 1 for s in step.shape[batch_dims:]):
        step = step.reshape(step.shape[:batch_dims])  # already broadcast by this function
    if step.ndim > batch_dims or any(
        s not in (1, b) for s, b in zip(step.shape, batch, strict=False)
    ):
        raise ValueError(
            f"step_size of shape {tuple(step.shape)} does not broadcast against the chain "
            f"dimensions {tuple(batch)}"
        )
    if not bool(torch.isfinite(step).all()) or bool((step <= 0).any()):
        raise ValueError(f"step_size must be finite and positive, got {step_size!r}")
    return step.reshape(*step.shape, *([1] * (position.ndim - step.ndim)))


def _sum_event(x: Tensor, batch_dims: int = 1) -> Tensor:
    """Sum over the event dimensions: (*batch, *event) -> (*batch,)."""
    return x.reshape(*x.shape[:batch_dims], -1).sum(-1)


def _nonfinite_chains(log_density: Tensor, *grads: Tensor) -> Tensor:
    """Mask of chains whose log density or any gradient is not finite, shape of log_density."""
    bad = ~torch.isfinite(log_density)
    for g in grads:
        bad = bad | ~torch.isfinite(g.reshape(*log_density.shape, -1)).all(-1)
    return bad


def _chain_indices(mask: Tensor) -> list[int | tuple[int, ...]]:
    idx = mask.nonzero()
    if mask.ndim == 1:
        return idx.flatten().tolist()
    return [tuple(row) for row in idx.tolist()]


def _value_and_grad(
    fn: Callable[[Tensor], Tensor], position: Tensor, out_shape: torch.Size
) -> tuple[Tensor, Tensor]:
    """Evaluate ``fn`` and its per-chain gradient with respect to the positions only.

    Parameters
    ----------
    fn : callable
        Maps ``position`` to values of shape ``out_shape``; values of different chains must not
        depend on each other.
    position : Tensor, shape (*out_shape, *event_shape)
    out_shape : torch.Size
        The expected shape of ``fn(position)``.

    Returns
    -------
    value : Tensor, shape out_shape, detached
    grad : Tensor, shape of position, detached
    """
    with torch.enable_grad():
        z = position.detach().requires_grad_(True)
        value = fn(z)
        if not isinstance(value, Tensor) or value.shape != out_shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"log-density function must return shape {tuple(out_shape)} for input of shape "
                f"{tuple(position.shape)}, got {got}"
            )
        grad = None
        if value.requires_grad:
            # inputs=z only: parameters captured by fn get no .grad, and the graph is freed.
            (grad,) = torch.autograd.grad(value.sum(), z, allow_unused=True)
    if grad is None:  # fn does not depend on z (e.g. a flat density)
        grad = torch.zeros_like(position)
    return value.detach(), grad.detach()


def langevin_init(
    log_density_fn: LogDensityFn, position: Tensor, *, check_finite: bool = True
) -> LangevinState:
    """Evaluate the target at ``position`` and cache log density and gradient.

    Parameters
    ----------
    log_density_fn : callable
        ``(n_chains, *event_shape) -> (n_chains,)``.
    position : Tensor, shape (n_chains, *event_shape)
    check_finite : bool
        Raise :class:`NonFiniteError` if any chain's value or gradient is not finite.

    Returns
    -------
    LangevinState
    """
    if position.ndim < 1 or not position.is_floating_point():
        raise ValueError(
            f"position must be a floating tensor of shape (n_chains, *event_shape), got "
            f"{position.dtype} of shape {tuple(position.shape)}"
        )
    log_density, grad = _value_and_grad(log_density_fn, position, position.shape[:1])
    if check_finite:
        bad = _nonfinite_chains(log_density, grad)
        if bool(bad.any()):
            raise NonFiniteError(_chain_indices(bad))
    return LangevinState(position.detach(), log_density, grad)


def _langevin_proposal(
    position: Tensor, grad: Tensor, step: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama step of the overdamped Langevin diffusion (eq. 11).

    Returns the proposal ``z + eta grad + sqrt(2 eta) xi`` and its drift-only mean.
    """
    noise = torch.randn(
        position.shape, generator=generator, dtype=position.dtype, device=position.device
    )
    mean = position + step * grad
    return mean + torch.sqrt(2 * step) * noise, mean


def ula_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    *,
    step_size: float | Tensor,
    generator: torch.Generator | None,
    check_finite: bool = True,
) -> LangevinState:
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
    check_finite : bool
        Raise :class:`NonFiniteError` if the new log density or gradient is not finite.

    Returns
    -------
    LangevinState
        The new positions, evaluated.
    """
    step = _broadcast_step(step_size, state.position)
    return _ula_step(log_density_fn, state, step, generator, check_finite)


def _ula_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    step: Tensor,
    generator: torch.Generator | None,
    check_finite: bool,
) -> LangevinState:
    """:func:`ula_step` with ``step`` already validated and broadcast (no host sync)."""
    proposal, _ = _langevin_proposal(state.position, state.grad, step, generator)
    return langevin_init(log_density_fn, proposal, check_finite=check_finite)


def ula(
    log_density_fn: LogDensityFn,
    z0: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    check_finite: bool = True,
) -> tuple[Tensor, LangevinInfo]:
    """Run the unadjusted Langevin algorithm (eq. 11) on all chains at once.

    ULA has no accept/reject step, so its stationary law is biased by ``O(eta)``; on
    ``N(m, s^2)`` it is ``N(m, s^2 / (1 - eta / (2 s^2)))``.

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
    check_finite : bool
        Raise :class:`NonFiniteError` (naming the step and chains) as soon as a log density or
        gradient is not finite. When off, nothing is checked per step (no host
        synchronisation) and the count is reported in the info instead.

    Returns
    -------
    z : Tensor, shape (n_chains, *event_shape)
        Final positions, detached.
    info : LangevinInfo
    """
    _check_steps(n_steps)
    step = _broadcast_step(step_size, z0)
    try:
        state = langevin_init(log_density_fn, z0, check_finite=check_finite)
    except NonFiniteError as err:
        raise err.at_step(0) from None
    n_bad = _nonfinite_chains(state.log_density, state.grad).sum()
    grad_norms = []
    for i in range(n_steps):
        grad_norms.append(state.grad.reshape(len(z0), -1).norm(dim=-1).mean())
        try:
            state = _ula_step(log_density_fn, state, step, generator, check_finite)
        except NonFiniteError as err:
            raise err.at_step(i + 1) from None
        if not check_finite:
            n_bad = n_bad + _nonfinite_chains(state.log_density, state.grad).sum()
    grad_norm = torch.stack(grad_norms) if grad_norms else z0.new_zeros(0)
    return state.position, LangevinInfo(state.log_density, grad_norm, int(n_bad))


def mala_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    *,
    step_size: float | Tensor,
    generator: torch.Generator | None,
    check_finite: bool = True,
) -> tuple[LangevinState, MALAStepInfo]:
    """One Metropolis-adjusted Langevin step, per chain.

    The ULA move (eq. 11) is used as a proposal ``q(z' | z) = N(z + eta grad log p(z), 2 eta I)``
    and accepted with probability
    ``min(1, p(z') q(z | z') / (p(z) q(z' | z)))``; the proposal is asymmetric, so both
    ``q`` terms are needed.

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
    check_finite : bool
        Raise :class:`NonFiniteError` if a proposal's log density or gradient is not finite;
        when off, such proposals are rejected.

    Returns
    -------
    state : LangevinState
    info : MALAStepInfo
    """
    step = _broadcast_step(step_size, state.position)
    return _mala_step(log_density_fn, state, step, generator, check_finite)


def _mala_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    step: Tensor,
    generator: torch.Generator | None,
    check_finite: bool,
) -> tuple[LangevinState, MALAStepInfo]:
    """:func:`mala_step` with ``step`` already validated and broadcast (no host sync)."""
    z = state.position
    proposal, forward_mean = _langevin_proposal(z, state.grad, step, generator)
    new = langevin_init(log_density_fn, proposal, check_finite=check_finite)
    backward_mean = proposal + step * new.grad
    # log q(a | b) = -||a - mean(b)||^2 / (4 eta) + const; the constants cancel per chain.
    log_q_forward = -_sum_event((proposal - forward_mean) ** 2 / (4 * step))
    log_q_backward = -_sum_event((z - backward_mean) ** 2 / (4 * step))
    log_ratio = new.log_density - state.log_density + log_q_backward - log_q_forward
    # A NaN ratio can only come from a non-finite proposal (check_finite off): reject it.
    nonfinite = _nonfinite_chains(new.log_density, new.grad)
    log_ratio = torch.where(nonfinite | torch.isnan(log_ratio), -math.inf, log_ratio)
    acceptance_prob = torch.exp(log_ratio.clamp(max=0.0))
    u = torch.rand(len(z), generator=generator, dtype=z.dtype, device=z.device)
    accepted = u < acceptance_prob
    keep = accepted.reshape(-1, *([1] * (z.ndim - 1)))
    new_state = LangevinState(
        torch.where(keep, new.position, z),
        torch.where(accepted, new.log_density, state.log_density),
        torch.where(keep, new.grad, state.grad),
    )
    return new_state, MALAStepInfo(acceptance_prob, accepted, nonfinite)


def mala(
    log_density_fn: LogDensityFn,
    z0: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    n_warmup: int = 0,
    target_accept: float = 0.574,
    check_finite: bool = True,
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
    check_finite : bool
        Raise :class:`NonFiniteError` on a non-finite log density or gradient; when off,
        non-finite proposals are rejected and counted.

    Returns
    -------
    z : Tensor, shape (n_chains, *event_shape)
        Final positions, detached.
    info : MALAInfo
    """
    _check_steps(n_steps)
    _check_steps(n_warmup, "n_warmup")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    n_chains = len(z0)
    step = _broadcast_step(step_size, z0).reshape(-1).expand(n_chains).clone()  # (n_chains,)

    try:
        state = langevin_init(log_density_fn, z0, check_finite=check_finite)
    except NonFiniteError as err:
        raise err.at_step(0) from None
    n_bad = _nonfinite_chains(state.log_density, state.grad).sum()

    event_ones = [1] * (z0.ndim - 1)

    def advance(state: LangevinState, eta: Tensor, i: int) -> tuple[LangevinState, MALAStepInfo]:
        try:
            eta = eta.reshape(n_chains, *event_ones)
            return _mala_step(log_density_fn, state, eta, generator, check_finite)
        except NonFiniteError as err:
            raise err.at_step(i) from None

    # Stochastic approximation on log eta, independently per chain.
    log_step = step.log()
    for i in range(n_warmup):
        state, info = advance(state, log_step.exp(), i + 1)
        n_bad = n_bad + info.nonfinite.sum()
        gain = _RM_GAIN * (i + 1) ** -_RM_KAPPA
        log_step = log_step + gain * (info.acceptance_prob - target_accept)
    step = log_step.exp()

    n_accepted = torch.zeros_like(step)
    for i in range(n_steps):
        state, info = advance(state, step, n_warmup + i + 1)
        n_accepted = n_accepted + info.accepted.to(step.dtype)
        n_bad = n_bad + info.nonfinite.sum()
    acceptance_rate = n_accepted / n_steps if n_steps > 0 else torch.full_like(step, math.nan)
    return state.position, MALAInfo(acceptance_rate, step, state.log_density, int(n_bad))
