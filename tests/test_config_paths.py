"""Config options whose code paths the other tests do not already exercise."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL, tiny_images
from scipy import stats

from kaem.config import ConfigError, TrainConfig, from_dict
from kaem.model import build_model
from kaem.training import train

TINY = TINY_MODEL
_images = tiny_images


def test_fixed_bandwidth_and_scales() -> None:
    model = build_model(
        {**TINY, "prior": {**TINY["prior"], "trainable_tau": False, "base_scale": 0.0, "tau": 0.5}}
    )
    names = dict(model.prior.named_parameters())
    assert "kan.basis.tau" not in names and float(model.prior.kan.basis.tau) == 0.5
    assert float(model.prior.kan.w_base.detach().abs().max()) == 0.0  # base_scale 0
    morlet = build_model({**TINY, "prior": {**TINY["prior"], "basis": "morlet", "omega": 3.0}})
    assert morlet.prior.kan.basis.omega == 3.0


def test_reference_location_and_scale() -> None:
    cfg = {
        **TINY,
        "prior": {
            **TINY["prior"],
            "coef_init_scale": 0.0,
            "base_activation": "none",
            "reference": {"name": "gaussian", "domain": [-3.0, 4.0], "loc": 0.5, "scale": 0.7},
        },
    }
    prior = build_model(cfg).prior
    z = prior.sample(20_000, torch.Generator().manual_seed(0))[:, 0, 0].numpy()
    # Zero energy: the truncated N(0.5, 0.7^2) on [-3, 4].
    a, b = (-3.0 - 0.5) / 0.7, (4.0 - 0.5) / 0.7
    assert stats.kstest(z, stats.truncnorm(a, b, loc=0.5, scale=0.7).cdf).pvalue > 1e-4


def test_compiled_sampling_option_and_the_removed_table_settings() -> None:
    compiled = build_model({**TINY, "prior": {**TINY["prior"], "sampling": "compiled"}}).prior
    searched = build_model(TINY).prior
    assert compiled.sampling == "compiled" and searched.sampling == "search"
    torch.testing.assert_close(
        compiled.sample(500, torch.Generator().manual_seed(1)),
        searched.sample(500, torch.Generator().manual_seed(1)),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ConfigError, match=r"model\.prior\.table_points was removed"):
        build_model({**TINY, "prior": {**TINY["prior"], "table_points": 64}})
    with pytest.raises(ConfigError, match=r"model.prior.sampling: 'table' is not one of"):
        build_model({**TINY, "prior": {**TINY["prior"], "sampling": "table"}})


@pytest.mark.parametrize("basis", ["bspline", "chebyshev"])
def test_generator_variants(basis: str) -> None:
    grid = basis == "bspline"
    model = build_model(
        {
            **TINY,
            "generator": {
                "hidden_widths": [10, 12],
                "basis": basis,
                "layer_norm": True,
                "output_activation": "tanh",
                "grid_size": 4,
            },
        }
    )
    layers = model.generator.layers
    assert [type(l.norm).__name__ for l in layers] == ["LayerNorm", "LayerNorm", "NoneType"]
    x = model.generate(5)
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.min()) < 0
    assert layers[0].basis.supports_grid_update == grid


def test_epochs_log_every_swap_every_and_prior_only_grid_updates(tmp_path: Path) -> None:
    cfg = from_dict(
        TrainConfig,
        {
            "criterion": "thermodynamic",
            "epochs": 0.5,
            "batch_size": 16,
            "log_every": 3,
            "langevin": {"n_steps": 4, "step_size": 0.01},
            "thermodynamic": {"n_temps": 3, "swap_every": 2},
            "grid_update": {"generator": False, "frequency": 2, "samples": 16},
        },
    )
    model = build_model({**TINY, "prior": {**TINY["prior"], "shared_uniforms": False}})
    grids = [layer.basis.grid.clone() for layer in model.generator.layers]
    prior_grid = model.prior.kan.basis.grid.clone()
    result = train(model, _images(), cfg, tmp_path, progress=False)
    assert result.steps == 2  # half of the 4 updates of an epoch of 64 images
    log = pd.read_csv(result.log)
    assert list(log["step"]) == [2]  # every third step, and the last
    assert np.isfinite(log["loss"]).all()
    assert not torch.equal(prior_grid, model.prior.kan.basis.grid)
    assert all(
        torch.equal(a, layer.basis.grid)
        for a, layer in zip(grids, model.generator.layers, strict=True)
    )
