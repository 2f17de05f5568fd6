"""Langevin and thermodynamic criteria, and log-evidence estimators, against closed forms."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kaem.bases import build_basis
from kaem.config import TrainConfig, from_dict
from kaem.evaluation import importance_log_evidence, steppingstone_log_evidence
from kaem.generators import Generator
from kaem.kan import KANLayer
from kaem.likelihood import GaussianLikelihood
from kaem.losses import mle_loss, thermodynamic_integration, thermodynamic_loss
from kaem.model import KAEM, build_model
from kaem.posterior import sample_posterior, sample_power_posteriors
from kaem.prior import ReferencePrior, UnivariateEnergyPrior
from kaem.samplers import power_temperatures
from kaem.train import NonFiniteLossError, train


class LinearGenerator(Generator):
    """x = W h + b on a (1, 1, D) image, no output activation."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__(weight.shape[1], (1, 1, weight.shape[0]), "none")
        self.weight = torch.nn.Parameter(weight.clone())
        self.bias = torch.nn.Parameter(bias.clone())

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.weight.T + self.bias).reshape(-1, *self.image_shape)


def _gaussian_prior(dim: int, low=-6.0, high=6.0, n_nodes=200) -> UnivariateEnergyPrior:
    """z ~ N(0, I_dim) (truncated at +-6, mass lost 2e-9): a KAEM prior with zero energies."""
    ref = ReferencePrior("gaussian", low, high)
    kan = KANLayer(
        1, dim, build_basis("rbf", 1, grid_size=4, grid_range=(low, high)), base_activation="none"
    )
    with torch.no_grad():
        kan.coef.zero_()
    # Independent uniforms: with u_p shared across q (the paper's KART layout) and P = 1, every
    # coordinate would be the same draw.
    return UnivariateEnergyPrior(kan, ref, n_nodes=n_nodes, shared_uniforms=False)


