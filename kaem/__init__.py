"""Kolmogorov-Arnold Energy Models."""

__version__ = "0.1.0"
