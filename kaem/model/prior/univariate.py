"""Independent univariate energy prior (eqs. 13-16)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kaem.model.kan import KANLayer
from kaem.model.prior.base import INVERSE_CDF, EnergyPrior
from kaem.model.reference import ReferencePrior

__all__ = ["UnivariateEnergyPrior"]


class UnivariateEnergyPrior(EnergyPrior):
    """Independent univariate energy prior (eqs. 13-16).

    Parameters
    ----------
    kan
        KAN layer with ``in_features = P`` and ``out_features = Q``; edge ``(p, q)`` is
        ``f_qp``. Its base activation and basis define the energies.
    shared_uniforms
        Draw one ``u_p`` per ``p`` shared by every ``q`` (the paper, eq. 13: ``z_qp =
        F_qp^{-1}(u_p)``) or independent ``u_qp``.
    reference, **options
        The reference prior and the quadrature and sampling settings (``n_nodes``,
        ``quadrature``, ``sampling``): see :class:`~kaem.model.prior.base.EnergyPrior`.
    """

    def __init__(
        self,
        kan: KANLayer,
        reference: ReferencePrior,
        *,
        shared_uniforms: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(kan, reference, **options)
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

    def _energies_on(self, nodes: Tensor) -> Tensor:
        x = nodes[:, None].expand(-1, self.num_inputs)  # (N, P)
        return self.kan.edges_on_grid(x)  # (Q, P, N), the nodes contiguous

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
        (:meth:`kaem.model.kan.KANLayer.weighted_edge_sum`), which is what makes the
        contrastive-divergence term of eq. 16 cheap.
        """
        self._check_z(z)
        return self.kan.weighted_edge_sum(z, weights)

    def component_log_prob(self, z: Tensor, log_normaliser: Tensor | None = None) -> Tensor:
        """Normalised ``log pi_qp(z_qp)`` (eq. 14), shape ``(n, Q, P)``; ``-inf`` off ``[a, b]``.

        ``log_normaliser`` (``(Q, P)``) is :meth:`log_normaliser`, computed here if not given.
        """
        self._check_z(z)
        log_z = self.log_normaliser() if log_normaliser is None else log_normaliser
        lp = self.kan.edges_at(z) + self.reference.log_density(z) - log_z
        return self._on_support(z, lp)

    def log_prob(self, z: Tensor, log_normaliser: Tensor | None = None) -> Tensor:
        """Normalised ``log pi(z)`` (eq. 15), shape ``(n,)`` for ``z`` of shape ``(n, Q, P)``.

        This is the density of independent coordinates; with ``shared_uniforms`` the samples
        are comonotone across ``q`` instead and have the same marginals but not this joint
        density (see :attr:`samples_follow_log_prob`).
        """
        return self.component_log_prob(z, log_normaliser).sum(dim=(-2, -1))

    def prior_term(
        self,
        z: Tensor,
        weights: Tensor,
        *,
        prior_samples: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The prior's part of the learning gradient (eq. 4) by contrastive divergence (eq. 16).

        ``sum_s w_s f(z_s) - mean_j f(z'_j)``, a scalar whose gradient in the parameters is
        ``E_post[grad f] - E_prior[grad f] = E_post[grad log pi]``.

        Parameters
        ----------
        z : Tensor, shape (n, Q, P)
            Posterior samples, detached.
        weights : Tensor, shape (n,)
            Their posterior weights, summing to one.
        prior_samples : Tensor, shape (m, Q, P), optional
            Draws ``z'`` of the prior for ``E_prior``; ``n`` fresh inverse-transform draws if
            not given. Passing ``z`` itself (importance sampling, whose proposals are prior
            draws) makes them their own control variate in a single pass.
        generator : torch.Generator, optional
            Source of the fresh draws.
        """
        if prior_samples is z:
            return self.weighted_energy(z, weights - 1.0 / len(z))
        if prior_samples is None:
            prior_samples = self.sample(len(z), generator)
        m = len(prior_samples)
        both = torch.cat([z, prior_samples])
        return self.weighted_energy(both, torch.cat([weights, weights.new_full((m,), -1.0 / m)]))

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

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact inverse-transform samples (eq. 13): ``z_qp = F_qp^{-1}(u_p)``.

        ``u_p`` is shared by every ``q`` (``shared_uniforms``, the paper), or each ``z_qp`` has
        its own ``u_qp``. ``F_qp`` is the piecewise-linear CDF of the quadrature cells
        (:meth:`cdf_table`), inverted by :func:`kaem.model.quadrature.inverse_cdf`.

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
        q, p = self.event_shape
        if self.shared_uniforms:
            u = self._uniform((n, p), generator).T.expand(q, p, n)  # u_p for every q
        else:
            u = self._uniform((n, q, p), generator).permute(1, 2, 0)
        return INVERSE_CDF[self.sampling](u, self.cdf_table()).permute(
            2, 0, 1
        )  # (Q, P, n) -> (n, Q, P)

    @torch.no_grad()
    def update_grid(self, z: Tensor, uniform_ratio: float = 0.05) -> None:
        """Grid update of the energies from latent samples ``z`` of shape ``(n, Q, P)``.

        Input ``p`` of the KAN layer sees ``z_qp`` for every ``q``, so its grid is fitted to
        all of them.
        """
        self._check_z(z)
        self.kan.update_grid(z.reshape(-1, self.num_inputs), uniform_ratio)
