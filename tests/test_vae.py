"""The VAE baseline: App. F.2.2 architectures, the ELBO and the importance-weighted bound against
the closed-form evidence of a linear-Gaussian latent model, and training through kaem.train."""

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from kaem.baselines.vae import VAE, build_vae, elbo_loss, gaussian_kl, importance_weighted_bound
from kaem.config import TrainConfig, VAEConfig, from_dict
from kaem.kinds import load_model
from kaem.model import build_model
from kaem.model.generators import CNNGenerator
from kaem.model.likelihood import GaussianLikelihood
from kaem.presets import preset
from kaem.training import train

F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# Paper architectures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,n_convs", [("vae_svhn", 3), ("vae_celeba", 4)])
def test_paper_architectures(name: str, n_convs: int) -> None:
    cfg = from_dict(VAEConfig, preset(name)["model"])
    vae = build_vae(cfg, seed=0)
    c, h, w = cfg.image_shape
    # Encoder: n_convs x (4x4 conv, stride 2, padding 1, LeakyReLU), then flatten + one FC.
    kinds = [type(m).__name__ for m in vae.encoder.net]
    assert kinds == ["Conv2d", "LeakyReLU"] * n_convs + ["Flatten", "Linear"]
    convs = [m for m in vae.encoder.net if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == list(cfg.encoder_channels)
    for m in convs:
        assert (m.kernel_size, m.stride, m.padding) == ((4, 4), (2, 2), (1, 1))
    slopes = {m.negative_slope for m in vae.encoder.net if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    fc = vae.encoder.net[-1]
    assert (fc.in_features, fc.out_features) == (cfg.encoder_channels[-1] * 4 * 4, 2 * 81)
    # Decoder: the KAEM CNN generator, same layers and parameter shapes.
    assert isinstance(vae.decoder, CNNGenerator)
    reference = CNNGenerator(81, cfg.image_shape, channels=cfg.decoder_channels)
    assert {k: v.shape for k, v in vae.decoder.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert isinstance(vae.likelihood, GaussianLikelihood) and vae.likelihood.variance == 0.25

    x = torch.rand(5, c, h, w, generator=torch.Generator().manual_seed(1))
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 81)
    images = vae.generate(7, torch.Generator().manual_seed(2))
    assert images.shape == (7, c, h, w) and not images.requires_grad
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    torch.testing.assert_close(images, vae.generate(7, torch.Generator().manual_seed(2)))


def test_first_transposed_convolution_is_fc_and_reshape() -> None:
    # The paper's "FC + reshape to 4x4" is the generator's 4x4 transposed convolution of 1x1.
    vae = build_vae(preset("vae_svhn")["model"])
    layer = vae.decoder.net[0]
    z = torch.randn(6, 81, generator=torch.Generator().manual_seed(0))
    fc = z @ layer.weight.reshape(81, -1) + layer.bias.repeat_interleave(16)
    with torch.no_grad():
        torch.testing.assert_close(layer(z[:, :, None, None]), fc.reshape(6, 128, 4, 4))


def test_seeded_build_and_clear_errors() -> None:
    cfg = {"image_shape": [1, 8, 8], "latent_dim": 4, "encoder_channels": [8, 16]}
    cfg["decoder_channels"] = [16]
    a, b, c = build_vae(cfg, seed=1), build_vae(cfg, seed=1), build_vae(cfg, seed=2)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.encoder.net[0].weight, c.encoder.net[0].weight)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\), got \(3, 1, 8, 9\)"):
        elbo_loss(a, torch.rand(3, 1, 8, 9), generator=g)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\), got \(8, 8\)"):
        importance_weighted_bound(a, torch.rand(8, 8), n_samples=4, generator=g)
    with pytest.raises(ValueError, match="n_samples must be at least 1, got 0"):
        importance_weighted_bound(a, torch.rand(3, 1, 8, 8), n_samples=0, generator=g)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_vae({**cfg, "image_shape": [1, 10, 10], "decoder_channels": [16]})
    with pytest.raises(ValueError, match="decoder latent_dim 5 does not match"):
        VAE(a.encoder, CNNGenerator(5, (1, 8, 8), channels=(16,)), a.likelihood, 4, (1, 8, 8))
    kaem_model = build_model({"image_shape": [1, 8, 8], "prior": {"widths": [3, 4]}})
    with pytest.raises(TypeError, match="got KAEM"):
        elbo_loss(kaem_model, torch.rand(3, 1, 8, 8), generator=g)


