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

Everything that depends only on the parameters (energies on the quadrature nodes, CDFs, the
guide table) is built once per parameter state and reused (:class:`ParameterCache`), so
repeated sampling between optimiser steps costs only the draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from kaem import quadrature as quad
from kaem.kan import KANLayer

__all__ = [
    "DEFAULT_DOMAINS",
    "MixtureEnergyPrior",
    "ParameterCache",
    "PriorTables",
    "ReferencePrior",
    "UnivariateEnergyPrior",
]

ReferenceName = Literal["gaussian", "uniform", "lognormal", "none"]
SamplingMethod = Literal["auto", "search", "table"]

#: Default bounded domains of the reference priors (those of the paper's code).
DEFAULT_DOMAINS: dict[str, tuple[float, float]] = {
    "gaussian": (-1.5, 1.5),
    "uniform": (0.0, 1.0),
    "lognormal": (0.0, 4.0),
    "none": (-1.2, 1.2),
}

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ReferencePrior:
    """Reference density ``pi_0`` restricted to a bounded domain (eqs. 9, 14).

    Parameters
    ----------
    name
        ``gaussian`` (``N(loc, scale^2)``), ``uniform``, ``lognormal`` (``log z ~ N(loc,
        scale^2)``) or ``none`` (flat: the energy alone shapes the density).
    low, high
        The domain ``[a, b]``; need not be symmetric. Defaults in :data:`DEFAULT_DOMAINS`.
    loc, scale
        Location and scale of the Gaussian / log-normal.

    Notes
    -----
    ``uniform`` and ``none`` differ only by a constant, which the partition function absorbs:
    both give a density proportional to ``exp(f)`` on ``[a, b]``.
    """

    name: ReferenceName = "gaussian"
    low: float | None = None
    high: float | None = None
    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in DEFAULT_DOMAINS:
            raise ValueError(
                f"unknown reference prior {self.name!r}; choose one of {sorted(DEFAULT_DOMAINS)}"
            )
        low, high = DEFAULT_DOMAINS[self.name]
        object.__setattr__(self, "low", float(low if self.low is None else self.low))
        object.__setattr__(self, "high", float(high if self.high is None else self.high))
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise ValueError(
                f"reference prior {self.name!r}: domain must be finite with high > low, "
                f"got [{self.low}, {self.high}]"
            )
        if self.name == "lognormal" and self.low < 0:
            raise ValueError(f"lognormal reference needs a domain in [0, inf), got low={self.low}")
        if not self.scale > 0:
            raise ValueError(f"reference prior scale must be positive, got {self.scale}")

    def log_density(self, z: Tensor) -> Tensor:
        """``log pi_0(z)`` elementwise (normalised on the real line, not on the domain).

        The formula itself ignores the domain (the log-normal gives ``-inf`` for ``z <= 0``);
        the priors restrict it to ``[a, b]``, and their ``log_prob`` is ``-inf`` outside.
        """
        if self.name == "gaussian":
            return -0.5 * ((z - self.loc) / self.scale).square() - (
                math.log(self.scale) + _LOG_SQRT_2PI
            )
        if self.name == "uniform":
            return torch.full_like(z, -math.log(self.high - self.low))
        if self.name == "lognormal":
            logz = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
            out = -logz - 0.5 * ((logz - self.loc) / self.scale).square()
            out = out - (math.log(self.scale) + _LOG_SQRT_2PI)
            return torch.where(z > 0, out, torch.full_like(z, -math.inf))
        return torch.zeros_like(z)


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
    """

    cdf: quad.CDFTable
    guide: quad.GuideTable | None = None
    shared: quad.SharedGuide | None = None


class ParameterCache:
    """Values derived from a module's tensors, reused only while the tensors are unchanged.

    Version counters alone miss writes through ``.data`` or a NumPy view, so on a CPU the
    contents are also compared with a snapshot taken when the values were built (about a
    microsecond per thousand parameters). On an accelerator that comparison would wait for
    the device, so there nothing is kept between calls and every call rebuilds, which costs a
    few kernel launches and never a host synchronisation.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._snapshot: list[Tensor] = []
        self._values: dict[str, Any] = {}

    def current(self, tensors: list[Tensor]) -> dict[str, Any]:
        """The values built for the tensors as they are now (empty if anything changed)."""
        if any(t.device.type != "cpu" for t in tensors):
            self._key, self._snapshot, self._values = None, [], {}
            return {}
        key = tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in tensors)
        if key != self._key or not all(
            torch.equal(t, old) for t, old in zip(tensors, self._snapshot, strict=True)
        ):
            self._key = key
            self._snapshot = [t.detach().clone() for t in tensors]
            self._values = {}
        return self._values