def _linear_gaussian(seed=0, dim=2, pixels=3, variance=0.3):
    """z ~ N(0, I), x = W z + b + eps: log p(x) = log N(x; b, W W^T + sigma^2 I)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(pixels, dim, generator=g, dtype=torch.float64)
    bias = torch.randn(pixels, generator=g, dtype=torch.float64) * 0.5
    model = KAEM(_gaussian_prior(dim), LinearGenerator(weight, bias), GaussianLikelihood(variance))
    model = model.double()
    cov = weight @ weight.T + variance * torch.eye(pixels, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    x = bias + torch.randn(4, pixels, generator=g, dtype=torch.float64) @ chol.T
    truth = torch.distributions.MultivariateNormal(bias, cov).log_prob(x)
    return model, x.reshape(4, 1, 1, pixels), truth


def test_importance_sampling_evidence_within_its_standard_error() -> None:
    model, x, truth = _linear_gaussian()
    est = importance_log_evidence(
        model, x, n_samples=40_000, generator=torch.Generator().manual_seed(1)
    )
    z = (est.estimate - truth) / est.stderr
    assert bool((z.abs() < 4).all()), f"z-scores {z.tolist()}"
    assert bool((est.stderr < 0.1).all())
    # The reported standard error is calibrated: it matches the spread of repeated estimates.
    reps = torch.stack(
        [
            importance_log_evidence(
                model, x, n_samples=2_000, generator=torch.Generator().manual_seed(s)
            ).estimate
            for s in range(40)
        ]
    )
    typical = importance_log_evidence(
        model, x, n_samples=2_000, generator=torch.Generator().manual_seed(99)
    ).stderr
    ratio = reps.std(0) / typical
    assert bool(((ratio > 0.6) & (ratio < 1.6)).all()), ratio


def test_steppingstone_and_corrected_ti_match_closed_form() -> None:
    model, x, truth = _linear_gaussian()
    est = steppingstone_log_evidence(
        model,
        x,
        n_temps=10,
        exponent=3.0,
        n_chains=256,
        n_steps=800,
        step_size=0.01,
        generator=torch.Generator().manual_seed(2),
    )
    # Within the reported Monte Carlo error, up to a small ULA discretisation bias.
    error = (est.estimate - truth).abs()
    assert bool((error < 3 * est.stderr + 0.05).all()), (error, est.stderr)
    # Thermodynamic integration: the variance correction removes most of the trapezium
    # rule's error, and the corrected estimate approaches the truth as temperatures are added.
    coarse, fine = (
        steppingstone_log_evidence(
            model,
            x,
            n_temps=n_temps,
            exponent=3.0,
            n_chains=64,
            n_steps=800,
            step_size=0.01,
            generator=torch.Generator().manual_seed(3),
        )
        for n_temps in (2, 12)
    )
    coarse_err = float((coarse.corrected - truth).abs().mean())
    fine_err = float((fine.corrected - truth).abs().mean())
    assert coarse_err < float((coarse.trapezium - truth).abs().mean())
    assert fine_err < 0.15 and fine_err < coarse_err / 4, (coarse_err, fine_err)


def test_thermodynamic_integration_on_known_curve() -> None:
    # E_t[ll] = -1 / (1 + t) has Var_t = d/dt E_t = 1 / (1 + t)^2; the integral is -log 2.
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    mean, var = -1 / (1 + t), 1 / (1 + t) ** 2
    trap, corr = thermodynamic_integration(t, mean, var)
    assert abs(float(corr) + math.log(2)) < abs(float(trap) + math.log(2)) / 20


def _one_dimensional_model() -> KAEM:
    ref = ReferencePrior("gaussian", -1.0, 2.0)
    kan = KANLayer(
        1,
        1,
        build_basis("rbf", 1, grid_size=6, grid_range=(-1.0, 2.0)),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        kan.coef.copy_(torch.tensor([0.5, -1.0, 1.5, 0.0, -0.5, 1.0]).reshape(1, 6, 1))
    gen = LinearGenerator(torch.tensor([[1.5], [-0.7]]), torch.tensor([0.2, 0.1]))
    return KAEM(UnivariateEnergyPrior(kan, ref, n_nodes=100), gen, GaussianLikelihood(0.3)).double()


def _exact_power_posterior_samples(model, x, t, n, seed) -> torch.Tensor:
    """Exact draws of p_t(z | x) on the 1-D domain by inverse transform on a fine grid."""
    grid = torch.linspace(-1.0, 2.0, 20_001, dtype=torch.float64)
    z = grid[:, None, None]
    with torch.no_grad():
        lp = model.prior.log_prob(z) + t * model.likelihood.log_prob(x, model.decode(z))
    p = torch.exp(lp - lp.max()).numpy()
    cdf = np.concatenate([[0.0], np.cumsum((p[1:] + p[:-1]) / 2)])
    cdf /= cdf[-1]
    u = np.random.default_rng(seed).random(n)
    return torch.as_tensor(np.interp(u, cdf, grid.numpy()))


def _generator_grad(model, loss_fn):
    params = [model.generator.weight, model.generator.bias]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss_fn(), params)])


def test_thermodynamic_gradient_approaches_mle_gradient() -> None:
    """Eq. 24's gradient, with exact power-posterior samples, converges to the MLE gradient."""
    model = _one_dimensional_model()
    model.likelihood = GaussianLikelihood(0.01)  # a narrow posterior: IS from the prior is poor
    x = torch.tensor([[[[1.0, -0.4]]]], dtype=torch.float64)

    def log_evidence() -> torch.Tensor:  # quadrature, differentiable in the generator
        t = torch.linspace(-1.0, 2.0, 20_001, dtype=torch.float64)[:, None, None]
        lp = model.prior.log_prob(t) + model.likelihood.log_prob(x, model.decode(t))
        return torch.logsumexp(lp, 0) + math.log(3.0 / 20_000)

    exact = -_generator_grad(model, lambda: -log_evidence())

    def rmse(n_temps: int, n_samples: int, reps: int = 6) -> float:
        temps = power_temperatures(n_temps, 1.0, dtype=torch.float64)
        errors = []
        for rep in range(reps):
            z = torch.stack(
                [
                    _exact_power_posterior_samples(model, x, float(t), n_samples, 1000 * rep + k)
                    for k, t in enumerate(temps)
                ]
            )[:, :, None, None, None]  # (K, S, B=1, Q=1, P=1)
            grad = -_generator_grad(
                model,
                lambda z=z: thermodynamic_loss(
                    model, x, z, temps, generator=torch.Generator().manual_seed(0)
                )[0],
            )
            errors.append(float((grad - exact).norm() / exact.norm()) ** 2)
        return math.sqrt(sum(errors) / reps)

    one, many = rmse(1, 200), rmse(30, 200)
    assert many < 0.05 and many < one / 3, (one, many)
    # With one sample per temperature the weights are all one and the gradient is the Riemann
    # sum of int E_t[grad ll] dt (the estimate differentiated with its samples held fixed):
    # adding temperatures does not bring it to the MLE gradient.
    assert rmse(30, 1) > 5 * many


def test_posterior_samples_and_nonfinite_policies() -> None:
    model, x, _ = _linear_gaussian()
    post = sample_posterior(
        model, x, n_steps=20, step_size=0.01, generator=torch.Generator().manual_seed(0)
    )
    assert post.z.shape == (4, 2, 1) and post.retries == 0
    # A step size that makes ULA diverge: a clear error naming the step and the chains...
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+ in chain"):
        sample_posterior(
            model, x, n_steps=200, step_size=50.0, generator=torch.Generator().manual_seed(0)
        )
    temps = power_temperatures(3, 1.0, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"\(temperature, data point\) \[\("):
        sample_power_posteriors(
            model, x, temps, n_steps=200, step_size=50.0, generator=torch.Generator().manual_seed(0)
        )
    # ...or halve the step until it works.
    post = sample_posterior(
        model,
        x,
        n_steps=200,
        step_size=50.0,
        nonfinite="halve_and_retry",
        max_retries=20,
        generator=torch.Generator().manual_seed(0),
    )
    assert post.retries > 0 and post.step_size == pytest.approx(50.0 / 2**post.retries)
    assert bool(torch.isfinite(post.z).all())
    pop = sample_power_posteriors(
        model,
        x,
        temps,
        n_chains=2,
        n_steps=200,
        step_size=50.0,
        nonfinite="halve_and_retry",
        max_retries=20,
        generator=torch.Generator().manual_seed(0),
    )
    assert pop.z.shape == (4, 2, 4, 2, 1) and pop.retries > 0
    assert bool(pop.swap_rate[0].isnan())  # t = 0 is drawn exactly, not a chain
    assert bool(((pop.swap_rate[1:] >= 0) & (pop.swap_rate[1:] <= 1)).all())


