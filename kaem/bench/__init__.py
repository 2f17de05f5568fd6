"""Benchmarks of App. A: ``python -m kaem.bench``.

Prints one line per benchmark (name, median seconds over repetitions, peak memory in MiB)
followed by the ratios the paper's claims rest on: inverse-transform prior sampling against
Langevin sampling of a Pang et al. (2020) latent EBM prior, the thermodynamic criterion's
overhead, and generation against the VAE. The cases are in :mod:`kaem.bench.cases`, the
measuring in :mod:`kaem.bench.harness`.
"""

from kaem.bench.cases import BENCHMARKS, SUITES, Benchmark, Case
from kaem.bench.harness import RATIOS, main, payload, ratios, run_benchmarks
from kaem.bench.measure import BenchResult, measure

__all__ = [
    "BENCHMARKS",
    "RATIOS",
    "SUITES",
    "BenchResult",
    "Benchmark",
    "Case",
    "main",
    "measure",
    "payload",
    "ratios",
    "run_benchmarks",
]
