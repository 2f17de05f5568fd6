"""Importance weights (eqs. 33-39) and the four resamplers: unbiasedness, invariants, errors."""

import math

import numpy as np
import pytest
import torch

from kaem.samplers import (
    RESAMPLERS,
    effective_sample_size,
    get_resampler,
    normalized_log_weights,
    resample_if_needed,
    residual_resample,
    systematic_resample,
)

NAMES = sorted(RESAMPLERS)
# Includes a zero weight, weights with N w below and above 1, and non-integer N w throughout.
WEIGHTS = torch.tensor([0.05, 0.0, 0.37, 0.2, 0.13, 0.25], dtype=torch.float64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _counts(ancestors: torch.Tensor, n: int) -> torch.Tensor:
    """Copies of each particle per row: (R, M) ancestors -> (R, N) counts."""
    return torch.nn.functional.one_hot(ancestors, n).sum(-2).double()


@pytest.mark.parametrize("num_samples", [None, 9])
@pytest.mark.parametrize("name", NAMES)
def test_resampler_is_unbiased(name, num_samples):
    n, n_rows = len(WEIGHTS), 20_000
    m = num_samples or n
    ancestors = RESAMPLERS[name](WEIGHTS.expand(n_rows, n), _gen(1), num_samples)
    counts = _counts(ancestors, n)
    expected = m * WEIGHTS
    # None of the schemes has more variance per particle than multinomial, M w (1 - w).
    stderr = torch.sqrt(m * WEIGHTS * (1 - WEIGHTS) / n_rows)
    z = (counts.mean(0) - expected) / stderr.clamp(min=1e-12)
    assert z.abs().max() < 5, f"{name}: count z-scores {z}"
    assert (counts.sum(-1) == m).all()
    assert (counts[:, 1] == 0).all(), "a zero-weight particle was selected"


@pytest.mark.parametrize("name", NAMES)
def test_resampler_preserves_weighted_expectation(name):
    n, n_rows = 50, 2_000
    g = _gen(2)
    x = torch.linspace(-3.0, 3.0, n, dtype=torch.float64)
    w = torch.softmax(2.0 * torch.randn(n, generator=g, dtype=torch.float64), 0)
    target = (w * torch.cos(x)).sum()
    ancestors = RESAMPLERS[name](w.expand(n_rows, n), g)
    estimates = torch.cos(x)[ancestors].mean(-1)  # (R,) one resampled estimate per row
    stderr = estimates.std() / math.sqrt(n_rows)
    assert abs(estimates.mean() - target) < 5 * stderr + 1e-12


def test_residual_keeps_floor_copies_every_draw():
    n_rows, m = 5_000, 17
    w = torch.softmax(torch.randn(12, generator=_gen(3), dtype=torch.float64), 0)
    counts = _counts(residual_resample(w.expand(n_rows, -1), _gen(4), m), 12)
    floor = torch.floor(m * w)
    assert (counts >= floor).all()
    # The remaining draws exceed the floor by at most one copy per particle with probability
    # well above zero, but never put extra copies where the residual mass is zero.
    residual = m * w - floor
    assert (counts[:, residual == 0] == floor[residual == 0]).all()


def test_residual_matches_textbook_residual_probabilities():
    # Particle 0 has N w = 2.4, particle 1 has 0.3, particle 2 has 0.3 (N = 3).
    w = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)
    counts = _counts(residual_resample(w.expand(40_000, 3), _gen(5)), 3)
    # Two deterministic copies of particle 0; the last draw uses residuals (0.4, 0.3, 0.3).
    assert (counts[:, 0] >= 2).all()
    extra = counts - torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    freq = extra.mean(0)
    stderr = torch.sqrt(torch.tensor([0.4 * 0.6, 0.3 * 0.7, 0.3 * 0.7]) / 40_000)
    assert ((freq - torch.tensor([0.4, 0.3, 0.3])).abs() < 5 * stderr).all(), freq


def test_systematic_counts_are_floor_or_ceil():
    w = torch.softmax(torch.randn(30, generator=_gen(6), dtype=torch.float64), 0)
    counts = _counts(systematic_resample(w.expand(3_000, -1), _gen(7)), 30)
    assert ((counts == torch.floor(30 * w)) | (counts == torch.ceil(30 * w))).all()


@pytest.mark.parametrize("name", NAMES)
def test_resampler_batched_shapes_and_rows(name):
    g = _gen(8)
    w = torch.softmax(torch.randn(2, 3, 7, generator=g), -1)
    one_hot = torch.zeros(7)
    one_hot[4] = 1.0
    w[1, 2] = one_hot
    fn = RESAMPLERS[name]
    out = fn(w, g)
    assert out.shape == (2, 3, 7) and out.dtype == torch.int64
    assert ((out >= 0) & (out < 7)).all()
    assert (out[1, 2] == 4).all(), "each row must resample from its own weights"
    assert fn(w, g, num_samples=11).shape == (2, 3, 11)
    assert fn(w[0, 0], g).shape == (7,)
    # Reproducible from an explicit generator.
    assert torch.equal(fn(w, _gen(9)), fn(w, _gen(9)))


