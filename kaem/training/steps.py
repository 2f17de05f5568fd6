"""Step functions: one per criterion, built once from plain numbers.

A step function maps ``(model, x, generator, progress)`` to a :class:`StepResult`: the
scalar whose gradient is the criterion's learning gradient, the diagnostics to log, and the
checks of its samplers' and likelihoods' values. The factories below take exactly the
arguments of the functions they call, so a config section feeds them unchanged
(:func:`build_step`); the benchmarks call the same step functions.

A step never waits for the device. Its metrics are detached 0-d tensors on the model's
device (or Python numbers the host knows already, such as a step size) and its checks are
flags on the device (:class:`~kaem.checks.Check`); the caller reads both when it next looks
(:class:`kaem.training.Updates`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kaem.baselines.ddpm import ddpm_loss
from kaem.baselines.lebm import lebm_loss
from kaem.baselines.vae import elbo_loss
from kaem.checks import Check
from kaem.config import TrainConfig
from kaem.inference.losses import (
    importance_loss,
    mle_loss,
    thermodynamic_integration,
    thermodynamic_loss,
)
from kaem.inference.posterior import NonFinitePolicy, sample_posterior, sample_power_posteriors
from kaem.samplers import cosine_exponent_schedule, power_temperatures

__all__ = [
    "CRITERIA",
    "Metrics",
    "Progress",
    "StepFn",
    "StepResult",
    "build_step",
    "ddpm_step",
    "elbo_step",
    "importance_step",
    "langevin_step",
    "lebm_step",
    "thermodynamic_step",
]


class Progress(NamedTuple):
    """Where a step sits in the run (schedules such as eq. 40 depend on it)."""

    step: int  # 1-based index of the update being computed
    total: int  # number of updates of the whole run


#: A metric: a detached 0-d tensor on the model's device, or a number the host knows.
Metric = Tensor | float
Metrics = dict[str, Metric]


class StepResult(NamedTuple):
    """What a step function returns.

    Attributes
    ----------
    loss : Tensor, shape ()
        The scalar whose gradient is the criterion's learning gradient.
    metrics : dict
        Diagnostics to log, by name.
    checks : tuple of Check
        The step's value checks (non-finite chains or likelihoods), judged by the caller.
    """

    loss: Tensor
    metrics: Metrics
    checks: tuple[Check, ...] = ()


StepFn = Callable[[nn.Module, Tensor, torch.Generator, Progress], StepResult]


def importance_step(*, n_samples: int, resampler: str, ess_threshold: float) -> StepFn:
    """Importance-sampling maximum likelihood (:func:`kaem.inference.losses.importance_loss`)."""

    def step(model: nn.Module, x: Tensor, generator: torch.Generator, progress: Progress):
        loss, info = importance_loss(
            model,
            x,
            n_samples=n_samples,
            resampler=resampler,
            ess_threshold=ess_threshold,
            generator=generator,
        )
        metrics = {
            "nll": -info.log_evidence.mean(),
            "ess": info.ess.mean(),
            "resampled": info.resampled.float().mean(),
            "mse": info.mse,
        }
        return StepResult(loss, metrics, (info.check,))

    return step


def elbo_step() -> StepFn:
    """The VAE's evidence lower bound (:func:`kaem.baselines.vae.elbo_loss`)."""

    def step(model: nn.Module, x: Tensor, generator: torch.Generator, progress: Progress):
        loss, info = elbo_loss(model, x, generator=generator)
        metrics = {"elbo": info.elbo.mean(), "kl": info.kl.mean(), "mse": info.mse}
        return StepResult(loss, metrics, (info.check,))

    return step


def langevin_step(
    *,
    sampler: str,
    n_steps: int,
    step_size: float,
    nonfinite: NonFinitePolicy,
    max_retries: int,
) -> StepFn:
    """Maximum likelihood with short-run Langevin posterior samples (ULA-MLE, App. F.1)."""

    def step(model: nn.Module, x: Tensor, generator: torch.Generator, progress: Progress):
        post = sample_posterior(
            model,
            x,
            sampler=sampler,
            n_steps=n_steps,
            step_size=step_size,
            nonfinite=nonfinite,
            max_retries=max_retries,
            generator=generator,
        )
        loss, info = mle_loss(model, x, post.z, generator=generator)
        metrics: Metrics = {
            "log_lik": info.log_lik.mean(),
            "mse": info.mse,
            "step_size": post.step_size,
            "retries": post.retries,
        }
        if sampler == "mala":
            metrics["acceptance"] = post.acceptance
        return StepResult(loss, metrics, (post.check,))

    return step


