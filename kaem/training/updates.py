"""Optimiser updates that never wait for the device, judged when the host next looks.

An update runs the step function, backpropagates and applies Adam. What could make it bad
stays on the device: the step's own checks (its samplers' and likelihoods' non-finite values,
:class:`~kaem.checks.Check`), the loss and every gradient, reduced to one flag. The host reads
the flags of the updates since it last looked, with the logged values, in one transfer
(:meth:`Updates.settle`, before a log row, a checkpoint or a grid update) and raises for the
first bad update, naming its step. Updates after a bad one are applied like any other, so
after an error the model in memory holds them; nothing that reaches the disk does, since a
checkpoint is written only after its updates were judged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kaem.checks import Check, first_failure
from kaem.training.steps import Metrics, Progress, StepFn

__all__ = ["NonFiniteLossError", "Updates", "adam"]

#: Device types that have a fused Adam.
_FUSED_DEVICES = ("cpu", "cuda")


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


def adam(
    params: Iterable[Tensor] | list[dict],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """Adam, fused (one kernel for every parameter) where the device has it."""
    fused = True if device.type in _FUSED_DEVICES else None
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=fused)


class _Pending(NamedTuple):
    """An update's verdict, on the device but ``where`` and ``names``."""

    where: str  # the update's place in the run, for the error message
    loss: Tensor  # shape ()
    names: list[str]  # the parameters that have a gradient
    finite_grads: Tensor  # shape (len(names),), bool
    checks: tuple[Check, ...]  # the step's own checks
    failed: Tensor  # shape (), bool: any of the above


class Updates:
    """Apply ``step_fn``'s updates to ``model`` with ``optimizer``, judging them lazily.

    Parameters
    ----------
    model
        The model, on its training device.
    optimizer
        Its optimiser (:func:`adam`).
    step_fn
        The criterion's step function (:mod:`kaem.training.steps`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn) -> None:
        self.model, self.optimizer, self.step_fn = model, optimizer, step_fn
        self._pending: list[_Pending] = []
        self._latest: tuple[Tensor, Metrics] | None = None

    def __call__(self, x: Tensor, rng: torch.Generator, progress: Progress, where: str) -> None:
        """One update on the batch ``x``; ``where`` names it in an error message."""
        loss, metrics, checks = self.step_fn(self.model, x, rng, progress)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._pending.append(_judged(self.model, where, loss.detach(), checks))
        self._latest = (loss.detach(), metrics)
        self.optimizer.step()

    def settle(self) -> dict[str, float]:
        """Judge the updates since the last call, with one read of the device.

        Returns
        -------
        dict
            ``loss`` and the metrics of the latest update, as Python numbers.

        Raises
        ------
        NonFiniteLossError
            For the first update whose loss, gradients or checks failed, naming its step;
            a failed check whose error is not a :class:`FloatingPointError` is raised as it is.
        """
        if self._latest is None:
            return {}
        loss, metrics = self._latest
        tensors = [loss, *(v for v in metrics.values() if isinstance(v, Tensor))]
        values = torch.stack(tensors + [p.failed for p in self._pending]).tolist()
        failed = values[len(tensors) :]
        if any(failed):
            _raise_for(self._pending[failed.index(True)])
        self._pending.clear()
        numbers = iter(values)
        row = {"loss": next(numbers)}
        row.update((k, next(numbers) if isinstance(v, Tensor) else v) for k, v in metrics.items())
        return row


def _judged(model: nn.Module, where: str, loss: Tensor, checks: tuple[Check, ...]) -> _Pending:
    """The finiteness of ``loss`` and every gradient, with the step's checks, as one flag."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    finite_grads = torch.stack([torch.isfinite(g).all() for _, g in named]) if named else None
    flags = [~torch.isfinite(loss), *(c.failed for c in checks)]
    if finite_grads is not None:
        flags.append(~finite_grads.all())
    else:
        finite_grads = loss.new_ones(0, dtype=torch.bool)
    failed = torch.stack(flags).any()
    return _Pending(where, loss, [name for name, _ in named], finite_grads, checks, failed)


def _raise_for(pending: _Pending) -> None:
    """Raise the error of a failed update (reading the device as much as it needs)."""
    flags = torch.stack([c.failed for c in pending.checks]).tolist() if pending.checks else []
    exc = first_failure(pending.checks, flags)
    if isinstance(exc, FloatingPointError):
        raise NonFiniteLossError(f"training failed {pending.where}: {exc}") from exc
    if exc is not None:
        raise exc
    if not bool(torch.isfinite(pending.loss)):
        raise NonFiniteLossError(f"loss became {float(pending.loss)} {pending.where}")
    finite = pending.finite_grads.tolist()
    name = next(n for n, ok in zip(pending.names, finite, strict=True) if not ok)
    raise NonFiniteLossError(f"gradient of {name} became non-finite {pending.where}")
