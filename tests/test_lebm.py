"""Pang et al.'s latent EBM: its samplers and learning gradient against closed forms, training."""

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_LEBM, LinearGenerator, tiny_images
from scipy import stats

from kaem.baselines.lebm import LEBM, LatentEBMPrior, build_lebm, lebm_loss
from kaem.config import TrainConfig, from_dict
from kaem.io import read_checkpoint
from kaem.kinds import build, load_model
from kaem.model.likelihood import GaussianLikelihood
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


def test_the_preset_is_pang_et_al_s_operating_point_on_kaem_s_generator() -> None:
    cfg = preset("lebm_svhn")
    model = build(cfg["model"], cfg["train"]["criterion"])
    svhn = build(preset("svhn")["model"], "ula")
    assert isinstance(model, LEBM) and model.prior.n_steps == 60
    assert model.prior.step_size == pytest.approx(0.4**2 / 2)
    layers = list(model.prior.net)
    widths = [m.out_features for m in layers if isinstance(m, torch.nn.Linear)]
    assert widths == [200, 200, 1]
    # train_svhn.py's main() trains a GELU energy (its parser's default --e_activation).
    assert [type(m) for m in layers[1::2]] == [torch.nn.GELU, torch.nn.GELU]
    # Their likelihood: sigma = 0.3 on images in [-1, 1] is variance 0.3^2 / 4 on [0, 1].
    assert model.likelihood.variance == pytest.approx(0.3**2 / 4)
    # The same generator as the KAEM SVHN cells: a comparison changes the prior alone.
    shapes = [p.shape for p in model.generator.parameters()]
    assert shapes == [p.shape for p in svhn.generator.parameters()]
    train_cfg = from_dict(TrainConfig, cfg["train"])
    assert train_cfg.langevin.n_steps == 20
    assert train_cfg.langevin.step_size == pytest.approx(0.1**2 / 2)
    assert (train_cfg.learning_rate, train_cfg.prior_learning_rate) == (1e-4, 2e-5)
    assert (train_cfg.betas, train_cfg.batch_size, train_cfg.epochs) == ((0.5, 0.999), 100, 201)
    assert (train_cfg.lr_decay, train_cfg.lr_decay_lag) == (0.998, 1)


def test_the_lr_schedule_is_pang_et_al_s_exponential_lr_stepped_with_the_epoch(tmp_path) -> None:
    """Their loop calls ``ExponentialLR.step(epoch=epoch)`` after each epoch; ours, with a lag
    of 1, gives every epoch the rate theirs trains it at."""
    images = tiny_images()  # 64 images in batches of 16: four updates an epoch
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    cfg = _cfg(max_steps=16, lr_decay=0.5, lr_decay_lag=1, checkpoint_every=16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", step)
        train(build_lebm(TINY_LEBM), images, cfg, tmp_path, progress=False)
    energy = torch.nn.Parameter(torch.zeros(1))
    generator = torch.nn.Parameter(torch.zeros(1))
    opt_e = torch.optim.Adam([energy], lr=2e-4)
    opt_g = torch.optim.Adam([generator], lr=1e-3)
    sched_e = torch.optim.lr_scheduler.ExponentialLR(opt_e, 0.5)
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, 0.5)
    theirs = []
    for epoch in range(4):
        theirs += [[opt_e.param_groups[0]["lr"], opt_g.param_groups[0]["lr"]]] * 4
        with pytest.warns(UserWarning):  # the epoch argument is deprecated, but theirs
            sched_e.step(epoch=epoch)
            sched_g.step(epoch=epoch)
    np.testing.assert_allclose(seen, theirs, rtol=1e-12)
    assert theirs[4] == theirs[0] and theirs[8][0] == pytest.approx(1e-4)


def test_the_energy_activation_is_a_setting_and_an_unknown_one_is_named() -> None:
    import typing

    from kaem.baselines.lebm import ENERGY_ACTIVATIONS, energy_mlp
    from kaem.config import ConfigError, EnergyActivationName, LEBMConfig

    assert sorted(typing.get_args(EnergyActivationName)) == sorted(ENERGY_ACTIVATIONS)
    model = build_lebm({**TINY_LEBM, "energy_activation": "leaky_relu", "energy_slope": 0.1})
    assert [m.negative_slope for m in model.prior.net[1::2]] == [0.1]
    with pytest.raises(ConfigError, match=r"^model\.energy_activation: 'lrelu' is not one of"):
        build_lebm({**TINY_LEBM, "energy_activation": "lrelu"})
    with pytest.raises(ValueError, match="unknown energy activation 'tanh'"):
        energy_mlp(4, (8,), "tanh")
    assert LEBMConfig().energy_activation == "gelu"


def test_pang_et_al_s_posterior_steps_need_their_likelihood() -> None:
    """Why the LEBM cells keep Pang et al.'s variance 0.0225: their posterior chain (20 steps
    of eta = 0.005 from the base) was tuned for it. On a linear generator ``x = A z`` with a
    flat energy, the chains' mean squared distance to the true latent, and the images'
    reconstruction error, are far smaller at 0.0225 than at KAEM's 0.25."""
    g = torch.Generator().manual_seed(0)
    q, d, n = 16, 3 * 8 * 8, 2000
    a = torch.randn(d, q, generator=g) * (2.0 / d) ** 0.5  # A^T A ~ 2 I, an image's scale
    z_true = torch.randn(n, q, generator=g)
    x = (z_true @ a.T).reshape(n, 3, 8, 8)
    results = {}
    for variance in (0.0225, 0.25):
        energy = torch.nn.Linear(q, 1)
        torch.nn.init.zeros_(energy.weight)
        torch.nn.init.zeros_(energy.bias)
        prior = LatentEBMPrior(energy, q)
        gen = LinearGenerator(a, torch.zeros(d))
        gen.image_shape = (3, 8, 8)
        model = LEBM(prior, gen, GaussianLikelihood(variance))
        z = model.sample_posterior(x, n_steps=20, step_size=0.005, generator=g)
        distance = (z - z_true).square().sum(-1).mean().sqrt()
        with torch.no_grad():
            mse = (model.decode(z) - x).square().mean()
        results[variance] = (float(distance), float(mse))
    (d_pang, mse_pang), (d_kaem, mse_kaem) = results[0.0225], results[0.25]
    assert d_pang < 0.5 * d_kaem and mse_pang < 0.25 * mse_kaem, results


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
