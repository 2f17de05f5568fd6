"""Energy priors: exact sampling (KS tests against scipy), normalisation, mixtures."""

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from kaem.model.bases import build_basis
from kaem.model.kan import KANLayer
from kaem.model.prior import MixtureEnergyPrior, ReferencePrior, UnivariateEnergyPrior

N_KS = 20_000
#: Bonferroni-safe per-test level: the suite runs a few hundred KS tests.
ALPHA = 1e-4

REFERENCES = [
    ("gaussian", None),
    ("gaussian", (-0.5, 2.5)),  # asymmetric
    ("uniform", None),
    ("uniform", (-2.0, 3.0)),
    ("lognormal", None),
    ("lognormal", (0.2, 2.5)),
    ("none", None),
    ("none", (-3.0, 0.5)),
]


def _reference(name, domain) -> ReferencePrior:
    low, high = domain if domain is not None else (None, None)
    return ReferencePrior(name, low, high)


def _univariate(ref: ReferencePrior, *, q=2, p=3, seed=0, energy_scale=1.0, dtype=None, **kw):
    g = torch.Generator().manual_seed(seed)
    basis = build_basis("rbf", p, grid_size=8, grid_range=(ref.low, ref.high))
    kan = KANLayer(p, q, basis, base_activation="silu", generator=g)
    with torch.no_grad():
        kan.coef.normal_(0.0, energy_scale, generator=g)
    return UnivariateEnergyPrior(kan, ref, **kw).to(dtype or torch.float64)


def _scipy_log_ref(ref: ReferencePrior, z: np.ndarray) -> np.ndarray:
    """The reference log density written independently with scipy."""
    if ref.name == "gaussian":
        return stats.norm(ref.loc, ref.scale).logpdf(z)
    if ref.name == "lognormal":
        return stats.lognorm(s=ref.scale, scale=np.exp(ref.loc)).logpdf(z)
    return np.zeros_like(z)


def _reference_cdfs(prior: UnivariateEnergyPrior, grid: np.ndarray) -> np.ndarray:
    """CDF of every ``pi_qp`` on ``grid``, integrated independently (Simpson on 20,001 points)."""
    z = torch.as_tensor(grid, dtype=torch.float64)
    q, p = prior.event_shape
    with torch.no_grad():
        kan = copy.deepcopy(prior.kan).double()  # the same energies, evaluated in float64
        f = kan.edges_at(z[:, None, None].expand(-1, q, p)).numpy()  # (n, Q, P)
    log_p = f + _scipy_log_ref(prior.reference, grid)[:, None, None]
    dens = np.exp(log_p - log_p.max(0))
    cdf = integrate.cumulative_simpson(dens, x=grid, axis=0, initial=0.0)
    return cdf / cdf[-1]


def _ks(samples: np.ndarray, grid: np.ndarray, cdf: np.ndarray) -> float:
    return stats.kstest(samples, lambda s: np.interp(s, grid, cdf)).pvalue


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,domain", REFERENCES)
@pytest.mark.parametrize("sampling", ["search", "compiled"])
def test_inverse_transform_matches_tilted_density(name, domain, sampling, dtype) -> None:
    ref = _reference(name, domain)
    prior = _univariate(ref, sampling=sampling, dtype=dtype)
    z = prior.sample(N_KS, torch.Generator().manual_seed(1))
    assert z.shape == (N_KS, 2, 3) and z.dtype == dtype
    assert float(z.min()) >= ref.low and float(z.max()) <= ref.high
    grid = np.linspace(ref.low, ref.high, 20_001)
    cdfs = _reference_cdfs(prior, grid)
    for qi in range(2):
        for pi in range(3):
            pval = _ks(z[:, qi, pi].double().numpy(), grid, cdfs[:, qi, pi])
            assert pval > ALPHA, f"{name}{domain} ({qi},{pi}) via {sampling}: KS p = {pval:.2e}"
    # The test has power: the same samples are rejected against the untilted reference.
    if name != "uniform" and name != "none":
        base = np.exp(_scipy_log_ref(ref, grid) - _scipy_log_ref(ref, grid).max())
    else:
        base = np.ones_like(grid)
    base_cdf = integrate.cumulative_simpson(base, x=grid, initial=0.0)
    assert _ks(z[:, 0, 0].double().numpy(), grid, base_cdf / base_cdf[-1]) < 1e-6


