"""Univariate basis functions for KAN layers.

Every basis is a small ``nn.Module`` with one ``forward`` mapping inputs of shape ``(..., d)``
to basis values of shape ``(..., d, G)``: ``G`` functions for each of the ``d`` input
coordinates, each coordinate with its own grid (a registered buffer, so grid updates move with
``.to(device)`` and land in checkpoints). A KAN edge is then ``sum_g B_g(x) c_g`` (eq. 1 with
the inner functions of eqs. 13-14 parameterised this way).

Grid updating (Liu et al. 2024) is a method of the basis: :meth:`Basis.refit_grid` moves the
grid to where samples lie; the KAN layer refits its coefficients around it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = [
    "BASES",
    "BSplineBasis",
    "Basis",
    "ChebyshevBasis",
    "DoGWaveletBasis",
    "FourierBasis",
    "MexicanHatBasis",
    "MorletBasis",
    "RBFBasis",
    "adaptive_grid",
    "build_basis",
]


def adaptive_grid(x: Tensor, n_points: int, uniform_ratio: float) -> Tensor:
    """Grid from samples: a mix of a uniform and a quantile grid (Liu et al. 2024).

    Parameters
    ----------
    x
        Samples, shape ``(n, d)``.
    n_points
        Grid points per coordinate.
    uniform_ratio
        Weight of the uniform grid (the paper's ``grid_update_ratio``, 0.05); the rest is the
        quantile grid, which puts resolution where the samples are.

    Returns
    -------
    Tensor
        Shape ``(d, n_points)``, increasing along the last dimension.
    """
    if not 0.0 <= uniform_ratio <= 1.0:
        raise ValueError(f"grid_update_ratio must lie in [0, 1], got {uniform_ratio}")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"grid samples must have shape (n >= 2, d), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("grid samples contain NaN or infinite values")
    q = torch.linspace(0.0, 1.0, n_points, dtype=x.dtype, device=x.device)
    quantile = torch.quantile(x, q, dim=0).T  # (d, n_points)
    lo, hi = quantile[:, :1], quantile[:, -1:]
    # A coordinate whose samples are all equal would give a degenerate grid: widen it.
    span = (hi - lo).clamp_min(1e-3)
    hi = lo + span
    uniform = lo + (hi - lo) * q
    return uniform_ratio * uniform + (1.0 - uniform_ratio) * quantile


class Basis(nn.Module, ABC):
    """A family of ``G`` univariate functions per input coordinate.

    Subclasses set ``self.in_features`` and ``self.num_bases``, implement ``forward``, and those
    whose grid can follow samples implement ``refit_grid``.
    """

    in_features: int
    num_bases: int
    #: Whether :meth:`refit_grid` is defined (RBF and B-splines; as in the paper, wavelet,
    #: Chebyshev and Fourier bases keep their initial grid).
    supports_grid_update: bool = False

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the basis.

        Parameters
        ----------
        x
            Shape ``(..., d)`` with ``d = in_features``.

        Returns
        -------
        Tensor
            Shape ``(..., d, G)``.
        """

    def weighted_sum(self, x: Tensor, weights: Tensor) -> Tensor:
        """``sum_s weights[s] B(x[s])``: basis values summed over samples with weights.

        Gradients flow to the basis parameters, not to ``x``. This is what a weighted sum of
        energies needs (the contrastive-divergence term of eq. 16) and subclasses may compute
        it without materialising every basis value's autograd graph.

        Parameters
        ----------
        x
            Shape ``(S, ..., d)``.
        weights
            Shape ``(S,)``.

        Returns
        -------
        Tensor
            Shape ``(..., d, G)``.
        """
        return torch.tensordot(weights, self(x.detach()), dims=1)

    def refit_grid(self, x: Tensor, uniform_ratio: float) -> None:
        """Move the grid to the samples ``x`` of shape ``(n, d)`` (in place, no gradient)."""
        raise ValueError(
            f"grid updating is not defined for {type(self).__name__}: only the rbf and bspline "
            "bases have a grid that follows the samples; disable grid updates for this basis"
        )

    def _register_bandwidth(self, tau: float, trainable: bool) -> None:
        """Hold the bandwidth multiplier ``tau``: a parameter if trained, else a buffer."""
        if tau <= 0:
            raise ValueError(f"the basis bandwidth tau must be positive, got {tau}")
        value = torch.tensor(float(tau))
        if trainable:
            self.tau = nn.Parameter(value)
        else:
            self.register_buffer("tau", value)

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects inputs with last dimension {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )


def _uniform_grid(in_features: int, n_points: int, grid_range: tuple[float, float]) -> Tensor:
    low, high = grid_range
    if not high > low:
        raise ValueError(f"grid_range must satisfy high > low, got {grid_range}")
    return torch.linspace(low, high, n_points).expand(in_features, n_points).clone()


#: ``exp(-u^2 / 2)`` is cut off at ``u^2 = 100`` (value ~2e-22): beyond it float32 values,
#: and the products of the backward pass (a gradient of 1e-3 times 1e-36, say), would be
#: subnormal, and subnormal arithmetic is one to two orders of magnitude slower on x86 CPUs.
#: With the cut at 160 a thermodynamic NIST step still made 6e5 subnormal products and took
#: 1.18 s on one core; at 100 it makes none and takes 0.94 s. The cut changes values by less
#: than 2e-22 (float32 resolves 1e-7 of the basis' unit peak) and zeroes gradients that small.
_MAX_SQUARED_DISTANCE = 100.0


def _gaussian(u: Tensor) -> Tensor:
    """``exp(-u^2 / 2)``, kept out of the subnormal range."""
    return torch.exp(-0.5 * u.square().clamp_max(_MAX_SQUARED_DISTANCE))


def _local_spacing(grid: Tensor) -> Tensor:
    """Half the distance between each grid point's neighbours (one-sided at the ends)."""
    gaps = grid[:, 1:] - grid[:, :-1]  # (d, G - 1)
    return torch.cat([gaps[:, :1], 0.5 * (gaps[:, 1:] + gaps[:, :-1]), gaps[:, -1:]], dim=1)


class _CentredBasis(Basis):
    """Functions ``psi((x - g) / (h_g tau))`` centred on grid points ``g``.

    ``h_g`` is the local grid spacing around each centre (the plain spacing on a uniform grid;
    after a grid update the quantile grid is denser where samples are, and a local width keeps
    neighbouring functions overlapping there) and ``tau`` a trainable bandwidth multiplier
    shared by all coordinates (the paper's "basis parameter", initial 1).
    """

    def __init__(
        self,
        in_features: int,
        grid_size: int = 20,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        tau: float = 1.0,
        trainable_tau: bool = True,
    ) -> None:
        super().__init__()
        if grid_size < 2:
            raise ValueError(f"grid_size must be at least 2, got {grid_size}")
        self.in_features = in_features
        self.num_bases = grid_size
        grid = _uniform_grid(in_features, grid_size, grid_range)
        self.register_buffer("grid", grid)  # (d, G)
        self.register_buffer("spacing", _local_spacing(grid))  # (d, G)
        self._register_bandwidth(tau, trainable_tau)

    @abstractmethod
    def mother(self, u: Tensor) -> Tensor:
        """The mother function evaluated at standardised distances ``u``."""

    @abstractmethod
    def mother_grad(self, u: Tensor) -> Tensor:
        """Derivative of :meth:`mother` with respect to ``u``."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        width = self.spacing * self.tau  # (d, G)
        u = (x[..., None] - self.grid) / width  # (..., d, G)
        return self.mother(u)

    def weighted_sum(self, x: Tensor, weights: Tensor, chunk_elements: int = 2**20) -> Tensor:
        """``sum_s weights[s] B(x[s])`` in cache-sized chunks, with no autograd graph.

        The only trainable input of a centred basis is ``tau``, and ``d B / d tau =
        psi'(u) (-u / tau)`` is known in closed form, so its weighted sum is accumulated in the
        same pass and attached as the first-order term ``(tau - tau_0) dH/dtau``: the value is
        exact and so is the gradient. For the paper's prior (S = 100 draws of 81 x 40
        coordinates, G = 20) this is several times faster than differentiating through the
        6.5 million basis values.
        """
        self._check_input(x)
        n = x.shape[0]
        track_tau = self.tau.requires_grad and torch.is_grad_enabled()
        shape = (*x.shape[1:], self.num_bases)
        chunk = max(1, chunk_elements // max(1, math.prod(shape)))
        with torch.no_grad():
            width = self.spacing * self.tau
            total = x.new_zeros(shape)
            total_tau = x.new_zeros(shape) if track_tau else None
            for start in range(0, n, chunk):
                w = weights[start : start + chunk].detach()
                u = (x[start : start + chunk, ..., None] - self.grid) / width
                total += torch.tensordot(w, self.mother(u), dims=1)
                if track_tau:
                    total_tau += torch.tensordot(w, self.mother_grad(u).mul_(u), dims=1)
        if not track_tau:
            return total
        tau0 = self.tau.detach()
        return total - (self.tau - tau0) * (total_tau / tau0)


class RBFBasis(_CentredBasis):
    """Gaussian radial basis ``exp(-u^2 / 2)`` (FastKAN; Li 2024), the paper's NIST basis."""

    supports_grid_update = True

    def mother(self, u: Tensor) -> Tensor:
        return _gaussian(u)

    def mother_grad(self, u: Tensor) -> Tensor:
        return -u * _gaussian(u)

    @torch.no_grad()
    def refit_grid(self, x: Tensor, uniform_ratio: float) -> None:
        grid = adaptive_grid(x, self.num_bases, uniform_ratio)
        self.grid.copy_(grid)
        self.spacing.copy_(_local_spacing(grid))


