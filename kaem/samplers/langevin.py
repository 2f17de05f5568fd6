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
- ``bounds=(low, high)`` confines every coordinate to ``[low, high]`` (a KAEM prior's domain):
  proposals are reflected at both ends, so chains never leave the support. Reflection is the
  boundary condition of the Langevin diffusion whose stationary law is the target restricted
  to the box; ULA discretises it with the usual ``O(eta)`` bias, and MALA corrects exactly
  with the reflected (folded) proposal density in its acceptance ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Bounds",
    "LangevinInfo",
    "LangevinState",
    "MALAInfo",
    "MALAStepInfo",
    "NonFiniteError",
    "langevin_init",
    "mala",
    "mala_step",
    "reflect",
    "ula",
    "ula_step",
]

LogDensityFn = Callable[[Tensor], Tensor]
#: ``(low, high)``: the interval every coordinate of a chain lives on.
Bounds = tuple[float, float]

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


def _check_bounds(bounds: Bounds | None) -> Bounds | None:
    if bounds is None:
        return None
    low, high = (float(b) for b in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"bounds must be finite with high > low, got {bounds!r}")
    return low, high


def reflect(x: Tensor, low: float, high: float) -> Tensor:
    """Fold ``x`` into ``[low, high]`` by reflecting at both ends, as often as needed.

    The map is periodic with period ``2 (high - low)``: ``x`` and its mirror images
    ``x + 2 k w`` and ``2 low - x + 2 k w`` all land on the same point.
    """
    width = high - low
    folded = torch.remainder(x - low, 2.0 * width)
    return (low + width - (folded - width).abs()).clamp_(low, high)


#: Mirror images on each side of the nearest one in the folded proposal density. With steps
#: of at most ``(high - low)^2 / 16`` the images left out weigh less than ``exp(-96)`` of it.
_IMAGES = 2


def _max_reflected_step(bounds: Bounds) -> float:
    return (bounds[1] - bounds[0]) ** 2 / 16.0


def _check_reflected_step(step: Tensor, bounds: Bounds | None) -> None:
    """MALA's folded proposal density sums :data:`_IMAGES` images: refuse larger steps."""
    if bounds is not None and float(step.max()) > _max_reflected_step(bounds):
        raise ValueError(
            f"with bounds {bounds} MALA's step size must be at most (high - low)^2 / 16 = "
            f"{_max_reflected_step(bounds):g}, got {float(step.max()):g}"
        )


def _log_proposal(
    to: Tensor, mean: Tensor, step: Tensor, bounds: Bounds | None, batch_dims: int = 1
) -> Tensor:
    """``log q(to | mean)`` of the Langevin proposal ``N(mean, 2 eta I)``, reflected if bounded.

    Up to a constant that cancels in the Metropolis-Hastings ratio (it depends on ``eta``
    only). Reflected, the density of a point is the sum over all its mirror images of the
    Gaussian; the nearest images in each family (``to + 2 k w`` and ``2 low - to + 2 k w``)
    are summed in log space.

    Returns
    -------
    Tensor, shape (*batch,)
    """
    if bounds is None:
        return -_sum_event((to - mean) ** 2 / (4 * step), batch_dims)
    low, high = bounds
    period = 2.0 * (high - low)
    shifts = period * torch.arange(-_IMAGES, _IMAGES + 1, dtype=to.dtype, device=to.device)
    terms = []
    for image in (to, 2.0 * low - to):
        nearest = image + period * torch.round((mean - image) / period)
        diff = nearest[..., None] + shifts - mean[..., None]
        terms.append(-(diff**2) / (4 * step[..., None]))
    return _sum_event(torch.logsumexp(torch.cat(terms, dim=-1), dim=-1), batch_dims)


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
    position: Tensor,
    grad: Tensor,
    step: Tensor,
    generator: torch.Generator | None,
    bounds: Bounds | None = None,
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama step of the overdamped Langevin diffusion (eq. 11).

    Returns the proposal ``z + eta grad + sqrt(2 eta) xi`` (reflected into ``bounds``) and its
    drift-only mean.
    """
    noise = torch.randn(
        position.shape, generator=generator, dtype=position.dtype, device=position.device
    )
    mean = position + step * grad
    proposal = mean + torch.sqrt(2 * step) * noise
    if bounds is not None:
        proposal = reflect(proposal, *bounds)
    return proposal, mean


def ula_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    *,
    step_size: float | Tensor,
    generator: torch.Generator | None,
    check_finite: bool = True,
    bounds: Bounds | None = None,
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
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.

    Returns
    -------
    LangevinState
        The new positions, evaluated.
    """
    step = _broadcast_step(step_size, state.position)
    return _ula_step(log_density_fn, state, step, generator, check_finite, _check_bounds(bounds))


