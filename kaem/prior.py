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

Everything that depends only on the parameters (energies on the quadrature nodes, CDFs, the
inverse-CDF table) is computed once per parameter version and cached, so repeated sampling
between optimiser steps costs only the draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kaem import quadrature as quad
from kaem.kan import KANLayer

__all__ = [
    "DEFAULT_DOMAINS",
    "MixtureEnergyPrior",
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

        Outside the domain the formula is continued analytically (Langevin chains may leave the
        domain); the log-normal gives ``-inf`` for ``z <= 0``.
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
    """What sampling needs, cached per parameter version.

    Attributes
    ----------
    cdf
        CDF of every ``pi_qp`` at the cell edges, ``cdf`` of shape ``(Q, P, N + 1)``.
    inverse
        Tabulated inverse CDFs, ``(Q, P, M + 1)``, or None if not requested.
    """

    cdf: quad.CDFTable
    inverse: Tensor | None


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
        table_points: int = 1024,
        table_threshold: int = 256,
    ) -> None:
        super().__init__()
        if sampling not in ("auto", "search", "table"):
            raise ValueError(f"sampling must be 'auto', 'search' or 'table', got {sampling!r}")
        if table_points < 2:
            raise ValueError(f"table_points must be at least 2, got {table_points}")
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
        self._cache_key: tuple | None = None
        self._cache: dict[str, Any] = {}

    # -- quantities on the quadrature nodes ------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.nodes.shape[0]

    @property
    def domain(self) -> tuple[float, float]:
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

    def _version_key(self) -> tuple:
        tensors = [*self.parameters(), *self.buffers()]
        return (
            tuple(t._version for t in tensors),
            tuple(t.data_ptr() for t in tensors),
            self.table_points,
        )

    def _cached(self, name: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per parameter version (an optimiser step or grid update bumps it)."""
        key = self._version_key()
        if key != self._cache_key:
            self._cache_key, self._cache = key, {}
        if name not in self._cache:
            with torch.no_grad():
                self._cache[name] = build()
        return self._cache[name]

    def tables(self, with_inverse: bool = False) -> PriorTables:
        """CDF tables of every ``pi_qp`` (and optionally their inverse-CDF tables), cached."""
        cdf = self._cached(
            "cdf", lambda: quad.build_cdf(self.node_log_density(), self.log_weights, self.edges)
        )
        if not with_inverse:
            return PriorTables(cdf, None)
        inverse = self._cached("inverse", lambda: quad.inverse_cdf_table(cdf, self.table_points))
        return PriorTables(cdf, inverse)

    def _use_table(self, n: int) -> bool:
        if self.sampling == "auto":
            return n > self.table_threshold
        return self.sampling == "table"

    def _check_n(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
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
        ``search`` inverts each CDF exactly by binary search; ``table`` reads an inverse-CDF
        table of ``table_points`` intervals (built once per parameter version, constant time
        per draw); ``auto`` uses the table for more than ``table_threshold`` samples.
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
        table_points: int = 1024,
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
        """Normalised ``log pi_qp(z_qp)`` (eq. 14), shape ``(n, Q, P)``."""
        self._check_z(z)
        return self.kan.edges_at(z) + self.reference.log_density(z) - self.log_normaliser()

    def log_prob(self, z: Tensor) -> Tensor:
        """Normalised ``log pi(z)`` (eq. 15), shape ``(n,)`` for ``z`` of shape ``(n, Q, P)``."""
        return self.component_log_prob(z).sum(dim=(-2, -1))

    def generator_input(self, z: Tensor) -> Tensor:
        """``h_q = sum_p z_qp`` (eq. 19): ``(n, Q, P) -> (n, Q)``."""
        return z.sum(dim=-1)

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
        if self.shared_uniforms:
            u = self._uniform((n, p), generator)  # u_p, shared across q
            if self._use_table(n):
                return self._sample_table_shared(u)
            cdf = self.tables().cdf
            u_rows = u.T[None].expand(q, p, n)  # (Q, P, n)
            return quad.inverse_cdf(u_rows, cdf).permute(2, 0, 1)
        u = self._uniform((q, p, n), generator)
        if self._use_table(n):
            inverse = self.tables(with_inverse=True).inverse
            z = quad.sample_table(inverse.reshape(q * p, -1), u.reshape(q * p, n))
            return z.reshape(q, p, n).permute(2, 0, 1)
        return quad.inverse_cdf(u, self.tables().cdf).permute(2, 0, 1)

    def _sample_table_shared(self, u: Tensor, chunk: int = 128) -> Tensor:
        # With u shared across q, every draw (s, p) reads whole Q-vectors of the table: lay it
        # out as rows of Q values per (p, grid point), gather the two rows around each draw
        # and interpolate, in cache-sized chunks. This is the fast path that makes 10^4
        # samples of 3,240 coordinates cost about as much as writing them.
        def rows() -> Tensor:
            inverse = self.tables(with_inverse=True).inverse  # (Q, P, M + 1)
            return inverse.permute(1, 2, 0).reshape(-1, inverse.shape[0]).contiguous()

        table = self._cached("gather_rows", rows)  # (P * (M + 1), Q)
        n, p = u.shape
        q, m = self.latent_dim, self.table_points
        x = u * m
        idx = x.long().clamp_(0, m - 1)  # truncation is floor for u >= 0
        frac = x.sub_(idx)[..., None]  # (n, P, 1)
        idx += torch.arange(p, device=u.device) * (m + 1)  # row of (p, grid point)
        out = torch.empty(n, p, q, dtype=table.dtype, device=table.device)
        for start in range(0, n, chunk):
            i = idx[start : start + chunk]
            lo = F.embedding(i, table)  # (c, P, Q)
            hi = F.embedding(i + 1, table)
            torch.lerp(lo, hi, frac[start : start + chunk], out=out[start : start + chunk])
        return out.permute(0, 2, 1)  # (n, Q, P)

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
        table_points: int = 1024,
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
        """``log alpha_qp + log pi_qp(z_q)``, shape ``(n, Q, P)``."""
        self._check_z(z)
        log_alpha = torch.log_softmax(self.logits, dim=-1)
        log_ref = self.reference.log_density(z)[..., None]
        return self.kan.edges(z) + log_ref + log_alpha - self.log_normaliser()

    def log_prob(self, z: Tensor) -> Tensor:
        """Normalised mixture log density (eq. 18), shape ``(n,)`` for ``z`` of shape ``(n, Q)``."""
        return torch.logsumexp(self.component_log_prob(z), dim=-1).sum(dim=-1)

    def generator_input(self, z: Tensor) -> Tensor:
        """The generator sees ``z`` itself (eq. 19): ``(n, Q) -> (n, Q)``."""
        return z

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
        u = self._uniform((q, n), generator)
        cum = torch.cumsum(self.proportions(), dim=-1)  # (Q, P)
        comp = torch.searchsorted(cum, u_comp, right=True).clamp_(max=p - 1)  # (Q, n)
        rows = (comp + torch.arange(q, device=comp.device)[:, None] * p).reshape(-1)  # (Q n,)
        if self._use_table(n):
            inverse = self.tables(with_inverse=True).inverse.reshape(q * p, -1)
            z = quad.sample_table_rows(inverse, rows, u.reshape(-1))
        else:
            cdf = self.tables().cdf
            table = quad.CDFTable(cdf.cdf.reshape(q * p, -1)[rows], cdf.edges)
            z = quad.inverse_cdf(u.reshape(-1, 1), table)
        return z.reshape(q, n).T, comp.T

    def marginal_tables(self, with_inverse: bool = False) -> tuple[quad.CDFTable, Tensor | None]:
        """CDF of each coordinate's whole mixture, shape ``(Q, N + 1)`` (and its inverse table).

        Every component lives on the same quadrature cells, so the mixture of their
        piecewise-constant densities is itself piecewise constant with cell masses
        ``sum_p alpha_qp m_qpn``: one CDF per coordinate instead of one per component.
        """

        def build() -> quad.CDFTable:
            log_mass = torch.log_softmax(self.node_log_density() + self.log_weights, dim=-1)
            log_alpha = torch.log_softmax(self.logits, dim=-1)[..., None]
            mixture = torch.logsumexp(log_alpha + log_mass, dim=1)  # (Q, N) log cell masses
            return quad.build_cdf(mixture, torch.zeros_like(self.log_weights), self.edges)

        cdf = self._cached("marginal_cdf", build)
        if not with_inverse:
            return cdf, None
        inverse = self._cached(
            "marginal_inverse", lambda: quad.inverse_cdf_table(cdf, self.table_points)
        )
        return cdf, inverse

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
        if self._use_table(n):
            z = quad.sample_table(self.marginal_tables(with_inverse=True)[1], u)
        else:
            z = quad.inverse_cdf(u, self.marginal_tables()[0])
        return z.T.contiguous()

    @torch.no_grad()
    def update_grid(self, z: Tensor, uniform_ratio: float = 0.05) -> None:
        """Grid update of the energies from latent samples ``z`` of shape ``(n, Q)``."""
        self._check_z(z)
        self.kan.update_grid(z, uniform_ratio)
