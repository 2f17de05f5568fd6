"""Samplers for KAEM: importance weights, resamplers, Langevin kernels and tempering.

Every sampler is a pure function: it takes a log-density callable, a start, step settings and
an explicit ``torch.Generator``, and returns the new state with a NamedTuple of diagnostics.
"""

from kaem.samplers.importance import (
    effective_sample_size,
    normalized_log_weights,
    resample_if_needed,
)
from kaem.samplers.langevin import (
    Bounds,
    LangevinInfo,
    LangevinState,
    MALAInfo,
    MALAStepInfo,
    NonFiniteError,
    langevin_init,
    mala,
    mala_step,
    reflect,
    ula,
    ula_step,
)
from kaem.samplers.resampling import (
    RESAMPLERS,
    Resampler,
    get_resampler,
    multinomial_resample,
    residual_resample,
    stratified_resample,
    systematic_resample,
)
from kaem.samplers.tempering import (
    SwapInfo,
    TemperingInfo,
    cosine_exponent_schedule,
    power_temperatures,
    replica_swap,
    tempered_ula,
)

__all__ = [
    "RESAMPLERS",
    "Bounds",
    "LangevinInfo",
    "LangevinState",
    "MALAInfo",
    "MALAStepInfo",
    "NonFiniteError",
    "Resampler",
    "SwapInfo",
    "TemperingInfo",
    "cosine_exponent_schedule",
    "effective_sample_size",
    "get_resampler",
    "langevin_init",
    "mala",
    "mala_step",
    "multinomial_resample",
    "normalized_log_weights",
    "power_temperatures",
    "reflect",
    "replica_swap",
    "resample_if_needed",
    "residual_resample",
    "stratified_resample",
    "systematic_resample",
    "tempered_ula",
    "ula",
    "ula_step",
]