@pytest.mark.parametrize("name,domain", [REFERENCES[1], REFERENCES[4], REFERENCES[7]])
def test_trapezium_rule_and_independent_uniforms(name, domain) -> None:
    ref = _reference(name, domain)
    prior = _univariate(ref, quadrature="trapezium", n_nodes=400, shared_uniforms=False)
    for sampling in ("search", "compiled"):
        prior.sampling = sampling
        z = prior.sample(N_KS, torch.Generator().manual_seed(2))
        grid = np.linspace(ref.low, ref.high, 20_001)
        cdfs = _reference_cdfs(prior, grid)
        for qi in range(2):
            assert _ks(z[:, qi, 1].numpy(), grid, cdfs[:, qi, 1]) > ALPHA
        # Independent draws: coordinates q = 0 and q = 1 are uncorrelated.
        rho = stats.spearmanr(z[:, 0, 1], z[:, 1, 1]).statistic
        assert abs(rho) < 0.05


def test_shared_uniforms_make_coordinates_comonotone() -> None:
    prior = _univariate(ReferencePrior("gaussian"))
    z = prior.sample(2000, torch.Generator().manual_seed(3))
    # z_qp = F_qp^{-1}(u_p): same u_p for every q, so ranks agree exactly.
    assert stats.spearmanr(z[:, 0, 2], z[:, 1, 2]).statistic == pytest.approx(1.0)
    assert abs(stats.spearmanr(z[:, 0, 0], z[:, 0, 1]).statistic) < 0.1


@pytest.mark.parametrize("name,domain", REFERENCES)
def test_log_prob_integrates_to_one(name, domain) -> None:
    ref = _reference(name, domain)
    prior = _univariate(ref)
    # Dense Simpson over the domain, every (q, p) at once.
    grid = torch.linspace(ref.low, ref.high, 20_001, dtype=torch.float64)
    with torch.no_grad():
        lp = prior.component_log_prob(grid[:, None, None].expand(-1, 2, 3).clone())
    mass = integrate.simpson(lp.exp().numpy(), x=grid.numpy(), axis=0)
    np.testing.assert_allclose(mass, 1.0, atol=1e-5 if name != "lognormal" else 1e-3)

    # And one component by adaptive quadrature, independently of any grid.
    def density(t: float) -> float:
        zt = torch.full((1, 2, 3), t, dtype=torch.float64)
        with torch.no_grad():
            return float(prior.component_log_prob(zt)[0, 1, 2].exp())

    value, _ = integrate.quad(density, ref.low, ref.high, limit=200)
    assert value == pytest.approx(1.0, abs=1e-5)


def test_joint_log_prob_is_sum_of_components() -> None:
    prior = _univariate(ReferencePrior("gaussian", -1.0, 2.0))
    z = prior.sample(10, torch.Generator().manual_seed(4))
    torch.testing.assert_close(prior.log_prob(z), prior.component_log_prob(z).sum((1, 2)))
    energy = prior.kan.edges_at(z).sum((1, 2))
    torch.testing.assert_close(prior.energy(z), energy)
    with pytest.raises(ValueError, match=r"\(n, 2, 3\)"):
        prior.log_prob(torch.zeros(4, 3, 2, dtype=torch.float64))


def _mixture(ref: ReferencePrior, q=3, p=4, seed=0, train_proportions=True, **kw):
    g = torch.Generator().manual_seed(seed)
    basis = build_basis("rbf", q, grid_size=8, grid_range=(ref.low, ref.high))
    kan = KANLayer(q, p, basis, base_activation="none", generator=g)
    with torch.no_grad():
        kan.coef.normal_(0.0, 1.5, generator=g)
    prior = MixtureEnergyPrior(kan, ref, train_proportions=train_proportions, **kw).double()
    if train_proportions:
        with torch.no_grad():
            prior.logits.copy_(torch.randn(q, p, generator=g, dtype=torch.float64))
    return prior


