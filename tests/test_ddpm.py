"""The DDPM baseline: its loss and sampler against Ho et al. (2020) and diffusers' pipelines,
training, resumption, and the settings it refuses."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_DDPM, tiny_images
from torch import nn

from kaem.baselines.ddpm import DDPM, build_ddpm, ddpm_loss
from kaem.config import ConfigError, DDPMConfig, TrainConfig, from_dict
from kaem.kinds import build, load_model
from kaem.presets import preset
from kaem.training import check_setup, train


def _betas(model: DDPM) -> torch.Tensor:
    """Ho et al.'s linear betas in float64, written out (not the library's)."""
    return torch.linspace(model.beta_start, model.beta_end, model.n_timesteps, dtype=torch.float64)


def test_the_loss_is_eq_14_written_out() -> None:
    model = build_ddpm(TINY_DDPM, seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 3, 7, 11, 15, 19])
    noise = torch.randn(x.shape, generator=g)
    loss, info = ddpm_loss(model, x, t=t, noise=noise)
    abar = torch.cumprod(1.0 - _betas(model), 0)[t].float().reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * (2 * x - 1) + (1 - abar).sqrt() * noise  # eq. 4, images on [-1, 1]
    want = (noise - model.denoiser.unet(x_t, t).sample).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(info.per_image, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, want.mean(), rtol=1e-5, atol=1e-6)


class _OptimalDenoiser(nn.Module):
    """``E[eps | x_t]`` for data ``x_0 ~ N(0, s^2 I)``: ``sqrt(1 - a) x_t / (a s^2 + 1 - a)``."""

    def __init__(self, alphas_cumprod: torch.Tensor, s2: float, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.double())
        self.s2, self.scale = s2, scale
        self.weight = nn.Parameter(torch.zeros(()))  # a DDPM has parameters

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t].reshape(-1, 1, 1, 1)
        return self.scale * (1 - a).sqrt() * x / (a * self.s2 + 1 - a)


def test_the_bayes_optimal_denoiser_attains_the_closed_form_loss() -> None:
    """For ``x_0 ~ N(0, s^2)`` the least expected loss at step ``t`` is ``a s^2 / (a s^2 +
    1 - a)`` with ``a = abar_t``; averaged over ``t`` uniform on the ``T`` steps. A loss that
    draws ``t``, maps the images or noises them wrongly misses it."""
    s2, n = 0.3, 40_000
    ref = build_ddpm({**TINY_DDPM, "n_timesteps": 10, "beta_end": 0.4})
    abar = torch.cumprod(1.0 - _betas(ref), 0)
    model = DDPM(_OptimalDenoiser(abar, s2), (1, 2, 2), n_timesteps=10, beta_end=0.4).double()
    g = torch.Generator().manual_seed(0)
    x = (s2**0.5 * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64) + 1) / 2
    loss, info = ddpm_loss(model, x, generator=g)
    want = float((abar * s2 / (abar * s2 + 1 - abar)).mean())
    se = float(info.per_image.std() / n**0.5)
    assert abs(float(loss) - want) < 4 * se, (float(loss), want, se)
    assert np.bincount(info.t.numpy(), minlength=10).min() > 0.09 * n  # t uniform on T steps
    # c times the optimum: E (eps - c m)^2 = L_t + (1 - c)^2 (1 - L_t), as E m^2 = 1 - L_t.
    worse = DDPM(_OptimalDenoiser(abar, s2, 1.5), (1, 2, 2), n_timesteps=10, beta_end=0.4)
    loss, info = ddpm_loss(worse.double(), x, generator=g)
    best = abar * s2 / (abar * s2 + 1 - abar)
    want = float((best + 0.25 * (1 - best)).mean())
    assert abs(float(loss) - want) < 4 * float(info.per_image.std() / n**0.5), (loss, want)


def _pipeline(model: DDPM, name: str, steps: int):
    from diffusers import DDIMPipeline, DDPMPipeline

    cls = DDPMPipeline if name == "ddpm" else DDIMPipeline
    return cls(unet=model.denoiser.unet, scheduler=model.scheduler(name, steps))


@pytest.mark.parametrize(("name", "steps"), [("ddpm", None), ("ddpm", 5), ("ddim", 5)])
def test_sampling_equals_the_librarys_pipeline_from_the_same_noise(name, steps) -> None:
    model = build_ddpm(TINY_DDPM, seed=2)
    ours = model.generate(3, torch.Generator().manual_seed(5), scheduler=name, steps=steps)
    pipe = _pipeline(model, name, steps or model.n_timesteps)
    kwargs = {"eta": 0.0} if name == "ddim" else {}
    theirs = pipe(
        batch_size=3,
        generator=torch.Generator().manual_seed(5),
        num_inference_steps=steps or model.n_timesteps,
        output_type="np",
        **kwargs,
    ).images
    assert ours.shape == (3, 1, 8, 8) and 0 <= ours.min() and ours.max() <= 1
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), theirs, rtol=0, atol=2e-6)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ancestral_sampling_is_algorithm_2_of_ho_et_al(variance) -> None:
    """Algorithm 2 in float64 from the same draws: ``x_T``, then one ``z`` per step but the
    last; ``sigma_t^2 = beta_t`` or ``beta~_t``; a single clamp at the end."""
    model = build_ddpm({**TINY_DDPM, "variance": variance}, seed=3).double()
    ours = model.generate(4, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    beta = _betas(model)
    alpha, abar = 1 - beta, torch.cumprod(1 - beta, 0)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    for t in reversed(range(model.n_timesteps)):
        eps = model.denoiser(x, torch.tensor(t))
        mean = (x - beta[t] / (1 - abar[t]).sqrt() * eps) / alpha[t].sqrt()
        if t > 0:
            var = beta[t]
            if variance == "fixed_small":
                var = (1 - abar[t - 1]) / (1 - abar[t]) * beta[t]
            x = mean + var.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
        else:
            x = mean
    want = (x.clamp(-1, 1) + 1) / 2
    # The library computes the betas in float32: agreement to its rounding, over 20 steps.
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


def _cfg(**kw) -> TrainConfig:
    base = {"criterion": "ddpm", "batch_size": 16, "max_steps": 8, "checkpoint_every": 4}
    return from_dict(TrainConfig, {**base, "learning_rate": 1e-3, **kw})


def test_training_lowers_the_loss_resumes_bit_for_bit_and_reloads(tmp_path: Path) -> None:
    images = tiny_images()
    full = train(build_ddpm(TINY_DDPM), images, _cfg(), tmp_path / "a", progress=False)
    train(build_ddpm(TINY_DDPM), images, _cfg(max_steps=4), tmp_path / "b", progress=False)
    resumed = train(build_ddpm(TINY_DDPM), images, _cfg(), tmp_path / "b", progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    model = load_model(resumed.checkpoint)
    assert isinstance(model, DDPM)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    a = model.generate(2, torch.Generator().manual_seed(0), scheduler="ddim", steps=4)
    b = resumed.model.generate(2, torch.Generator().manual_seed(0), scheduler="ddim", steps=4)
    assert torch.equal(a, b)
    # 60 updates on one image: the noise prediction learns (the loss of an untrained net ~1).
    one = images[:1].expand(64, -1, -1, -1).contiguous()
    run = train(
        build_ddpm(TINY_DDPM),
        one,
        _cfg(max_steps=60, learning_rate=3e-3, checkpoint_every=60),
        tmp_path / "c",
        progress=False,
    )
    import pandas as pd

    log = pd.read_csv(run.log)
    assert log["noise_mse"].iloc[-10:].mean() < 0.6 * log["noise_mse"].iloc[:10].mean()


def test_the_preset_is_the_authors_baseline_on_diffusers_blocks() -> None:
    cfg = preset("ddpm_svhn")
    model = build(cfg["model"], cfg["train"]["criterion"])
    assert isinstance(model, DDPM) and model.n_timesteps == 1000
    torch.testing.assert_close(
        model.alphas_cumprod.double(), torch.cumprod(1 - _betas(model), 0), rtol=1e-5, atol=0
    )
    unet = model.denoiser.unet
    assert tuple(unet.config.block_out_channels) == (32, 64, 128, 256)
    assert not any("attn" in name.lower() for name, _ in unet.named_modules())
    assert sum(p.numel() for p in model.parameters()) == 9_672_547
    sched = model.scheduler()
    assert len(sched.timesteps) == 1000 and sched.config.variance_type == "fixed_large"
    assert not sched.config.clip_sample and sched.config.prediction_type == "epsilon"
    train_cfg = from_dict(TrainConfig, cfg["train"])
    assert (train_cfg.learning_rate, train_cfg.batch_size, train_cfg.epochs) == (1e-4, 50, 100)
    # 28x28 digits: three levels, two halvings (28 -> 14 -> 7).
    nist = build(preset("ddpm_nist")["model"], "ddpm")
    assert nist.generate(1, torch.Generator(), scheduler="ddim", steps=1).shape == (1, 1, 28, 28)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"image_shape": [1, 28, 28], "channels": [8, 16, 32, 64]}, r"model\.channels: .*by 8"),
        ({"norm_groups": 3}, r"model\.norm_groups: .*\[8, 16\]"),
        ({"beta_start": 0.3}, r"model\.beta_start: 0.3 exceeds model\.beta_end 0.2"),
        ({"activation": "swishy"}, r"model\.activation: 'swishy' is not one of"),
        ({"beta_schedule": "cosine"}, r"model\.beta_schedule: 'cosine' is not one of"),
        ({"variance": "learned"}, r"model\.variance: 'learned' is not one of"),
    ],
)
def test_settings_the_unet_cannot_take_are_one_line_naming_the_key(override, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build({**TINY_DDPM, **override}, "ddpm")
    assert "\n" not in str(err.value)


def test_a_kaem_criterion_or_an_unknown_scheduler_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.criterion 'ula' trains a KAEM.*'ddpm'"):
        build(TINY_DDPM, "ula")
    with pytest.raises(ValueError, match=r"train\.criterion 'importance' trains a KAEM"):
        check_setup(build_ddpm(TINY_DDPM), _cfg(criterion="importance"))
    model = build_ddpm(TINY_DDPM)
    with pytest.raises(ValueError, match=r"unknown DDPM scheduler 'euler'"):
        model.generate(1, scheduler="euler")
    with pytest.raises(ValueError, match=r"1 to T = 20 steps, got 21"):
        model.generate(1, scheduler="ddim", steps=21)
    with pytest.raises(ValueError, match="prior_learning_rate"):
        check_setup(model, _cfg(prior_learning_rate=1e-5))


def test_importing_kaem_leaves_diffusers_and_the_environment_alone() -> None:
    code = (
        "import os, sys; before = dict(os.environ); import kaem, kaem.kinds, kaem.training; "
        "assert 'diffusers' not in sys.modules; from kaem.baselines.ddpm import build_ddpm; "
        f"build_ddpm({TINY_DDPM!r}); assert 'diffusers' in sys.modules; "
        "assert dict(os.environ) == before, set(os.environ) ^ set(before)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_command_line_trains_draws_and_refuses_the_evidence_of_a_ddpm(tmp_path, capsys) -> None:
    from kaem.cli import main
    from kaem.data import prepare_dataset

    data = prepare_dataset("tiny", tmp_path / "tiny.h5", n_train=64, n_test=8, progress=False)
    run = tmp_path / "run"
    sets = [f"model.{k}={v}" for k, v in TINY_DDPM.items() if k != "image_shape"]
    args = ["train", "--preset", "ddpm_svhn", "--data", str(data), "--out", str(run)]
    args += ["--set", "model.image_shape=[1, 8, 8]", "--set", "train.max_steps=2"]
    args += ["--set", "train.batch_size=16", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["figures", str(run)]) == 0
    assert (run / "figures" / "samples.png").stat().st_size > 0
    capsys.readouterr()
    out = tmp_path / "evidence.json"
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a DDPM has neither" in err and "eq. 5" in err
    assert not out.exists()
    # A KAEM criterion on a DDPM preset: one line naming train.criterion, nothing written.
    again = tmp_path / "again"
    bad = ["train", "--preset", "ddpm_svhn", "--data", str(data), "--out", str(again)]
    assert main([*bad, "--set", "train.criterion=ula"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.criterion 'ula' trains a KAEM" in err
    assert not again.exists()
    assert os.path.exists(run / "checkpoint.pt")


def test_the_config_names_are_the_librarys() -> None:
    import typing

    from diffusers.models.activations import ACT2CLS

    hints = typing.get_type_hints(DDPMConfig)
    assert set(typing.get_args(hints["activation"])) <= set(ACT2CLS)
