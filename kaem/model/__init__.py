"""The model's maths, from the bottom up.

* :mod:`~kaem.model.bases`, :mod:`~kaem.model.kan`: the univariate basis functions and the
  KAN layer built from them (App. B);
* :mod:`~kaem.model.reference`: the reference densities ``pi_0`` on their bounded domains;
* :mod:`~kaem.model.quadrature`: quadrature on a bounded interval, and the exact inverse of
  its CDF (eqs. 13, 20); :mod:`~kaem.model.accel`: the same inverse by compiled CPU loops;
* :mod:`~kaem.model.prior`: the univariate and mixture energy priors (eqs. 13-18);
* :mod:`~kaem.model.generators`, :mod:`~kaem.model.likelihood`: KAN and CNN generators, the
  Gaussian observation model (eqs. 6-8);
* :mod:`~kaem.model.kaem`: :class:`KAEM`, the prior and the generator together, and
  :func:`build_model` from the ``model`` section of a config.
"""

from kaem.model.kaem import KAEM, build_generator, build_model, build_prior

__all__ = ["KAEM", "build_generator", "build_model", "build_prior"]