class _EnergyPrior(nn.Module):
    """Quadrature, caching and sampling machinery shared by both priors."""

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
        """Unnormalised log densities ``f_qp(z_n) + log pi_0(z_n)``, shape ``(Q, P, N)``."""
        return self._node_energies() + self.log_reference_nodes

    def log_normaliser(self) -> Tensor:
        """``log Z_qp`` by quadrature (eq. 20), shape ``(Q, P)``; differentiable."""
        return quad.log_normaliser(self.node_log_density(), self.log_weights)

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
    ) -> PriorTables:
        """The CDFs ``name`` (and their guide table), built into ``state`` when missing."""
        with torch.no_grad():
            if name not in state:
                state[name] = build_cdf()
            if guide and name + ".guide" not in state:
                state[name + ".guide"] = quad.guide_table(state[name], self.table_points)
        return PriorTables(state[name], state.get(name + ".guide") if guide else None)

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
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive integer, got {n!r}")

    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.rand(
            shape, generator=generator, device=self.nodes.device, dtype=self.nodes.dtype
        )


class UnivariateEnergyPrior(_EnergyPrior):
    """Independent univariate energy prior (eqs. 13-16).

    Parameters
    ----------
    kan
        KAN layer with ``in_features = P`` and ``out_features = Q``; edge ``(p, q)`` is
        ``f_qp``. Its base activation and basis define the energies.
    reference
        The reference prior ``pi_0`` and its domain.
    n_nodes, quadrature
        Quadrature nodes (200 in the paper) and rule (``gauss_legendre`` or ``trapezium``).
    shared_uniforms
        Draw one ``u_p`` per ``p`` shared by every ``q`` (the paper, eq. 13: ``z_qp =
        F_qp^{-1}(u_p)``) or independent ``u_qp``.
    sampling
        How the CDFs are inverted; every path is exact and, for the same uniforms, returns
        the same samples to float rounding. ``search`` finds each draw's cell by binary
        search; ``table`` looks it up in a guide table of ``table_points`` intervals (built
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
        shared_uniforms: bool = True,
        sampling: SamplingMethod = "auto",
        table_points: int = 384,
        table_threshold: int = 256,
    ) -> None:
        super().__init__(
            kan,
            reference,
            n_nodes=n_nodes,
            quadrature=quadrature,
            sampling=sampling,
            table_points=table_points,
            table_threshold=table_threshold,
        )
        self.shared_uniforms = shared_uniforms

    @property
    def num_inputs(self) -> int:
        """``P``."""
        return self.kan.in_features

    @property
    def latent_dim(self) -> int:
        """``Q``, the width of the generator input ``h``."""
        return self.kan.out_features

    @property
    def event_shape(self) -> tuple[int, int]:
        """Shape of one latent sample, ``(Q, P)``."""
        return (self.kan.out_features, self.kan.in_features)

    @property
    def components_shape(self) -> tuple[int, int]:
        return self.event_shape

    def _node_energies(self) -> Tensor:
        x = self.nodes[:, None].expand(-1, self.num_inputs)  # (N, P)
        return self.kan.edges(x).permute(2, 1, 0)  # (N, P, Q) -> (Q, P, N)

    def _check_z(self, z: Tensor) -> None:
        if z.ndim != 3 or tuple(z.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected latents of shape (n, {self.event_shape[0]}, "
                f"{self.event_shape[1]}), got {tuple(z.shape)}"
            )

    def energy(self, z: Tensor) -> Tensor:
        """Unnormalised energy ``sum_qp f_qp(z_qp)``, shape ``(n,)`` for ``z`` of ``(n, Q, P)``.

        Its gradient is what the contrastive-divergence prior term (eq. 16) needs.
        """
        self._check_z(z)
        return self.kan.edges_at(z).sum(dim=(-2, -1))

    def weighted_energy(self, z: Tensor, weights: Tensor) -> Tensor:
        """``sum_s weights[s] energy(z[s])`` (scalar), differentiable in the parameters only.

        Equal to ``(weights * self.energy(z)).sum()`` but computed from weighted basis sums
        (:meth:`kaem.kan.KANLayer.weighted_edge_sum`), which is what makes the
        contrastive-divergence term of eq. 16 cheap.
        """
        self._check_z(z)
        return self.kan.weighted_edge_sum(z, weights)

    def component_log_prob(self, z: Tensor) -> Tensor:
        """Normalised ``log pi_qp(z_qp)`` (eq. 14), shape ``(n, Q, P)``; ``-inf`` off ``[a, b]``."""
        self._check_z(z)
        lp = self.kan.edges_at(z) + self.reference.log_density(z) - self.log_normaliser()
        return self._on_support(z, lp)

    def log_prob(self, z: Tensor) -> Tensor:
        """Normalised ``log pi(z)`` (eq. 15), shape ``(n,)`` for ``z`` of shape ``(n, Q, P)``.

        This is the density of independent coordinates; with ``shared_uniforms`` the samples
        are comonotone across ``q`` instead and have the same marginals but not this joint
        density (see :attr:`samples_follow_log_prob`).
        """
        return self.component_log_prob(z).sum(dim=(-2, -1))

    @property
    def samples_follow_log_prob(self) -> bool:
        """Whether :meth:`sample` draws from the joint density :meth:`log_prob` evaluates.

        False with ``shared_uniforms`` (the paper's eq. 13): one ``u_p`` for every ``q`` makes
        the draws comonotone, with the right marginals but a joint distribution that has no
        density. Importance sampling only needs the marginals; a Langevin chain on
        :meth:`log_prob` would target a different prior from the one that is sampled.
        """
        return not self.shared_uniforms

    def generator_input(self, z: Tensor) -> Tensor:
        """``h_q = sum_p z_qp`` (eq. 19): ``(n, Q, P) -> (n, Q)``."""
        return z.sum(dim=-1)

    def tables(self, guide: bool = False) -> PriorTables:
        """CDFs of every ``pi_qp`` (and their guide table) for the current parameters."""
        return self._component_tables(self._state(), guide)

    def _component_tables(self, state: dict[str, Any], guide: bool) -> PriorTables:
        if not (guide and self.shared_uniforms):
            return self._tables(state, "components", self._build_cdf, guide)
        # Draws shared across q read the guide in its interleaved layout only.
        cdf = self._tables(state, "components", self._build_cdf, False).cdf
        if "components.shared" not in state:
            with torch.no_grad():
                state["components.shared"] = quad.shared_guide_table(cdf, self.table_points)
        return PriorTables(cdf, shared=state["components.shared"])

    def _build_cdf(self) -> quad.CDFTable:
        return quad.build_cdf(self.node_log_density(), self.log_weights, self.edges)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact inverse-transform samples (eq. 13).

        Parameters
        ----------
        n
            Number of samples.
        generator
            Source of the uniforms.

        Returns
        -------
        Tensor
            Shape ``(n, Q, P)``, detached.
        """
        self._check_n(n)
        q, p = self.event_shape
        state = self._state()
        guided = self._guided(n, state, "components")
        tables = self._component_tables(state, guided)
        if self.shared_uniforms:
            u = self._uniform((n, p), generator)  # u_p, shared across q
            if guided:
                z = quad.guided_inverse_cdf_shared(u, tables.cdf, tables.shared)
                return z.permute(1, 2, 0)  # (P, n, Q) -> (n, Q, P)
            return quad.inverse_cdf(u.T[None].expand(q, p, n), tables.cdf).permute(2, 0, 1)
        u = self._uniform((q, p, n), generator)
        if guided:
            out = u.new_empty(n, q, p)  # written through its (Q P, n) view
            quad.guided_inverse_cdf(
                u.view(q * p, n), tables.cdf, tables.guide, out=out.view(n, -1).T
            )
            return out
        return quad.inverse_cdf(u, tables.cdf).permute(2, 0, 1)

    @torch.no_grad()
    def update_grid(self, z: Tensor, uniform_ratio: float = 0.05) -> None:
        """Grid update of the energies from latent samples ``z`` of shape ``(n, Q, P)``.

        Input ``p`` of the KAN layer sees ``z_qp`` for every ``q``, so its grid is fitted to
        all of them.
        """
        self._check_z(z)
        self.kan.update_grid(z.reshape(-1, self.num_inputs), uniform_ratio)


class MixtureEnergyPrior(_EnergyPrior):
    """Mixture-of-univariate energy prior (eqs. 17-18).

    Parameters
    ----------
    kan
        KAN layer with ``in_features = Q`` and ``out_features = P``; edge ``(q, p)`` is the
        energy of component ``p`` of coordinate ``q``.
    reference, n_nodes, quadrature, sampling, table_points, table_threshold
        As for :class:`UnivariateEnergyPrior`.
    train_proportions
        Learn the mixture logits ``a_q`` (``alpha_q = softmax(a_q)``) or keep them uniform.
    proportion_l1
        ``lambda`` of the regulariser ``lambda * sum_qp |alpha_qp - 1 / P|`` that pulls the
        proportions toward uniform. (The L1 norm of ``alpha`` itself is constant, ``Q``, since
        each row is a probability vector, so the distance to uniform is what is penalised.)
    generator
        Random generator for the initial logits.
    """

    def __init__(
        self,
        kan: KANLayer,
        reference: ReferencePrior,
        *,
        n_nodes: int = 200,
        quadrature: quad.QuadratureRule = "gauss_legendre",
        train_proportions: bool = True,
        proportion_l1: float = 0.0,
        sampling: SamplingMethod = "auto",
        table_points: int = 384,
        table_threshold: int = 256,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            kan,
            reference,
            n_nodes=n_nodes,
            quadrature=quadrature,
            sampling=sampling,
            table_points=table_points,
            table_threshold=table_threshold,
        )
        if proportion_l1 < 0:
            raise ValueError(f"proportion_l1 must be non-negative, got {proportion_l1}")
        self.proportion_l1 = float(proportion_l1)
        q, p = kan.in_features, kan.out_features
        if train_proportions:
            self.logits = nn.Parameter(0.01 * torch.randn(q, p, generator=generator))
        else:
            self.register_buffer("logits", torch.zeros(q, p))

    @property
    def num_components(self) -> int:
        """``P``."""
        return self.kan.out_features

    @property
    def latent_dim(self) -> int:
        """``Q``."""
        return self.kan.in_features

    @property
    def event_shape(self) -> tuple[int]:
        return (self.kan.in_features,)

    @property
    def components_shape(self) -> tuple[int, int]:
        return (self.kan.in_features, self.kan.out_features)

    def proportions(self) -> Tensor:
        """Mixture proportions ``alpha = softmax(a)`` (eq. 17), shape ``(Q, P)``."""
        return torch.softmax(self.logits, dim=-1)

    def regulariser(self) -> Tensor:
        """``lambda * sum_qp |alpha_qp - 1/P|`` (scalar)."""
        if self.proportion_l1 == 0.0:
            return self.logits.new_zeros(())
        alpha = self.proportions()
        return self.proportion_l1 * (alpha - 1.0 / self.num_components).abs().sum()

    def _node_energies(self) -> Tensor:
        x = self.nodes[:, None].expand(-1, self.latent_dim)  # (N, Q)
        return self.kan.edges(x).permute(1, 2, 0)  # (N, Q, P) -> (Q, P, N)

    def _check_z(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"expected latents of shape (n, {self.latent_dim}), got {tuple(z.shape)}"
            )

    def component_log_prob(self, z: Tensor) -> Tensor:
        """``log alpha_qp + log pi_qp(z_q)``, shape ``(n, Q, P)``; ``-inf`` off ``[a, b]``."""
        self._check_z(z)
        log_alpha = torch.log_softmax(self.logits, dim=-1)
        log_ref = self.reference.log_density(z)[..., None]
        lp = self.kan.edges(z) + log_ref + log_alpha - self.log_normaliser()
        return self._on_support(z[..., None], lp)

    def log_prob(self, z: Tensor) -> Tensor:
        """Normalised mixture log density (eq. 18), shape ``(n,)`` for ``z`` of shape ``(n, Q)``."""
        return torch.logsumexp(self.component_log_prob(z), dim=-1).sum(dim=-1)

    def generator_input(self, z: Tensor) -> Tensor:
        """The generator sees ``z`` itself (eq. 19): ``(n, Q) -> (n, Q)``."""
        return z

    @property
    def samples_follow_log_prob(self) -> bool:
        """Always True: coordinates are drawn independently from their mixtures."""
        return True

    def tables(self, guide: bool = False) -> PriorTables:
        """CDFs of every component ``pi_qp`` (and their guide table), shape ``(Q, P, N + 1)``."""
        return self._tables(self._state(), "components", self._build_cdf, guide)

    def _build_cdf(self) -> quad.CDFTable:
        return quad.build_cdf(self.node_log_density(), self.log_weights, self.edges)

    def marginal_tables(self, guide: bool = False) -> PriorTables:
        """CDF of each coordinate's whole mixture, ``cdf`` of shape ``(Q, N + 1)``.

        Every component lives on the same quadrature cells, so the mixture of their
        piecewise-constant densities is itself piecewise constant with cell masses
        ``sum_p alpha_qp m_qpn``: one CDF per coordinate instead of one per component.
        """
        return self._tables(self._state(), "marginal", self._build_marginal_cdf, guide)

    def _build_marginal_cdf(self) -> quad.CDFTable:
        log_mass = torch.log_softmax(self.node_log_density() + self.log_weights, dim=-1)
        log_alpha = torch.log_softmax(self.logits, dim=-1)[..., None]
        mixture = torch.logsumexp(log_alpha + log_mass, dim=1)  # (Q, N) log cell masses
        return quad.build_cdf(mixture, torch.zeros_like(self.log_weights), self.edges)

    @torch.no_grad()
    def sample_with_components(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Component-wise inverse-transform sampling (Algorithm 1).

        For each sample and coordinate ``q``, a component ``p ~ Categorical(alpha_q)`` is drawn
        by inverting the discrete CDF of ``alpha_q``, then ``z_q = F_qp^{-1}(u)``.

        Returns
        -------
        z, components
            Shapes ``(n, Q)`` (float) and ``(n, Q)`` (int64).
        """
        self._check_n(n)
        q, p = self.latent_dim, self.num_components
        u_comp = self._uniform((q, n), generator)
        u = self._uniform((q, n), generator).reshape(-1)
        cum = torch.cumsum(self.proportions(), dim=-1)  # (Q, P)
        comp = torch.searchsorted(cum, u_comp, right=True).clamp_(max=p - 1)  # (Q, n)
        rows = (comp + torch.arange(q, device=comp.device)[:, None] * p).reshape(-1)  # (Q n,)
        state = self._state()
        guided = self._guided(n, state, "components")
        tables = self._tables(state, "components", self._build_cdf, guided)
        if guided:
            z = quad.guided_inverse_cdf_rows(rows, u, tables.cdf, tables.guide)
        else:
            z = quad.inverse_cdf_rows(rows, u, tables.cdf)
        return z.reshape(q, n).T, comp.T

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples, shape ``(n, Q)``, detached.

        Draws from the same distribution as :meth:`sample_with_components` (component, then
        inverse transform) by inverting each coordinate's mixture CDF (see
        :meth:`marginal_tables`): one uniform and one lookup per coordinate, whatever the
        number of components.
        """
        self._check_n(n)
        u = self._uniform((self.latent_dim, n), generator)
        state = self._state()
        guided = self._guided(n, state, "marginal")
        tables = self._tables(state, "marginal", self._build_marginal_cdf, guided)
        if guided:
            z = quad.guided_inverse_cdf(u, tables.cdf, tables.guide)
        else:
            z = quad.inverse_cdf(u, tables.cdf)
        return z.T.contiguous()

    @torch.no_grad()
    def update_grid(self, z: Tensor, uniform_ratio: float = 0.05) -> None:
        """Grid update of the energies from latent samples ``z`` of shape ``(n, Q)``."""
        self._check_z(z)
        self.kan.update_grid(z, uniform_ratio)
