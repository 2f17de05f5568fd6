"""The latent-space energy-based prior of Pang et al. (2020), the model KAEM's prior replaces.

The prior is an MLP energy ``E_alpha`` tilting a Gaussian base,

    p_alpha(z) ∝ exp(-E_alpha(z)) N(z; 0, sigma^2 I),

with no tractable normaliser, so both its samples and the posterior's come from short-run
Langevin chains started at the base: ``z <- z + eta grad log p + sqrt(2 eta) xi``, written in
Pang et al.'s code as ``z - s^2 / 2 grad U + s xi`` (``eta = s^2 / 2``). Their SVHN script
(``train_svhn.py`` of bpucla/latent-space-EBM-prior, whose ``main()`` trains the defaults of
its argument parser) uses 60 prior steps of ``s = 0.4`` (eta = 0.08), 20 posterior steps of
``s = 0.1`` (eta = 0.005), an energy MLP ``nz -> 200 -> 200 -> 1`` with GELU (LeakyReLU
appears only in an unused sweep grid of that script), a Gaussian likelihood of ``sigma =
0.3`` on images in ``[-1, 1]`` (variance 0.0225 on the ``[0, 1]`` images here), and Adam
with learning rates 2e-5 (energy) and 1e-4 (generator), betas (0.5, 0.999), both decayed by
0.998 an epoch. Here the generator is KAEM's own, so a comparison with a KAEM cell changes
the prior (and, at Pang et al.'s operating point, the likelihood's variance) alone.

The learning gradient of the prior is the difference of the energy's gradient under the
posterior and the prior, ``grad_alpha log p(x) = E_prior[grad E] - E_post[grad E]``, so the
loss ``mean E(z_post) - mean E(z_prior)`` (samples detached) descends it; the generator
descends ``-log p(x | z_post)``. The model is a kind of :mod:`kaem.kinds` (criterion ``lebm``),
trained, checkpointed and reloaded like the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kaem.config import LEBMConfig, from_dict
from kaem.model import build_generator  # KAEM's generators, built the same way
from kaem.model.generators import Generator
from kaem.model.likelihood import GaussianLikelihood
from kaem.samplers import ula

__all__ = [
    "ENERGY_ACTIVATIONS",
    "LEBM",
    "LEBMInfo",
    "LatentEBMPrior",
    "build_lebm",
    "energy_mlp",
    "lebm_loss",
]

#: The energy MLP's activations by name (Pang et al.'s ``--e_activation`` choices; ``silu``
#: is their ``swish``); ``slope`` is the negative slope of ``leaky_relu``.
ENERGY_ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "gelu": lambda slope: nn.GELU(),
    "leaky_relu": lambda slope: nn.LeakyReLU(slope),
    "silu": lambda slope: nn.SiLU(),
    "mish": lambda slope: nn.Mish(),
}


def energy_mlp(
    latent_dim: int,
    widths: tuple[int, ...] = (200, 200),
    activation: str = "gelu",
    slope: float = 0.2,
) -> nn.Sequential:
    """Pang et al.'s energy network ``latent_dim -> widths... -> 1``: linear layers with
    ``activation`` between them (their ``train_svhn.py``: GELU, widths 200 and 200), the last
    one linear; ``(n, latent_dim) -> (n, 1)``.

    Raises
    ------
    ValueError
        For an activation not in :data:`ENERGY_ACTIVATIONS`.
    """
    if activation not in ENERGY_ACTIVATIONS:
        raise ValueError(
            f"unknown energy activation {activation!r}; choose one of {sorted(ENERGY_ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    sizes = (latent_dim, *widths)
    for d_in, d_out in itertools.pairwise(sizes):
        layers += [nn.Linear(d_in, d_out), ENERGY_ACTIVATIONS[activation](slope)]
    layers.append(nn.Linear(sizes[-1], 1))
    return nn.Sequential(*layers)


class LatentEBMPrior(nn.Module):
    """``p(z) ∝ exp(-E(z)) N(z; 0, sigma^2 I)`` on ``R^Q``, sampled by short-run ULA.

    Parameters
    ----------
    energy
        Any module mapping ``(n, Q)`` to ``(n, 1)`` or ``(n,)``: the energy ``E``.
    latent_dim
        ``Q``.
    base_scale
        ``sigma`` of the Gaussian base (Pang et al.: 1); chains start from the base.
    n_steps, step_size
        The prior sampler: ULA steps and ``eta`` (Pang et al.: 60 and 0.08).
    """

    def __init__(
        self,
        energy: nn.Module,
        latent_dim: int,
        *,
        base_scale: float = 1.0,
        n_steps: int = 60,
        step_size: float = 0.08,
    ) -> None:
        super().__init__()
        self.net = energy
        self.latent_dim = int(latent_dim)
        self.base_scale = float(base_scale)
        self.n_steps = int(n_steps)
        self.step_size = float(step_size)

    @property
    def event_shape(self) -> tuple[int]:
        return (self.latent_dim,)

    def energy(self, z: Tensor) -> Tensor:
        """``E(z)``, shape ``(n,)`` for ``z`` of ``(n, Q)``."""
        return self.net(z).reshape(z.shape[0])

    def log_density(self, z: Tensor) -> Tensor:
        """Unnormalised ``log p(z) = -E(z) - |z|^2 / (2 sigma^2)``, shape ``(n,)``."""
        return -self.energy(z) - 0.5 * z.square().sum(-1) / self.base_scale**2

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of the base ``N(0, sigma^2 I)``, shape ``(n, Q)``: where chains start."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.base_scale * z

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` short-run Langevin samples of the prior, shape ``(n, Q)``, detached."""
        z, _ = ula(
            self.log_density,
            self.base_sample(n, generator),
            step_size=self.step_size,
            n_steps=self.n_steps,
            generator=generator,
            grad_norm=False,
        )
        return z


