"""Kolmogorov-Arnold Energy Models: univariate energy priors sampled exactly by the inverse
transform method, KAN and CNN generators, and their training criteria."""

__version__ = "0.1.0"

from kaem.kinds import MODEL_KINDS, load_model
from kaem.model import KAEM, build_model
from kaem.training import TrainResult, train
from kaem.vae import VAE

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
