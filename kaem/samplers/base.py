"""What every Langevin kernel shares: validation, reflection, proposals and non-finite records.

Conventions of :mod:`kaem.samplers.langevin` and :mod:`kaem.samplers.tempering`:

- A *state* is a NamedTuple whose first three fields are ``position`` of shape
  ``(*batch, *event)``, ``log_density`` of shape ``batch`` and ``grad`` (of ``log_density``
  with respect to ``position``) of the shape of ``position``; further fields (a tempered
  state's split prior and likelihood terms) travel with them. ``batch`` is ``(n_chains,)`` for
  one population and ``(K, B)`` for a tempered one.
- An *evaluate* callable maps positions to such a state; a *kernel* maps
  ``(evaluate, state, step, generator, bounds)`` to ``(state, info)``, never raises and never
  synchronises with the device: a non-finite value is recorded in ``info.nonfinite``, each
  chain's first one in the run's :class:`NonFiniteRecord`, and the caller decides what to do
  with it (:func:`nonfinite_check`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from kaem.checks import Check, check_count

__all__ = [
    "Bounds",
    "LogDensityFn",
    "NonFiniteError",
    "NonFiniteRecord",
    "nonfinite_check",
    "nonfinite_error",
    "reflect",
]

LogDensityFn = Callable[[Tensor], Tensor]
#: ``(low, high)``: the interval every coordinate of a chain lives on.
Bounds = tuple[float, float]
State = TypeVar("State", bound=tuple)

_MAX_LISTED_CHAINS = 20
#: Mirror images on each side of the nearest one in the folded proposal density. With steps
#: of at most ``(high - low)^2 / 16`` the images left out weigh less than ``exp(-96)`` of it.
_IMAGES = 2


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

    def __reduce__(self):  # keep the error picklable despite the custom __init__
        return (NonFiniteError, (self.chains, self.step, self.quantity))


class NonFiniteRecord:
    """The first step at which each chain met a non-finite value, kept on the device.

    Updating it costs a few element-wise operations and no host synchronisation; whoever
    runs the chains reads it when it decides (:func:`nonfinite_check`).

    Parameters
    ----------
    batch_shape : torch.Size
        Shape of the chains, e.g. ``(n_chains,)`` or ``(K, B)``.
    device : torch.device
    """

    def __init__(self, batch_shape: torch.Size, device: torch.device) -> None:
        self.first = torch.full(batch_shape, -1, dtype=torch.int64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, nonfinite: Tensor, step: int) -> None:
        """Record the chains ``nonfinite`` (bool, batch shape) at ``step``."""
        self.first = torch.where((self.first < 0) & nonfinite, step, self.first)
        self.count = self.count + nonfinite.sum()


def nonfinite_check(first: Tensor, quantity: str = "log density or gradient") -> Check:
    """The :class:`~kaem.checks.Check` of a run's record: failed if any chain met a non-finite
    value, with the :class:`NonFiniteError` naming the earliest step and its chains.

    Parameters
    ----------
    first : Tensor, batch shape, int64
        Each chain's first non-finite step, -1 if none (``info.first_nonfinite`` of a run).
    quantity : str
        What was non-finite, for the message.
    """
    return Check((first >= 0).any(), lambda: nonfinite_error(first, quantity))


def nonfinite_error(first: Tensor, quantity: str = "log density or gradient") -> Exception | None:
    """The :class:`NonFiniteError` of a record's ``first`` steps, or None if every chain was
    finite (one synchronisation).

    Parameters
    ----------
    first : Tensor, batch shape, int64
        :attr:`NonFiniteRecord.first`: each chain's first non-finite step, -1 if none.
    quantity : str
        What was non-finite, for the message.
    """
    bad = first >= 0
    if not bool(bad.any()):
        return None
    step = int(first[bad].min())
    return NonFiniteError(chain_indices(first == step), step, quantity)


def check_steps(n_steps: int, name: str = "n_steps") -> None:
    check_count(name, n_steps, 0)


def check_bounds(bounds: Bounds | None) -> Bounds | None:
    if bounds is None:
        return None
    low, high = (float(b) for b in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"bounds must be finite with high > low, got {bounds!r}")
    return low, high


def broadcast_step(step_size: float | Tensor, position: Tensor, batch_dims: int = 1) -> Tensor:
    """Step size(s) shaped to broadcast against ``position``.

    A Python number is checked on the host; a tensor is checked once here (one
    synchronisation per run, none per step).

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
    if not isinstance(step_size, Tensor):
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be finite and positive, got {step_size!r}")
        shape = [1] * position.ndim
        return torch.full(shape, float(step_size), dtype=position.dtype, device=position.device)
    step = step_size.to(dtype=position.dtype, device=position.device)
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


def reflect(x: Tensor, low: float, high: float) -> Tensor:
    """Fold ``x`` into ``[low, high]`` by reflecting at both ends, as often as needed.

    The map is periodic with period ``2 (high - low)``: ``x`` and its mirror images
    ``x + 2 k w`` and ``2 low - x + 2 k w`` all land on the same point.
    """
    width = high - low
    folded = torch.remainder(x - low, 2.0 * width)
    return (low + width - (folded - width).abs()).clamp_(low, high)


