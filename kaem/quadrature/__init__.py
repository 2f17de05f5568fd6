"""Quadrature on a bounded interval and inverse-transform sampling from it.

Every univariate density of the prior is known up to its normaliser on a bounded domain
``[a, b]``. A quadrature rule with nodes ``z_n`` and weights ``w_n`` gives the partition
function (eq. 20),

    Z = sum_n w_n exp(f(z_n)) pi_0(z_n),

and the same numbers define a distribution we can sample *exactly*: node ``n`` owns the cell
``[e_{n-1}, e_n]`` with ``e_n = a + w_1 + ... + w_n`` (the cells tile ``[a, b]`` because the
weights sum to ``b - a``; for Gauss-Legendre each node lies inside its own cell by the
Markov-Stieltjes separation theorem), and carries the mass ``m_n = w_n p(z_n) / Z``. The
density is constant inside a cell, so the CDF is piecewise linear and its inverse is found by a
search over cell edges plus linear interpolation inside the cell (eq. 13).

Two paths invert it, and both are exact: :func:`inverse_cdf` searches the cell of every draw;
:func:`guided_inverse_cdf` looks the draw up in a guide table (indexed search, Devroye 1986,
ch. II.2.4) that holds, for each interval of a fixed grid of uniforms, the same cells and
slopes in closed form, so a draw costs one lookup and a few multiply-adds. For the same
uniforms the two return the same samples to float rounding. All functions here are pure
tensor functions, batched over leading "row" dimensions (one row per univariate density),
with no Python loops over rows or samples. On a CPU, CDF tables are built and guide tables
built and read by the compiled loops of :mod:`kaem.quadrature.native` (the same arithmetic in
one pass); the eager PyTorch code is the path on other devices and the reference the loops
are tested against.
"""

from kaem.quadrature.guide import (
    MAX_SLOPE_RATIO,
    GuideTable,
    SharedGuide,
    guide_points,
    guide_position,
    guide_table,
    guided_inverse_cdf,
    guided_inverse_cdf_rows,
    guided_inverse_cdf_shared,
    shared_guide_table,
)
from kaem.quadrature.rules import (
    CDFTable,
    QuadratureRule,
    build_cdf,
    cdf_from_masses,
    cell_edges,
    log_normaliser,
    nodes_and_weights,
)
from kaem.quadrature.search import (
    CellIndex,
    cell_index,
    inverse_cdf,
    inverse_cdf_draws,
    inverse_cdf_rows,
    uniform_bucket,
)

__all__ = [
    "MAX_SLOPE_RATIO",
    "CDFTable",
    "CellIndex",
    "GuideTable",
    "QuadratureRule",
    "SharedGuide",
    "build_cdf",
    "cdf_from_masses",
    "cell_edges",
    "cell_index",
    "guide_points",
    "guide_position",
    "guide_table",
    "guided_inverse_cdf",
    "guided_inverse_cdf_rows",
    "guided_inverse_cdf_shared",
    "inverse_cdf",
    "inverse_cdf_draws",
    "inverse_cdf_rows",
    "log_normaliser",
    "nodes_and_weights",
    "shared_guide_table",
    "uniform_bucket",
]