class MorletBasis(_CentredBasis):
    """Real Morlet wavelet ``cos(omega u) exp(-u^2 / 2)`` (Wav-KAN; the paper's SVHN/CelebA basis).

    Parameters
    ----------
    omega
        Central frequency of the wavelet (5 is the customary value making it nearly admissible).
    """

    def __init__(self, *args, omega: float = 5.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.omega = float(omega)

    def mother(self, u: Tensor) -> Tensor:
        return torch.cos(self.omega * u) * _gaussian(u)

    def mother_grad(self, u: Tensor) -> Tensor:
        wu = self.omega * u
        return -(self.omega * torch.sin(wu) + u * torch.cos(wu)) * _gaussian(u)


class MexicanHatBasis(_CentredBasis):
    """Mexican hat (Ricker) wavelet ``2 / (sqrt(3) pi^(1/4)) (1 - u^2) exp(-u^2 / 2)`` (Wav-KAN)."""

    _norm = 2.0 / (math.sqrt(3.0) * math.pi**0.25)

    def mother(self, u: Tensor) -> Tensor:
        return self._norm * (1.0 - u.square()) * _gaussian(u)

    def mother_grad(self, u: Tensor) -> Tensor:
        return self._norm * u * (u.square() - 3.0) * _gaussian(u)


class DoGWaveletBasis(_CentredBasis):
    """Derivative-of-Gaussian wavelet ``-u exp(-u^2 / 2)`` (Wav-KAN)."""

    def mother(self, u: Tensor) -> Tensor:
        return -u * _gaussian(u)

    def mother_grad(self, u: Tensor) -> Tensor:
        return (u.square() - 1.0) * _gaussian(u)


class ChebyshevBasis(Basis):
    """Chebyshev polynomials ``T_0..T_k`` of ``tanh((x - c) / (r tau))``.

    The squashing by ``tanh`` keeps the argument in ``(-1, 1)`` for any input (as in ChebyKAN);
    ``c`` and ``r`` are the centre and half-width of the coordinate's grid range, so the basis is
    most expressive where the data lie. Polynomials come from the three-term recurrence, which
    is smooth everywhere (``cos(n arccos t)`` has infinite slope at the ends).
    """

    def __init__(
        self,
        in_features: int,
        degree: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        tau: float = 1.0,
        trainable_tau: bool = True,
    ) -> None:
        super().__init__()
        if degree < 1:
            raise ValueError(f"Chebyshev degree must be at least 1, got {degree}")
        self.in_features = in_features
        self.num_bases = degree + 1
        self.register_buffer("grid", _uniform_grid(in_features, 2, grid_range))  # (d, 2)
        self._register_bandwidth(tau, trainable_tau)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        centre = 0.5 * (self.grid[:, 0] + self.grid[:, 1])
        half = 0.5 * (self.grid[:, 1] - self.grid[:, 0])
        t = torch.tanh((x - centre) / (half * self.tau))
        polys = [torch.ones_like(t), t]
        for _ in range(2, self.num_bases):
            polys.append(2.0 * t * polys[-1] - polys[-2])
        return torch.stack(polys[: self.num_bases], dim=-1)


class FourierBasis(Basis):
    """Fourier features ``cos(2 pi k s), sin(2 pi k s)``, ``k = 1..K``, ``s = (x - a) / (L tau)``.

    ``[a, a + L]`` is the coordinate's grid range (one period at ``tau = 1``). The constant
    term is left out: in an energy it cancels against the partition function, and in a
    generator the base branch and the next layer provide offsets. ``G = 2 K``.
    """

    def __init__(
        self,
        in_features: int,
        grid_size: int = 5,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        tau: float = 1.0,
        trainable_tau: bool = True,
    ) -> None:
        super().__init__()
        if grid_size < 1:
            raise ValueError(
                f"Fourier grid_size (number of frequencies) must be >= 1, got {grid_size}"
            )
        self.in_features = in_features
        self.num_bases = 2 * grid_size
        self.register_buffer("grid", _uniform_grid(in_features, 2, grid_range))  # (d, 2)
        self.register_buffer("frequencies", torch.arange(1, grid_size + 1, dtype=torch.float32))
        self._register_bandwidth(tau, trainable_tau)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        low = self.grid[:, 0]
        period = (self.grid[:, 1] - low) * self.tau
        phase = (2.0 * math.pi) * ((x - low) / period)[..., None] * self.frequencies  # (..., d, K)
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class BSplineBasis(Basis):
    """Cubic (or any degree ``k``) B-splines on a knot grid (Liu et al. 2024).

    ``grid_size`` intervals inside the grid range, extended by ``k`` knots on each side, give
    ``G = grid_size + k`` basis functions, evaluated by the Cox-de Boor recursion.
    """

    supports_grid_update = True

    def __init__(
        self,
        in_features: int,
        grid_size: int = 5,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        degree: int = 3,
    ) -> None:
        super().__init__()
        if grid_size < 1:
            raise ValueError(f"B-spline grid_size must be at least 1, got {grid_size}")
        if degree < 0:
            raise ValueError(f"B-spline degree must be non-negative, got {degree}")
        self.in_features = in_features
        self.degree = degree
        self.grid_size = grid_size
        self.num_bases = grid_size + degree
        inner = _uniform_grid(in_features, grid_size + 1, grid_range)
        self.register_buffer("grid", self._extend(inner))  # (d, grid_size + 2 k + 1)

    def _extend(self, inner: Tensor) -> Tensor:
        step = (inner[:, -1:] - inner[:, :1]) / self.grid_size
        k = torch.arange(1, self.degree + 1, dtype=inner.dtype, device=inner.device)
        left = inner[:, :1] - step * k.flip(0)
        right = inner[:, -1:] + step * k
        return torch.cat([left, inner, right], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        g = self.grid
        xe = x[..., None]  # (..., d, 1)
        # Degree 0: indicators of the knot intervals.
        basis = ((xe >= g[:, :-1]) & (xe < g[:, 1:])).to(x.dtype)
        for k in range(1, self.degree + 1):
            left = (xe - g[:, : -(k + 1)]) / (g[:, k:-1] - g[:, : -(k + 1)])
            right = (g[:, k + 1 :] - xe) / (g[:, k + 1 :] - g[:, 1:-k])
            basis = left * basis[..., :-1] + right * basis[..., 1:]
        return basis

    @torch.no_grad()
    def refit_grid(self, x: Tensor, uniform_ratio: float) -> None:
        # Small margin so the extreme samples sit strictly inside the support.
        inner = adaptive_grid(x, self.grid_size + 1, uniform_ratio)
        span = inner[:, -1:] - inner[:, :1]
        inner = inner + torch.linspace(-1e-3, 1e-3, self.grid_size + 1, device=x.device) * span
        self.grid.copy_(self._extend(inner))


BASES: dict[str, type[Basis]] = {
    "rbf": RBFBasis,
    "morlet": MorletBasis,
    "mexican_hat": MexicanHatBasis,
    "dog": DoGWaveletBasis,
    "chebyshev": ChebyshevBasis,
    "fourier": FourierBasis,
    "bspline": BSplineBasis,
}


def build_basis(
    name: str,
    in_features: int,
    *,
    grid_size: int = 20,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    degree: int = 3,
    tau: float = 1.0,
    trainable_tau: bool = True,
    omega: float = 5.0,
) -> Basis:
    """Build a basis by name from plain numbers.

    Parameters
    ----------
    name
        One of ``BASES``: ``rbf``, ``morlet``, ``mexican_hat``, ``dog``, ``chebyshev``,
        ``fourier``, ``bspline``.
    in_features
        Number of input coordinates ``d``.
    grid_size
        Grid points (RBF, wavelets), intervals (B-spline) or frequencies (Fourier).
    grid_range
        Initial grid range ``(low, high)``.
    degree
        Polynomial degree (Chebyshev, B-spline).
    tau, trainable_tau
        Initial bandwidth multiplier and whether it is trained (not used by B-splines).
    omega
        Morlet central frequency.
    """
    if name not in BASES:
        raise ValueError(f"unknown basis {name!r}; choose one of {sorted(BASES)}")
    grid_range = (float(grid_range[0]), float(grid_range[1]))
    if name == "bspline":
        return BSplineBasis(in_features, grid_size, grid_range, degree)
    if name == "chebyshev":
        return ChebyshevBasis(in_features, degree, grid_range, tau, trainable_tau)
    if name == "fourier":
        return FourierBasis(in_features, grid_size, grid_range, tau, trainable_tau)
    if name == "morlet":
        return MorletBasis(in_features, grid_size, grid_range, tau, trainable_tau, omega=omega)
    return BASES[name](in_features, grid_size, grid_range, tau, trainable_tau)
