"""FID, KID and the 1/N extrapolation against closed forms and sampling distributions."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from kaem.metrics import (
    extrapolate_to_infinity,
    feature_statistics,
    fid_from_features,
    fid_from_statistics,
    kid_from_features,
    metric_at_sizes,
)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.2 * np.eye(d)


def gaussian_moments(m: np.ndarray, s: np.ndarray) -> list[np.ndarray]:
    """E[x], E[x x^T], E[x (x) x (x) x] of x ~ N(m, s)."""
    t3 = (
        np.einsum("i,j,k->ijk", m, m, m)
        + np.einsum("i,jk->ijk", m, s)
        + np.einsum("j,ik->ijk", m, s)
        + np.einsum("k,ij->ijk", m, s)
    )
    return [m, s + np.outer(m, m), t3]


def cubic_mmd2_closed_form(m1, s1, m2, s2) -> float:
    """MMD^2 of two Gaussians under k = (x.y/d + 1)^3 = sum_k C(3,k) d^-k <x^(k), y^(k)>."""
    d = m1.shape[0]
    mom1, mom2 = gaussian_moments(m1, s1), gaussian_moments(m2, s2)
    return sum(
        c / d**k * float(((a - b) ** 2).sum())
        for k, (c, a, b) in enumerate(zip((3, 3, 1), mom1, mom2, strict=True), start=1)
    )


# ------------------------------------------------------------------------------------- FID


def test_feature_statistics_match_numpy_and_accept_tensors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 3.0
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10)
    mu_t, sigma_t = feature_statistics(torch.from_numpy(x).float())
    np.testing.assert_allclose(mu_t, mu, rtol=1e-5)
    np.testing.assert_allclose(sigma_t, sigma, rtol=1e-4, atol=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(400, 12))
    assert abs(fid_from_features(x, x)) < 1e-9
    assert abs(fid_from_features(x, x, method="sqrtm")) < 1e-6


def test_fid_of_a_translation_is_the_squared_shift():
    # equal covariances: the trace term vanishes exactly, FID = ||c||^2
    x = np.random.default_rng(2).normal(size=(500, 8))
    c = np.linspace(-1.0, 2.0, 8)
    assert fid_from_features(x, x + c) == pytest.approx(float(c @ c), rel=1e-9)


def test_fid_matches_gaussian_closed_form():
    rng = np.random.default_rng(3)
    d = 6
    m1, m2 = 0.5 * rng.normal(size=d), 0.5 * rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    closed = float(
        (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2.0 * scipy.linalg.sqrtm(s1 @ s2).real)
    )
    a = rng.multivariate_normal(m1, s1, size=20_000)
    b = rng.multivariate_normal(m2, s2, size=20_000)
    # sampling error of FID at n = 20000 here is ~0.8 % (sd over seeds); allow 4 sd
    assert fid_from_features(a, b) == pytest.approx(closed, rel=0.03)
    # and the exact statistics give the closed form to round-off
    assert fid_from_statistics(m1, s1, m2, s2) == pytest.approx(closed, rel=1e-10)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fid_is_symmetric_and_methods_agree_with_cleanfid():
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 10))
    b = rng.normal(size=(150, 10)) @ random_spd(rng, 10) + 0.3
    ab, ba = fid_from_features(a, b), fid_from_features(b, a)
    assert ab == pytest.approx(ba, rel=1e-10)
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    ref = float(frechet_distance(mu1, s1, mu2, s2))
    assert ab == pytest.approx(ref, rel=1e-8)
    assert fid_from_statistics(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(ref, rel=1e-8)


def test_fid_handles_singular_covariances_exactly():
    # S1 = diag(1, 0), S2 = diag(0, 1): S1 S2 = 0, so FID = ||dm||^2 + 2
    mu1, mu2 = np.zeros(2), np.array([1.0, 2.0])
    assert fid_from_statistics(mu1, np.diag([1.0, 0.0]), mu2, np.diag([0.0, 1.0])) == (
        pytest.approx(7.0, abs=1e-12)
    )
    # fewer samples than dimensions (rank-deficient covariance) with itself shifted
    x = np.random.default_rng(5).normal(size=(20, 50))
    assert fid_from_features(x, x + 0.5) == pytest.approx(50 * 0.25, rel=1e-10)


def test_fid_rejects_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="shape"):
        fid_from_features(np.zeros(10), x)
    with pytest.raises(ValueError, match="non-finite"):
        fid_from_features(np.full((10, 3), np.nan), x)
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(np.random.default_rng(0).normal(size=(10, 4)), x)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid_from_features(np.zeros((1, 3)), x)
    with pytest.raises(ValueError, match="method"):
        fid_from_statistics(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3), method="svd")


# ------------------------------------------------------------------------------------- KID


def test_kid_matches_cleanfid_on_whole_sets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(120, 7)), rng.normal(size=(120, 7)) + 0.2
    kid, std = kid_from_features(a, b, n_subsets=1, subset_size=120)
    # clean-fid draws a permutation of the whole set, which leaves the U-statistic unchanged
    assert kid == pytest.approx(
        kernel_distance(a, b, num_subsets=1, max_subset_size=120), rel=1e-10
    )
    assert std == 0.0


def test_kid_of_shifted_gaussians_matches_closed_form():
    rng = np.random.default_rng(7)
    d = 4
    m1, s1 = np.zeros(d), np.eye(d)
    m2, s2 = np.full(d, 0.3), np.diag([1.5, 1.0, 0.7, 1.2])
    closed = cubic_mmd2_closed_form(m1, s1, m2, s2)  # 0.524
    a = rng.multivariate_normal(m1, s1, size=3000)
    b = rng.multivariate_normal(m2, s2, size=3000)
    kid, std = kid_from_features(
        a, b, n_subsets=20, subset_size=1000, generator=torch.Generator().manual_seed(0)
    )
    # the estimate's sd over data draws is ~7 % here; a missing 1/d or cube is off by far more
    assert kid == pytest.approx(closed, rel=0.25)
    assert kid > 5 * std / np.sqrt(20)


def test_kid_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2000, 6)), rng.normal(size=(2000, 6))
    kid, std = kid_from_features(
        a, b, n_subsets=50, subset_size=500, generator=torch.Generator().manual_seed(1)
    )
    assert abs(kid) < std


def test_kid_is_unbiased():
    # the U-statistic's mean over independent data draws is exactly 0 under H0; the biased
    # V-statistic (diagonal kept) is positive on the same draws, so this test has power
    rng = np.random.default_rng(9)
    n, d, reps = 20, 3, 400
    u_stats, v_stats = [], []
    for _ in range(reps):
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        u_stats.append(kid_from_features(a, b, n_subsets=1, subset_size=n)[0])
        k = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
        v_stats.append(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())
    u_stats, v_stats = np.array(u_stats), np.array(v_stats)
    se = u_stats.std(ddof=1) / np.sqrt(reps)
    assert abs(u_stats.mean()) < 3.5 * se
    assert v_stats.mean() > 3.5 * v_stats.std(ddof=1) / np.sqrt(reps)


def test_kid_reproducible_and_independent_of_batching():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(250, 5)) + 0.1
    kwargs = dict(n_subsets=9, subset_size=100)
    one = kid_from_features(a, b, generator=torch.Generator().manual_seed(3), **kwargs)
    small = kid_from_features(
        a, b, generator=torch.Generator().manual_seed(3), max_batch_elements=1, **kwargs
    )
    other = kid_from_features(a, b, generator=torch.Generator().manual_seed(4), **kwargs)
    assert one == pytest.approx(small, rel=1e-12)
    assert one[0] != other[0]
    torch_in = kid_from_features(
        torch.from_numpy(a),
        torch.from_numpy(b),
        generator=torch.Generator().manual_seed(3),
        **kwargs,
    )
    assert torch_in == pytest.approx(one, rel=1e-12)


def test_kid_rejects_bad_input():
    a = np.zeros((10, 3))
    with pytest.raises(ValueError, match="dimensions differ"):
        kid_from_features(a, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="subset_size"):
        kid_from_features(a, a, subset_size=1)
    with pytest.raises(ValueError, match="n_subsets"):
        kid_from_features(a, a, n_subsets=0)


# ---------------------------------------------------------------------------- extrapolation


SIZES = np.arange(2000, 20001, 2000)


def test_extrapolation_recovers_an_exact_line():
    fit = extrapolate_to_infinity(SIZES, 12.5 + 3000.0 / SIZES)
    assert fit.intercept == pytest.approx(12.5, rel=1e-12)
    assert fit.slope == pytest.approx(3000.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.stderr == pytest.approx(0.0, abs=1e-9)
    assert fit.dof == len(SIZES) - 2
    const = extrapolate_to_infinity([1, 2, 3], [4.0, 4.0, 4.0])
    assert (const.intercept, const.slope, const.r2, const.stderr) == (4.0, 0.0, 1.0, 0.0)


def test_extrapolation_matches_scipy_linregress():
    rng = np.random.default_rng(11)
    y = 40.0 + 5e4 / SIZES + rng.normal(scale=0.3, size=SIZES.size)
    fit = extrapolate_to_infinity(SIZES.tolist(), y.tolist())
    ref = scipy.stats.linregress(1.0 / SIZES, y)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-10)
    assert fit.slope == pytest.approx(ref.slope, rel=1e-10)
    assert fit.stderr == pytest.approx(ref.intercept_stderr, rel=1e-8)
    assert fit.slope_stderr == pytest.approx(ref.stderr, rel=1e-8)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)


def test_extrapolation_stderr_covers_the_truth():
    # a + b/N + noise: intercepts are unbiased, their spread matches the reported stderr, and
    # the 95 % t-interval covers the true intercept 95 % of the time
    rng = np.random.default_rng(12)
    a, b, sd, reps = 40.0, 5e4, 0.5, 600
    fits = [
        extrapolate_to_infinity(SIZES, a + b / SIZES + rng.normal(scale=sd, size=SIZES.size))
        for _ in range(reps)
    ]
    intercepts = np.array([f.intercept for f in fits])
    stderrs = np.array([f.stderr for f in fits])
    assert abs(intercepts.mean() - a) < 4 * intercepts.std() / np.sqrt(reps)
    assert np.mean([f.slope for f in fits]) == pytest.approx(b, rel=0.02)
    assert np.sqrt(np.mean(stderrs**2)) == pytest.approx(intercepts.std(), rel=0.1)
    covered = np.mean([lo <= a <= hi for lo, hi in (f.confidence_interval(0.95) for f in fits)])
    assert 0.92 <= covered <= 0.98  # 3 binomial sd around 0.95


def test_extrapolation_rejects_bad_input():
    with pytest.raises(ValueError, match="3 distinct sizes"):
        extrapolate_to_infinity([100, 100, 200], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        extrapolate_to_infinity([100, 200, 300], [1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="positive"):
        extrapolate_to_infinity([0, 200, 300], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="equal length"):
        extrapolate_to_infinity([100, 200, 300], [1.0, 2.0])
    with pytest.raises(ValueError, match="level"):
        extrapolate_to_infinity([1, 2, 3], [1.0, 2.0, 3.5]).confidence_interval(1.5)


# ----------------------------------------------------------------------- metric at sizes


def test_fid_at_sizes_uses_random_subsets_and_cached_statistics():
    rng = np.random.default_rng(13)
    real, gen = rng.normal(size=(500, 6)), rng.normal(size=(400, 6)) + 0.2
    sizes = [50, 100, 400]
    out = metric_at_sizes(
        real, gen, sizes, metric="fid", generator=torch.Generator().manual_seed(0)
    )
    cached = metric_at_sizes(
        feature_statistics(real),
        gen,
        sizes,
        metric="fid",
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(out, cached, rtol=1e-10)
    # each value is the FID of the subset that the same generator draws
    g = torch.Generator().manual_seed(0)
    expected = [
        fid_from_features(real, gen[torch.randperm(400, generator=g)[:n].numpy()]) for n in sizes
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-8)
    assert out[-1] == pytest.approx(fid_from_features(real, gen), rel=1e-8)


def test_fid_inf_removes_the_finite_sample_bias():
    # real and generated come from one distribution: FID_N ~ c / N, so FID_inf ~ 0 while
    # every finite-N value is clearly positive (Chong and Forsyth, 2020)
    rng = np.random.default_rng(14)
    d = 8
    real, gen = rng.normal(size=(20_000, d)), rng.normal(size=(8_000, d))
    sizes = [500, 1000, 2000, 4000, 8000]
    values = metric_at_sizes(
        real, gen, sizes, metric="fid", generator=torch.Generator().manual_seed(1)
    )
    fit = extrapolate_to_infinity(sizes, values)
    # leading bias: E||mean diff||^2 = d / N and the trace term ~ Tr(E^2) / 4 = d (d + 1) / (4 N)
    slope = d + d * (d + 1) / 4
    assert fit.r2 > 0.9
    assert fit.slope == pytest.approx(slope, rel=0.5)  # the sd over seeds is ~30 %
    assert values.min() > 0.5 * slope / sizes[-1]
    # what is left at 1/N -> 0 is the real set's own finite-sample bias, slope / 20000
    assert abs(fit.intercept) < 0.1 * values[0]


def test_kid_at_sizes():
    rng = np.random.default_rng(15)
    real, gen = rng.normal(size=(600, 4)), rng.normal(size=(600, 4)) + 0.4
    sizes = [100, 300, 600]
    vals = metric_at_sizes(
        real,
        gen,
        sizes,
        metric="kid",
        generator=torch.Generator().manual_seed(2),
        kid_subsets=10,
        kid_subset_size=100,
    )
    closed = cubic_mmd2_closed_form(np.zeros(4), np.eye(4), np.full(4, 0.4), np.eye(4))
    assert vals.shape == (3,)
    np.testing.assert_allclose(vals, closed, rtol=0.5)


def test_metric_at_sizes_rejects_bad_input():
    x = np.random.default_rng(0).normal(size=(50, 3))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"sizes must lie in \[2, 50\]"):
        metric_at_sizes(x, x, [10, 51], metric="fid", generator=g)
    with pytest.raises(ValueError, match="metric"):
        metric_at_sizes(x, x, [10], metric="is", generator=g)
    with pytest.raises(ValueError, match="KID needs"):
        metric_at_sizes(feature_statistics(x), x, [10], metric="kid", generator=g)
