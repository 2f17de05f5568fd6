"""Sample-quality metrics as pure functions of features.

FID (Heusel et al., 2017) and KID (Binkowski et al., 2018) are computed from feature sets of
shape ``(n, d)`` (numpy arrays or torch tensors; any float dtype), always in float64. The
effectively unbiased FID_inf / KID_inf of Chong and Forsyth (2020), used in section 4.1 of the
paper, are the intercepts of an ordinary least-squares fit of the metric against ``1 / N``
over several generated-set sizes ``N``: see :func:`metric_at_sizes` and
:func:`extrapolate_to_infinity`.

Feature extraction (Inception pool3, classifier embeddings) lives in :mod:`kaem.features`;
nothing here touches images, so real-data statistics can be cached as a workflow artifact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import scipy.linalg
import scipy.stats
import torch
from tqdm.auto import tqdm

__all__ = [
    "ExtrapolationFit",
    "extrapolate_to_infinity",
    "feature_statistics",
    "fid_from_features",
    "fid_from_statistics",
    "kid_from_features",
    "metric_at_sizes",
    "polynomial_kernel",
]

FeatureArray = np.ndarray | torch.Tensor


def _as_float64(x: FeatureArray | Sequence[float], name: str) -> np.ndarray:
    """Convert ``x`` to a float64 numpy array (on the CPU), without copying when possible."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numeric, got {type(x).__name__}: {err}") from err