def test_gaussian_kl_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.randn(5, 3, generator=g, dtype=F64),
        torch.randn(5, 3, generator=g, dtype=F64),
    )
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(
        gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1)
    )


# ---------------------------------------------------------------------------------------------
# Linear-Gaussian latent model: z ~ N(0, I_d), x = W z + b + N(0, s2 I); p(x) = N(b, W W^T + s2 I)
# ---------------------------------------------------------------------------------------------

SHAPE = (1, 4, 4)
D, LATENT, S2 = 16, 3, 0.25
SCALES = torch.tensor([2.0, 1.0, 0.5], dtype=F64)


class LinearDecoder(nn.Module):
    """``z -> W z + b`` reshaped to images (no output activation)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T + self.bias).reshape(-1, *SHAPE)


class LinearGaussianEncoder(nn.Module):
    """``q(z | x) = N(A x + c, diag(exp(logvar)))``."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, logvar: torch.Tensor) -> None:
        super().__init__()
        self.a, self.c, self.logvar = nn.Parameter(a), nn.Parameter(c), nn.Parameter(logvar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.flatten(1) @ self.a.T + self.c
        return torch.cat([mu, self.logvar.expand_as(mu)], 1)


def _linear_model(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Orthogonal columns make the exact posterior diagonal, so it lies in the VAE's family.
    q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=F64))
    weight = q * SCALES
    bias = 0.5 * torch.randn(D, generator=g, dtype=F64)
    post_var = 1.0 / (1.0 + SCALES**2 / S2)
    a = post_var[:, None] * weight.T / S2  # posterior mean A (x - b)
    exact = (a, -a @ bias, post_var.log())
    return weight, bias, exact, g


def _vae(weight, bias, encoder_params) -> VAE:
    enc = LinearGaussianEncoder(*(p.clone() for p in encoder_params))
    return VAE(enc, LinearDecoder(weight, bias), GaussianLikelihood(S2), LATENT, SHAPE)


def _data(weight, bias, n, g) -> torch.Tensor:
    z = torch.randn(n, LATENT, generator=g, dtype=F64)
    x = z @ weight.T + bias + math.sqrt(S2) * torch.randn(n, D, generator=g, dtype=F64)
    return x.reshape(n, *SHAPE)


def _log_evidence(weight, bias, x) -> torch.Tensor:
    cov = weight @ weight.T + S2 * torch.eye(D, dtype=F64)
    return torch.distributions.MultivariateNormal(bias, cov).log_prob(x.flatten(1))


def _closed_form_elbo(weight, bias, encoder_params, x) -> torch.Tensor:
    a, c, logvar = encoder_params
    xf = x.flatten(1)
    mu, var = xf @ a.T + c, logvar.exp()
    # E_q log N(x; W z + b, s2 I) = log N(x; W mu + b, s2 I) - tr(W^T W diag(var)) / (2 s2).
    resid = xf - mu @ weight.T - bias
    expected_ll = (
        -resid.square().sum(1) / (2 * S2)
        - 0.5 * D * math.log(2 * math.pi * S2)
        - (SCALES**2 * var).sum() / (2 * S2)
    )
    kl = 0.5 * (mu.square() + var - 1 - logvar).sum(1)
    return expected_ll - kl


def _perturbed(exact, g, shift: float, log_scale: float):
    a, c, logvar = exact
    return (
        a + shift * torch.randn(a.shape, generator=g, dtype=F64) / math.sqrt(D),
        c + shift * torch.randn(c.shape, generator=g, dtype=F64),
        logvar + log_scale * torch.randn(logvar.shape, generator=g, dtype=F64).abs(),
    )


