"""Held-out log-marginal-likelihood estimates with Monte Carlo standard errors.

Comparable across models because every estimate targets the same quantity, ``log p(x)`` under
the Gaussian likelihood of eq. 8 (constant included):

* :func:`importance_log_evidence`: importance sampling with the prior as proposal (eq. 36);
* :func:`steppingstone_log_evidence`: the steppingstone estimator over power posteriors
  sampled by population ULA (eqs. 23-24), with the trapezium thermodynamic integral and its
  variance correction beside it (eqs. 55-56);
* for the VAE, :func:`kaem.baselines.vae.importance_weighted_bound`.

Standard errors use the delta method on the mean of the importance weights: for
``r = (1/S) sum_s w_s``, ``Var(log r) ~= Var(w) / (S r^2)``, computed in log space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kaem.baselines.vae import VAE, importance_weighted_bound
from kaem.inference.losses import thermodynamic_integration
from kaem.inference.posterior import sample_power_posteriors
from kaem.model import KAEM
from kaem.model.prior import QUADRATURE_TOLERANCE
from kaem.samplers import EvidenceEstimate, log_mean_exp_with_stderr, power_temperatures

__all__ = [
    "EvidenceEstimate",
    "SteppingstoneEstimate",
    "check_estimable",
    "evaluate_log_evidence",
    "has_estimator",
    "importance_log_evidence",
    "log_mean_exp_with_stderr",
    "steppingstone_log_evidence",
]


@torch.no_grad()
def importance_log_evidence(
    model: KAEM,
    x: Tensor,
    *,
    n_samples: int = 10_000,
    chunk: int = 1_000,
    generator: torch.Generator | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> EvidenceEstimate:
    """``log p(x_b) ~= log (1/S) sum_s p(x_b | z_s)``, ``z_s ~ pi`` (eqs. 3, 36).

    Parameters
    ----------
    model
        The KAEM (evaluated without training noise).
    x
        Images, ``(B, C, H, W)``.
    n_samples
        ``S`` prior draws, shared by the batch, generated ``chunk`` at a time.
    generator
        Randomness of the prior draws.
    on_chunk
        Called after every chunk (a progress bar's update).
    """
    log_lik = []
    for start in range(0, n_samples, chunk):
        z = model.prior.sample(min(chunk, n_samples - start), generator)
        log_lik.append(model.likelihood.pairwise_log_prob(x, model.decode(z)))  # (B, s)
        if on_chunk is not None:
            on_chunk()
    return log_mean_exp_with_stderr(torch.cat(log_lik, dim=1), dim=1)


class SteppingstoneEstimate(NamedTuple):
    """Power-posterior estimates of ``log p(x_b)``, each ``(B,)``.

    Attributes
    ----------
    estimate, stderr
        Steppingstone estimate (eqs. 23-24) and its standard error (per-ratio delta method,
        added in quadrature).
    trapezium, corrected
        Thermodynamic integration with the trapezium rule, and with its variance correction
        (eqs. 55-56), from per-temperature trajectory averages.
    """

    estimate: Tensor
    stderr: Tensor
    trapezium: Tensor
    corrected: Tensor


def steppingstone_log_evidence(
    model: KAEM,
    x: Tensor,
    *,
    n_temps: int = 10,
    exponent: float = 2.0,
    n_chains: int = 64,
    n_steps: int = 200,
    step_size: float = 0.005,
    generator: torch.Generator | None = None,
    on_step: Callable[[], None] | None = None,
) -> SteppingstoneEstimate:
    """Steppingstone estimate of ``log p(x_b)`` from population ULA (eqs. 12, 22-25, 40).

    ``n_chains`` chains per data point and temperature run ``n_steps`` population-ULA steps
    on ``t_k = (k / N_t)^exponent``; the final states give the steppingstone ratios, and the
    second half of every trajectory gives the per-temperature means and variances of the
    log-likelihood for thermodynamic integration. ULA's step-size bias carries over to the
    estimate: lower ``step_size`` (and raise ``n_steps``) until the estimate stops moving.

    Parameters
    ----------
    model
        The KAEM.
    x
        Images, ``(B, C, H, W)``.
    n_temps
        ``N_t``: ``N_t + 1`` temperatures including 0 and 1.
    exponent
        ``p`` of the power-law schedule (eq. 40).
    n_chains, n_steps, step_size
        ``S`` chains per data point and temperature, ULA steps and step size.
    generator
        Randomness of the chains.
    on_step
        Called after every population step (a progress bar's update).
    """
    temperatures = power_temperatures(n_temps, exponent, dtype=x.dtype).to(x.device)
    population = sample_power_posteriors(
        model,
        x,
        temperatures,
        n_chains=n_chains,
        n_steps=n_steps,
        step_size=step_size,
        generator=generator,
        on_step=on_step,
    )
    population.check.raise_if_failed()
    dt = (temperatures[1:] - temperatures[:-1])[:, None, None]
    with torch.no_grad():
        ratios = log_mean_exp_with_stderr(dt * population.log_lik[:-1], dim=1)  # (N_t, B)
        trapezium, corrected = thermodynamic_integration(
            temperatures, population.trace_mean, population.trace_var
        )
    return SteppingstoneEstimate(
        ratios.estimate.sum(0),
        ratios.stderr.square().sum(0).sqrt(),
        trapezium,
        corrected,
    )


def evaluate_log_evidence(
    model: torch.nn.Module,
    images: Tensor,
    *,
    n_samples: int = 10_000,
    steppingstone: bool = True,
    n_temps: int = 10,
    n_chains: int = 16,
    n_steps: int = 200,
    step_size: float = 0.005,
    batch_size: int = 25,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Held-out ``log p(x)`` of a trained model, averaged over ``images``, by every estimator.

    KAEM: importance sampling with the prior as proposal (``n_samples`` draws) and, if asked,
    the steppingstone estimator with both thermodynamic-integration companions. A univariate
    prior with ``shared_uniforms`` has no joint density for Langevin chains
    (:func:`~kaem.inference.posterior.check_langevin_prior`): there importance sampling, which
    needs only its samples, is the estimator, and the steppingstone entry says why it was
    skipped. VAE:
    the importance-weighted bound with ``n_samples`` draws (a lower bound, not an estimate).

    Parameters
    ----------
    model
        A :class:`~kaem.model.KAEM` or :class:`~kaem.baselines.vae.VAE`.
    images
        Float images in ``[0, 1]``, ``(N, C, H, W)``.
    n_samples, steppingstone, n_temps, n_chains, n_steps, step_size
        Estimator settings (see :func:`importance_log_evidence`,
        :func:`steppingstone_log_evidence`).
    batch_size
        Images per batch.
    seed
        Seed of every random draw.
    progress
        Show a progress bar with the time left (tqdm), counting prior-draw chunks and
        population steps.

    Returns
    -------
    dict
        Estimator name -> ``{"mean": average log p(x) per image in nats, "stderr": Monte
        Carlo standard error of that average (None for the thermodynamic integrals),
        "per_pixel": mean / pixels, "images": count}``, or ``{"skipped": reason}``; for a
        KAEM also ``"quadrature"``: ``{"error": the prior's largest
        :meth:`~kaem.model.prior.EnergyPrior.quadrature_error` in nats, "nodes", "tolerance"}``.
    """
    check_estimable(model)
    # Images go to the model's device, and the generator lives there too (a CPU generator
    # cannot drive draws on CUDA).
    device = next(model.parameters()).device
    images = images.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list[EvidenceEstimate]] = {}
    skipped: dict[str, dict[str, str]] = {}
    if steppingstone and not isinstance(model, VAE) and not model.prior.samples_follow_log_prob:
        steppingstone = False
        skipped["steppingstone"] = {
            "skipped": "the univariate prior draws u_p shared across q "
            "(model.prior.shared_uniforms: true), so it has no joint density for Langevin "
            "chains; importance sampling is the estimator for this model"
        }

    def add(name: str, estimate: Tensor, stderr: Tensor) -> None:
        parts.setdefault(name, []).append(EvidenceEstimate(estimate.detach(), stderr.detach()))

    n_batches = -(-images.shape[0] // batch_size)
    per_batch = 1 if isinstance(model, VAE) else -(-n_samples // 1_000) + steppingstone * n_steps
    bar = tqdm(total=n_batches * per_batch, disable=not progress, desc="log p(x)", unit="step")

    def tick() -> None:
        bar.update(1)

    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        if isinstance(model, VAE):
            with torch.no_grad():
                bound = importance_weighted_bound(
                    model, x, n_samples=n_samples, generator=g, batch_size=100
                )
                add("iwae_bound", *bound)
            tick()
            continue
        add(
            "importance",
            *importance_log_evidence(model, x, n_samples=n_samples, generator=g, on_chunk=tick),
        )
        if steppingstone:
            ss = steppingstone_log_evidence(
                model,
                x,
                n_temps=n_temps,
                n_chains=n_chains,
                n_steps=n_steps,
                step_size=step_size,
                generator=g,
                on_step=tick,
            )
            add("steppingstone", ss.estimate, ss.stderr)
            add("ti_trapezium", ss.trapezium, torch.full_like(ss.trapezium, float("nan")))
            add("ti_corrected", ss.corrected, torch.full_like(ss.corrected, float("nan")))
    bar.close()
    pixels = images[0].numel()
    result = {**{name: _average(e, pixels) for name, e in parts.items()}, **skipped}
    if isinstance(model, KAEM):
        result["quadrature"] = {
            "error": float(model.prior.quadrature_error().max()),
            "nodes": model.prior.n_nodes,
            "tolerance": QUADRATURE_TOLERANCE,
        }
    return result


def has_estimator(cls: type) -> bool:
    """Whether :func:`evaluate_log_evidence` estimates the held-out ``log p(x)`` of models of
    class ``cls``: a KAEM (exact prior samples) or a VAE (an amortised proposal); a class
    without says why in its ``no_evidence``."""
    return issubclass(cls, KAEM | VAE)


def check_estimable(model: torch.nn.Module) -> None:
    """Raise unless :func:`evaluate_log_evidence` has an estimator for ``model``'s kind.

    Raises
    ------
    ValueError
        One line: held-out ``log p(x)`` needs exact prior samples (KAEM) or an amortised
        proposal (VAE), and why the model's kind has neither (its ``no_evidence``).
    """
    if not has_estimator(type(model)):
        why = getattr(
            type(model), "no_evidence", "it has neither exact prior samples nor a proposal"
        )
        raise ValueError(
            "held-out log p(x) needs exact prior samples (KAEM) or an amortised proposal "
            f"(VAE); a {type(model).__name__} has neither: {why}"
        )


def _average(estimates: list[EvidenceEstimate], pixels: int) -> dict[str, float | None]:
    """The mean over images of per-image estimates, its standard error, per pixel, count."""
    est = torch.cat([e.estimate for e in estimates])
    se = torch.cat([e.stderr for e in estimates])
    mean = float(est.mean())
    stderr = float(se.square().sum().sqrt() / len(se))
    return {
        "mean": mean,
        "stderr": stderr if stderr == stderr else None,  # TI has no Monte Carlo error here
        "per_pixel": mean / pixels,
        "images": len(est),
    }
