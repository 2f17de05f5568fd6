"""The VAE baseline of App. F.2.2: CNN encoder, KAEM's CNN decoder, same Gaussian likelihood.

The VAE shares everything with the KAEM cells it is compared against except the prior and the
inference: the latent prior is ``N(0, I)``, the posterior is amortised by a diagonal Gaussian
``q(z | x) = N(mu(x), diag(exp(logvar(x))))``, the decoder is
:class:`kaem.model.generators.CNNGenerator` and the likelihood is
:class:`kaem.model.likelihood.GaussianLikelihood` with the same variance. It is
trained by maximising the ELBO (Kingma and Welling 2014) through :func:`kaem.train` (criterion
``elbo``), and evaluated by the importance-weighted bound (Burda et al. 2016), which tightens to
``log p(x)`` as the number of samples grows. It is a kind of model of :mod:`kaem.kinds`, so
:func:`kaem.load_model` rebuilds it from its checkpoint.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kaem.checks import Check, nonfinite_log_lik
from kaem.config import VAEConfig, from_dict
from kaem.model import build_generator
from kaem.model.generators import CNNGenerator
from kaem.model.likelihood import GaussianLikelihood
from kaem.samplers import log_mean_exp_with_stderr

__all__ = [
    "VAE",
    "CNNEncoder",
    "ELBOInfo",
    "build_vae",
    "elbo_loss",
    "gaussian_kl",
    "importance_weighted_bound",
]

_LOG_2PI = math.log(2.0 * math.pi)


class CNNEncoder(nn.Module):
    """Convolutional encoder of App. F.2.2: ``x -> (mu, logvar)`` of ``q(z | x)``.

    Each layer is a ``4 x 4`` convolution with stride 2 and padding 1 (halving the resolution)
    followed by LeakyReLU; the feature map is flattened and one linear layer gives
    ``2 * latent_dim`` numbers, the mean and the log variance. SVHN (32x32) uses three layers
    ``(32, 64, 128)`` and CelebA (64x64) four ``(32, 64, 128, 256)``, both ending at ``4 x 4``.

    Parameters
    ----------
    image_shape
        ``(C, H, W)``; ``H`` and ``W`` must be divisible by ``2 ** len(channels)``.
    latent_dim
        ``d``, the latent dimension.
    channels
        Output channels of the convolutions.
    leaky_slope
        Negative slope of the LeakyReLU activations.
    generator
        Random generator for the initial parameters (PyTorch's default scheme, drawn from it).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        *,
        channels: Sequence[int] = (32, 64, 128),
        leaky_slope: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive sizes, got {image_shape}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"encoder channels must be positive and non-empty, got {channels}")
        c, h, w = (int(s) for s in image_shape)
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(
                f"CNN encoder with {len(channels)} stride-2 layers {tuple(channels)} needs H and W "
                f"divisible by {factor}, but image_shape is {tuple(image_shape)}"
            )
        self.image_shape = (c, h, w)
        self.latent_dim = int(latent_dim)
        self.channels = tuple(int(ch) for ch in channels)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise([c, *self.channels]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(leaky_slope)]
        features = self.channels[-1] * (h // factor) * (w // factor)
        layers += [nn.Flatten(), nn.Linear(features, 2 * self.latent_dim)]
        self.net = nn.Sequential(*layers)
        if generator is not None:
            self._init(generator)

    @torch.no_grad()
    def _init(self, generator: torch.Generator) -> None:
        # PyTorch's default bounds 1/sqrt(fan_in), drawn from an explicit generator so that the
        # seed alone determines the model.
        for m in self.net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, 2 d)``: the means, then the log variances."""
        return self.net(x)


class VAE(nn.Module):
    """Variational autoencoder with prior ``N(0, I)`` and a diagonal Gaussian ``q(z | x)``.

    The paper's decoder starts with "FC + reshape" to ``4 x 4``; the KAEM CNN generator's first
    layer, a ``4 x 4`` transposed convolution of the ``1 x 1`` input, *is* that fully connected
    layer (each output pixel is a linear function of ``z``), so the VAE decoder is the KAEM
    generator itself (:class:`~kaem.model.generators.CNNGenerator`, including the LeakyReLU that
    follows that layer in both models) and the comparison isolates the prior and the inference.

    Parameters
    ----------
    encoder
        Module mapping images ``(B, C, H, W)`` to ``(B, 2 d)``: the means of ``q(z | x)``, then
        their log variances (e.g. :class:`CNNEncoder`).
    decoder
        Module mapping latents ``(n, d)`` to images ``(n, C, H, W)`` (e.g.
        :class:`~kaem.model.generators.CNNGenerator`, whose sigmoid output lies in ``[0, 1]``).
    likelihood
        The Gaussian observation model (eq. 8), as for KAEM.
    latent_dim
        ``d``.
    image_shape
        ``(C, H, W)``.

    Attributes
    ----------
    config
        The :class:`~kaem.config.VAEConfig` it was built from; set by :func:`build_vae` only
        (checkpoints need it to rebuild the model).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: GaussianLikelihood,
        latent_dim: int,
        image_shape: Sequence[int],
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive sizes, got {image_shape}")
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        c, h, w = (int(s) for s in image_shape)
        self.latent_dim = int(latent_dim)
        self.image_shape = (c, h, w)
        # Catch a mismatched decoder now rather than at the first batch.
        for name in ("latent_dim", "image_shape"):
            theirs = getattr(decoder, name, None)
            if theirs is not None and theirs != getattr(self, name):
                raise ValueError(
                    f"decoder {name} {theirs} does not match the VAE's {getattr(self, name)}"
                )

    def _check_images(self, x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"data batch must have shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters of ``q(z | x)``: images ``(B, C, H, W)`` give ``mu, logvar`` of ``(B, d)``."""
        self._check_images(x)
        out = self.encoder(x)
        if out.shape != (x.shape[0], 2 * self.latent_dim):
            raise ValueError(
                f"encoder output must have shape ({x.shape[0]}, {2 * self.latent_dim}), "
                f"got {tuple(out.shape)}"
            )
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Mean images ``G(z)``: latents ``(n, d)`` give ``(n, C, H, W)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"latents must have shape (n, {self.latent_dim}), got {tuple(z.shape)}"
            )
        x_hat = self.decoder(z)
        if tuple(x_hat.shape) != (z.shape[0], *self.image_shape):
            raise ValueError(
                f"decoder output must have shape ({z.shape[0]}, "
                f"{', '.join(map(str, self.image_shape))}), got {tuple(x_hat.shape)}"
            )
        return x_hat

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Prior samples ``z ~ N(0, I)`` pushed through the decoder: ``(n, C, H, W)``.

        Images are in ``[0, 1]`` for the sigmoid decoder of :func:`build_vae`.
        """
        if n < 1:
            raise ValueError(f"number of images must be positive, got {n}")
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        z = torch.randn(n, self.latent_dim, generator=generator, device=device, dtype=dtype)
        return self.decode(z)


def build_vae(cfg: Mapping[str, Any] | VAEConfig, seed: int = 0) -> VAE:
    """Build the App. F.2.2 VAE from the ``model`` mapping of a config (e.g. preset ``vae_svhn``).

    Parameters
    ----------
    cfg
        Keys of :class:`kaem.config.VAEConfig`, or a ``VAEConfig``.
    seed
        Seed of the initial parameters (the same seed gives the same model).
    """
    if not isinstance(cfg, VAEConfig):
        cfg = from_dict(VAEConfig, cfg, "model")
    gen = torch.Generator().manual_seed(seed)
    encoder = CNNEncoder(
        cfg.image_shape,
        cfg.latent_dim,
        channels=cfg.encoder_channels,
        leaky_slope=cfg.leaky_slope,
        generator=gen,
    )
    if cfg.generator is not None:  # KAEM's generator of these settings, as KAEM builds it
        decoder = build_generator(cfg, cfg.latent_dim, gen)
    else:
        # The first transposed convolution makes the size that the stride-2 layers double up
        # to the image: 4x4 for SVHN and CelebA (App. F.2.2), 7x7 for 28x28 digits.
        first_size = max(1, cfg.image_shape[1] // 2 ** len(cfg.decoder_channels))
        decoder = CNNGenerator(
            cfg.latent_dim,
            cfg.image_shape,
            channels=cfg.decoder_channels,
            leaky_slope=cfg.leaky_slope,
            output_activation="sigmoid",
            generator=gen,
            first_size=first_size,
        )
    likelihood = GaussianLikelihood(cfg.likelihood_variance)
    vae = VAE(encoder, decoder, likelihood, cfg.latent_dim, cfg.image_shape)
    vae.config = cfg  # kept so checkpoints can rebuild the model (see kaem.kinds.load_model)
    return vae


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` in closed form: ``(B, d) -> (B,)``.

    ``0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)`` (Kingma and Welling 2014, App. B).
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


class ELBOInfo(NamedTuple):
    """Detached diagnostics of one ELBO evaluation.

    Attributes
    ----------
    elbo
        ELBO estimate of each data point, ``log_lik - kl``, shape ``(B,)``.
    kl
        ``KL(q(z | x_b) || p(z))``, exact, shape ``(B,)``.
    log_lik
        Monte Carlo estimate of ``E_q[log p(x_b | z)]``, shape ``(B,)``.
    mse
        Mean squared reconstruction error per pixel (scalar).
    check
        Whether some ``log p(x_b | z)`` was NaN or infinite (:class:`~kaem.checks.Check`).
    """

    elbo: Tensor
    kl: Tensor
    log_lik: Tensor
    mse: Tensor
    check: Check


def _check_vae(vae: Any) -> None:
    if not isinstance(vae, VAE):
        raise TypeError(f"expected a kaem.baselines.vae.VAE, got {type(vae).__name__}")


def _reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """``z = mu + sigma * eps``: noise ``(K, B, d)`` gives latents ``(K, B, d)``."""
    return mu + (0.5 * logvar).exp() * eps


def _decode_samples(vae: VAE, z: Tensor) -> Tensor:
    """Decode latents ``(K, B, d)`` in one call: images ``(K, B, C, H, W)``."""
    k, b, d = z.shape
    return vae.decode(z.reshape(k * b, d)).reshape(k, b, *vae.image_shape)


def elbo_loss(
    vae: VAE, x: Tensor, *, generator: torch.Generator | None = None, n_samples: int = 1
) -> tuple[Tensor, ELBOInfo]:
    """Negative ELBO with reparameterised samples and the KL term in closed form.

    ``ELBO(x) = E_{q(z|x)}[log p(x | z)] - KL(q(z | x) || N(0, I)) <= log p(x)``. The expectation
    is estimated with ``n_samples`` draws ``z = mu + sigma * eps`` (the reparameterisation
    trick, so the gradient reaches the encoder); the KL is exact, which leaves only the
    reconstruction term random.

    Parameters
    ----------
    vae
        The model.
    x
        Data batch, shape ``(B, C, H, W)``.
    generator
        Source of ``eps``.
    n_samples
        Draws per data point.

    Returns
    -------
    loss, info
        ``-mean_b ELBO(x_b)`` (scalar, with gradients) and :class:`ELBOInfo`.
    """
    _check_vae(vae)
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    mu, logvar = vae.encode(x)  # (B, d) each
    eps = torch.randn((n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    x_hat = _decode_samples(vae, _reparameterise(mu, logvar, eps))  # (K, B, C, H, W)
    log_lik = vae.likelihood.log_prob(x, x_hat)  # (K, B)
    check = nonfinite_log_lik(log_lik, sample_dim=0)
    log_lik = log_lik.mean(0)
    kl = gaussian_kl(mu, logvar)
    elbo = log_lik - kl
    with torch.no_grad():
        mse = (x_hat - x).square().mean()
    info = ELBOInfo(elbo.detach(), kl.detach(), log_lik.detach(), mse, check)
    return -elbo.mean(), info


def _standard_normal_log_prob(eps: Tensor) -> Tensor:
    """``log N(eps; 0, I)`` summed over the last dimension."""
    return -0.5 * (eps.square().sum(-1) + eps.shape[-1] * _LOG_2PI)


@torch.no_grad()
def importance_weighted_bound(
    vae: VAE,
    x: Tensor,
    *,
    n_samples: int,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Importance-weighted bound on ``log p(x)`` with its Monte Carlo standard error.

    With ``z_k ~ q(z | x)`` and weights ``w_k = p(x | z_k) p(z_k) / q(z_k | x)``,

        ``L_K(x) = log (1/K) sum_k w_k``   (Burda et al. 2016),

    computed as a log-sum-exp of the log weights. ``E[L_K] <= E[L_{K+1}] <= log p(x)``: ``L_1``
    is the ELBO and ``L_K -> log p(x)`` as ``K`` grows; when ``q`` is the exact posterior every
    weight equals ``p(x)`` and the bound is exact with no variance.

    The standard error is the delta-method one of
    :func:`kaem.samplers.log_mean_exp_with_stderr`: it measures the spread of the estimate,
    not its downward bias (about ``s^2 / (2 K)`` for weights of relative variance ``s^2``),
    and is NaN for ``K = 1``.

    Parameters
    ----------
    vae
        The model.
    x
        Data batch, shape ``(B, C, H, W)``.
    n_samples
        ``K``, importance samples per data point.
    generator
        Source of the draws. The noise is drawn one ``(B, d)`` block per sample, in order, so
        the result does not depend on ``batch_size``.
    batch_size
        Importance samples decoded at once (each chunk decodes ``batch_size * B`` images), to
        bound memory; all ``K`` at once if not given.

    Returns
    -------
    estimate, stderr
        ``L_K(x_b)`` and its standard error, shapes ``(B,)``.
    """
    _check_vae(vae)
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunk = n_samples if batch_size is None else batch_size
    mu, logvar = vae.encode(x)  # (B, d) each
    log_w = []
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        eps = torch.stack(
            [
                torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                for _ in range(k)
            ]
        )  # (k, B, d)
        z = _reparameterise(mu, logvar, eps)
        log_lik = vae.likelihood.log_prob(x, _decode_samples(vae, z))  # (k, B)
        # log q(z | x) = log N(eps; 0, I) - sum_j log sigma_j (change of variables).
        log_q = _standard_normal_log_prob(eps) - 0.5 * logvar.sum(-1)
        log_w.append(log_lik + _standard_normal_log_prob(z) - log_q)
    return tuple(log_mean_exp_with_stderr(torch.cat(log_w), dim=0))  # (B,) each
