"""The KAEM model: an energy prior and a generator, nothing else (eq. 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kaem.config import ModelConfig, from_dict
from kaem.model.bases import build_basis
from kaem.model.generators import CNNGenerator, Generator, KANGenerator
from kaem.model.kan import KANLayer
from kaem.model.likelihood import GaussianLikelihood
from kaem.model.prior import EnergyPrior, MixtureEnergyPrior, ReferencePrior, UnivariateEnergyPrior

__all__ = [
    "KAEM",
    "build_generator",
    "build_model",
    "build_prior",
]


class KAEM(nn.Module):
    """Kolmogorov-Arnold Energy Model ``z ~ pi(z)``, ``x = G(h(z)) + eps`` (eqs. 2, 19).

    Parameters
    ----------
    prior
        A :class:`~kaem.model.prior.UnivariateEnergyPrior` or
        :class:`~kaem.model.prior.MixtureEnergyPrior`.
    generator
        A :class:`~kaem.model.generators.Generator` whose ``latent_dim`` equals the prior's.
    likelihood
        The Gaussian observation model (eq. 8).
    generator_noise
        Standard deviation of the noise added before the output activation in training.
    """

    def __init__(
        self,
        prior: EnergyPrior,
        generator: Generator,
        likelihood: GaussianLikelihood,
        generator_noise: float = 0.0,
    ) -> None:
        super().__init__()
        generator.check_input_width(prior.latent_dim, "prior latent dimension")
        if generator_noise < 0:
            raise ValueError(f"generator_noise must be non-negative, got {generator_noise}")
        self.prior = prior
        self.generator = generator
        self.likelihood = likelihood
        self.generator_noise = float(generator_noise)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.generator.image_shape

    def decode(
        self, z: Tensor, *, noise: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Images from latents: ``z`` of the prior's event shape gives ``(n, C, H, W)``.

        Parameters
        ----------
        z
            Latents, ``(n, Q, P)`` (univariate prior) or ``(n, Q)`` (mixture prior).
        noise
            Add the training noise ``generator_noise`` before the output activation.
        generator
            Source of that noise.
        """
        h = self.prior.generator_input(z)
        return self.generator(h, self.generator_noise if noise else 0.0, generator)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact prior samples pushed through the generator: images of shape ``(n, C, H, W)``.

        Images are in ``[0, 1]`` for the sigmoid output; no training noise is added.
        """
        return self.decode(self.prior.sample(n, generator))


def _prior_kan(
    cfg: ModelConfig, generator: torch.Generator | None
) -> tuple[KANLayer, ReferencePrior]:
    p = cfg.prior
    low, high = p.reference.domain if p.reference.domain is not None else (None, None)
    reference = ReferencePrior(p.reference.name, low, high, p.reference.loc, p.reference.scale)
    n_components, latent_dim = p.widths
    # The univariate prior's KAN maps the P inputs to the Q outputs (edge (p, q) is f_qp); the
    # mixture's maps each of the Q coordinates to its P components.
    d_in, d_out = (
        (n_components, latent_dim) if p.kind == "univariate" else (latent_dim, n_components)
    )
    basis = build_basis(
        p.basis, d_in, grid_range=(reference.low, reference.high), **p.basis_settings()
    )
    kan = KANLayer(d_in, d_out, basis, generator=generator, **p.layer_settings())
    return kan, reference


def build_prior(cfg: ModelConfig, generator: torch.Generator | None = None) -> EnergyPrior:
    """The energy prior described by ``cfg.prior``."""
    p = cfg.prior
    if min(p.widths) < 1:
        raise ValueError(f"prior widths must be positive, got {p.widths}")
    kan, reference = _prior_kan(cfg, generator)
    common = dict(n_nodes=p.n_nodes, quadrature=p.quadrature, sampling=p.sampling)
    if p.kind == "univariate":
        return UnivariateEnergyPrior(kan, reference, shared_uniforms=p.shared_uniforms, **common)
    return MixtureEnergyPrior(
        kan,
        reference,
        train_proportions=p.train_proportions,
        proportion_l1=p.proportion_l1,
        generator=generator,
        **common,
    )


def build_generator(
    cfg: ModelConfig, latent_dim: int, generator: torch.Generator | None = None
) -> Generator:
    """The generator described by ``cfg.generator``."""
    g = cfg.generator
    if g.kind == "cnn":
        return CNNGenerator(
            latent_dim,
            cfg.image_shape,
            channels=g.channels,
            leaky_slope=g.leaky_slope,
            output_activation=g.output_activation,
            generator=generator,
        )
    return KANGenerator(
        latent_dim,
        cfg.image_shape,
        hidden_widths=g.hidden_widths,
        basis=g.basis,
        grid_range=g.grid_range,
        layer_norm=g.layer_norm,
        output_activation=g.output_activation,
        generator=generator,
        **g.basis_settings(),
        **g.layer_settings(),
    )


def build_model(cfg: Mapping[str, Any] | ModelConfig, seed: int = 0) -> KAEM:
    """Build a :class:`KAEM` from the ``model`` mapping of a config file.

    Parameters
    ----------
    cfg
        The ``model`` section of a config (keys of :class:`kaem.config.ModelConfig`) or a
        ``ModelConfig``.
    seed
        Seed of the initial parameters (the same seed gives the same model).
    """
    if not isinstance(cfg, ModelConfig):
        cfg = from_dict(ModelConfig, cfg, "model")
    gen = torch.Generator().manual_seed(seed)
    prior = build_prior(cfg, gen)
    generator = build_generator(cfg, prior.latent_dim, gen)
    model = KAEM(prior, generator, GaussianLikelihood(cfg.likelihood_variance), cfg.generator.noise)
    model.config = cfg  # kept so checkpoints can rebuild the model (see load_model)
    return model