def thermodynamic_step(
    *,
    n_temps: int,
    p_start: float,
    p_end: float,
    n_cycles: int,
    swap_every: int,
    n_chains: int,
    sampler: str,
    n_steps: int,
    step_size: float,
    nonfinite: NonFinitePolicy,
    max_retries: int,
) -> StepFn:
    """The steppingstone criterion over power posteriors (eqs. 21-25, 40).

    ``n_temps``, ``p_start``, ``p_end`` and ``n_cycles`` set the cyclic schedule of eq. 40;
    ``n_chains`` chains per data point and temperature swap every ``swap_every`` steps; the
    Langevin settings (``sampler``, ``n_steps``, ``step_size``, ``nonfinite``,
    ``max_retries``) are those of :func:`langevin_step`.
    """

    def step(model: nn.Module, x: Tensor, generator: torch.Generator, progress: Progress):
        exponent = cosine_exponent_schedule(
            progress.step - 1, progress.total, p_start, p_end, n_cycles
        )
        temperatures = power_temperatures(n_temps, exponent, dtype=x.dtype, device=x.device)
        population = sample_power_posteriors(
            model,
            x,
            temperatures,
            n_chains=n_chains,
            swap_every=swap_every,
            generator=generator,
            exact_prior=True,  # power_temperatures starts at exactly 0
            sampler=sampler,
            n_steps=n_steps,
            step_size=step_size,
            nonfinite=nonfinite,
            max_retries=max_retries,
        )
        loss, info = thermodynamic_loss(model, x, population.z, temperatures, generator=generator)
        trapezium, corrected = thermodynamic_integration(
            temperatures, population.trace_mean, population.trace_var
        )
        metrics: Metrics = {
            "steppingstone": info.steppingstone.mean(),
            "ti_trapezium": trapezium.mean(),
            "ti_corrected": corrected.mean(),
            "exponent": exponent,
            "step_size": population.step_size,
            "retries": population.retries,
        }
        if sampler == "mala":
            metrics["acceptance"] = population.acceptance.nanmean()
        # The exact t = 0 level takes no swaps: pairs from (1, 2) on. A pair that no swap
        # was proposed to in this step logs NaN.
        for k in range(1, n_temps):
            metrics[f"swap_{k}_{k + 1}"] = population.swap_rate[k]
        return StepResult(loss, metrics, (population.check,))

    return step


def lebm_step(
    *, sampler: str, n_steps: int, step_size: float, nonfinite: NonFinitePolicy, max_retries: int
) -> StepFn:
    """Pang et al.'s latent-EBM learning (:func:`kaem.baselines.lebm.lebm_loss`): short-run ULA
    posterior samples (``n_steps``, ``step_size``) and prior samples with the prior's settings.

    Their sampler has no Metropolis correction and no retries, so ``sampler`` must be ``ula``
    and ``nonfinite`` ``raise`` (``max_retries`` is then unused).
    """
    if sampler != "ula":
        raise ValueError(
            f"train.langevin.sampler {sampler!r}: the lebm criterion runs Pang et al.'s "
            "short-run ULA; set train.langevin.sampler: ula"
        )
    if nonfinite != "raise":
        raise ValueError(
            f"train.langevin.nonfinite {nonfinite!r}: the lebm criterion stops on a non-finite "
            "chain; set train.langevin.nonfinite: raise"
        )

    def step(model: nn.Module, x: Tensor, generator: torch.Generator, progress: Progress):
        loss, info = lebm_loss(model, x, n_steps=n_steps, step_size=step_size, generator=generator)
        metrics = {"log_lik": info.log_lik.mean(), "energy_gap": info.energy_gap, "mse": info.mse}
        return StepResult(loss, metrics)

    return step


def ddpm_step() -> StepFn:
    """The DDPM's noise-prediction loss (:func:`kaem.baselines.ddpm.ddpm_loss`, Ho et al.
    2020 eq. 14): one step ``t`` and one noise draw per image."""

    def step(model: nn.Module, x: Tensor, generator: torch.Generator, progress: Progress):
        loss, info = ddpm_loss(model, x, generator=generator)
        return StepResult(loss, {"noise_mse": info.per_image.mean()})

    return step


#: Criterion name -> its step function, built from a :class:`~kaem.config.TrainConfig`.
CRITERIA: dict[str, Callable[[TrainConfig], StepFn]] = {
    "importance": lambda cfg: importance_step(**dataclasses.asdict(cfg.importance)),
    "ula": lambda cfg: langevin_step(**dataclasses.asdict(cfg.langevin)),
    "thermodynamic": lambda cfg: thermodynamic_step(
        **dataclasses.asdict(cfg.thermodynamic), **dataclasses.asdict(cfg.langevin)
    ),
    "elbo": lambda cfg: elbo_step(),
    "lebm": lambda cfg: lebm_step(**dataclasses.asdict(cfg.langevin)),
    "ddpm": lambda cfg: ddpm_step(),
}


def build_step(cfg: TrainConfig) -> StepFn:
    """The step function of ``cfg.criterion``, its settings taken from their config sections."""
    if cfg.criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {cfg.criterion!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[cfg.criterion](cfg)
