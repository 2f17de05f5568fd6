"""Importance sampling on a one-dimensional latent model, against quadrature."""

import math

import numpy as np
import pytest
import torch
from helpers import one_dimensional_prior
from scipy import integrate

from kaem.inference.losses import importance_loss, importance_posterior
from kaem.model import KAEM, build_model
from kaem.model import quadrature as quad
from kaem.model.bases import build_basis
from kaem.model.generators import Generator
from kaem.model.kan import KANLayer
from kaem.model.likelihood import GaussianLikelihood
from kaem.model.prior import MixtureEnergyPrior, ReferencePrior, UnivariateEnergyPrior


class AffineGenerator(Generator):
    """x_hat = a h + b on a 1 x 1 x 2 image: posterior expectations are easy to integrate."""

    def __init__(self) -> None:
        super().__init__(1, (1, 1, 2), "none")
        self.a = torch.nn.Parameter(torch.tensor([1.5, -0.7], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([0.2, 0.1], dtype=torch.float64))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return (h * self.a + self.b).reshape(-1, 1, 1, 2)


def _one_dimensional_model() -> KAEM:
    return KAEM(one_dimensional_prior(), AffineGenerator(), GaussianLikelihood(0.3)).double()


def _posterior_mean_by_quadrature(model: KAEM, x: torch.Tensor) -> float:
    def unnormalised(t: float, power: int) -> float:
        z = torch.full((1, 1, 1), t, dtype=torch.float64)
        with torch.no_grad():
            log_prior = model.prior.log_prob(z)
            log_lik = model.likelihood.log_prob(x, model.decode(z))
        return t**power * math.exp(float(log_prior + log_lik))

    mass = integrate.quad(unnormalised, -1.0, 2.0, args=(0,), limit=200)[0]
    first = integrate.quad(unnormalised, -1.0, 2.0, args=(1,), limit=200)[0]
    return first / mass


@pytest.mark.parametrize(
    "threshold,resampler", [(0.0, "residual"), (1.0, "residual"), (1.0, "systematic")]
)
def test_is_posterior_mean_converges_to_quadrature(threshold, resampler) -> None:
    model = _one_dimensional_model()
    x = torch.tensor([[[[1.0, -0.4]]], [[[0.1, 0.3]]]], dtype=torch.float64)
    truth = np.array([_posterior_mean_by_quadrature(model, xb[None]) for xb in x])
    errors = []
    for n_samples in (100, 1_000, 10_000, 100_000):
        estimates = []
        for rep in range(8):
            g = torch.Generator().manual_seed(100 * rep + n_samples)
            post = importance_posterior(
                model,
                x,
                n_samples=n_samples,
                ess_threshold=threshold,
                resampler=resampler,
                noise=False,
                generator=g,
            )
            assert bool(post.resampled.all()) == (threshold == 1.0)
            torch.testing.assert_close(post.weights.sum(1), torch.ones(2, dtype=torch.float64))
            h = post.z[:, 0, 0]
            estimates.append((post.weights @ h).numpy())
        estimates = np.array(estimates)  # (reps, B)
        errors.append(np.sqrt(((estimates - truth) ** 2).mean()))
    # Monte Carlo error shrinks like 1/sqrt(S): ~3x per decade; demand a clear decrease.
    assert errors[-1] < 0.01
    assert errors[-1] < errors[0] / 10


def test_importance_loss_gradient_matches_mle_gradient() -> None:
    """With many samples the IS gradient of the generator equals d/dtheta log p(x) (eq. 4)."""
    model = _one_dimensional_model()
    x = torch.tensor([[[[1.0, -0.4]]]], dtype=torch.float64)

    def log_evidence() -> torch.Tensor:  # by Gauss-Legendre on a fine grid, differentiable
        t = torch.linspace(-1.0, 2.0, 4001, dtype=torch.float64)
        z = t[:, None, None]
        lp = model.prior.log_prob(z) + model.likelihood.log_prob(x, model.decode(z))
        return torch.logsumexp(lp, 0) + math.log(3.0 / 4000)

    exact = torch.autograd.grad(log_evidence(), [model.generator.a, model.generator.b])
    model.generator_noise = 0.0
    loss, info = importance_loss(
        model, x, n_samples=200_000, ess_threshold=0.0, generator=torch.Generator().manual_seed(1)
    )
    estimate = torch.autograd.grad(-loss, [model.generator.a, model.generator.b])
    for e, g in zip(exact, estimate, strict=True):
        torch.testing.assert_close(g, e, atol=0.02, rtol=0.02)
    assert float(info.log_evidence[0]) == pytest.approx(float(log_evidence().detach()), abs=0.01)


@pytest.mark.parametrize("kind", ["univariate", "mixture"])
def test_importance_loss_trains_both_priors(kind) -> None:
    cfg = {
        "image_shape": [1, 8, 8],
        "prior": {"kind": kind, "widths": [3, 4], "grid_size": 5, "n_nodes": 30},
        "generator": {"hidden_widths": [8], "grid_size": 5},
    }
    model = build_model(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, info = importance_loss(model, x, n_samples=32, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(-float(info.log_evidence.mean()))
        assert info.ess.shape == (16,)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # Every prior parameter receives gradient (CD term or normalised log density).
    loss, _ = importance_loss(model, x, n_samples=32, generator=g)
    loss.backward()
    for name, p in model.prior.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_bad_batch_shape_named() -> None:
    model = build_model({"image_shape": [1, 8, 8], "prior": {"widths": [2, 3]}})
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        importance_loss(model, torch.rand(4, 1, 28, 28))


def _log_evidence_by_quadrature(model: KAEM, x: torch.Tensor) -> torch.Tensor:
    """``log p(x)`` on a fine grid over the domain, differentiable in every parameter."""
    low, high = model.prior.domain
    t = torch.linspace(low, high, 8001, dtype=torch.float64)
    z = t[:, None, None] if isinstance(model.prior, UnivariateEnergyPrior) else t[:, None]
    lp = model.prior.log_prob(z) + model.likelihood.log_prob(x, model.decode(z))
    weights = torch.full_like(t, (high - low) / 8000)
    weights[[0, -1]] /= 2  # trapezium
    return torch.logsumexp(lp + weights.log(), 0)


def _mixture_1d_model() -> KAEM:
    g = torch.Generator().manual_seed(0)
    ref = ReferencePrior("gaussian", -1.0, 2.0)
    kan = KANLayer(1, 3, build_basis("rbf", 1, grid_size=6, grid_range=(-1.0, 2.0)), generator=g)
    with torch.no_grad():
        kan.coef.normal_(0.0, 1.0, generator=g)
    prior = MixtureEnergyPrior(kan, ref, n_nodes=100, generator=g)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([[0.3, -0.5, 0.2]]))
    return KAEM(prior, AffineGenerator(), GaussianLikelihood(0.3)).double()


@pytest.mark.parametrize("kind", ["univariate", "mixture"])
def test_importance_gradient_of_every_prior_parameter_matches_quadrature(kind) -> None:
    # Energies (coefficients, spline and base weights), the RBF bandwidth and the mixture
    # logits: the IS gradient of eq. 4 (with the contrastive-divergence term for the
    # univariate prior) against d/dtheta log p(x) by quadrature.
    model = _one_dimensional_model() if kind == "univariate" else _mixture_1d_model()
    model.generator_noise = 0.0
    x = torch.tensor([[[[1.0, -0.4]]]], dtype=torch.float64)
    names, params = zip(*model.prior.named_parameters(), strict=True)
    assert "kan.basis.tau" in names and ("logits" in names) == (kind == "mixture")
    exact = torch.autograd.grad(_log_evidence_by_quadrature(model, x), params)
    loss, _ = importance_loss(
        model, x, n_samples=400_000, ess_threshold=0.0, generator=torch.Generator().manual_seed(2)
    )
    estimate = torch.autograd.grad(-loss, params)
    for name, e, g in zip(names, exact, estimate, strict=True):
        scale = float(e.abs().max())
        assert float((g - e).abs().max()) < 0.03 * scale + 1e-4, (name, g, e)


def _piecewise_constant_posterior_mean(model: KAEM, x: torch.Tensor) -> float:
    """The posterior mean of ``z`` under the law inverse-transform sampling draws from: the
    prior's cell masses spread evenly over their cells (what IS with exact draws targets)."""
    table = model.prior.cdf_table()
    edges = table.edges.double()
    mass = table.cdf.double()[0, 0].diff()
    # 400 points inside each cell, midpoint rule
    frac = (torch.arange(400, dtype=torch.float64) + 0.5) / 400
    z = edges[:-1, None] + frac * edges.diff()[:, None]  # (N, 400)
    with torch.no_grad():
        ll = model.likelihood.log_prob(x, model.decode(z.reshape(-1, 1, 1).to(edges.dtype)))
    w = (mass[:, None] / 400 * torch.exp(ll.reshape(z.shape) - ll.max())).reshape(-1)
    return float((w * z.reshape(-1)).sum() / w.sum())


def test_importance_posterior_in_the_prior_tail_is_unbiased() -> None:
    # A data point explained only by latents in the prior's thin right tail: the posterior is
    # a reweighting of the tail's few draws, so every error of the sampler there shows.
    g = torch.Generator().manual_seed(0)
    ref = ReferencePrior("gaussian", -1.0, 2.0)
    kan = KANLayer(1, 1, build_basis("rbf", 1, grid_size=6, grid_range=(-1.0, 2.0)), generator=g)
    with torch.no_grad():
        kan.coef.copy_(torch.tensor([0.0, 0.5, 1.0, 0.0, -1.0, -1.5]).reshape(1, 6, 1))
    prior = UnivariateEnergyPrior(kan, ref, n_nodes=40)  # float32, wide cells
    model = KAEM(prior, AffineGenerator().float(), GaussianLikelihood(0.02))
    model.generator_noise = 0.0
    x = model.decode(torch.full((1, 1, 1), 1.8)).detach()  # generated from z = 1.8
    truth = _piecewise_constant_posterior_mean(model, x)
    cdf = prior.cdf_table()
    tail = 1.0 - float(cdf.cdf[0, 0][int((cdf.edges < 1.7).sum())])
    assert 1e-5 < tail < 1e-3  # a few hundred of the draws below

    def estimate(sample) -> tuple[float, float]:
        z = sample(2_000_000)  # (S,)
        with torch.no_grad():
            ll = model.likelihood.pairwise_log_prob(x, model.decode(z[:, None, None]))[0]
        w = torch.softmax(ll.double(), 0)
        mean = float((w * z).sum())
        se = float(torch.sqrt((w**2 * (z.double() - mean) ** 2).sum()))  # delta method
        return mean, se

    gen = torch.Generator().manual_seed(1)
    for sampling in ("search", "compiled"):
        prior.sampling = sampling
        mean, se = estimate(lambda n: prior.sample(n, gen)[:, 0, 0])
        assert abs(mean - truth) < 4.5 * se, (sampling, mean, truth, se)
    # The test has power: linear interpolation of the inverse CDF in u (a 1,024-point table)
    # is off by many standard errors here.
    grid = quad.inverse_cdf(torch.linspace(0, 1, 1025)[None, None].expand(1, 1, -1), cdf)[0, 0]

    def interpolated(n: int) -> torch.Tensor:
        u = torch.rand(n, generator=gen) * 1024
        i = u.long().clamp(max=1023)
        return torch.lerp(grid[i], grid[i + 1], u - i)

    mean, se = estimate(interpolated)
    assert abs(mean - truth) > 8 * se, (mean, truth, se)
