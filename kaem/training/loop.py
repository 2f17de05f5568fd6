"""The training loop: Adam, seeds, progress bar, CSV log, grid updates, atomic checkpoints.

A run writes these files into its folder:

* ``checkpoint.pt``: everything needed to continue (model, optimiser, step, random-generator
  state, grid-update schedule, the training data's record), replaced atomically every
  ``checkpoint_every`` steps and at the end (:class:`~kaem.training.checkpoint.Checkpoint`);
* ``log.csv``: one row per logged step (loss, criterion diagnostics, seconds, grid updates;
  :class:`~kaem.training.log.CSVLog`);
* ``config.yaml``: the resolved settings, ``model`` (every field of the model's config) and
  ``train``, written once every check of a resumed run has passed;
* ``data.json``: the training data it was trained on, path, shape and SHA-256
  (:func:`~kaem.training.checkpoint.data_record`); a resume on other data is refused;
* ``.lock``: held while a process trains in the folder (:func:`kaem.io.folder_lock`), so a
  second one is refused instead of both writing the same files.

The loop does not wait for the device between those writes: losses, metrics and the checks
for non-finite values stay on the device until a log row, a checkpoint or a grid update
needs them (:class:`~kaem.training.updates.Updates`), and a failed update is skipped on the
device and reported then, naming its step. The ``seconds`` of a row are the host's time for
its step.

A run killed at any moment restarts from its last checkpoint when called again with the same
folder; rows logged after that checkpoint are dropped and recomputed, so the log and the
parameters of a resumed run match those of an uninterrupted run with the same seed (on a CPU,
where PyTorch is deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from kaem.config import TrainConfig, to_dict
from kaem.inference.posterior import check_langevin_prior
from kaem.io import atomic_write_text, folder_lock
from kaem.kinds import MODEL_KINDS, kind_of
from kaem.model.prior import QUADRATURE_TOLERANCE, EnergyPrior, QuadratureWarning
from kaem.training.checkpoint import Checkpoint, check_steps, data_record
from kaem.training.grids import GridUpdates
from kaem.training.log import CSVLog
from kaem.training.steps import Progress, StepFn, build_step
from kaem.training.updates import NonFiniteLossError, Updates, adam

__all__ = [
    "EpochBatches",
    "NonFiniteLossError",
    "TrainResult",
    "check_setup",
    "compile_model",
    "planned_steps",
    "resolve_device",
    "snapshot_name",
    "train",
]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` names, checked to exist here; ``auto`` (or None) is CUDA when this
    process sees a GPU, else the CPU.

    Raises
    ------
    ValueError
        A name that is not a device, or a device this machine does not have.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {str(name)!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(name)!r} was asked for, but this machine has no GPU")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {str(name)!r} was asked for, but this machine has {count} GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} was asked for, but MPS is not available here")
    return device


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced: the model, its updates and training seconds, its files
    (``snapshots``: training seconds -> file, see ``train.snapshot_seconds``)."""

    model: nn.Module
    steps: int
    checkpoint: Path
    log: Path
    seconds: float = 0.0
    snapshots: dict[float, Path] = dataclasses.field(default_factory=dict)


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


class EpochBatches:
    """Mini-batches of shuffled epochs; each epoch's order is a pure function of the seed.

    A resumed run therefore needs no state to continue the same sequence of batches. The
    permutation is drawn once per epoch, on the host (so it is the same on every device),
    and moved to the images' device; the ``n % batch_size`` images left over at the end of
    an epoch are skipped in that epoch.
    """

    def __init__(self, images: Tensor, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(images) < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} training images")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.per_epoch = len(images) // batch_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    def order(self, epoch: int) -> Tensor:
        """The permutation of epoch ``epoch``, shape ``(N,)``."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_seed(self.seed, 1, epoch))
            order = torch.randperm(len(self.images), generator=g)
            self._epoch, self._order = epoch, order.to(self.images.device)
        return self._order

    def batch(self, step: int, device: torch.device) -> tuple[int, Tensor]:
        """``(epoch, images)`` of the batch after ``step`` updates, floats in ``[0, 1]``."""
        epoch, pos = divmod(step, self.per_epoch)
        index = self.order(epoch)[pos * self.batch_size : (pos + 1) * self.batch_size]
        x = self.images[index].to(device, non_blocking=True)
        return epoch, x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _training_images(model: nn.Module, images: Any) -> Tensor:
    """``images`` as a tensor, after every check that can fail before any work."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise TypeError(
            f"training data must be a tensor or numpy array, got {type(images).__name__}"
        )
    shape = tuple(getattr(model, "image_shape", images.shape[1:]))
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"training images must have shape (N, {', '.join(map(str, shape))}) for this model, "
            f"got {tuple(images.shape)}"
        )
    return images