def _ula_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    step: Tensor,
    generator: torch.Generator | None,
    check_finite: bool,
    bounds: Bounds | None,
) -> LangevinState:
    """:func:`ula_step` with ``step`` already validated and broadcast (no host sync)."""
    proposal, _ = _langevin_proposal(state.position, state.grad, step, generator, bounds)
    return langevin_init(log_density_fn, proposal, check_finite=check_finite)


def ula(
    log_density_fn: LogDensityFn,
    z0: Tensor,
    *,
    step_size: float | Tensor,
    n_steps: int,
    generator: torch.Generator | None,
    check_finite: bool = True,
    bounds: Bounds | None = None,
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
    check_finite : bool
        Raise :class:`NonFiniteError` (naming the step and chains) as soon as a log density or
        gradient is not finite. When off, nothing is checked per step (no host
        synchronisation) and the count is reported in the info instead.
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.

    Returns
    -------
    z : Tensor, shape (n_chains, *event_shape)
        Final positions, detached.
    info : LangevinInfo
    """
    _check_steps(n_steps)
    bounds = _check_bounds(bounds)
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
            state = _ula_step(log_density_fn, state, step, generator, check_finite, bounds)
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
    bounds: Bounds | None = None,
) -> tuple[LangevinState, MALAStepInfo]:
    """One Metropolis-adjusted Langevin step, per chain.

    The ULA move (eq. 11) is used as a proposal ``q(z' | z) = N(z + eta grad log p(z), 2 eta I)``
    and accepted with probability
    ``min(1, p(z') q(z | z') / (p(z) q(z' | z)))``; the proposal is asymmetric, so both
    ``q`` terms are needed. With ``bounds`` the proposal is reflected into the box and ``q``
    is the reflected (folded) Gaussian density, so the chain is exact for the target on the
    box; steps are then limited to ``(high - low)^2 / 16``.

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
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.

    Returns
    -------
    state : LangevinState
    info : MALAStepInfo
    """
    bounds = _check_bounds(bounds)
    step = _broadcast_step(step_size, state.position)
    _check_reflected_step(step, bounds)
    return _mala_step(log_density_fn, state, step, generator, check_finite, bounds)


def _mala_step(
    log_density_fn: LogDensityFn,
    state: LangevinState,
    step: Tensor,
    generator: torch.Generator | None,
    check_finite: bool,
    bounds: Bounds | None,
) -> tuple[LangevinState, MALAStepInfo]:
    """:func:`mala_step` with ``step`` already validated and broadcast (no host sync)."""
    z = state.position
    proposal, forward_mean = _langevin_proposal(z, state.grad, step, generator, bounds)
    new = langevin_init(log_density_fn, proposal, check_finite=check_finite)
    backward_mean = proposal + step * new.grad
    log_q_forward = _log_proposal(proposal, forward_mean, step, bounds)
    log_q_backward = _log_proposal(z, backward_mean, step, bounds)
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
    check_finite : bool
        Raise :class:`NonFiniteError` on a non-finite log density or gradient; when off,
        non-finite proposals are rejected and counted.
    bounds : (float, float) or None
        Confine every coordinate to ``[low, high]`` by reflecting proposals at both ends.
        (see :func:`mala_step`); adaptation keeps the steps within the limit there.

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
    bounds = _check_bounds(bounds)
    step = _broadcast_step(step_size, z0).reshape(-1).expand(n_chains).clone()  # (n_chains,)
    _check_reflected_step(step, bounds)
    max_log_step = math.inf if bounds is None else math.log(_max_reflected_step(bounds))

    try:
        state = langevin_init(log_density_fn, z0, check_finite=check_finite)
    except NonFiniteError as err:
        raise err.at_step(0) from None
    n_bad = _nonfinite_chains(state.log_density, state.grad).sum()

    event_ones = [1] * (z0.ndim - 1)

    def advance(state: LangevinState, eta: Tensor, i: int) -> tuple[LangevinState, MALAStepInfo]:
        try:
            eta = eta.reshape(n_chains, *event_ones)
            return _mala_step(log_density_fn, state, eta, generator, check_finite, bounds)
        except NonFiniteError as err:
            raise err.at_step(i) from None

    # Stochastic approximation on log eta, independently per chain.
    log_step = step.log()
    for i in range(n_warmup):
        state, info = advance(state, log_step.exp(), i + 1)
        n_bad = n_bad + info.nonfinite.sum()
        gain = _RM_GAIN * (i + 1) ** -_RM_KAPPA
        log_step = (log_step + gain * (info.acceptance_prob - target_accept)).clamp(
            max=max_log_step
        )
    step = log_step.exp()

    n_accepted = torch.zeros_like(step)
    for i in range(n_steps):
        state, info = advance(state, step, n_warmup + i + 1)
        n_accepted = n_accepted + info.accepted.to(step.dtype)
        n_bad = n_bad + info.nonfinite.sum()
    acceptance_rate = n_accepted / n_steps if n_steps > 0 else torch.full_like(step, math.nan)
    return state.position, MALAInfo(acceptance_rate, step, state.log_density, int(n_bad))
