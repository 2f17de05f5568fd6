"""Optimiser updates that never wait for the device, judged when the host has to look.

An update runs the step function inside :func:`kaem.checks.deferred_checks`, backpropagates,
and reduces the checks of the step, the loss and every gradient to one flag on the device.
Once a flag is set, Adam skips that update and every later one: fused Adam reads the flag
on the device as its ``found_inf``, so the parameters stay those of the last good update
without a synchronisation. The host reads the flags only when it must decide, in
:meth:`Updates.settle` (before a log row, a checkpoint or a grid update), and then raises for
the first bad update with the message it would have raised at that update, naming its step.
On a device without fused Adam every update is judged before Adam steps.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kaem.checks import DeferredCheck, deferred_checks, first_failure
from kaem.config import TrainConfig
from kaem.training.steps import Metrics, Progress, StepFn

__all__ = ["NonFiniteLossError", "Updates", "adam"]

#: Device types whose fused Adam can skip an update on a device flag (``found_inf``).
_FUSED_DEVICES = ("cpu", "cuda")


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


def adam(
    groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Adam with the settings of ``cfg``: fused where the device has it (see module doc)."""
    fused = True if device.type in _FUSED_DEVICES else None
    return torch.optim.Adam(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, fused=fused)


class _Pending(NamedTuple):
    """What an update leaves for :meth:`Updates.settle`: all on the device but ``where``."""

    where: str
    checks: list[DeferredCheck]
    loss: Tensor  # shape ()
    names: list[str]  # the parameters that have a gradient
    grad_max: Tensor  # shape (len(names),): the largest |gradient| of each
    failed: Tensor  # shape (), bool


class Updates:
    """Apply ``step_fn``'s updates to ``model`` with ``optimizer``, judging them lazily.

    Parameters
    ----------
    model
        The model, on its training device.
    optimizer
        Its optimiser; fused Adam (:func:`adam`) skips bad updates on the device.
    step_fn
        The criterion's step function (:mod:`kaem.training.steps`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn) -> None:
        self.model, self.optimizer, self.step_fn = model, optimizer, step_fn
        self._fused = all(group.get("fused") for group in optimizer.param_groups)
        device = next(model.parameters()).device
        # 1.0 once any update failed: fused Adam then leaves parameters and state alone.
        self._failed = torch.zeros((), dtype=torch.float32, device=device)
        if self._fused:
            optimizer.found_inf = self._failed
        self._pending: list[_Pending] = []
        self._latest: tuple[Tensor, Metrics] | None = None

    def __call__(self, x: Tensor, rng: torch.Generator, progress: Progress, where: str) -> None:
        """One update on the batch ``x``; ``where`` names it in an error message."""
        with deferred_checks() as checks:
            loss, metrics = self.step_fn(self.model, x, rng, progress)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._pending.append(_judged(self.model, where, checks, loss.detach()))
        self._failed.masked_fill_(self._pending[-1].failed, 1.0)
        self._latest = (loss.detach(), metrics)
        if not self._fused:
            self.settle()  # nothing would stop a bad update on the device
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
            a failed check that is not a :class:`FloatingPointError` is raised as it is.
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


def _judged(model: nn.Module, where: str, checks: list[DeferredCheck], loss: Tensor) -> _Pending:
    """The finiteness of ``loss`` and every gradient, with the step's checks, as one flag."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    grads = [g for _, g in named]
    grad_max = torch.stack(torch._foreach_norm(grads, math.inf)) if grads else loss.new_zeros(0)
    finite = torch.isfinite(torch.cat([loss.reshape(1), grad_max])).all()
    failed = torch.stack([~finite, *(c.failed for c in checks)]).any() if checks else ~finite
    return _Pending(where, checks, loss, [name for name, _ in named], grad_max, failed)


def _raise_for(pending: _Pending) -> None:
    """Raise the error of a failed update (reading the device as much as it needs)."""
    exc = first_failure(pending.checks)
    if isinstance(exc, FloatingPointError):
        raise NonFiniteLossError(f"training failed {pending.where}: {exc}") from exc
    if exc is not None:
        raise exc
    if not bool(torch.isfinite(pending.loss)):
        raise NonFiniteLossError(f"loss became {float(pending.loss)} {pending.where}")
    finite = torch.isfinite(pending.grad_max).tolist()
    name = next(n for n, ok in zip(pending.names, finite, strict=True) if not ok)
    raise NonFiniteLossError(f"gradient of {name} became non-finite {pending.where}")