def max_reflected_step(bounds: Bounds) -> float:
    """The largest step for which :func:`log_proposal`'s images suffice."""
    return (bounds[1] - bounds[0]) ** 2 / 16.0


def check_reflected_step(step_size: float | Tensor, bounds: Bounds | None) -> None:
    """MALA's folded proposal density sums :data:`_IMAGES` images: refuse larger steps.

    A Python number is checked on the host; a tensor costs one synchronisation.
    """
    if bounds is None:
        return
    largest = float(step_size.max()) if isinstance(step_size, Tensor) else float(step_size)
    if largest > max_reflected_step(bounds):
        raise ValueError(
            f"with bounds {bounds} MALA's step size must be at most (high - low)^2 / 16 = "
            f"{max_reflected_step(bounds):g}, got {largest:g}"
        )


def sum_event(x: Tensor, batch_dims: int) -> Tensor:
    """Sum over the event dimensions: (*batch, *event) -> (*batch,)."""
    return x.reshape(*x.shape[:batch_dims], -1).sum(-1)


def langevin_proposal(
    position: Tensor,
    grad: Tensor,
    step: Tensor,
    generator: torch.Generator | None,
    bounds: Bounds | None,
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


def log_proposal(
    to: Tensor, mean: Tensor, step: Tensor, bounds: Bounds | None, batch_dims: int
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
        return -sum_event((to - mean) ** 2 / (4 * step), batch_dims)
    low, high = bounds
    period = 2.0 * (high - low)
    shifts = period * torch.arange(-_IMAGES, _IMAGES + 1, dtype=to.dtype, device=to.device)
    terms = []
    for image in (to, 2.0 * low - to):
        nearest = image + period * torch.round((mean - image) / period)
        diff = nearest[..., None] + shifts - mean[..., None]
        terms.append(-(diff**2) / (4 * step[..., None]))
    return sum_event(torch.logsumexp(torch.cat(terms, dim=-1), dim=-1), batch_dims)


def nonfinite_chains(log_density: Tensor, *grads: Tensor) -> Tensor:
    """Mask of chains whose log density or any gradient is not finite, shape of log_density."""
    bad = ~torch.isfinite(log_density)
    for g in grads:
        bad = bad | ~torch.isfinite(g.reshape(*log_density.shape, -1)).all(-1)
    return bad


def chain_indices(mask: Tensor) -> list[int | tuple[int, ...]]:
    idx = mask.nonzero()
    if mask.ndim == 1:
        return idx.flatten().tolist()
    return [tuple(row) for row in idx.tolist()]


def select(mask: Tensor, new: State, old: State) -> State:
    """Field by field, ``new`` where ``mask`` (batch shape) holds and ``old`` elsewhere."""
    fields = []
    for a, b in zip(new, old, strict=True):
        fields.append(torch.where(mask.reshape(*mask.shape, *([1] * (a.ndim - mask.ndim))), a, b))
    return type(new)(*fields)


def value_and_grads(
    fns: Sequence[Callable[[Tensor], Tensor]],
    position: Tensor,
    out_shapes: Sequence[tuple[int, ...]],
    names: Sequence[str],
) -> list[tuple[Tensor, Tensor]]:
    """Values of ``fns`` at ``position`` and their gradients in the positions only.

    All gradients come from one backward pass through copies of ``position``, one per
    function, so terms that share part of their graph (a prior and a likelihood that both
    read the same decoded batch) are differentiated once.

    Parameters
    ----------
    fns : sequence of callable
        Each maps ``position`` to values of its ``out_shape``; values of different chains must
        not depend on each other.
    position : Tensor, shape (*batch, *event_shape)
    out_shapes : sequence of tuple of int
        Expected shape of each value.
    names : sequence of str
        How each function is named in a shape error.

    Returns
    -------
    list of (value, grad)
        Detached, ``value`` of its ``out_shape`` and ``grad`` of the shape of ``position``.
    """
    with torch.enable_grad():
        copies = [position.detach().requires_grad_(True) for _ in fns]
        values = []
        for fn, z, shape, name in zip(fns, copies, out_shapes, names, strict=True):
            value = fn(z)
            if not isinstance(value, Tensor) or tuple(value.shape) != tuple(shape):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{name} must return shape {tuple(shape)} for input of shape "
                    f"{tuple(z.shape)}, got {got}"
                )
            values.append(value)
        live = [i for i, v in enumerate(values) if v.requires_grad]
        grads: list[Tensor | None] = [None] * len(fns)
        if live:
            # inputs = the position copies only: parameters captured by fns get no .grad.
            total = sum(values[i].sum() for i in live)
            found = torch.autograd.grad(total, [copies[i] for i in live], allow_unused=True)
            for i, g in zip(live, found, strict=True):
                grads[i] = g
    return [
        (v.detach(), torch.zeros_like(position) if g is None else g.detach())
        for v, g in zip(values, grads, strict=True)
    ]
