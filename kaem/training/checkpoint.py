"""The state a run needs to continue, saved atomically and restored with its checks.

A resumed run must continue the run it resumes: the same model and training settings (but
:data:`kaem.config.RESUMABLE_KEYS`), the same training data (:func:`data_record`: shape and
content hash), and no fewer steps than it has already done.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kaem.config import RESUMABLE_KEYS, to_dict
from kaem.io import (
    atomic_torch_save,
    check_finite_parameters,
    check_finite_tensors,
    read_checkpoint,
)
from kaem.training.grids import GridUpdates
from kaem.version import __version__

__all__ = ["Checkpoint", "ResumeError", "check_resume", "check_steps", "data_record"]


class ResumeError(ValueError):
    """A run folder's checkpoint cannot be continued as asked: other settings or data, or
    fewer steps than it has already done."""


def data_record(
    images: torch.Tensor | np.ndarray, path: str | os.PathLike | None = None
) -> dict[str, Any]:
    """What a run was trained on: ``path`` (if any), shape, dtype and SHA-256 of the bytes.

    The hash covers the images in order, with their shape and dtype; hashing the 225 MB of
    SVHN's training images takes about 0.25 s on one core, once per call of :func:`kaem.train`.
    """
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return {
        "path": None if path is None else os.path.abspath(path),
        "shape": [int(n) for n in array.shape],
        "dtype": str(array.dtype),
        "sha256": digest.hexdigest(),
    }


def _describe(record: Mapping[str, Any]) -> str:
    where = record.get("path") or "images given in memory"
    shape = tuple(record["shape"])
    return f"{where} ({shape[0]} images of {shape[1:]}, sha256 {record['sha256'][:12]})"


def _refuse_other_data(path: Path, saved: Mapping[str, Any] | None, current: Any) -> None:
    if saved is None or current is None:  # a checkpoint from before data was recorded
        return
    if saved["sha256"] != current["sha256"] or list(saved["shape"]) != list(current["shape"]):
        raise ResumeError(
            f"{path} was trained on {_describe(saved)}, not on {_describe(current)}; resume "
            "it on the data it was trained on, or train in a new folder"
        )


def check_steps(path: Path, step: int, total: int, train_config: Mapping[str, Any]) -> None:
    """Refuse to resume the checkpoint at ``path``, already at ``step``, for ``total`` steps.

    A run asked for fewer steps than it has done would train nothing and still report the
    smaller number; it is an error naming both.

    Raises
    ------
    ResumeError
        If ``total < step``.
    """
    if total >= step:
        return
    max_steps = train_config.get("max_steps")
    asked = (
        f"train.max_steps={max_steps}"
        if max_steps is not None
        else f"train.epochs={train_config.get('epochs')} ({total} steps)"
    )
    raise ResumeError(
        f"{asked} asks for fewer steps than the {step} that {path} has already done; ask for "
        f"at least {step}, or train in a new folder"
    )


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
    path: Path,
    train_config: dict[str, Any],
    model_config: dict[str, Any] | None,
    *,
    data: Mapping[str, Any] | None = None,
    total: int | None = None,
) -> int | None:
    """The step that the checkpoint at ``path`` resumes from, or None if there is none.

    Parameters
    ----------
    path
        ``checkpoint.pt`` of a run folder (it need not exist).
    train_config, model_config
        The settings of the run about to start, as plain dicts.
    data
        Its training data (:func:`data_record`), or None not to check.
    total
        The steps it will train to, or None not to check.

    Raises
    ------
    ResumeError
        If the checkpoint was written with other model settings, or with other training
        settings outside :data:`kaem.config.RESUMABLE_KEYS` (naming each that differs), on
        other data (naming both), or is past ``total`` steps (:func:`check_steps`).
    FloatingPointError
        If the checkpoint's model holds NaN.
    """
    if not path.exists():
        return None
    state = read_checkpoint(path, map_location="cpu")
    _refuse_changes(path, state, train_config, model_config)
    _refuse_other_data(path, state.get("data"), data)
    # The saved state does not say which tensors are buffers, where an infinity may be
    # legitimate: NaN is refused here, an infinite parameter when the run restores it.
    check_finite_tensors(state["model"], f"checkpoint {path}", infinity_allowed=state["model"])
    step = int(state["step"])
    if total is not None:
        check_steps(path, step, total, train_config)
    return step


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
    data
        The training data (:func:`data_record`); a resumed run must have the same.
    """

    def __init__(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: torch.Generator,
        grids: GridUpdates | None,
        train_config: dict[str, Any],
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.model, self.optimizer, self.rng, self.grids = model, optimizer, rng, grids
        self.train_config = train_config
        self.data = None if data is None else dict(data)

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
        _refuse_other_data(self.path, state.get("data"), self.data)
        self.model.load_state_dict(state["model"])
        check_finite_parameters(self.model, f"checkpoint {self.path}")
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

    def snapshot(self, path: Path, step: int, elapsed: float) -> None:
        """Write the model alone after ``step`` updates and ``elapsed`` training seconds, as a
        file :func:`kaem.load_model` reads (no optimiser or random state: it resumes nothing)."""
        state = {k: v for k, v in self._state(step, elapsed).items() if k not in _RUN_STATE}
        try:
            atomic_torch_save(state, path)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot write the snapshot {path}: {exc.strerror or exc}"
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
            "data": self.data,
            "model_kind": type(self.model).__name__,
            "model_config": _model_config(self.model),
            "kaem_version": __version__,
        }


#: What only a resumed run needs, left out of a snapshot.
_RUN_STATE = ("optimizer", "rng", "device_type", "grid_schedule")


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