def test_elbo_matches_closed_form_and_bounds_log_evidence() -> None:
    weight, bias, exact, g = _linear_model()
    x = _data(weight, bias, 6, g)
    log_px = _log_evidence(weight, bias, x)
    encoders = [exact] + [_perturbed(exact, g, 0.5, 0.7) for _ in range(3)]
    reps = 2000
    for i, params in enumerate(encoders):
        vae = _vae(weight, bias, params)
        _, info = elbo_loss(vae, x.repeat_interleave(reps, 0), generator=g)
        draws = info.elbo.reshape(6, reps)  # single-sample ELBO estimates, per data point
        mean, se = draws.mean(1), draws.std(1) / math.sqrt(reps)
        closed = _closed_form_elbo(weight, bias, params, x)
        assert ((mean - closed).abs() < 4.5 * se).all(), (i, mean, closed, se)
        # The KL is exact and the log-likelihood is its Monte Carlo complement.
        mu = x.flatten(1) @ params[0].T + params[1]
        torch.testing.assert_close(info.kl[::reps], gaussian_kl(mu, params[2].expand_as(mu)))
        torch.testing.assert_close(info.elbo, info.log_lik - info.kl)
        if i == 0:  # the exact posterior closes the gap: ELBO = log p(x)
            torch.testing.assert_close(closed, log_px)
            assert ((mean - log_px).abs() < 4.5 * se).all()
        else:  # any other encoder stays strictly below log p(x)
            assert (mean + 4.5 * se < log_px).all(), (i, mean, log_px, se)
    # More samples per point average the same estimator: the loss is -mean ELBO.
    loss, info = elbo_loss(_vae(weight, bias, exact), x, generator=g, n_samples=4000)
    torch.testing.assert_close(loss, -info.elbo.mean())
    assert ((info.elbo - log_px).abs() < 0.1).all()


def test_importance_weighted_bound_exact_posterior_has_zero_variance() -> None:
    weight, bias, exact, g = _linear_model(1)
    x = _data(weight, bias, 5, g)
    vae = _vae(weight, bias, exact)
    log_px = _log_evidence(weight, bias, x)
    # Every weight p(x, z) / q(z | x) equals p(x) under the exact posterior.
    for k in (1, 2, 50):
        estimate, stderr = importance_weighted_bound(vae, x, n_samples=k, generator=g)
        torch.testing.assert_close(estimate, log_px, atol=1e-9, rtol=0)
        if k > 1:
            assert float(stderr.max()) < 1e-9
        else:
            assert stderr.isnan().all()  # one weight: no spread to measure