@pytest.mark.parametrize("sampling", ["search", "compiled"])
def test_mixture_component_frequencies_match_proportions(sampling) -> None:
    prior = _mixture(ReferencePrior("gaussian", -1.0, 2.0), sampling=sampling)
    n = 30_000
    z, comp = prior.sample_with_components(n, torch.Generator().manual_seed(5))
    alpha = prior.proportions().detach().numpy()
    for qi in range(3):
        counts = np.bincount(comp[:, qi].numpy(), minlength=4)
        pval = stats.chisquare(counts, alpha[qi] * n).pvalue
        assert pval > ALPHA, f"coordinate {qi}: chi-square p = {pval:.2e}"
    # Wrong proportions (uniform) are rejected.
    assert stats.chisquare(np.bincount(comp[:, 0].numpy(), minlength=4), [n / 4] * 4).pvalue < 1e-6
    # Samples follow the mixture density: KS against sum_p alpha_qp F_qp.
    grid = np.linspace(-1.0, 2.0, 20_001)
    with torch.no_grad():
        lp = prior.component_log_prob(torch.as_tensor(grid)[:, None].expand(-1, 3).clone())
    dens = torch.logsumexp(lp, -1).exp().numpy()  # (n, Q) normalised mixture densities
    # sample() inverts the collapsed mixture CDF: the same distribution, one draw per coordinate.
    marginal = prior.sample(n, torch.Generator().manual_seed(6))
    for qi in range(3):
        cdf = integrate.cumulative_simpson(dens[:, qi], x=grid, initial=0.0)
        assert cdf[-1] == pytest.approx(1.0, abs=1e-5)  # log_prob integrates to one
        assert _ks(z[:, qi].numpy(), grid, cdf / cdf[-1]) > ALPHA
        assert _ks(marginal[:, qi].numpy(), grid, cdf / cdf[-1]) > ALPHA


def test_the_mixture_marginal_cdf_mixes_its_components_in_float32() -> None:
    # Built from linear cell masses in the prior's dtype: sum_p alpha_qp m_qpn accumulated,
    # each component's masses from its own table in float64.
    prior = _mixture(ReferencePrior("gaussian", -1.0, 2.0))
    with torch.no_grad():
        components = prior.cdf_table().cdf.diff(dim=-1)  # (Q, P, N) cell masses
        mixed = (prior.proportions()[..., None] * components).sum(1).cumsum(-1)
        marginal = prior.float().marginal_cdf_table().cdf
    assert marginal.dtype == torch.float32
    torch.testing.assert_close(marginal[:, 1:].double(), mixed, atol=2e-7, rtol=0)


def test_mixture_fixed_uniform_proportions_and_regulariser() -> None:
    prior = _mixture(ReferencePrior("none"), train_proportions=False, proportion_l1=0.5)
    assert "logits" not in dict(prior.named_parameters())
    torch.testing.assert_close(prior.proportions(), torch.full((3, 4), 0.25, dtype=torch.float64))
    assert float(prior.regulariser()) == 0.0
    trained = _mixture(ReferencePrior("none"), proportion_l1=0.5)
    alpha = trained.proportions()
    expected = 0.5 * (alpha - 0.25).abs().sum()
    torch.testing.assert_close(trained.regulariser(), expected)
    trained.regulariser().backward()
    assert trained.logits.grad is not None and float(trained.logits.grad.abs().sum()) > 0


def test_mixture_log_prob_is_logsumexp_of_components() -> None:
    prior = _mixture(ReferencePrior("gaussian"))
    z = prior.sample(7, torch.Generator().manual_seed(6))
    manual = torch.logsumexp(prior.component_log_prob(z), -1).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), manual)
    assert prior.generator_input(z) is z


@pytest.mark.parametrize(
    "kind,shared", [("univariate", True), ("univariate", False), ("mixture", None)]
)
def test_both_sampling_settings_return_the_same_samples(kind, shared) -> None:
    ref = ReferencePrior("gaussian", -1.0, 2.0)
    if kind == "univariate":
        prior = _univariate(ref, q=4, p=5, shared_uniforms=shared, dtype=torch.float32)
    else:
        prior = _mixture(ref).float()
    draws = {}
    for sampling in ("search", "compiled"):
        prior.sampling = sampling
        draws[sampling] = prior.sample(3000, torch.Generator().manual_seed(8))
    # The same uniforms in, the same samples out.
    torch.testing.assert_close(draws["compiled"], draws["search"], rtol=0, atol=0)


