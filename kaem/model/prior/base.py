"""What both energy priors share: quadrature nodes, the normaliser, and the inverse CDF."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from kaem.checks import check_count
from kaem.model import quadrature as quad
from kaem.model.accel import cpu
from kaem.model.kan import KANLayer
from kaem.model.reference import ReferencePrior

__all__ = [
    "INVERSE_CDF",
    "QUADRATURE_TOLERANCE",
    "EnergyPrior",
    "QuadratureWarning",
    "SamplingMethod",
]

SamplingMethod = Literal["search", "compiled"]

#: How the priors invert their CDFs (eq. 13), by ``model.prior.sampling``: ``search``, the
#: plain tensor path on every device, or ``compiled``, the same samples by compiled loops on
#: the CPU (:mod:`kaem.model.accel.cpu`; other devices take the plain path).
INVERSE_CDF: dict[str, Callable[[Tensor, quad.CDFTable], Tensor]] = {
    "search": quad.inverse_cdf,
    "compiled": cpu.inverse_cdf,
}


#: Nats by which ``log Z_qp`` may move between ``N/2`` and ``N`` quadrature nodes
#: (:meth:`EnergyPrior.quadrature_error`) before training and ``kaem evaluate`` warn. On a
#: perturbed Morlet mixture, 200 nodes moved ``log Z`` by about 1e-2 and left a bias of a
#: few tenths of a percent in the IS gradient, just above its noise; 400 nodes, by 1e-5.
QUADRATURE_TOLERANCE = 1e-3


class QuadratureWarning(UserWarning):
    """The quadrature no longer resolves the prior's energies (raise ``n_nodes``)."""


class EnergyPrior(nn.Module):
    """Quadrature and inverse-transform sampling, shared by both priors.

    Parameters
    ----------
    kan
        KAN layer whose edges are the energies (its layout is the subclass's).
    reference
        The reference prior ``pi_0`` and its domain.
    n_nodes, quadrature
        Quadrature nodes (200 in the paper) and rule (``gauss_legendre`` or ``trapezium``).
    sampling
        How the CDFs are inverted (:data:`INVERSE_CDF`); both paths return the same samples.
    """

    def __init__(
        self,
        kan: KANLayer,
        reference: ReferencePrior,
        *,
        n_nodes: int = 200,
        quadrature: quad.QuadratureRule = "gauss_legendre",
        sampling: SamplingMethod = "search",
    ) -> None:
        super().__init__()
        if sampling not in INVERSE_CDF:
            raise ValueError(f"sampling must be one of {sorted(INVERSE_CDF)}, got {sampling!r}")
        self.kan = kan
        self.reference = reference
        self.quadrature = quadrature
        self.sampling = sampling
        nodes, weights = quad.nodes_and_weights(n_nodes, reference.low, reference.high, quadrature)
        self.register_buffer("nodes", nodes)  # (N,)
        self.register_buffer("log_weights", weights.log())  # (N,)
        self.register_buffer("edges", quad.cell_edges(weights, reference.low))  # (N + 1,)
        self.register_buffer("log_reference_nodes", reference.log_density(nodes))  # (N,)

    # -- quantities on the quadrature nodes ------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.nodes.shape[0]

    @property
    def domain(self) -> tuple[float, float]:
        """The bounded support ``[a, b]`` of every density (and of every sampler's chains)."""
        return (self.reference.low, self.reference.high)

    @property
    def components_shape(self) -> tuple[int, int]:
        """``(Q, P)``: the shape of the table of univariate densities ``pi_qp``."""
        raise NotImplementedError

    def _energies_on(self, nodes: Tensor) -> Tensor:
        """Energies ``f_qp`` at every point of ``nodes`` (``(N,)``), shape ``(Q, P, N)``."""
        raise NotImplementedError

    def node_log_density(self) -> Tensor:
        """Unnormalised log densities ``f_qp(z_n) + log pi_0(z_n)``, shape ``(Q, P, N)``."""
        return self._energies_on(self.nodes) + self.log_reference_nodes

    def log_normaliser(self) -> Tensor:
        """``log Z_qp`` by quadrature (eq. 20), shape ``(Q, P)``; differentiable."""
        return quad.log_normaliser(self.node_log_density(), self.log_weights)

    def cdf_table(self) -> quad.CDFTable:
        """The CDFs of every ``pi_qp`` at the cell edges (eq. 20), ``cdf`` of ``(Q, P, N + 1)``."""
        with torch.no_grad():
            return quad.build_cdf(self.node_log_density(), self.log_weights, self.edges)

    @torch.no_grad()
    def quadrature_error(self) -> Tensor:
        """How much ``log Z_qp`` moves when the quadrature is halved: ``|log Z_N - log Z_{N/2}|``.

        The quadrature defines the prior that is sampled (a CDF piecewise linear through the
        cell edges), while :meth:`log_prob` and the Langevin chains use the smooth energy. Both
        agree to the resolution of the rule: for Gauss-Legendre the error falls faster than any
        power of ``N`` once the nodes resolve the energy's wiggles, so the change from ``N/2``
        to ``N`` nodes bounds the error left at ``N``. Small values (below about 1e-3) mean the
        ``N`` nodes resolve every density; large ones, that ``model.prior.n_nodes`` should grow.

        Returns
        -------
        Tensor
            Shape ``(Q, P)``, in nats.
        """
        low, high = self.domain
        half, weights = quad.nodes_and_weights(
            max(self.n_nodes // 2, 2), low, high, self.quadrature, dtype=self.nodes.dtype
        )
        half, weights = half.to(self.nodes.device), weights.to(self.nodes.device)
        coarse = self._energies_on(half) + self.reference.log_density(half)
        return (self.log_normaliser() - quad.log_normaliser(coarse, weights.log())).abs()

    def log_prob(self, z: Tensor, log_normaliser: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def frozen_log_prob(self) -> Callable[[Tensor], Tensor]:
        """:meth:`log_prob` with ``log Z_qp`` computed once, without gradient: a sampler's target.

        ``log Z`` does not depend on ``z``, so a Langevin chain (which differentiates in ``z``
        only) sees the same density and gradient, without recomputing the quadrature at every
        step or recording its graph in the parameters. Valid while the parameters do not
        change (one sampling run).
        """
        with torch.no_grad():
            log_z = self.log_normaliser()
        return lambda z: self.log_prob(z, log_normaliser=log_z)

    def _on_support(self, z: Tensor, log_density: Tensor) -> Tensor:
        """``log_density`` where ``z`` lies in ``[a, b]``, ``-inf`` outside (shapes of ``z``)."""
        low, high = self.domain
        inside = (z >= low) & (z <= high)
        return torch.where(inside, log_density, -math.inf)

    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Uniforms on ``[0, 1)`` from ``generator``, shape ``shape``, on the prior's device."""
        check_count("the number of samples (a positive integer)", shape[0])
        return torch.rand(
            shape, generator=generator, dtype=self.nodes.dtype, device=self.nodes.device
        )