def test_mala_posterior_reports_acceptance() -> None:
    model, x, _ = _linear_gaussian()
    post = sample_posterior(
        model,
        x,
        n_steps=30,
        step_size=0.05,
        sampler="mala",
        generator=torch.Generator().manual_seed(0),
    )
    assert 0.0 < post.acceptance <= 1.0
    loss, info = mle_loss(model, x, post.z, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and info.log_lik.shape == (4,)


TINY = {
    "image_shape": [1, 8, 8],
    "prior": {"widths": [3, 5], "grid_size": 6, "n_nodes": 40},
    "generator": {"hidden_widths": [10], "grid_size": 6},
}


@pytest.mark.parametrize("kind", ["univariate", "mixture"])
@pytest.mark.parametrize("criterion", ["ula", "thermodynamic"])
def test_langevin_criteria_train_tiny_model(tmp_path: Path, kind: str, criterion: str) -> None:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    model_cfg = {**TINY, "prior": {**TINY["prior"], "kind": kind}}
    cfg = from_dict(
        TrainConfig,
        {
            "criterion": criterion,
            "batch_size": 16,
            "max_steps": 40,
            "learning_rate": 1e-2,
            "langevin": {
                "steps": 8,
                "step_size": 0.01,
                "sampler": "mala" if kind == "mixture" else "ula",
            },
            "thermodynamic": {
                "n_temps": 3,
                "chains": 2,
                "p_start": 2.0,
                "p_end": 0.5,
                "n_cycles": 1,
            },
            "grid_update": {"frequency": 10, "samples": 20},
        },
    )
    result = train(build_model(model_cfg), images, cfg, tmp_path, progress=False)
    log = pd.read_csv(result.log)
    assert np.isfinite(log["loss"]).all()
    assert log["loss"].tail(8).mean() < log["loss"].head(8).mean()
    assert log["grid_updated"].sum() >= 2  # from posterior samples
    if criterion == "thermodynamic":
        assert {"steppingstone", "ti_trapezium", "ti_corrected", "swap_1_2", "exponent"} <= set(log)
        assert log["exponent"].iloc[0] == pytest.approx(2.0)
    else:
        assert ("acceptance" in log) == (kind == "mixture")


def test_nonfinite_training_step_is_named(tmp_path: Path) -> None:
    images = torch.zeros(32, 1, 8, 8, dtype=torch.uint8)
    cfg = from_dict(
        TrainConfig,
        {
            "criterion": "thermodynamic",
            "batch_size": 16,
            "max_steps": 3,
            "langevin": {"steps": 50, "step_size": 1e4},
            "thermodynamic": {"n_temps": 2},
            "grid_update": {"enabled": False},
        },
    )
    with pytest.raises(NonFiniteLossError, match=r"at step 1 \(epoch 0\).*temperature"):
        train(build_model(TINY), images, cfg, tmp_path, progress=False)


def test_evaluate_cli_on_a_trained_run(tmp_path: Path) -> None:
    import json

    from kaem.cli import main
    from kaem.data import prepare_dataset

    data = prepare_dataset("tiny", tmp_path / "tiny.h5", n_train=64, n_test=8, progress=False)
    model_cfg = {"image_shape": [1, 8, 8], "prior": TINY["prior"], "generator": TINY["generator"]}
    (tmp_path / "cfg.yaml").write_text(
        json.dumps({"model": model_cfg, "train": {"max_steps": 3, "batch_size": 16}})
    )
    run = tmp_path / "run"
    main(["train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(data), "--out", str(run)])
    out = tmp_path / "evidence.json"
    main(
        [
            "evaluate",
            str(run),
            "--data",
            str(data),
            "--n-images",
            "4",
            "--samples",
            "200",
            "--temps",
            "3",
            "--chains",
            "4",
            "--steps",
            "30",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert set(result) == {"importance", "steppingstone", "ti_trapezium", "ti_corrected"}
    assert result["importance"]["images"] == 4 and result["importance"]["stderr"] > 0
    assert result["ti_corrected"]["stderr"] is None
    assert all(math.isfinite(v["mean"]) for v in result.values())