#: Training sets up to this size are kept on an accelerator for the whole run (SVHN as uint8:
#: 61 MB, CelebA at 64x64: 492 MB); larger ones stay on the host, in pinned memory.
DEVICE_DATA_BYTES = 4 * 2**30


def _images_for(images: Tensor, device: torch.device) -> Tensor:
    """The training images where batches are cut from them without a pageable host copy:
    on an accelerator when they fit (:data:`DEVICE_DATA_BYTES`), else pinned host memory."""
    if device.type == "cpu":
        return images
    if images.element_size() * images.nelement() <= DEVICE_DATA_BYTES:
        return images.to(device)
    return images.pin_memory() if device.type == "cuda" else images


def compile_model(model: nn.Module, **options: Any) -> list[str]:
    """Compile, in place, the part of ``model`` that every criterion runs most: the generator
    (the VAE's decoder), with ``torch.compile`` ``options``; its parameters and state dict
    are unchanged. Returns the names of the compiled submodules."""
    names = [
        name
        for name in ("generator", "decoder")
        if isinstance(getattr(model, name, None), nn.Module)
    ]
    for name in names:
        getattr(model, name).compile(**options)
    return names


def _lr_schedule(
    optimizer: torch.optim.Optimizer, decay: float, lag: int = 0
) -> Callable[[int], None]:
    """Pang et al.'s schedule: in epoch ``e`` (from 0) every group learns at its configured
    rate times ``decay ** max(0, e - lag)`` (their scripts: 0.998 with a lag of 1). It is a
    function of the epoch alone, so a resumed run needs no state for it; call this before a
    checkpoint restores the optimiser's decayed rates."""
    base = [group["lr"] for group in optimizer.param_groups]

    def set_epoch(epoch: int) -> None:
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * decay ** max(0, epoch - lag)

    return set_epoch


def _parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One Adam group, or the prior's parameters at ``cfg.prior_learning_rate`` and the rest."""
    if cfg.prior_learning_rate is None:
        return [{"params": list(model.parameters())}]
    prior = getattr(model, "prior", None)
    if not isinstance(prior, nn.Module):
        raise ValueError(
            f"train.prior_learning_rate is set, but a {type(model).__name__} has no prior with "
            "parameters of its own; remove the setting"
        )
    own = {id(p) for p in prior.parameters()}
    rest = [p for p in model.parameters() if id(p) not in own]
    return [{"params": list(prior.parameters()), "lr": cfg.prior_learning_rate}, {"params": rest}]


def _criteria_of(model: nn.Module) -> tuple[str, ...]:
    return next((k.criteria for k in MODEL_KINDS.values() if isinstance(model, k.cls)), ())


def check_setup(model: nn.Module, cfg: TrainConfig) -> tuple[StepFn, GridUpdates | None]:
    """The checks of :func:`train` that need no data, for a caller to run before any work:
    the criterion exists and suits the model's prior, and its grids can follow samples.

    Returns
    -------
    step_fn, grids
        The criterion's step function and the grid updates (None if off), built on the way.

    Raises
    ------
    ValueError
        Naming the setting at fault and what to change.
    """
    step_fn = build_step(cfg)
    kind = kind_of(cfg.criterion)
    if not isinstance(model, kind.cls):
        raise ValueError(
            f"train.criterion {cfg.criterion!r} trains a {kind.name}, but the model is a "
            f"{type(model).__name__}; choose one of {list(_criteria_of(model))}"
        )
    _parameter_groups(model, cfg)
    if cfg.criterion in ("ula", "thermodynamic"):
        check_langevin_prior(model, f"train.criterion {cfg.criterion!r}")
    return step_fn, GridUpdates.from_config(cfg, model)


