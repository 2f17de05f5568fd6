"""Kolmogorov-Arnold Energy Models: univariate energy priors sampled exactly by the inverse
transform method, KAN and CNN generators, and their training criteria."""

__version__ = "0.1.0"

from kaem.model import KAEM, build_model, load_model
from kaem.train import TrainResult, train

__all__ = ["KAEM", "TrainResult", "__version__", "build_model", "load_model", "train"]
