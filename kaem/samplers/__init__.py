"""Samplers for KAEM: importance weights, resamplers, Langevin kernels and tempering.

Every sampler is a pure function: it takes a log-density callable, a start, step settings and
an explicit ``torch.Generator``, and returns the new state with a NamedTuple of diagnostics.
Kernels (:func:`ula_kernel`, :func:`mala_kernel`) move any state; :func:`tempered` wraps
replica exchange around any of them.
"""

from kaem.samplers.base import (
    Bounds,
    NonFiniteError,
    NonFiniteRecord,
    nonfinite_check,
    nonfinite_error,
    reflect,
)
from kaem.samplers.importance import (
    EvidenceEstimate,
    effective_sample_size,
    log_mean_exp_with_stderr,
    normalized_log_weights,
    resample_if_needed,
)
from kaem.samplers.langevin import (
    KERNELS,
    LangevinInfo,
    LangevinState,
    MALAInfo,
    MALAStepInfo,
    ULAStepInfo,
    langevin_init,
    mala,
    mala_kernel,
    mala_step,
    ula,
    ula_kernel,
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
    TemperedState,
    TemperingInfo,
    cosine_exponent_schedule,
    power_temperatures,
    replica_swap,
    tempered,
    tempered_mala,
    tempered_ula,
)

__all__ = [
    "KERNELS",
    "RESAMPLERS",
    "Bounds",
    "EvidenceEstimate",
    "LangevinInfo",
    "LangevinState",
    "MALAInfo",
    "MALAStepInfo",
    "NonFiniteError",
    "NonFiniteRecord",
    "Resampler",
    "SwapInfo",
    "TemperedState",
    "TemperingInfo",
    "ULAStepInfo",
    "cosine_exponent_schedule",
    "effective_sample_size",
    "get_resampler",
    "langevin_init",
    "log_mean_exp_with_stderr",
    "mala",
    "mala_kernel",
    "mala_step",
    "multinomial_resample",
    "nonfinite_check",
    "nonfinite_error",
    "normalized_log_weights",
    "power_temperatures",
    "reflect",
    "replica_swap",
    "resample_if_needed",
    "residual_resample",
    "stratified_resample",
    "systematic_resample",
    "tempered",
    "tempered_mala",
    "tempered_ula",
    "ula",
    "ula_kernel",
    "ula_step",
]