def _quadrature_error(model: nn.Module, step: int) -> float:
    """The prior's :meth:`~kaem.model.prior.EnergyPrior.quadrature_error` (its largest, in nats) for
    the log, with a warning above :data:`~kaem.model.prior.QUADRATURE_TOLERANCE`; NaN for a model
    without a quadrature prior. Measured at the start, after every grid update and at every
    checkpoint (the rows of those steps carry it, the others NaN): a function of the step, so
    a resumed run logs what an uninterrupted one does."""
    prior = getattr(model, "prior", None)
    if not isinstance(prior, EnergyPrior):
        return math.nan
    error = float(prior.quadrature_error().max())
    if error > QUADRATURE_TOLERANCE:
        warnings.warn(
            f"at step {step} the prior's log normaliser moves by {error:.2g} nats between "
            f"{prior.n_nodes // 2} and {prior.n_nodes} quadrature nodes: the sampled prior no "
            "longer resolves its energies; raise model.prior.n_nodes",
            QuadratureWarning,
            stacklevel=3,
        )
    return error


def planned_steps(cfg: TrainConfig, n_images: int) -> int:
    """The step a run of ``cfg`` on ``n_images`` training images ends at.

    ``train.max_steps`` if set, else ``epochs`` times the ``n_images // batch_size`` batches
    of an epoch, rounded up.

    Raises
    ------
    ValueError
        If the batch is larger than the data, naming both.
    """
    if n_images < cfg.batch_size:
        raise ValueError(
            f"train.batch_size {cfg.batch_size} exceeds the {n_images} training images"
        )
    per_epoch = n_images // cfg.batch_size
    return cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * per_epoch)


def _write_settings(model: nn.Module, cfg: TrainConfig, data: Any, out_dir: Path) -> None:
    """``config.yaml`` (the resolved settings) and ``data.json`` of a run folder."""
    config = getattr(model, "config", None)
    settings = {"model": to_dict(config)} if dataclasses.is_dataclass(config) else {}
    settings["train"] = to_dict(cfg)
    atomic_write_text(yaml.safe_dump(settings, sort_keys=False), out_dir / "config.yaml")
    atomic_write_text(json.dumps(data, indent=2) + "\n", out_dir / "data.json")


