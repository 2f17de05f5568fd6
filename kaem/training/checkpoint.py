"""The state a run needs to continue, saved atomically and restored with its checks."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kaem import __version__
from kaem.config import RESUMABLE_KEYS, to_dict
from kaem.io import atomic_torch_save, read_checkpoint
from kaem.training.grids import GridUpdates

__all__ = ["Checkpoint", "ResumeError", "check_resume"]


class ResumeError(ValueError):
    """A run folder's checkpoint was written with settings that a resumed run may not change."""


def _differences(saved: Any, current: Any, key: str = "") -> list[str]:
    """``key: saved -> current`` for every (dotted) setting whose value differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        names = sorted(set(saved) | set(current))
        return [
            line
            for name in names
            for line in _differences(
                saved.get(name), current.get(name), f"{key}.{name}" if key else name
            )
        ]
    return [] if saved == current else [f"{key}: {saved!r} -> {current!r}"]


def check_resume(
    path: Path, train_config: dict[str, Any], model_config: dict[str, Any] | None
) -> int | None:
    """The step that the checkpoint at ``path`` resumes from, or None if there is none.

    Raises
    ------
    ResumeError
        If the checkpoint was written with other model settings, or with other training
        settings outside :data:`kaem.config.RESUMABLE_KEYS`, naming each that differs.
    """
    if not path.exists():
        return None
    state = read_checkpoint(path, map_location="cpu")
    _refuse_changes(path, state, train_config, model_config)
    return int(state["step"])


def _refuse_changes(
    path: Path, state: dict[str, Any], train_config: dict[str, Any], model_config: Any
) -> None:
    saved_train = {k: v for k, v in state["train_config"].items() if k not in RESUMABLE_KEYS}
    current = {k: v for k, v in train_config.items() if k not in RESUMABLE_KEYS}
    changed = [f"train.{line}" for line in _differences(saved_train, current)]
    if state.get("model_config") is not None and model_config is not None:
        changed += [f"model.{line}" for line in _differences(state["model_config"], model_config)]
    if changed:
        raise ResumeError(
            f"the checkpoint in {path.parent} was written with different settings "
            f"({'; '.join(changed)}); use a new folder or restore the settings"
        )


class Checkpoint:
    """``checkpoint.pt``: model, optimiser, step, random-generator state and grid schedule.

    Parameters
    ----------
    path
        The file; replaced atomically by every :meth:`save`.
    model, optimizer, rng, grids
        The objects whose state is saved and restored in place.
    train_config
        The training settings as a plain dict; a resumed run may differ from them only in
        :data:`kaem.config.RESUMABLE_KEYS`.
    """

    def __init__(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: torch.Generator,
        grids: GridUpdates | None,
        train_config: dict[str, Any],
    ) -> None:
        self.path = path
        self.model, self.optimizer, self.rng, self.grids = model, optimizer, rng, grids
        self.train_config = train_config

    def restore(self) -> tuple[int, float]:
        """Load the saved state if there is one; returns ``(step, elapsed seconds)``.

        Tensors are read onto the CPU: the model and Adam copy theirs to the parameters'
        device. The optimiser keeps its own implementation (fused or foreach), not the saved
        one: fused Adam then moves its step counters to the parameters' device, while foreach
        Adam keeps them on the host; either reads them without a device synchronisation.
        """
        if not self.path.exists():
            return 0, 0.0
        state = read_checkpoint(self.path, map_location="cpu")
        _refuse_changes(self.path, state, self.train_config, _model_config(self.model))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(_same_implementation(state["optimizer"], self.optimizer))
        saved_device = state.get("device_type", "cpu")
        if saved_device == self.rng.device.type:
            self.rng.set_state(state["rng"])
        else:  # the generators of two device types have different states
            seed = self.rng.initial_seed() + int(state["step"])
            self.rng.manual_seed(seed)
            warnings.warn(
                f"{self.path} was written on a {saved_device} device and resumes on "
                f"{self.rng.device.type}: its random stream continues from a fresh seed, so "
                "the run will not repeat an uninterrupted one exactly",
                stacklevel=2,
            )
        if self.grids is not None and state.get("grid_schedule"):
            self.grids.load_state_dict(state["grid_schedule"])
        return int(state["step"]), float(state["elapsed"])

    def save(self, step: int, elapsed: float) -> None:
        """Write the state after ``step`` updates, atomically; an OSError names the file."""
        try:
            atomic_torch_save(self._state(step, elapsed), self.path)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot write the checkpoint {self.path}: {exc.strerror or exc}"
            ) from exc

    def _state(self, step: int, elapsed: float) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "device_type": self.rng.device.type,
            "grid_schedule": None if self.grids is None else self.grids.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "train_config": self.train_config,
            "model_kind": type(self.model).__name__,
            "model_config": _model_config(self.model),
            "kaem_version": __version__,
        }


def _same_implementation(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved`` (an optimiser's state dict) with ``optimizer``'s implementation flags, which
    ``load_state_dict`` would otherwise take from the checkpoint."""
    current = optimizer.param_groups
    groups = [
        {**old, **{k: current[i][k] for k in ("fused", "foreach") if k in current[i]}}
        if i < len(current)
        else old  # load_state_dict refuses a different number of groups
        for i, old in enumerate(saved["param_groups"])
    ]
    return {**saved, "param_groups": groups}


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    return to_dict(model.config) if hasattr(model, "config") else None
