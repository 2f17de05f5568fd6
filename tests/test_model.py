"""Generators, likelihood, model assembly and configuration errors."""

import math

import pytest
import torch

from kaem.config import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from kaem.model import build_model
from kaem.model.generators import CNNGenerator, KANGenerator
from kaem.model.likelihood import GaussianLikelihood


@pytest.mark.parametrize(
    "shape,channels",
    [((3, 32, 32), (128, 64, 32)), ((3, 64, 64), (256, 128, 64, 32)), ((1, 16, 16), (8, 4))],
)
def test_cnn_generator_shapes_and_range(shape, channels) -> None:
    gen = CNNGenerator(81, shape, channels=channels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = gen(torch.randn(5, 81))
    assert x.shape == (5, *shape)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    # LeakyReLU really sits between the transposed convolutions (App. F.2).
    kinds = [type(m).__name__ for m in gen.net]
    assert kinds.count("LeakyReLU") == len(channels)
    assert kinds[-1] == "ConvTranspose2d"


def test_cnn_generator_rejects_mismatched_resolution() -> None:
    with pytest.raises(ValueError, match="makes 32x32 images"):
        CNNGenerator(81, (3, 64, 64), channels=(128, 64, 32))


def test_kan_generator_kart_widths_and_noise() -> None:
    gen = KANGenerator(81, (1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert gen.widths == (81, 162, 784)
    h = torch.randn(4, 81)
    clean = gen(h)
    torch.testing.assert_close(clean, gen(h))  # no noise: deterministic
    noisy = gen(h, noise_std=0.1, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(clean, noisy)
    # The noise enters before the sigmoid: logit differences have the noise's scale.
    diff = torch.logit(noisy.clamp(1e-6, 1 - 1e-6)) - torch.logit(clean.clamp(1e-6, 1 - 1e-6))
    assert float(diff.detach().std()) == pytest.approx(0.1, rel=0.1)
    with pytest.raises(ValueError, match=r"\(n, 81\)"):
        gen(torch.randn(4, 80))


def test_gaussian_likelihood_closed_form_and_pairs() -> None:
    lik = GaussianLikelihood(0.25)
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    y = torch.rand(5, 1, 2, 2, dtype=torch.float64)
    pairs = lik.pairwise_log_prob(x, y)
    manual = torch.stack(
        [
            torch.stack(
                [-((xb - ys) ** 2).sum() / 0.5 - 2 * math.log(2 * math.pi * 0.25) for ys in y]
            )
            for xb in x
        ]
    )
    torch.testing.assert_close(pairs, manual)
    torch.testing.assert_close(lik.log_prob(x, y[:3]), manual.diagonal())
    with pytest.raises(ValueError, match="positive"):
        GaussianLikelihood(0.0)


def test_model_generate_and_determinism() -> None:
    cfg = {"image_shape": [1, 8, 8], "prior": {"widths": [3, 4]}}
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    x = a.generate(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 8, 8) and not x.requires_grad
    mix = build_model(
        {
            **cfg,
            "prior": {
                "kind": "mixture",
                "widths": [3, 4],
                "basis": "morlet",
                "base_activation": "none",
            },
            "generator": {"kind": "cnn", "channels": [4]},
        }
    )
    assert mix.generate(2).shape == (2, 1, 8, 8)


def test_config_round_trip_and_errors() -> None:
    cfg = from_dict(ModelConfig, {"prior": {"kind": "mixture", "reference": {"name": "none"}}})
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"model\.prior\.grid_szie"):
        from_dict(ModelConfig, {"prior": {"grid_szie": 5}}, "model")
    with pytest.raises(ConfigError, match=r"prior\.widths.*2 values"):
        from_dict(ModelConfig, {"prior": {"widths": [1, 2, 3]}})
    with pytest.raises(ConfigError, match=r"batch_size: expected an integer"):
        from_dict(TrainConfig, {"batch_size": 10.5})
    with pytest.raises(ConfigError, match=r"'rbff' is not one of"):
        from_dict(ModelConfig, {"generator": {"basis": "rbff"}})
    with pytest.raises(ConfigError, match="expected true or false"):
        from_dict(TrainConfig, {"grid_update": {"enabled": "yes"}})
