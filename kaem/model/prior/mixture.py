"""Mixture-of-univariate energy prior (eqs. 17-18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kaem.model import quadrature as quad
from kaem.model.kan import KANLayer
from kaem.model.prior.base import INVERSE_CDF, EnergyPrior
from kaem.model.reference import ReferencePrior

__all__ = ["MixtureEnergyPrior"]


class MixtureEnergyPrior(EnergyPrior):
    """Mixture-of-univariate energy prior (eqs. 17-18).

    Parameters
    ----------
    kan
        KAN layer with ``in_features = Q`` and ``out_features = P``; edge ``(q, p)`` is the
        energy of component ``p`` of coordinate ``q``.
    reference, **options
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
        train_proportions: bool = True,
        proportion_l1: float = 0.0,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> None:
        super().__init__(kan, reference, **options)
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

    def _energies_on(self, nodes: Tensor) -> Tensor:
        x = nodes[:, None].expand(-1, self.latent_dim)  # (N, Q)
        return self.kan.edges_on_grid(x).transpose(0, 1)  # (Q, P, N), the nodes contiguous

    def _check_z(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"expected latents of shape (n, {self.latent_dim}), got {tuple(z.shape)}"
            )

    def component_log_prob(self, z: Tensor, log_normaliser: Tensor | None = None) -> Tensor:
        """``log alpha_qp + log pi_qp(z_q)``, shape ``(n, Q, P)``; ``-inf`` off ``[a, b]``.

        ``log_normaliser`` (``(Q, P)``) is :meth:`log_normaliser`, computed here if not given.
        """
        self._check_z(z)
        log_z = self.log_normaliser() if log_normaliser is None else log_normaliser
        log_alpha = torch.log_softmax(self.logits, dim=-1)
        log_ref = self.reference.log_density(z)[..., None]
        lp = self.kan.edges(z) + log_ref + log_alpha - log_z
        return self._on_support(z[..., None], lp)

    def log_prob(self, z: Tensor, log_normaliser: Tensor | None = None) -> Tensor:
        """Normalised mixture log density (eq. 18), shape ``(n,)`` for ``z`` of shape ``(n, Q)``."""
        return torch.logsumexp(self.component_log_prob(z, log_normaliser), dim=-1).sum(dim=-1)

    def frozen_log_prob(self) -> Callable[[Tensor], Tensor]:
        """:meth:`log_prob` with ``log Z_qp - log alpha_qp`` computed once, without gradient.

        Both terms are independent of ``z``, so a sampler's chains see the same density (to
        rounding) and gradient in ``z`` as with :meth:`log_prob`, for one evaluation of the
        quadrature and of the proportions per run instead of one per step (see
        :meth:`~kaem.model.prior.base.EnergyPrior.frozen_log_prob`).
        """
        with torch.no_grad():
            offset = self.log_normaliser() - torch.log_softmax(self.logits, dim=-1)  # (Q, P)

        def log_prob(z: Tensor) -> Tensor:
            self._check_z(z)
            lp = self.kan.edges(z) + self.reference.log_density(z)[..., None] - offset
            return torch.logsumexp(self._on_support(z[..., None], lp), dim=-1).sum(dim=-1)

        return log_prob

    def prior_term(
        self,
        z: Tensor,
        weights: Tensor,
        *,
        prior_samples: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The prior's part of the learning gradient (eq. 4): ``sum_s w_s log pi(z_s)``.

        The mixture's log density is normalised by quadrature (eq. 18), so it is
        differentiated directly, minus the proportion regulariser; no prior draws are needed
        (``prior_samples`` and ``generator`` are accepted for a common signature and unused).

        Parameters
        ----------
        z : Tensor, shape (n, Q)
            Posterior samples, detached.
        weights : Tensor, shape (n,)
            Their posterior weights, summing to one.
        """
        return (weights * self.log_prob(z)).sum() - self.regulariser()

    def generator_input(self, z: Tensor) -> Tensor:
        """The generator sees ``z`` itself (eq. 19): ``(n, Q) -> (n, Q)``."""
        return z

    @property
    def samples_follow_log_prob(self) -> bool:
        """Always True: coordinates are drawn independently from their mixtures."""
        return True

    def marginal_cdf_table(self) -> quad.CDFTable:
        """CDF of each coordinate's whole mixture, ``cdf`` of shape ``(Q, N + 1)``.

        Every component lives on the same quadrature cells, so the mixture of their
        piecewise-constant densities is itself piecewise constant with cell masses
        ``sum_p alpha_qp m_qpn``: one CDF per coordinate instead of one per component.
        """
        with torch.no_grad():
            # Each component's cell masses sum to one, in linear space: a mass too small for
            # float there is as small once the CDF is stored, and a matrix product mixes them.
            mass = torch.softmax(self.node_log_density() + self.log_weights, dim=-1)
            mixture = torch.bmm(self.proportions()[:, None, :], mass)  # (Q, 1, N)
            return quad.cdf_from_masses(mixture[:, 0], self.edges)

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
        q, p = self.latent_dim, self.num_components
        u_comp = self._uniform((n, q), generator).T  # (Q, n)
        u = self._uniform((n, q), generator).T.reshape(-1)
        cum = torch.cumsum(self.proportions(), dim=-1)  # (Q, P)
        comp = torch.searchsorted(cum, u_comp.contiguous(), right=True).clamp_(max=p - 1)
        rows = (comp + torch.arange(q, device=comp.device)[:, None] * p).reshape(-1)  # (Q n,)
        z = quad.inverse_cdf_rows(rows, u, self.cdf_table())
        return z.reshape(q, n).T, comp.T

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples (eqs. 13, 17), shape ``(n, Q)``, detached: ``z_q = F_q^{-1}(u_q)``.

        ``F_q`` is the CDF of coordinate ``q``'s whole mixture (:meth:`marginal_cdf_table`),
        inverted by :func:`kaem.model.quadrature.inverse_cdf`: the same distribution as
        :meth:`sample_with_components` (a component, then its inverse transform), for one
        uniform per coordinate whatever the number of components.
        """
        u = self._uniform((n, self.latent_dim), generator).T  # (Q, n)
        return INVERSE_CDF[self.sampling](u, self.marginal_cdf_table()).T

    @torch.no_grad()
    def update_grid(self, z: Tensor, uniform_ratio: float = 0.05) -> None:
        """Grid update of the energies from latent samples ``z`` of shape ``(n, Q)``."""
        self._check_z(z)
        self.kan.update_grid(z, uniform_ratio)
