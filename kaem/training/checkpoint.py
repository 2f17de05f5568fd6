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

__all__ = ["Checkpoint"]


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
        device, while Adam's step counters stay on the host, where foreach Adam reads them
        without a device synchronisation.
        """
        if not self.path.exists():
            return 0, 0.0
        state = read_checkpoint(self.path, map_location="cpu")
        self._check_resumable(state["train_config"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
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
        atomic_torch_save(
            {
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
            },
            self.path,
        )

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        current = self.train_config
        diff = sorted(
            k
            for k in set(saved) | set(current)
            if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k)
        )
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
            raise ValueError(
                f"the checkpoint in {self.path.parent} was written with different training "
                f"settings ({detail}); use a new folder or restore the settings"
            )


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    return to_dict(model.config) if hasattr(model, "config") else None