def _tilt_right(prior: UnivariateEnergyPrior) -> dict[str, Callable[[], None]]:
    """Ways of moving every density toward the right end (+5 silu(z) on each energy)."""
    bumped = prior.kan.w_base.detach() + 5.0
    state = {k: v.clone() for k, v in prior.state_dict().items()}
    state["kan.w_base"] = bumped.clone()

    def optimiser() -> None:
        opt = torch.optim.SGD([prior.kan.w_base], lr=1.0)
        prior.kan.w_base.grad = torch.full_like(bumped, -5.0)
        opt.step()

    def numpy_view() -> None:
        prior.kan.w_base.detach().numpy()[...] += 5.0

    def in_place_no_grad() -> None:
        with torch.no_grad():
            prior.kan.w_base.add_(5.0)

    return {
        "optimiser step": optimiser,
        "p.data.add_": lambda: prior.kan.w_base.data.add_(5.0),
        "p.data.copy_": lambda: prior.kan.w_base.data.copy_(bumped),
        "p.data = ...": lambda: setattr(prior.kan.w_base, "data", bumped.clone()),
        "copy_ under no_grad": in_place_no_grad,
        "load_state_dict": lambda: prior.load_state_dict(state),
        "a NumPy view": numpy_view,
    }


@pytest.mark.parametrize("sampling", ["search", "compiled"])
@pytest.mark.parametrize("how", list(_tilt_right(_univariate(ReferencePrior("gaussian")))))
def test_samples_follow_the_parameters_however_they_change(how, sampling) -> None:
    prior = _univariate(ReferencePrior("gaussian"), sampling=sampling, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    before = prior.sample(5000, g).mean(0)
    _tilt_right(prior)[how]()
    after = prior.sample(5000, g).mean(0)
    assert bool((after > before + 0.1).all()), (how, before, after)
    # And the samples are those of the new parameters: a copy draws the same.
    fresh = copy.deepcopy(prior)
    torch.testing.assert_close(
        prior.sample(100, torch.Generator().manual_seed(3)),
        fresh.sample(100, torch.Generator().manual_seed(3)),
    )


def test_weighted_energy_matches_autograd_of_the_plain_sum() -> None:
    prior = _univariate(ReferencePrior("gaussian", -1.0, 2.0), q=3, p=4)
    z = prior.sample(64, torch.Generator().manual_seed(0))
    w = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = [p for p in prior.parameters() if p.requires_grad]
    fast = prior.weighted_energy(z, w)
    plain = (w * prior.energy(z)).sum()
    torch.testing.assert_close(fast, plain)
    for a, b in zip(
        torch.autograd.grad(fast, params), torch.autograd.grad(plain, params), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_log_prob_is_minus_infinity_off_the_domain() -> None:
    prior = _univariate(ReferencePrior("gaussian", -1.0, 2.0), q=1, p=1)
    z = torch.tensor([-1.0, -1.0001, 2.0, 2.0001, 0.5], dtype=torch.float64)[:, None, None]
    lp = prior.log_prob(z)
    assert bool(torch.isfinite(lp[[0, 2, 4]]).all()) and bool(torch.isinf(lp[[1, 3]]).all())
    mixture = _mixture(ReferencePrior("gaussian", -1.0, 2.0))
    zm = torch.tensor([[0.0, 1.0, 2.5], [0.0, 1.0, 1.5]], dtype=torch.float64)
    assert torch.isinf(mixture.log_prob(zm)).tolist() == [True, False]


def test_reference_prior_validation() -> None:
    with pytest.raises(ValueError, match="'cauchy'"):
        ReferencePrior("cauchy")
    with pytest.raises(ValueError, match="high > low"):
        ReferencePrior("gaussian", 1.0, -1.0)
    with pytest.raises(ValueError, match="lognormal"):
        ReferencePrior("lognormal", -1.0, 2.0)
    with pytest.raises(ValueError, match="positive integer"):
        _univariate(ReferencePrior("gaussian")).sample(0)


def _param_grads(prior, value: torch.Tensor) -> torch.Tensor:
    params = [p for p in prior.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten()
            for p, g in zip(params, grads, strict=True)
        ]
    )


def test_univariate_prior_term_is_the_gradient_of_the_weighted_log_density() -> None:
    # Eq. 16: grad [sum_s w_s f(z_s) - E_prior f] = sum_s w_s grad log pi(z_s), because
    # grad log Z = E_prior[grad f]. E_prior is estimated from 1.6 million exact draws here: at
    # 400,000 the Monte Carlo error alone reached the 1 % tolerance for 4 seeds in 10.
    prior = _univariate(ReferencePrior("gaussian"), shared_uniforms=False, energy_scale=0.5)
    g = torch.Generator().manual_seed(3)
    z = prior.sample(64, g)
    w = torch.softmax(torch.randn(64, generator=g, dtype=torch.float64), 0)
    exact = _param_grads(prior, (w * prior.log_prob(z)).sum())
    cd = _param_grads(prior, prior.prior_term(z, w, prior_samples=prior.sample(1_600_000, g)))
    torch.testing.assert_close(cd, exact, atol=0.01 * exact.abs().max(), rtol=0.0)
    # The draws as their own control variate (importance sampling): one pass, same value.
    torch.testing.assert_close(
        prior.prior_term(z, w, prior_samples=z), prior.prior_term(z, w, prior_samples=z.clone())
    )


def test_mixture_prior_term_is_the_weighted_log_density_minus_the_regulariser() -> None:
    prior = _mixture(ReferencePrior("gaussian"), proportion_l1=0.3)
    z = prior.sample(32, torch.Generator().manual_seed(4))
    w = torch.full((32,), 1 / 32, dtype=z.dtype)
    expected = prior.log_prob(z).mean() - prior.regulariser()
    torch.testing.assert_close(prior.prior_term(z, w), expected)


@pytest.mark.parametrize("kind", ["univariate", "mixture"])
def test_frozen_log_prob_has_the_density_and_its_z_gradient(kind) -> None:
    ref = ReferencePrior("gaussian")
    prior = _univariate(ref, shared_uniforms=False) if kind == "univariate" else _mixture(ref)
    z = prior.sample(16, torch.Generator().manual_seed(5)).requires_grad_(True)
    frozen = prior.frozen_log_prob()(z)
    plain = prior.log_prob(z)
    torch.testing.assert_close(frozen, plain)
    (g_frozen,) = torch.autograd.grad(frozen.sum(), z)
    (g_plain,) = torch.autograd.grad(plain.sum(), z)
    torch.testing.assert_close(g_frozen, g_plain)


@pytest.mark.parametrize("n_nodes", [25, 50, 100, 200])
def test_quadrature_error_bounds_the_error_of_the_normaliser(n_nodes) -> None:
    # Rough energies (40 bumps of scale 3 on [-1.5, 1.5]): log Z by n_nodes Gauss-Legendre
    # nodes against Simpson's rule on 200,001 points. The change from N/2 to N nodes is at
    # least the error left at N, and it shrinks as the nodes resolve the energies.
    ref = ReferencePrior("gaussian")
    g = torch.Generator().manual_seed(0)
    basis = build_basis("rbf", 3, grid_size=40, grid_range=(ref.low, ref.high))
    kan = KANLayer(3, 2, basis, base_activation="silu", generator=g)
    with torch.no_grad():
        kan.coef.normal_(0.0, 3.0, generator=g)
    prior = UnivariateEnergyPrior(kan, ref, n_nodes=n_nodes).double()
    grid = np.linspace(ref.low, ref.high, 200_001)
    z = torch.as_tensor(grid)[:, None, None].expand(-1, 2, 3)
    with torch.no_grad():
        log_p = (prior.kan.edges_at(z) + prior.reference.log_density(z)).numpy()
    top = log_p.max(0)
    exact = np.log(integrate.simpson(np.exp(log_p - top), x=grid, axis=0)) + top
    error = (prior.log_normaliser().detach().numpy() - exact).max()
    estimate = prior.quadrature_error()
    assert estimate.shape == (2, 3)
    assert float(estimate.max()) >= abs(error), (n_nodes, float(estimate.max()), error)
    if n_nodes == 200:
        assert float(estimate.max()) < 0.01
    if n_nodes == 25:
        assert float(estimate.max()) > 1.0  # 12 nodes cannot see 40 bumps: flagged
