"""The machinery both energy priors share: quadrature nodes, cached tables, exact sampling."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from kaem import memory
from kaem import quadrature as quad
from kaem.cache import ParameterCache
from kaem.checks import check_count
from kaem.kan import KANLayer
from kaem.quadrature import native
from kaem.reference import ReferencePrior

__all__ = ["INDEX_MIN_DRAWS", "EnergyPrior", "PriorTables", "SamplingMethod"]

SamplingMethod = Literal["auto", "search", "table"]

#: Draws per density from which a search on a CPU starts from a cell index: building one
#: costs about as much as searching 30 draws of every density, and then saves most of the
#: search.
INDEX_MIN_DRAWS = 32


class PriorTables(NamedTuple):
    """What sampling needs, built once per parameter state (see :class:`ParameterCache`).

    Attributes
    ----------
    cdf
        CDFs of the densities at the cell edges (``cdf`` of shape ``(..., N + 1)``).
    guide
        Their guide table (:func:`kaem.quadrature.guide_table`), or None if not requested.
    shared
        Instead of ``guide``, for the univariate prior with ``shared_uniforms``: the guide
        laid out for uniforms shared across ``q`` (:func:`kaem.quadrature.shared_guide_table`).
    index
        Where searches start (:func:`kaem.quadrature.cell_index`), or None to search from
        scratch.
    """

    cdf: quad.CDFTable
    guide: quad.GuideTable | None = None
    shared: quad.SharedGuide | None = None
    index: quad.CellIndex | None = None


class EnergyPrior(nn.Module):
    """Quadrature, caching and sampling machinery shared by both priors.

    Parameters
    ----------
    kan
        KAN layer whose edges are the energies (its layout is the subclass's).
    reference
        The reference prior ``pi_0`` and its domain.
    n_nodes, quadrature
        Quadrature nodes (200 in the paper) and rule (``gauss_legendre`` or ``trapezium``).
    sampling
        How the CDFs are inverted; every path is exact and, for the same uniforms, returns
        the same samples to float rounding. ``search`` finds each draw's cell by search (on
        a CPU, for :data:`INDEX_MIN_DRAWS` draws or more, starting from a
        :func:`~kaem.quadrature.cell_index`: a step or two instead of eight; the same cells);
        ``table`` looks it up in a guide table of ``table_points`` intervals (built
        once per parameter state, a few multiply-adds per draw); ``auto`` builds the table on
        a CPU once more than ``table_threshold`` draws have been asked of the same
        parameters, and searches on an accelerator.
    """

    def __init__(
        self,
        kan: KANLayer,
        reference: ReferencePrior,
        *,
        n_nodes: int = 200,
        quadrature: quad.QuadratureRule = "gauss_legendre",
        sampling: SamplingMethod = "auto",
        table_points: int = 384,
        table_threshold: int = 256,
    ) -> None:
        super().__init__()
        if sampling not in ("auto", "search", "table"):
            raise ValueError(f"sampling must be 'auto', 'search' or 'table', got {sampling!r}")
        if table_points < 1:
            raise ValueError(f"table_points must be at least 1, got {table_points}")
        self.kan = kan
        self.reference = reference
        self.quadrature = quadrature
        self.sampling = sampling
        self.table_points = table_points
        self.table_threshold = table_threshold
        nodes, weights = quad.nodes_and_weights(n_nodes, reference.low, reference.high, quadrature)
        self.register_buffer("nodes", nodes)  # (N,)
        self.register_buffer("log_weights", weights.log())  # (N,)
        self.register_buffer("edges", quad.cell_edges(weights, reference.low))  # (N + 1,)
        self.register_buffer("log_reference_nodes", reference.log_density(nodes))  # (N,)
        self._cache = ParameterCache()

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

    def _node_energies(self) -> Tensor:
        """Energies ``f_qp`` at every node, shape ``(Q, P, N)``."""
        raise NotImplementedError

    def node_log_density(self) -> Tensor:
        """Unnormalised log densities ``f_qp(z_n) + log pi_0(z_n)``, shape ``(Q, P, N)``.

        The nodes are contiguous (:meth:`kaem.kan.KANLayer.edges_on_grid`): the normaliser,
        the CDFs and their indexes all reduce or scan along them.
        """
        return self._node_energies() + self.log_reference_nodes

    def log_normaliser(self) -> Tensor:
        """``log Z_qp`` by quadrature (eq. 20), shape ``(Q, P)``; differentiable."""
        return quad.log_normaliser(self.node_log_density(), self.log_weights)

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

    def _state(self) -> dict[str, Any]:
        """Cached tables of the parameters as they are now (:class:`ParameterCache`)."""
        return self._cache.current([*self.parameters(), *self.buffers()])

    def _tables(
        self,
        state: dict[str, Any],
        name: str,
        build_cdf: Callable[[], quad.CDFTable],
        guide: bool,
        n: int = 0,
    ) -> PriorTables:
        """The CDFs ``name`` and their guide table (if ``guide``) or else, for ``n`` draws
        that a cell index speeds up (:meth:`_indexed`), its cell index; built into ``state``
        when missing."""
        with torch.no_grad():
            if name not in state:
                state[name] = build_cdf()
            if guide:
                if name + ".guide" not in state:
                    state[name + ".guide"] = quad.guide_table(state[name], self.table_points)
                return PriorTables(state[name], guide=state[name + ".guide"])
            if self._indexed(n):
                if name + ".index" not in state:
                    state[name + ".index"] = quad.cell_index(state[name])
                return PriorTables(state[name], index=state[name + ".index"])
        return PriorTables(state[name])

    def _indexed(self, n: int) -> bool:
        """Whether searches for ``n`` draws per density start from a cell index: on a CPU,
        from :data:`INDEX_MIN_DRAWS` draws, unless the compiled search runs instead
        (:mod:`kaem.quadrature.native`); an accelerator searches every draw in parallel, and
        the index's fallback for crowded buckets would wait for the device."""
        cpu = self.nodes.device.type == "cpu"
        return cpu and n >= INDEX_MIN_DRAWS and not native.usable(self.nodes)

    def _guided(self, n: int, state: dict[str, Any], name: str) -> bool:
        """Whether ``n`` draws go through the guide table (both paths are exact).

        ``auto`` builds the table on a CPU once more than ``table_threshold`` draws have been
        asked of the same parameters (a table costs about as much to build as searching a few
        hundred draws, and then makes every draw cheap); on an accelerator it searches, which
        the device does in parallel without a host synchronisation.
        """
        if self.sampling != "auto":
            return self.sampling == "table"
        if self.nodes.device.type != "cpu":
            return False
        asked = state.get(name + ".asked", 0) + n
        state[name + ".asked"] = asked
        return asked > self.table_threshold

    def _check_n(self, n: int) -> None:
        check_count("the number of samples (a positive integer)", n)

    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Uniforms on ``[0, 1)``: in parallel from one draw of ``generator`` on a CPU
        (:func:`kaem.quadrature.native.uniform_`), else ``torch.rand`` from it."""
        out = memory.empty(shape, dtype=self.nodes.dtype, device=self.nodes.device)
        if native.usable(out):
            return native.uniform_(out, generator)
        return torch.rand(shape, generator=generator, out=out)