def test_importance_weighted_bound_tightens_with_k() -> None:
    weight, bias, exact, g = _linear_model(2)
    x = _data(weight, bias, 200, g)
    log_px = _log_evidence(weight, bias, x)
    params = _perturbed(exact, g, 0.4, 0.3)
    vae = _vae(weight, bias, params)
    closed = _closed_form_elbo(weight, bias, params, x)
    gaps = []
    for k in (1, 4, 16, 64, 256):
        estimate, stderr = importance_weighted_bound(vae, x, n_samples=k, generator=g)
        gaps.append(float((estimate - log_px).mean()))
        if k == 1:  # L_1 is the ELBO (with the KL estimated by sampling): unbiased for it
            diff = estimate - closed
            assert float(diff.mean().abs()) < 4 * float(diff.std()) / math.sqrt(len(diff))
    # E[L_K] increases with K towards log p(x) (averaged over 200 data points).
    assert all(b > a for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[0] < -1.0 and -0.05 < gaps[-1] < 0.0, gaps
    # log p(x) lies within a few reported standard errors of the estimate.
    z = (estimate - log_px) / stderr
    assert float((z.abs() < 3).float().mean()) > 0.95 and float(z.abs().max()) < 6
    assert -1.0 < float(z.mean()) < 0.5


def test_importance_weighted_bound_standard_error_is_calibrated() -> None:
    weight, bias, exact, g = _linear_model(3)
    x = _data(weight, bias, 1, g)
    vae = _vae(weight, bias, _perturbed(exact, g, 0.6, 0.5))
    estimate, stderr = importance_weighted_bound(
        vae, x.expand(600, *SHAPE), n_samples=64, generator=g
    )
    # The spread of independent estimates matches the reported (delta-method) error.
    assert float(estimate.std() / stderr.mean()) == pytest.approx(1.0, abs=0.2)
    # Chunking over K bounds memory without changing the draws.
    a = importance_weighted_bound(vae, x, n_samples=50, generator=torch.Generator().manual_seed(4))
    b = importance_weighted_bound(
        vae, x, n_samples=50, generator=torch.Generator().manual_seed(4), batch_size=7
    )
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Training through kaem.train
# ---------------------------------------------------------------------------------------------

TINY = {
    "image_shape": [1, 8, 8],
    "latent_dim": 4,
    "encoder_channels": [8, 16],
    "decoder_channels": [16],
    "likelihood_variance": 0.1,
}


def _digits() -> torch.Tensor:
    images = load_digits().images  # (1797, 8, 8), values 0..16
    return torch.from_numpy(np.round(images * (255 / 16)).astype(np.uint8))[:512, None]


def _cfg(**kw) -> TrainConfig:
    base = {
        "criterion": "elbo",
        "batch_size": 64,
        "learning_rate": 1e-2,
        "max_steps": 40,
        "checkpoint_every": 10,
        "grid_update": {"enabled": False},
    }
    return from_dict(TrainConfig, {**base, **kw})


def test_train_elbo_checkpoint_and_resume(tmp_path: Path) -> None:
    images = _digits()
    full = train(build_vae(TINY), images, _cfg(), tmp_path / "a", device="cpu", progress=False)
    log = pd.read_csv(full.log)
    assert list(log["step"]) == list(range(1, 41))
    assert np.isfinite(log[["loss", "elbo", "kl", "mse"]].to_numpy()).all()
    np.testing.assert_allclose(log["loss"], -log["elbo"], rtol=1e-5)
    assert (log["kl"] >= 0).all()
    first, last = log["loss"][:10].mean(), log["loss"][-10:].mean()
    assert last < first - 5, (first, last)
    assert log["mse"][-10:].mean() < log["mse"][:10].mean()

    model = load_model(full.checkpoint)
    assert isinstance(model, VAE) and model.config == full.model.config
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    torch.testing.assert_close(
        model.generate(4, torch.Generator().manual_seed(0)),
        full.model.generate(4, torch.Generator().manual_seed(0)),
    )

    train(build_vae(TINY), images, _cfg(max_steps=20), tmp_path / "b", progress=False)
    resumed = train(build_vae(TINY), images, _cfg(), tmp_path / "b", progress=False)
    assert resumed.steps == 40
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    pd.testing.assert_frame_equal(
        log.drop(columns="seconds"), pd.read_csv(resumed.log).drop(columns="seconds")
    )


def test_the_nist_presets_share_the_kaem_generator_so_only_the_prior_differs() -> None:
    from kaem.kinds import build
    from kaem.model.generators import KANGenerator
    from kaem.presets import preset

    kaem = build(preset("nist")["model"], "importance")
    vae = build(preset("vae_nist")["model"], "elbo")
    lebm = build(preset("lebm_nist")["model"], "lebm")

    def shapes(module):
        return [tuple(p.shape) for p in module.parameters()]

    assert isinstance(vae.decoder, KANGenerator) and isinstance(lebm.generator, KANGenerator)
    assert shapes(vae.decoder) == shapes(kaem.generator) == shapes(lebm.generator)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    loss, _ = elbo_loss(vae, x, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and vae.generate(3, torch.Generator()).shape == (3, 1, 28, 28)
    assert vae.likelihood.variance == kaem.likelihood.variance == 0.1
    assert lebm.likelihood.variance == 0.0225  # Pang et al.'s operating point
