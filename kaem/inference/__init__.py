"""Inference in a trained KAEM: posterior and power-posterior samples, held-out evidence.

* :mod:`kaem.inference.posterior`: Langevin chains on ``p(z | x)`` and on the power
  posteriors ``p_t(z | x)``, started from exact prior samples and kept on the prior's domain;
* :mod:`kaem.inference.evidence`: ``log p(x)`` by importance sampling and by the steppingstone
  estimator (with both thermodynamic-integration companions), with standard errors.
"""

from kaem.inference.evidence import (
    EvidenceEstimate,
    SteppingstoneEstimate,
    evaluate_log_evidence,
    importance_log_evidence,
    log_mean_exp_with_stderr,
    steppingstone_log_evidence,
)
from kaem.inference.posterior import (
    NonFinitePolicy,
    PopulationSample,
    PosteriorSample,
    check_langevin_prior,
    log_likelihood_fn,
    sample_posterior,
    sample_power_posteriors,
)

__all__ = [
    "EvidenceEstimate",
    "NonFinitePolicy",
    "PopulationSample",
    "PosteriorSample",
    "SteppingstoneEstimate",
    "check_langevin_prior",
    "evaluate_log_evidence",
    "importance_log_evidence",
    "log_likelihood_fn",
    "log_mean_exp_with_stderr",
    "sample_posterior",
    "sample_power_posteriors",
    "steppingstone_log_evidence",
]
