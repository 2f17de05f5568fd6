"""Small models and data that several test modules build, and the tests' time limit."""

import torch

from kaem.model.bases import build_basis
from kaem.model.generators import Generator
from kaem.model.kan import KANLayer
from kaem.model.prior import UnivariateEnergyPrior
from kaem.model.reference import ReferencePrior

#: Seconds a test waits for a subprocess (a Snakemake run, a training, a daemon) before it
#: calls it hung. A time limit in a test catches a hang, never slowness: the whole tiny
#: workflow takes one to four minutes on two cores beside other work, so this is far beyond
#: any run that is merely slow.
HANG_S = 45 * 60

#: A KAEM small enough to train for a dozen steps in a test: 8x8 images, P = 3, Q = 5.
TINY_MODEL = {
    "image_shape": [1, 8, 8],
    "prior": {"widths": [3, 5], "grid_size": 6, "n_nodes": 40},
    "generator": {"hidden_widths": [10], "grid_size": 6},
}


#: Pang et al.'s latent EBM at the same scale (kaem.config.LEBMConfig keys).
TINY_LEBM = {
    "image_shape": [1, 8, 8],
    "latent_dim": 4,
    "energy_widths": [16],
    "prior_n_steps": 5,
    "generator": {"kind": "kan", "hidden_widths": [10], "grid_size": 6},
    "likelihood_variance": 0.1,
}


#: A DDPM at the same scale (kaem.config.DDPMConfig keys): two UNet levels, T = 20.
TINY_DDPM = {
    "image_shape": [1, 8, 8],
    "channels": [8, 16],
    "norm_groups": 4,
    "time_embedding_dim": 16,
    "n_timesteps": 20,
    "beta_end": 0.2,
}


def tiny_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` uniform random 8x8 uint8 images, shape ``(n, 1, 8, 8)``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8)


def one_dimensional_prior() -> UnivariateEnergyPrior:
    """A 1-D energy prior with fixed, bumpy coefficients on the asymmetric domain [-1, 2]."""
    ref = ReferencePrior("gaussian", -1.0, 2.0)
    kan = KANLayer(
        1,
        1,
        build_basis("rbf", 1, grid_size=6, grid_range=(-1.0, 2.0)),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        kan.coef.copy_(torch.tensor([0.5, -1.0, 1.5, 0.0, -0.5, 1.0]).reshape(1, 6, 1))
    return UnivariateEnergyPrior(kan, ref, n_nodes=100)


class LinearGenerator(Generator):
    """x = W h + b on a (1, 1, D) image, no output activation.

    ``blow_up``: outputs are NaN where some ``|h| > blow_up`` (to exercise non-finite policies,
    now that chains on the prior's bounded domain cannot diverge).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, blow_up: float | None = None):
        super().__init__(weight.shape[1], (1, 1, weight.shape[0]), "none")
        self.weight = torch.nn.Parameter(weight.clone())
        self.bias = torch.nn.Parameter(bias.clone())
        self.blow_up = blow_up

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        x = h @ self.weight.T + self.bias
        if self.blow_up is not None:
            x = x + torch.log(self.blow_up - h.abs()).sum(-1, keepdim=True) * 0.0
        return x.reshape(-1, *self.image_shape)
