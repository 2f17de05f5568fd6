"""Pang et al.'s latent EBM: its samplers and learning gradient against closed forms, training."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_LEBM, LinearGenerator, tiny_images
from scipy import stats

from kaem.config import TrainConfig, from_dict
from kaem.io import read_checkpoint
from kaem.kinds import build, load_model
from kaem.lebm import LEBM, LatentEBMPrior, build_lebm, lebm_loss
from kaem.likelihood import GaussianLikelihood
from kaem.presets import preset
from kaem.training import check_setup, train


def _linear_energy(w: torch.Tensor) -> torch.nn.Linear:
    """``E(z) = w . z``: with a standard normal base the prior is ``N(-w, I)``."""
    energy = torch.nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        energy.weight.copy_(w[None])
    return energy


def test_the_prior_sampler_recovers_a_known_energy() -> None:
    w = torch.tensor([1.0, -0.5, 0.0])
    eta = 0.08  # Pang et al.'s prior step (s = 0.4)
    prior = LatentEBMPrior(_linear_energy(w), 3, n_steps=150, step_size=eta)
    z = prior.sample(20_000, torch.Generator().manual_seed(0)).double()
    # ULA on N(m, 1) is stationary at N(m, 1 / (1 - eta / 2)): the mean is exact.
    var = 1.0 / (1.0 - eta / 2.0)
    se = (var / len(z)) ** 0.5
    assert torch.all((z.mean(0) + w.double()).abs() < 5 * se), z.mean(0)
    assert torch.allclose(z.var(0), torch.full((3,), var, dtype=torch.float64), rtol=0.05)
    for q in range(3):
        assert stats.kstest(z[:, q].numpy(), "norm", args=(-float(w[q]), var**0.5)).pvalue > 1e-3


def test_the_prior_learning_gradient_matches_the_closed_form() -> None:
    """E(z) = w . z, N(0, I) base, x = A z + b + N(0, s^2): every density is Gaussian.

    The loss's prior term ``mean E(z_post) - mean E(z_prior)`` has gradient
    ``E_post[z] - E_prior[z] = mu_post + w = -d log p(x) / dw``.
    """
    torch.manual_seed(0)
    w = torch.tensor([0.6, -0.4])
    a, b, s2 = (
        torch.tensor([[1.5, 0.3], [-0.7, 1.0], [0.2, 0.5]]),
        torch.tensor([0.2, 0.1, 0.0]),
        0.3,
    )
    x = torch.tensor([1.0, -0.5, 0.4])
    precision = torch.eye(2) + a.T @ a / s2
    mu_post = torch.linalg.solve(precision, -w + a.T @ (x - b) / s2)
    want = mu_post + w

    prior = LatentEBMPrior(_linear_energy(w), 2, n_steps=300, step_size=0.02)
    model = LEBM(prior, LinearGenerator(a, b), GaussianLikelihood(s2))
    n = 20_000
    batch = x.reshape(1, 1, 1, 3).expand(n, 1, 1, 3)
    loss, info = lebm_loss(model, batch, n_steps=300, step_size=0.01, generator=torch.Generator())
    (grad,) = torch.autograd.grad(loss, prior.net.weight)
    # Posterior and prior chains each contribute a mean of n draws; ULA keeps Gaussian means.
    se = ((torch.linalg.inv(precision).diagonal() + 1.0) / n).sqrt()
    assert torch.all((grad[0] - want).abs() < 5 * se), (grad[0], want)
    assert torch.isfinite(info.log_lik).all()


def _cfg(**kw) -> TrainConfig:
    base = {
        "criterion": "lebm",
        "batch_size": 16,
        "max_steps": 8,
        "checkpoint_every": 4,
        "learning_rate": 1e-3,
        "prior_learning_rate": 2e-4,
        "langevin": {"n_steps": 5, "step_size": 0.01},
    }
    return from_dict(TrainConfig, {**base, **kw})


def test_training_resumes_to_identical_parameters_and_reloads(tmp_path: Path) -> None:
    images = tiny_images()
    full = train(build_lebm(TINY_LEBM), images, _cfg(), tmp_path / "a", progress=False)
    train(build_lebm(TINY_LEBM), images, _cfg(max_steps=4), tmp_path / "b", progress=False)
    resumed = train(build_lebm(TINY_LEBM), images, _cfg(), tmp_path / "b", progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    model = load_model(resumed.checkpoint)
    assert isinstance(model, LEBM)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key].cpu()), key
    images = model.generate(6, torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 8, 8) and torch.isfinite(images).all()
    # The energy learns at its own rate (Pang et al.: 2e-5 against 1e-4 for the generator).
    groups = read_checkpoint(resumed.checkpoint)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [2e-4, 1e-3]


def test_the_preset_is_pang_et_al_on_kaem_s_generator() -> None:
    cfg = preset("lebm_svhn")
    model = build(cfg["model"], cfg["train"]["criterion"])
    svhn = build(preset("svhn")["model"], "ula")
    assert isinstance(model, LEBM) and model.prior.n_steps == 60
    assert model.prior.step_size == pytest.approx(0.4**2 / 2)
    widths = [m.out_features for m in model.prior.net if isinstance(m, torch.nn.Linear)]
    assert widths == [200, 200, 1]
    # The same generator as the KAEM SVHN cells: a comparison changes the prior alone.
    shapes = [p.shape for p in model.generator.parameters()]
    assert shapes == [p.shape for p in svhn.generator.parameters()]
    train_cfg = from_dict(TrainConfig, cfg["train"])
    assert train_cfg.langevin.n_steps == 20
    assert train_cfg.langevin.step_size == pytest.approx(0.1**2 / 2)
    assert (train_cfg.learning_rate, train_cfg.prior_learning_rate) == (1e-4, 2e-5)


def test_a_criterion_of_another_kind_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match=r"train\.criterion 'importance' trains a KAEM.*lebm"):
        check_setup(build_lebm(TINY_LEBM), _cfg(criterion="importance"))
    with pytest.raises(ValueError, match=r"train\.langevin\.sampler 'mala'"):
        check_setup(build_lebm(TINY_LEBM), _cfg(langevin={"sampler": "mala"}))
    vae = build(preset("vae_svhn")["model"], "elbo")
    with pytest.raises(ValueError, match="prior_learning_rate"):
        check_setup(vae, _cfg(criterion="elbo"))


def test_generation_is_reproducible_with_a_seed() -> None:
    model = build_lebm(TINY_LEBM)
    a = model.generate(4, torch.Generator().manual_seed(3))
    b = model.generate(4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not np.allclose(a.numpy(), model.generate(4, torch.Generator().manual_seed(4)).numpy())


def test_the_command_line_draws_an_lebm_run_and_refuses_its_evidence(tmp_path, capsys) -> None:
    from kaem.cli import main
    from kaem.data import prepare_dataset

    data = prepare_dataset("tiny", tmp_path / "tiny.h5", n_train=64, n_test=8, progress=False)
    train(build_lebm(TINY_LEBM), tiny_images(), _cfg(max_steps=2), tmp_path / "run", progress=False)
    assert main(["figures", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "figures" / "samples.png").stat().st_size > 0
    assert not (tmp_path / "run" / "figures" / "prior_grid.png").exists()
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(data)]) == 1
    assert "intractable normaliser" in capsys.readouterr().err
