"""The paper's settings (Tables 4-5, App. F-H) as config mappings.

Each preset is a mapping with ``model`` and ``train`` sections, in the format of
:class:`kaem.config.ModelConfig` and :class:`kaem.config.TrainConfig`. Configs (and the
workflow's cells) start from a preset and override what they change, so every paper number
lives here once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["PRESETS", "merge", "preset"]

_NIST: dict[str, Any] = {
    "model": {
        "image_shape": [1, 28, 28],
        "prior": {
            "kind": "univariate",
            "widths": [40, 81],
            "basis": "rbf",
            "grid_size": 20,
            "base_activation": "relu",
            "reference": {"name": "gaussian"},
            "n_nodes": 200,
        },
        "generator": {
            "kind": "kan",
            "hidden_widths": [162],
            "basis": "rbf",
            "grid_size": 20,
            "base_activation": "relu",
            "noise": 0.1,
        },
        "likelihood_variance": 0.1,
    },
    "train": {
        "criterion": "importance",
        "epochs": 10,
        "batch_size": 100,
        "learning_rate": 1e-3,
        "importance_samples": 100,
        "resampler": "residual",
        "ess_threshold": 0.5,
        "grid_update": {"enabled": True, "samples": 100, "frequency": 100, "decay": 0.999},
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    # MNIST and Fashion-MNIST, section 4.2 and Table 4: IS training, KAN generator.
    "nist": _NIST,
}


def merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``: mappings merge, other values replace."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset(name: str, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy of preset ``name`` with ``override`` deep-merged in."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return merge(PRESETS[name], override)
