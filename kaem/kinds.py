"""The kinds of model this package trains, as one explicit table.

A kind is a model class, the builder from its config mapping and the training criteria it
accepts. Checkpoints record their kind's name, so :func:`load_model` rebuilds any of them;
nothing is registered as a side effect of an import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from kaem.baselines.ddpm import DDPM, build_ddpm
from kaem.baselines.lebm import LEBM, build_lebm
from kaem.baselines.vae import VAE, build_vae
from kaem.config import ConfigError, DDPMConfig, LEBMConfig, ModelConfig, VAEConfig, from_dict
from kaem.io import check_finite_parameters, read_checkpoint
from kaem.model import KAEM, build_model

__all__ = ["MODEL_KINDS", "ModelKind", "build", "kind_of", "load_model"]


class ModelKind(NamedTuple):
    """One kind of model: its class, builder (``build(cfg, seed)``), criteria and the config
    dataclass of its ``model`` section."""

    name: str
    cls: type[nn.Module]
    build: Callable[..., nn.Module]
    criteria: tuple[str, ...]
    config: type


#: Every kind of model, by the name its checkpoints record.
MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("KAEM", KAEM, build_model, ("importance", "ula", "thermodynamic"), ModelConfig),
        ModelKind("VAE", VAE, build_vae, ("elbo",), VAEConfig),
        ModelKind("LEBM", LEBM, build_lebm, ("lebm",), LEBMConfig),
        ModelKind("DDPM", DDPM, build_ddpm, ("ddpm",), DDPMConfig),
    )
}


def kind_of(criterion: str) -> ModelKind:
    """The kind of model a training criterion trains."""
    for kind in MODEL_KINDS.values():
        if criterion in kind.criteria:
            return kind
    criteria = sorted(c for kind in MODEL_KINDS.values() for c in kind.criteria)
    raise ValueError(f"unknown training criterion {criterion!r}; choose one of {criteria}")


def build(model_cfg: Mapping[str, Any] | None, criterion: str, seed: int = 0) -> nn.Module:
    """The untrained model that ``criterion`` trains, from the ``model`` mapping of a config.

    Raises
    ------
    ConfigError
        For settings the criterion's kind does not take; when they are another kind's (a
        DDPM's settings with a KAEM criterion, say), the message names ``train.criterion``
        and the criteria that kind trains with.
    """
    kind = kind_of(criterion)
    try:
        return kind.build(model_cfg or {}, seed=seed)
    except ConfigError:
        owner = _kind_of_settings(model_cfg or {})
        if owner is None or owner is kind:
            raise
        raise ConfigError(
            f"train.criterion {criterion!r} trains a {kind.name}, but the model settings are a "
            f"{owner.name}'s; choose one of {list(owner.criteria)}"
        ) from None


def _kind_of_settings(model_cfg: Mapping[str, Any]) -> ModelKind | None:
    """The first kind whose config takes every key and value of ``model_cfg``, if any."""
    for kind in MODEL_KINDS.values():
        try:
            from_dict(kind.config, model_cfg, "model")
        except ConfigError:
            continue
        return kind
    return None


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """Rebuild a trained model, of any kind in :data:`MODEL_KINDS`, from its checkpoint.

    Parameters
    ----------
    path
        ``checkpoint.pt`` of a training run (:func:`kaem.train`).
    map_location
        Where to load the tensors.
    """
    state = read_checkpoint(path, map_location)
    name = state.get("model_kind", "KAEM")
    if state.get("model_config") is None:
        raise RuntimeError(f"checkpoint {path} holds no model configuration")
    if name not in MODEL_KINDS:
        raise RuntimeError(f"checkpoint {path} holds a {name!r}, which kaem cannot rebuild")
    model = MODEL_KINDS[name].build(state["model_config"])
    model.load_state_dict(state["model"])
    check_finite_parameters(model, f"checkpoint {path}")
    model.eval()
    return model