def train(
    model: nn.Module,
    images: Tensor | np.ndarray,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    data: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``images`` with the criterion of ``cfg``; resume if a checkpoint exists.

    Parameters
    ----------
    model
        The model (a :class:`~kaem.model.KAEM` for the KAEM criteria).
    images
        Training images, shape ``(N, C, H, W)``, uint8 (``0..255``) or float in ``[0, 1]``.
        On an accelerator they are copied there once when they fit (else pinned), so no batch
        waits on a pageable host copy.
    cfg
        Training settings (:class:`~kaem.config.TrainConfig`).
    out_dir
        Folder for ``checkpoint.pt`` and ``log.csv``.
    device
        Where to train; CUDA when available if not given.
    progress
        Show a tqdm progress bar.
    data
        The record of ``images`` (:func:`~kaem.training.checkpoint.data_record`, with the
        file they came from); computed from ``images`` if not given.

    Returns
    -------
    TrainResult

    Raises
    ------
    ResumeError
        If the folder's checkpoint was written with other settings or on other data, or has
        done more steps than ``cfg`` asks for.
    FolderInUseError
        If another process trains in ``out_dir``.
    """
    step_fn, grids = check_setup(model, cfg)
    images = _training_images(model, images)
    total = planned_steps(cfg, len(images))
    data = data_record(images) if data is None else data
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir):  # one process at a time in a run folder
        batches = EpochBatches(_images_for(images, device), cfg.batch_size, cfg.seed)
        model.to(device)
        if cfg.compile:
            compile_model(model)
        groups = _parameter_groups(model, cfg)
        optimizer = adam(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, device=device)
        schedule = _lr_schedule(optimizer, cfg.lr_decay, cfg.lr_decay_lag)
        rng = torch.Generator(device=device).manual_seed(_seed(cfg.seed, 2))
        path = out_dir / "checkpoint.pt"
        checkpoint = Checkpoint(path, model, optimizer, rng, grids, to_dict(cfg), data)
        step, elapsed = checkpoint.restore()
        check_steps(path, step, total, to_dict(cfg))
        _write_settings(model, cfg, data, out_dir)
        saved = step if path.exists() else None  # the step of the last good checkpoint
        model.train()
        update = Updates(model, optimizer, step_fn)
        _quadrature_error(model, step)  # a warning now rather than at the first measured row
        budget = math.inf if cfg.max_seconds is None else cfg.max_seconds
        snapshots = _snapshots(out_dir, cfg.snapshot_seconds, elapsed)
        pending = [t for t in snapshots if t > elapsed]  # in increasing order
        bar = tqdm(total=total, initial=step, disable=not progress, desc=f"train[{cfg.criterion}]")
        with bar, CSVLog(out_dir / "log.csv", keep_upto=step) as log:
            while step < total and elapsed < budget:
                epoch, x = batches.batch(step, device)
                schedule(epoch)
                t0 = time.perf_counter()
                step += 1
                where = _where(step, epoch, path, saved, min(cfg.checkpoint_every, total))
                if grids is not None and grids.due(step):
                    update.settle()  # the grids follow only parameters known to be good
                grid_updated = grids is not None and grids(model, x, step, rng)
                quadrature = _quadrature_error(model, step) if grid_updated else math.nan
                update(x, rng, Progress(step, total), where)
                seconds = time.perf_counter() - t0
                elapsed += seconds
                last = step == total or elapsed >= budget
                logged = step % cfg.log_every == 0 or last
                taken = [t for t in pending if t <= elapsed]
                if logged or step % cfg.checkpoint_every == 0 or taken:
                    row = update.settle()  # raises for a failed update before anything is written
                if step % cfg.checkpoint_every == 0:
                    quadrature = _quadrature_error(model, step)
                if logged:
                    extra = {"seconds": seconds, "grid_updated": int(grid_updated)}
                    extra["quadrature_error"] = quadrature
                    log.write({"step": step, "epoch": epoch, **row, **extra})
                    bar.set_postfix(
                        {k: f"{v:.4g}" for k, v in list(row.items())[1:4]}, refresh=False
                    )
                for t in taken:
                    checkpoint.snapshot(snapshots[t], step, elapsed)
                    pending.remove(t)
                if step % cfg.checkpoint_every == 0 or last:
                    checkpoint.save(step, elapsed)
                    saved = step
                bar.update(1)
        model.eval()
        return TrainResult(model, step, checkpoint.path, log.path, elapsed, snapshots)


def snapshot_name(seconds: float) -> str:
    """The file name of the snapshot taken at ``seconds`` of training (``train.snapshot_seconds``)
    in a run folder: ``snapshot-60s.pt``, ``snapshot-7.5s.pt``."""
    return f"snapshot-{seconds:g}s.pt"


def _snapshots(out_dir: Path, times: tuple[float, ...], elapsed: float) -> dict[float, Path]:
    """The snapshot file of each of ``times`` (training seconds), warning of any that a run
    resumed at ``elapsed`` seconds has passed without one."""
    files = {t: out_dir / snapshot_name(t) for t in sorted(times)}
    missed = [t for t, f in files.items() if t <= elapsed and not f.exists()]
    if missed:
        warnings.warn(
            f"the run in {out_dir} resumes at {elapsed:.1f} training seconds, past the snapshot "
            f"times {missed} it has no snapshot of; those will not be written",
            stacklevel=3,
        )
    return files


def _where(step: int, epoch: int, path: Path, saved: int | None, first: int) -> str:
    """Where an update sits, for its error: its step and the last good checkpoint, if any."""
    if saved is None:
        return (
            f"at step {step} (epoch {epoch}); no checkpoint has been written yet (the first was "
            f"to be written at step {first})"
        )
    return f"at step {step} (epoch {epoch}); the last good checkpoint is {path}, at step {saved}"
