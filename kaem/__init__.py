"""Kolmogorov-Arnold Energy Models: univariate energy priors sampled exactly by the inverse
transform method, KAN and CNN generators, and their training criteria."""

from kaem.baselines.vae import VAE
from kaem.kinds import MODEL_KINDS, load_model
from kaem.model import KAEM, build_model
from kaem.training import TrainResult, train
from kaem.version import __version__

__all__ = [
    "KAEM",
    "MODEL_KINDS",
    "VAE",
    "TrainResult",
    "__version__",
    "build_model",
    "load_model",
    "train",
]
