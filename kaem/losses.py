"""Training criteria of KAEM. Losses are functions of a model and a batch.

Every loss returns ``(loss, info)``: a scalar whose gradient is the (negated) learning gradient
of eq. 4, and a ``NamedTuple`` of detached diagnostics.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from kaem.model import KAEM
from kaem.prior import UnivariateEnergyPrior
from kaem.samplers import effective_sample_size, resample_if_needed

__all__ = [
    "ISInfo",
    "ISPosterior",
    "importance_loss",
    "importance_posterior",
    "posterior_weight_matrix",
]


class ISInfo(NamedTuple):
    """Diagnostics of one importance-sampling step.

    Attributes
    ----------
    log_evidence
        IS estimate of ``log p(x_b)``, ``logsumexp_s log p(x_b | z_s) - log S``, shape ``(B,)``.
    ess
        Effective sample size of each data point's weights, shape ``(B,)``.
    resampled
        Which data points were resampled (ESS below threshold), shape ``(B,)``.
    mse
        Posterior-weighted mean squared error per pixel (scalar).
    """

    log_evidence: Tensor
    ess: Tensor
    resampled: Tensor
    mse: Tensor


def posterior_weight_matrix(ancestors: Tensor, weights: Tensor) -> Tensor:
    """Weights of the distinct draws after (optional) resampling.

    ``W[b, s] = sum_j weights[b, j] [ancestors[b, j] = s]``: the importance weights for rows
    that were not resampled, ``count / S`` for rows that were. Expectations over the (resampled)
    posterior population become ``sum_s W[b, s] rho(z_s)``, so the generator runs once per
    distinct draw.

    Parameters
    ----------
    ancestors, weights
        Shapes ``(B, S)`` from :func:`kaem.samplers.resample_if_needed`.

    Returns
    -------
    Tensor
        Shape ``(B, S)``; rows sum to 1.
    """
    return torch.zeros_like(weights).scatter_add_(1, ancestors, weights)


class ISPosterior(NamedTuple):
    """Importance-sampling approximation of the posteriors of a batch (eqs. 36-39).

    Attributes
    ----------
    z
        Prior draws shared by the batch, shape ``(S, *event)``.
    x_hat
        Their images, shape ``(S, C, H, W)`` (with training noise if requested).
    log_lik
        ``log p(x_b | z_s)``, shape ``(B, S)``.
    weights
        Posterior weight of each draw for each data point after optional resampling,
        shape ``(B, S)``; rows sum to one (see :func:`posterior_weight_matrix`).
    ess
        Effective sample size before resampling, shape ``(B,)``.
    resampled
        Rows that were resampled, shape ``(B,)``.
    """

    z: Tensor
    x_hat: Tensor
    log_lik: Tensor
    weights: Tensor
    ess: Tensor
    resampled: Tensor


def importance_posterior(
    model: KAEM,
    x: Tensor,
    *,
    n_samples: int = 100,
    resampler: str = "residual",
    ess_threshold: float = 0.5,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> ISPosterior:
    """Weighted prior draws approximating ``p(z | x_b)`` for every data point of a batch.

    ``S`` latents are drawn from the prior by inverse transform (the proposal) and shared by
    the batch; ``w_bs = softmax_s log p(x_b | z_s)`` (eq. 38); rows whose ESS falls below
    ``ess_threshold * S`` are resampled (eq. 39). ``E_{p(z|x_b)}[rho] ~= sum_s W_bs rho(z_s)``.

    Parameters
    ----------
    model
        The KAEM.
    x
        Data batch, shape ``(B, C, H, W)``.
    n_samples
        ``S``.
    resampler
        ``residual`` (the paper), ``systematic``, ``stratified`` or ``multinomial``.
    ess_threshold
        ``gamma`` in ``[0, 1]``; 0 never resamples, 1 always does.
    noise
        Add the generator's training noise before its output activation.
    generator
        Randomness for the draws, the noise and the resampling.

    Returns
    -------
    ISPosterior
        ``x_hat`` and ``log_lik`` carry gradients to the generator; the weights do not.
    """
    if x.ndim != 4 or tuple(x.shape[1:]) != model.image_shape:
        raise ValueError(
            f"data batch must have shape (B, {', '.join(map(str, model.image_shape))}), "
            f"got {tuple(x.shape)}"
        )
    z = model.prior.sample(n_samples, generator)  # (S, *event); no gradient through sampling
    x_hat = model.decode(z, noise=noise, generator=generator)  # (S, C, H, W)
    log_lik = model.likelihood.pairwise_log_prob(x, x_hat)  # (B, S)
    finite = torch.isfinite(log_lik.detach()).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise FloatingPointError(f"log-likelihood is NaN or infinite for data points {bad[:10]}")
    with torch.no_grad():
        ancestors, weights, resampled = resample_if_needed(
            log_lik.detach(), ess_threshold, resampler, generator
        )
        w = posterior_weight_matrix(ancestors, weights)
        ess = effective_sample_size(log_lik.detach())
    return ISPosterior(z, x_hat, log_lik, w, ess, resampled)


def importance_loss(
    model: KAEM,
    x: Tensor,
    *,
    n_samples: int = 100,
    resampler: str = "residual",
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ISInfo]:
    """Importance-sampling maximum likelihood (eqs. 4, 16, 33-39).

    The posterior expectations of eq. 4 are taken under :func:`importance_posterior`:

    * Generator: ``-mean_b sum_s W_bs log p(x_b | z_s)``.
    * Univariate prior: the contrastive-divergence term of eq. 16, ``E_post[f] - E_prior[f]``.
      The proposals *are* prior samples, so ``E_prior`` is their plain average and the term is
      ``sum_s (mean_b W_bs - 1/S) f(z_s)``: the prior samples serve as their own control
      variate, and no second batch is drawn.
    * Mixture prior: the normalised log density of eq. 18 at the weighted samples, plus the
      proportion regulariser.

    Parameters
    ----------
    model, x, n_samples, resampler, ess_threshold, generator
        As for :func:`importance_posterior`.

    Returns
    -------
    loss, info
        Scalar loss to minimise and :class:`ISInfo`.
    """
    post = importance_posterior(
        model,
        x,
        n_samples=n_samples,
        resampler=resampler,
        ess_threshold=ess_threshold,
        generator=generator,
    )
    prior, w, log_lik = model.prior, post.weights, post.log_lik
    w_bar = w.mean(0)  # (S,): batch-averaged posterior weight of each draw
    generator_term = (w * log_lik).sum(1).mean()
    if isinstance(prior, UnivariateEnergyPrior):
        prior_term = prior.weighted_energy(post.z, w_bar - 1.0 / n_samples)
        penalty = log_lik.new_zeros(())
    else:
        prior_term = (w_bar * prior.log_prob(post.z)).sum()
        penalty = prior.regulariser()
    loss = -(generator_term + prior_term) + penalty

    with torch.no_grad():
        log_evidence = torch.logsumexp(log_lik, 1) - math.log(n_samples)
        # Undo eq. 8 to report the weighted squared error per pixel.
        dim = x[0].numel()
        const = -0.5 * dim * math.log(2 * math.pi * model.likelihood.variance)
        sq = (const - log_lik) * (2 * model.likelihood.variance)
        mse = (w * sq).sum(1).mean() / dim
    return loss, ISInfo(log_evidence, post.ess, post.resampled, mse)
