"""Training criteria of KAEM. Losses are functions of a model and a batch.

Every loss returns ``(loss, info)``: a scalar whose gradient is the (negated) learning gradient
of eq. 4, and a ``NamedTuple`` of detached diagnostics.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from kaem.checks import Check, nonfinite_log_lik
from kaem.model import KAEM
from kaem.samplers import effective_sample_size, resample_if_needed

__all__ = [
    "ISInfo",
    "ISPosterior",
    "MLEInfo",
    "ThermodynamicInfo",
    "importance_loss",
    "importance_posterior",
    "mle_loss",
    "posterior_weight_matrix",
    "thermodynamic_integration",
    "thermodynamic_loss",
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
    check
        Whether some ``log p(x_b | z_s)`` was NaN or infinite (:class:`~kaem.checks.Check`).
    """

    log_evidence: Tensor
    ess: Tensor
    resampled: Tensor
    mse: Tensor
    check: Check


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
    check
        Whether some ``log p(x_b | z_s)`` was NaN or infinite; the weights of such a row are
        meaningless (:func:`~kaem.checks.nonfinite_log_lik`).
    """

    z: Tensor
    x_hat: Tensor
    log_lik: Tensor
    weights: Tensor
    ess: Tensor
    resampled: Tensor
    check: Check


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
    with torch.no_grad():  # non-finite values are reported by the check, not here
        ancestors, weights, resampled = resample_if_needed(
            log_lik.detach(), ess_threshold, resampler, generator, validate=False
        )
        w = posterior_weight_matrix(ancestors, weights)
        ess = effective_sample_size(log_lik.detach(), validate=False)
    check = nonfinite_log_lik(log_lik, sample_dim=1)
    return ISPosterior(z, x_hat, log_lik, w, ess, resampled, check)


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
    w, log_lik = post.weights, post.log_lik
    generator_term = (w * log_lik).sum(1).mean()
    # The draws are the prior's own, so they also serve for E_prior in eq. 16.
    prior_term = model.prior.prior_term(post.z, w.mean(0), prior_samples=post.z)
    loss = -(generator_term + prior_term)

    with torch.no_grad():
        log_evidence = torch.logsumexp(log_lik, 1) - math.log(n_samples)
        # Undo eq. 8 to report the weighted squared error per pixel.
        dim = x[0].numel()
        const = -0.5 * dim * math.log(2 * math.pi * model.likelihood.variance)
        sq = (const - log_lik) * (2 * model.likelihood.variance)
        mse = (w * sq).sum(1).mean() / dim
    return loss, ISInfo(log_evidence, post.ess, post.resampled, mse, post.check)


def _prior_term(model: KAEM, z_post: Tensor, generator: torch.Generator | None) -> Tensor:
    """The prior part of eq. 4 from equally weighted posterior samples ``(n, *event)``."""
    n = z_post.shape[0]
    return model.prior.prior_term(z_post, z_post.new_full((n,), 1.0 / n), generator=generator)


class MLEInfo(NamedTuple):
    """Diagnostics of :func:`mle_loss`.

    Attributes
    ----------
    log_lik
        ``log p(x_b | z_b)`` at the posterior samples (with training noise), ``(B,)``.
    mse
        Mean squared error per pixel of the reconstructions.
    """

    log_lik: Tensor
    mse: Tensor


def mle_loss(
    model: KAEM, x: Tensor, z_post: Tensor, *, generator: torch.Generator | None = None
) -> tuple[Tensor, MLEInfo]:
    """Maximum likelihood with posterior samples (eq. 4; ULA-MLE of App. F.1).

    ``loss = -(mean_b log p(x_b | z_b) + prior term)`` with the prior term of eq. 16
    (univariate) or 18 (mixture); the samples ``z_post`` (e.g. from
    :func:`kaem.inference.posterior.sample_posterior`) carry no gradient (eq. 4).

    Parameters
    ----------
    model
        The KAEM.
    x
        Data batch, ``(B, C, H, W)``.
    z_post
        One posterior sample per data point, ``(B, *event)``.
    generator
        Randomness of the generator noise and of the CD prior samples.
    """
    z_post = z_post.detach()
    x_hat = model.decode(z_post, noise=True, generator=generator)
    log_lik = model.likelihood.log_prob(x, x_hat)  # (B,)
    loss = -(log_lik.mean() + _prior_term(model, z_post, generator))
    with torch.no_grad():
        mse = (x - x_hat).square().mean()
    return loss, MLEInfo(log_lik.detach(), mse)


class ThermodynamicInfo(NamedTuple):
    """Diagnostics of :func:`thermodynamic_loss`.

    Attributes
    ----------
    steppingstone
        Steppingstone estimate of ``log p(x_b)`` (eqs. 23-24), ``(B,)``.
    log_ratios
        Its terms ``log Z_{t_k} / Z_{t_{k-1}}``, ``(K - 1, B)``.
    """

    steppingstone: Tensor
    log_ratios: Tensor


def thermodynamic_loss(
    model: KAEM,
    x: Tensor,
    z: Tensor,
    temperatures: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ThermodynamicInfo]:
    """The thermodynamic criterion: steppingstone over power posteriors plus the prior term.

    With ``S`` samples ``z_s^(k-1) ~ p_{t_{k-1}}(z | x)`` at each temperature, eq. 24 gives

        log Z_k / Z_{k-1} ~= log (1/S) sum_s exp((t_k - t_{k-1}) log p(x | z_s^(k-1))),

    summed over ``k`` into the steppingstone estimate of ``log p(x)`` (eq. 23). Its exact
    gradient telescopes to the MLE gradient ``E_{p_1}[grad log p(x | z)]`` (App. E.0.7), but
    only if the dependence of each sampling distribution on the parameters is kept: with the
    samples held fixed, differentiating the estimate gives ``sum_k (t_k - t_{k-1})
    E_k[grad ll]``, a Riemann sum of ``int_0^1 E_t[grad ll] dt`` instead. The surrogate here
    adds the score term of ``p_{t_{k-1}}``: its gradient is

        sum_k [ t_k sum_s w_s grad ll(z_s^(k-1)) - t_{k-1} (1/S) sum_s grad ll(z_s^(k-1)) ],

    with ``w = softmax_s((t_k - t_{k-1}) ll)``, which converges to the MLE gradient as
    temperatures are added (the weighted average estimates ``E_k`` by importance sampling
    from ``p_{k-1}``). With one sample per temperature (``S = 1``) the weights are all one and
    the two coincide; the loss value is always the steppingstone estimate. The prior term of
    eq. 4 uses the ``t = 1`` samples (eq. 16 or 18).

    Parameters
    ----------
    model
        The KAEM.
    x
        Data batch, ``(B, C, H, W)``.
    z
        Samples of each power posterior, ``(K, S, B, *event)`` (see
        :func:`~kaem.inference.sample_power_posteriors`), from ``t_0 = 0`` to ``t_{K-1} = 1``.
    temperatures
        ``(K,)``, increasing from 0 to 1.
    generator
        Randomness of the generator noise and the CD prior samples.

    Returns
    -------
    loss, info
        ``-(mean_b steppingstone_b + prior term)`` and :class:`ThermodynamicInfo`.
    """
    n_temps, n_samples, batch = z.shape[:3]
    if temperatures.shape != (n_temps,):
        raise ValueError(f"expected {n_temps} temperatures, got shape {tuple(temperatures.shape)}")
    z = z.detach()
    t = temperatures.to(x.dtype)
    # Only t_0 .. t_{K-2} enter the ratios; the t = 1 samples feed the prior term alone.
    lower = z[:-1].flatten(0, 2)
    x_hat = model.decode(lower, noise=True, generator=generator)
    x_hat = x_hat.reshape(n_temps - 1, n_samples, batch, *x.shape[1:])
    ll = model.likelihood.log_prob(x, x_hat)  # (K - 1, S, B)
    dt = (t[1:] - t[:-1])[:, None, None]  # (K - 1, 1, 1)
    log_ratios = torch.logsumexp(dt * ll, dim=1) - math.log(n_samples)  # (K - 1, B)
    weights = torch.softmax((dt * ll).detach(), dim=1)  # IS weights from p_{k-1} to p_k
    surrogate = (t[1:, None, None] * weights * ll).sum(1) - (t[:-1, None, None] * ll).mean(1)
    steppingstone = log_ratios.sum(0)  # (B,)
    objective = steppingstone.detach() + (surrogate.sum(0) - surrogate.sum(0).detach())
    loss = -(objective.mean() + _prior_term(model, z[-1].flatten(0, 1), generator))
    return loss, ThermodynamicInfo(steppingstone.detach(), log_ratios.detach())


def thermodynamic_integration(
    temperatures: Tensor, mean_log_lik: Tensor, var_log_lik: Tensor
) -> tuple[Tensor, Tensor]:
    """Trapezium thermodynamic integration of ``log p(x)`` and its variance correction.

    ``sum_k (t_k - t_{k-1}) (E_{k-1}[ll] + E_k[ll]) / 2`` (eqs. 21, 55) and the same minus
    ``sum_k (t_k - t_{k-1})^2 / 12 (Var_k[ll] - Var_{k-1}[ll])`` (Calderhead and Girolami
    2009), which removes the trapezium rule's leading error because
    ``d/dt E_t[ll] = Var_t[ll]``.

    Parameters
    ----------
    temperatures
        ``(K,)`` from 0 to 1.
    mean_log_lik, var_log_lik
        ``E_{t_k}[log p(x | z)]`` and ``Var_{t_k}[...]`` per temperature, ``(K, ...)``.

    Returns
    -------
    trapezium, corrected
        Shapes ``(...)``.
    """
    t = temperatures.to(mean_log_lik.dtype).reshape(-1, *([1] * (mean_log_lik.ndim - 1)))
    dt = t[1:] - t[:-1]
    trapezium = (dt * (mean_log_lik[1:] + mean_log_lik[:-1]) / 2).sum(0)
    correction = (dt.square() / 12 * (var_log_lik[1:] - var_log_lik[:-1])).sum(0)
    return trapezium, trapezium - correction
