"""Energy-based latent priors of KAEM, sampled exactly by the inverse transform method.

Two priors share one mechanism: a KAN layer gives ``Q x P`` univariate energies ``f_qp``, each
tilting a reference density ``pi_0`` on a bounded domain ``[a, b]`` (eq. 14),

    pi_qp(z) = exp(f_qp(z)) pi_0(z) / Z_qp,

with ``Z_qp`` from quadrature (eq. 20) and samples from the tabulated CDF (eq. 13).

* :class:`UnivariateEnergyPrior` (eqs. 13-15): the latent is ``z`` of shape ``(Q, P)`` with
  ``z_qp = F_qp^{-1}(u_p)``; ``u_p`` is shared across ``q`` as in the paper (an option draws it
  independently). The generator sees ``h_q = sum_p z_qp`` (eq. 19).
* :class:`MixtureEnergyPrior` (eqs. 17-18): the latent is ``z`` of shape ``(Q,)``, each
  coordinate a mixture of ``P`` tilted densities with softmax proportions.

Both live on ``[a, b]`` alone: ``log_prob`` is ``-inf`` outside, inverse-transform samples
never leave it, and the Langevin kernels of :mod:`kaem.samplers` reflect at its ends, so
every sampler and estimator targets the same density on the same support.

Each call of ``sample`` builds the CDFs from the parameters as they are (a KAN evaluation on
the ``N`` nodes and a cumulative sum), draws the uniforms from the caller's generator and
inverts them (eq. 13, :func:`kaem.model.quadrature.inverse_cdf`): there is no state to go stale.
"""

from kaem.model.prior.base import (
    INVERSE_CDF,
    QUADRATURE_TOLERANCE,
    EnergyPrior,
    QuadratureWarning,
    SamplingMethod,
)
from kaem.model.prior.mixture import MixtureEnergyPrior
from kaem.model.prior.univariate import UnivariateEnergyPrior
from kaem.model.reference import DEFAULT_DOMAINS, ReferencePrior

__all__ = [
    "DEFAULT_DOMAINS",
    "INVERSE_CDF",
    "QUADRATURE_TOLERANCE",
    "EnergyPrior",
    "MixtureEnergyPrior",
    "QuadratureWarning",
    "ReferencePrior",
    "SamplingMethod",
    "UnivariateEnergyPrior",
]