def _as_features(feats: FeatureArray, name: str, *, min_rows: int = 2) -> np.ndarray:
    """Validate a feature set: a finite 2-D array with at least ``min_rows`` rows."""
    x = _as_float64(feats, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no feature columns (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains {np.count_nonzero(~np.isfinite(x))} non-finite values")
    return x


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


def feature_statistics(feats: FeatureArray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, the Gaussian fit used by FID.

    Parameters
    ----------
    feats : array or tensor, shape (n, d)
        Features, one row per image; ``n >= 2``.

    Returns
    -------
    mu : np.ndarray, shape (d,)
        Sample mean (float64).
    sigma : np.ndarray, shape (d, d)
        Unbiased sample covariance (``ddof=1``, as ``np.cov`` and clean-fid use), float64.
    """
    x = _as_features(feats, "feats")
    mu = x.mean(axis=0)
    centred = x - mu
    # (d, d); symmetrised so that round-off cannot make it asymmetric
    sigma = centred.T @ centred / (x.shape[0] - 1)
    sigma = 0.5 * (sigma + sigma.T)
    return mu, sigma


def _check_statistics(mu: FeatureArray, sigma: FeatureArray, name: str) -> tuple[np.ndarray, ...]:
    mu = np.atleast_1d(_as_float64(mu, f"mu{name}"))
    sigma = np.atleast_2d(_as_float64(sigma, f"sigma{name}"))
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must have shape (d,), got {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"sigma{name} must have shape ({mu.shape[0]}, {mu.shape[0]}), got {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{name} / sigma{name} contain non-finite values")
    return mu, sigma


def _clip_roundoff(evals: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are indistinguishable from round-off.

    A symmetric eigensolver is accurate to about ``d * eps * max|lambda|``; eigenvalues below
    that (including the negative ones, which a PSD matrix cannot have) are noise, and their
    square roots (~1e-8 each) would otherwise add up when the matrix is rank-deficient.
    """
    tol = evals.size * np.finfo(np.float64).eps * float(np.abs(evals).max(initial=0.0))
    return np.where(evals > tol, evals, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix, shape (d, d)."""
    evals, evecs = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return (evecs * np.sqrt(_clip_roundoff(evals))) @ evecs.T


def _trace_sqrt_product_eigh(root1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^(1/2))`` given ``root1 = S1^(1/2)`` (symmetric).

    ``S1 S2 = R (R S2 R) R^-1`` with ``R = S1^(1/2)``, so ``S1 S2`` is similar to the symmetric
    PSD matrix ``R S2 R``; their eigenvalues are the same real non-negative numbers and
    ``Tr((S1 S2)^(1/2))`` is the sum of their square roots. This needs only symmetric
    eigensolvers, works when either covariance is singular (``n < d``), and involves no
    complex arithmetic: the "real part" of the principal square root is exact here, and the
    eigenvalues that are round-off (tiny, possibly negative) are set to zero.
    """
    m = root1 @ sigma2 @ root1
    evals = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(_clip_roundoff(evals)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """``Tr((S1 S2)^(1/2))`` with ``scipy.linalg.sqrtm``, the route clean-fid and pytorch-fid take.

    If the product is numerically singular, ``eps`` is added to both diagonals and the root is
    taken again. The principal root of a real matrix with non-negative eigenvalues is real;
    the imaginary parts that sqrtm's complex Schur form leaves behind are round-off and are
    dropped (an error is raised if they are not small).
    """
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3 * max(1.0, np.abs(np.diagonal(covmean).real).max()):
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    return float(np.trace(covmean))


def fid_from_statistics(
    mu1: FeatureArray,
    sigma1: FeatureArray,
    mu2: FeatureArray,
    sigma2: FeatureArray,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
    eps: float = 1e-6,
) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``FID = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``
    (Heusel et al., 2017; the FID of the paper's section 4.1).

    Parameters
    ----------
    mu1, mu2 : array or tensor, shape (d,)
        Means.
    sigma1, sigma2 : array or tensor, shape (d, d)
        Covariances (symmetric positive semi-definite).
    method : {"eigh", "sqrtm"}
        How ``Tr((sigma1 sigma2)^(1/2))`` is computed. ``"eigh"`` (default) uses the
        similarity ``sigma1 sigma2 ~ R sigma2 R`` with ``R = sigma1^(1/2)``, so only symmetric
        eigendecompositions are needed and singular covariances are handled exactly.
        ``"sqrtm"`` is ``scipy.linalg.sqrtm`` of the product with the ``eps`` diagonal
        fallback and the real part taken, as in clean-fid. Both agree to round-off on
        well-conditioned inputs.
    eps : float
        Diagonal offset used only by ``method="sqrtm"`` when the product is singular.

    Returns
    -------
    float
        The Frechet distance (>= 0 up to round-off).
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, "1")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: mu1 {mu1.shape} vs mu2 {mu2.shape}")
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(_psd_sqrt(sigma1), sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(
    feats_a: FeatureArray, feats_b: FeatureArray, *, method: Literal["eigh", "sqrtm"] = "eigh"
) -> float:
    """Frechet Inception Distance between two feature sets.

    Fits a Gaussian to each set (:func:`feature_statistics`) and returns
    :func:`fid_from_statistics` of the two fits.

    Parameters
    ----------
    feats_a : array or tensor, shape (n_a, d)
    feats_b : array or tensor, shape (n_b, d)
    method : {"eigh", "sqrtm"}
        Matrix square-root route, see :func:`fid_from_statistics`.

    Returns
    -------
    float
        FID (biased upwards at finite ``n``; see :func:`metric_at_sizes` for FID_inf).
    """
    mu1, s1 = feature_statistics(feats_a)
    mu2, s2 = feature_statistics(feats_b)
    return fid_from_statistics(mu1, s1, mu2, s2, method=method)


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cubic polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` of Binkowski et al. (2018).

    Parameters
    ----------
    x : torch.Tensor, shape (..., m, d)
    y : torch.Tensor, shape (..., n, d)

    Returns
    -------
    torch.Tensor, shape (..., m, n)
    """
    k = x @ y.transpose(-1, -2)
    # in place: the (..., m, n) matrices dominate memory traffic
    return k.div_(x.shape[-1]).add_(1.0).pow_(3)


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 (U-statistic) per batch, x: (S, m, d), y: (S, n, d) -> (S,).

    ``MMD^2_u = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1))
    - 2 sum_{i,j} k(x_i,y_j)/(mn)``; dropping the diagonal terms is what removes the bias.
    """
    m, n = x.shape[-2], y.shape[-2]

    def off_diagonal_sum(z: torch.Tensor) -> torch.Tensor:
        k = polynomial_kernel(z, z)  # (S, m, m)
        return k.sum((-1, -2)) - torch.diagonal(k, dim1=-2, dim2=-1).sum(-1)

    sum_xy = polynomial_kernel(x, y).sum((-1, -2))  # (S,)
    return (
        off_diagonal_sum(x) / (m * (m - 1))
        + off_diagonal_sum(y) / (n * (n - 1))
        - (2.0 * sum_xy / (m * n))
    )


def _subset_indices(
    n: int, m: int, n_subsets: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``n_subsets`` independent draws of ``m`` of ``n`` indices without replacement, (S, m)."""
    if m == n:
        # every subset is the whole set; the U-statistic does not depend on the order
        return torch.arange(n).expand(n_subsets, n)
    keys = torch.rand(n_subsets, n, generator=generator, dtype=torch.float64)
    return keys.argsort(dim=1)[:, :m]


def kid_from_features(
    feats_a: FeatureArray,
    feats_b: FeatureArray,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    max_batch_elements: int = 2**24,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel.

    ``m = min(subset_size, n_a, n_b)`` rows are drawn without replacement from each set,
    ``n_subsets`` times independently, and the unbiased MMD^2 (Binkowski et al., 2018) with
    ``k(x, y) = (x . y / d + 1)^3`` is computed on each pair of subsets (the KID of the paper's
    section 4.1, as in clean-fid and torch-fidelity). Subsets are processed in vectorised
    batches of about ``max_batch_elements`` float64 kernel / feature entries per tensor.

    Parameters
    ----------
    feats_a : array or tensor, shape (n_a, d)
    feats_b : array or tensor, shape (n_b, d)
    n_subsets : int
        Number of random subset pairs.
    subset_size : int
        Rows per subset (capped at the smaller set size; at least 2 are needed).
    generator : torch.Generator, optional
        CPU generator for the subset draws; ``None`` uses torch's default generator.
    max_batch_elements : int
        Memory bound for one vectorised batch of subsets (2**24 entries = 128 MiB); it does
        not change the result.

    Returns
    -------
    mean : float
        KID, the mean of the per-subset MMD^2 estimates (can be slightly negative).
    std : float
        Standard deviation (``ddof=1``; 0 for one subset) of the per-subset estimates.
    """
    a = torch.from_numpy(_as_features(feats_a, "feats_a"))
    b = torch.from_numpy(_as_features(feats_b, "feats_b"))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    d = a.shape[1]
    # all draws up front, so the result does not depend on the batching below
    idx_a = _subset_indices(a.shape[0], m, n_subsets, generator)  # (S, m)
    idx_b = _subset_indices(b.shape[0], m, n_subsets, generator)  # (S, m)
    chunk = max(1, max_batch_elements // (m * max(d, m)))
    values = [
        _unbiased_mmd2(a[idx_a[i : i + chunk]], b[idx_b[i : i + chunk]])  # (s, m, d) -> (s,)
        for i in range(0, n_subsets, chunk)
    ]
    mmd2 = torch.cat(values).numpy()
    std = float(mmd2.std(ddof=1)) if n_subsets > 1 else 0.0
    return float(mmd2.mean()), std


# --------------------------------------------------------------------------------------------
# Effectively unbiased extrapolation (Chong and Forsyth, 2020)
# --------------------------------------------------------------------------------------------


class ExtrapolationFit(NamedTuple):
    """Least-squares fit ``value = intercept + slope / N`` (Chong and Forsyth, 2020).

    Attributes
    ----------
    intercept : float
        The value extrapolated to ``1 / N -> 0``: FID_inf or KID_inf.
    slope : float
        Coefficient of ``1 / N``.
    stderr : float
        Standard error of the intercept (0 for an exact line; NaN is never returned).
    r2 : float
        Coefficient of determination of the fit (1 for an exact line, including a constant).
    slope_stderr : float
        Standard error of the slope.
    dof : int
        Residual degrees of freedom, ``len(ns) - 2``, for t-based confidence intervals.
    """

    intercept: float
    slope: float
    stderr: float
    r2: float
    slope_stderr: float
    dof: int

    def confidence_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided Student-t confidence interval for the intercept at ``level``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        half = float(scipy.stats.t.ppf(0.5 + level / 2.0, self.dof)) * self.stderr
        return self.intercept - half, self.intercept + half


def extrapolate_to_infinity(
    ns: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray
) -> ExtrapolationFit:
    """Regress metric values on ``1 / N`` and extrapolate to an infinite sample.

    Ordinary least squares of ``values`` on ``x = 1 / ns``; the intercept is the effectively
    unbiased FID_inf or KID_inf of Chong and Forsyth (2020), section 4.1 of the paper.

    Parameters
    ----------
    ns : sequence of int, shape (k,)
        Sample sizes ``N`` (positive), at least 3 distinct ones.
    values : sequence of float, shape (k,)
        Finite metric values at those sizes.

    Returns
    -------
    ExtrapolationFit
        Intercept, slope, standard error of the intercept
        ``s * sqrt(1/k + mean(x)^2 / Sxx)`` with ``s^2 = RSS / (k - 2)``, and ``R^2``.
    """
    n = _as_float64(ns, "ns")
    y = _as_float64(values, "values")
    if n.ndim != 1 or y.ndim != 1 or n.shape != y.shape:
        raise ValueError(f"ns and values must be 1-D of equal length, got {n.shape} and {y.shape}")
    if not np.isfinite(n).all() or (n <= 0).any():
        raise ValueError(f"ns must be finite and positive, got {n.tolist()}")
    if not np.isfinite(y).all():
        raise ValueError(f"values must be finite, got {y.tolist()}")
    if np.unique(n).size < 3:
        raise ValueError(
            f"need at least 3 distinct sizes to fit a line with an error, got {n.tolist()}"
        )
    x = 1.0 / n
    k = x.size
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(((x - x_mean) ** 2).sum())
    slope = float(((x - x_mean) * (y - y_mean)).sum() / sxx)
    intercept = float(y_mean - slope * x_mean)
    resid = y - (intercept + slope * x)
    rss = float(resid @ resid)
    tss = float(((y - y_mean) ** 2).sum())
    # a constant series fitted exactly is a perfect fit; avoid 0 / 0
    r2 = 1.0 - rss / tss if tss > 0 else (1.0 if rss == 0 else 0.0)
    dof = k - 2
    s2 = rss / dof
    stderr = math.sqrt(s2 * (1.0 / k + x_mean**2 / sxx))
    slope_stderr = math.sqrt(s2 / sxx)
    return ExtrapolationFit(intercept, slope, stderr, r2, slope_stderr, dof)


def metric_at_sizes(
    real: FeatureArray | tuple[FeatureArray, FeatureArray],
    gen_feats: FeatureArray,
    sizes: Sequence[int],
    *,
    metric: Literal["fid", "kid"],
    generator: torch.Generator,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: bool = False,
) -> np.ndarray:
    """FID or KID of random generated subsets of each size ``N`` against the real set.

    For every ``N`` in ``sizes`` an independent subset of ``N`` generated features is drawn
    without replacement and scored against the whole real set (Chong and Forsyth, 2020); feed
    the result to :func:`extrapolate_to_infinity` for FID_inf / KID_inf.

    Parameters
    ----------
    real : array or tensor of shape (n_real, d), or tuple (mu, sigma)
        Real features, or for FID their cached :func:`feature_statistics`.
    gen_feats : array or tensor, shape (n_gen, d)
        Features of the generated pool; every size must be ``<= n_gen``.
    sizes : sequence of int, shape (k,)
        Subset sizes ``N`` (each >= 2).
    metric : {"fid", "kid"}
    generator : torch.Generator
        CPU generator for the subset draws (and KID's inner subsets).
    kid_subsets, kid_subset_size : int
        KID's inner subset count and size (torch-fidelity's defaults), see
        :func:`kid_from_features`.
    progress : bool
        Show a progress bar over sizes.

    Returns
    -------
    np.ndarray, shape (k,)
        The metric at each size (KID: the mean over its inner subsets).
    """
    if metric not in ("fid", "kid"):
        raise ValueError(f"metric must be 'fid' or 'kid', got {metric!r}")
    gen = _as_features(gen_feats, "gen_feats")
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ValueError("sizes is empty")
    bad = [s for s in sizes if s < 2 or s > gen.shape[0]]
    if bad:
        raise ValueError(f"sizes must lie in [2, {gen.shape[0]}] (the generated pool), got {bad}")

    if metric == "fid":
        if isinstance(real, tuple):
            mu_r, sigma_r = _check_statistics(*real, "_real")
        else:
            mu_r, sigma_r = feature_statistics(real)
        if mu_r.shape[0] != gen.shape[1]:
            raise ValueError(
                f"feature dimensions differ: real {mu_r.shape[0]} vs gen {gen.shape[1]}"
            )
        # the real root is shared by every size: one (d, d) eigendecomposition saved per size
        root_r = _psd_sqrt(sigma_r)
        tr_r = float(np.trace(sigma_r))
    else:
        if isinstance(real, tuple):
            raise ValueError("KID needs the real features themselves, not (mu, sigma)")
        real_feats = _as_features(real, "real")

    out = np.empty(len(sizes))
    for i, size in enumerate(tqdm(sizes, desc=f"{metric} at sizes", disable=not progress)):
        idx = torch.randperm(gen.shape[0], generator=generator)[:size].numpy()
        subset = gen[idx]
        if metric == "fid":
            mu_g, sigma_g = feature_statistics(subset)
            diff = mu_r - mu_g
            tr_covmean = _trace_sqrt_product_eigh(root_r, sigma_g)
            out[i] = diff @ diff + tr_r + np.trace(sigma_g) - 2.0 * tr_covmean
        else:
            out[i], _ = kid_from_features(
                real_feats,
                subset,
                n_subsets=kid_subsets,
                subset_size=kid_subset_size,
                generator=generator,
            )
    return out