class LEBM(nn.Module):
    """Pang et al.'s latent EBM with a KAEM generator: ``z ~ p_alpha``, ``x = G(z) + eps``.

    Parameters
    ----------
    prior
        The :class:`LatentEBMPrior`.
    generator
        A :class:`~kaem.model.generators.Generator` whose ``latent_dim`` equals the prior's.
    likelihood
        The Gaussian observation model of eq. 8 (Pang et al.'s operating point: variance
        0.0225 on images in ``[0, 1]``).
    """

    #: Why ``kaem evaluate`` has no estimate of ``log p(x)`` for this kind.
    no_evidence = (
        "its prior has an intractable normaliser and only short-run Langevin samples, so no "
        "estimate here would be unbiased"
    )

    def __init__(
        self, prior: LatentEBMPrior, generator: Generator, likelihood: GaussianLikelihood
    ) -> None:
        super().__init__()
        generator.check_input_width(prior.latent_dim, "prior latent dimension")
        self.prior = prior
        self.generator = generator
        self.likelihood = likelihood

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.generator.image_shape

    def decode(self, z: Tensor) -> Tensor:
        """Images ``(n, C, H, W)`` from latents ``(n, Q)``."""
        return self.generator(z)

    def posterior_log_density(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """``z -> log p(x_b | z_b) + log p(z_b)`` (unnormalised), one chain per data point."""
        return lambda z: self.likelihood.log_prob(x, self.decode(z)) + self.prior.log_density(z)

    def sample_posterior(
        self,
        x: Tensor,
        *,
        n_steps: int = 20,
        step_size: float = 0.005,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Short-run ULA samples of ``p(z | x_b)`` from the base, shape ``(B, Q)``, detached."""
        z, _ = ula(
            self.posterior_log_density(x),
            self.prior.base_sample(x.shape[0], generator),
            step_size=step_size,
            n_steps=n_steps,
            generator=generator,
            grad_norm=False,
        )
        return z

    def generate(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Prior Langevin samples pushed through the generator: images ``(n, C, H, W)``."""
        z = self.prior.sample(n, generator)
        with torch.no_grad():
            return self.decode(z)


class LEBMInfo(NamedTuple):
    """Diagnostics of :func:`lebm_loss`: per-image ``log p(x | z_post)`` ``(B,)``, the
    energy gap ``mean E(z_post) - mean E(z_prior)`` and the posterior samples' MSE."""

    log_lik: Tensor
    energy_gap: Tensor
    mse: Tensor


def lebm_loss(
    model: LEBM,
    x: Tensor,
    *,
    n_steps: int = 20,
    step_size: float = 0.005,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, LEBMInfo]:
    """Pang et al.'s learning step as one scalar: generator and prior terms (module docstring).

    Parameters
    ----------
    model
        The LEBM.
    x
        Data batch, ``(B, C, H, W)``.
    n_steps, step_size
        The posterior sampler (Pang et al.: 20 steps of eta = 0.005); the prior sampler's
        settings are the prior's.
    generator
        Randomness of both samplers.
    """
    z_post = model.sample_posterior(x, n_steps=n_steps, step_size=step_size, generator=generator)
    z_prior = model.prior.sample(x.shape[0], generator)
    x_hat = model.decode(z_post)
    log_lik = model.likelihood.log_prob(x, x_hat)  # (B,)
    energy_gap = model.prior.energy(z_post).mean() - model.prior.energy(z_prior).mean()
    loss = -log_lik.mean() + energy_gap
    with torch.no_grad():
        mse = (x - x_hat).square().mean()
    return loss, LEBMInfo(log_lik.detach(), energy_gap.detach(), mse)


def build_lebm(cfg: Mapping[str, Any] | LEBMConfig, seed: int = 0) -> LEBM:
    """Build an :class:`LEBM` from the ``model`` mapping of a config (e.g. preset ``lebm_svhn``).

    Parameters
    ----------
    cfg
        Keys of :class:`kaem.config.LEBMConfig`, or an ``LEBMConfig``.
    seed
        Seed of the initial parameters.
    """
    if not isinstance(cfg, LEBMConfig):
        cfg = from_dict(LEBMConfig, cfg, "model")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        energy = energy_mlp(
            cfg.latent_dim, cfg.energy_widths, cfg.energy_activation, cfg.energy_slope
        )
    prior = LatentEBMPrior(
        energy,
        cfg.latent_dim,
        base_scale=cfg.base_scale,
        n_steps=cfg.prior_n_steps,
        step_size=cfg.prior_step_size,
    )
    generator = build_generator(cfg, cfg.latent_dim, gen)
    model = LEBM(prior, generator, GaussianLikelihood(cfg.likelihood_variance))
    model.config = cfg  # kept so checkpoints can rebuild the model (see kaem.kinds.load_model)
    return model