@pytest.mark.parametrize("name", NAMES)
def test_resampler_rejects_bad_weights(name):
    fn = RESAMPLERS[name]
    with pytest.raises(ValueError, match="non-negative"):
        fn(torch.tensor([0.5, 0.7, -0.2]))
    with pytest.raises(ValueError, match="finite"):
        fn(torch.tensor([0.5, float("nan"), 0.5]))
    with pytest.raises(ValueError, match="finite"):
        fn(torch.tensor([0.5, float("inf"), 0.5]))
    with pytest.raises(ValueError, match=r"sum to 1.*row 1 sums to 2"):
        fn(torch.tensor([[0.5, 0.5], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="num_samples"):
        fn(torch.tensor([0.5, 0.5]), num_samples=0)
    with pytest.raises(TypeError, match="floating"):
        fn(torch.tensor([0, 1]))
    # A float32 softmax over many particles is normalised up to rounding and must pass.
    assert fn(torch.softmax(torch.randn(5_000, generator=_gen(10)), 0), _gen(11)).shape == (5_000,)


def test_get_resampler():
    assert get_resampler("residual") is residual_resample
    with pytest.raises(
        ValueError, match="valid names: multinomial, residual, stratified, systematic"
    ):
        get_resampler("softmax-residual")


def test_ess_of_uniform_and_one_hot():
    for shift in (0.0, -1e4, 3e3):
        assert effective_sample_size(torch.full((7,), shift)).item() == pytest.approx(7.0)
    one_hot = torch.tensor([-math.inf, 0.0, -math.inf])
    assert effective_sample_size(one_hot).item() == pytest.approx(1.0)


def test_ess_matches_direct_formula_and_dim():
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=(5, 40)) * 2.0
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    expected = 1.0 / (w**2).sum(1)
    got = effective_sample_size(torch.from_numpy(log_w - 1e4))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    got_t = effective_sample_size(torch.from_numpy(log_w.T.copy()), dim=0)
    np.testing.assert_allclose(got_t.numpy(), expected, rtol=1e-9)


def test_normalized_log_weights_stable_far_from_zero():
    g = _gen(12)
    base = torch.randn(4, 100, generator=g, dtype=torch.float64)
    log_w = base - 1e4
    # Naive exponentiation underflows to 0/0 here.
    assert torch.isnan(log_w.exp() / log_w.exp().sum(-1, keepdim=True)).all()
    out = normalized_log_weights(log_w)
    torch.testing.assert_close(out, torch.log_softmax(base, -1))
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    out32 = normalized_log_weights(log_w.float(), dim=-1)
    assert torch.isfinite(out32).all()
    torch.testing.assert_close(out32.exp().sum(-1), torch.ones(4), rtol=0, atol=1e-5)
    # Normalising along another dimension.
    torch.testing.assert_close(normalized_log_weights(log_w.T, dim=0), out.T)


def test_log_weight_errors():
    with pytest.raises(ValueError, match="NaN"):
        normalized_log_weights(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="all -inf"):
        effective_sample_size(torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]))


def test_resample_if_needed_gates_rows_by_ess():
    s = 50
    log_w = torch.stack(
        [
            torch.zeros(s),  # uniform: ESS = S, kept
            torch.linspace(0.0, -0.5, s),  # mild: ESS close to S, kept
            torch.cat([torch.tensor([0.0]), torch.full((s - 1,), -20.0)]),  # degenerate
            torch.linspace(0.0, -8.0, s),  # ESS < S / 2
        ]
    ).double()
    ess = effective_sample_size(log_w)
    ancestors, weights, resampled = resample_if_needed(log_w, 0.5, "systematic", _gen(13))
    assert resampled.tolist() == (ess < 0.5 * s).tolist() == [False, False, True, True]
    identity = torch.arange(s)
    assert torch.equal(ancestors[0], identity) and torch.equal(ancestors[1], identity)
    torch.testing.assert_close(weights[:2], torch.softmax(log_w[:2], -1))
    torch.testing.assert_close(weights[2:], torch.full((2, s), 1.0 / s, dtype=torch.float64))
    assert (ancestors[2] == 0).all(), "all mass on particle 0"
    # Resampled rows concentrate on the heavy end of the weights.
    assert ancestors[3].double().mean() < s / 4
    # The same call with a callable resampler; threshold 0 never resamples.
    _, w0, r0 = resample_if_needed(log_w, 0.0, systematic_resample, _gen(13))
    assert not r0.any()
    torch.testing.assert_close(w0, torch.softmax(log_w, -1))
    with pytest.raises(ValueError, match="threshold"):
        resample_if_needed(log_w, 1.5, "residual", _gen(0))
