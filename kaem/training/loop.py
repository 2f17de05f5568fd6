"""The training loop: Adam, seeds, progress bar, CSV log, grid updates, atomic checkpoints.

A run writes two files into its folder:

* ``checkpoint.pt``: everything needed to continue (model, optimiser, step, random-generator
  state, grid-update schedule), replaced atomically every ``checkpoint_every`` steps and at
  the end;
* ``log.csv``: one row per logged step (loss, criterion diagnostics, seconds, grid updates).

A run killed at any moment restarts from its last checkpoint when called again with the same
folder; rows logged after that checkpoint are dropped and recomputed, so the log and the
parameters of a resumed run match those of an uninterrupted run with the same seed (on a CPU,
where PyTorch is deterministic).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kaem import __version__
from kaem.config import TrainConfig, to_dict
from kaem.generators import KANGenerator
from kaem.inference.posterior import check_langevin_prior, sample_posterior, sample_power_posteriors
from kaem.io import atomic_path, atomic_torch_save, read_checkpoint
from kaem.losses import (
    importance_loss,
    mle_loss,
    thermodynamic_integration,
    thermodynamic_loss,
)
from kaem.model import KAEM
from kaem.samplers import cosine_exponent_schedule, power_temperatures
from kaem.vae import elbo_loss

__all__ = [
    "CRITERIA",
    "NonFiniteLossError",
    "StepContext",
    "TrainResult",
    "train",
    "update_grids",
]

#: Keys of the training config that may change between a run and its resumption.
_RESUMABLE_KEYS = {"epochs", "max_steps", "checkpoint_every", "log_every"}


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced."""

    model: nn.Module
    steps: int
    checkpoint: Path
    log: Path


class StepContext(NamedTuple):
    """Where a step sits in the run (schedules such as eq. 40 depend on it)."""

    step: int  # 1-based index of the update being computed
    total: int  # number of updates of the whole run


StepFn = Callable[
    [nn.Module, Tensor, TrainConfig, torch.Generator, StepContext],
    tuple[Tensor, dict[str, float]],
]


def _importance_step(
    model: nn.Module, x: Tensor, cfg: TrainConfig, generator: torch.Generator, ctx: StepContext
) -> tuple[Tensor, dict[str, float]]:
    loss, info = importance_loss(
        model,
        x,
        n_samples=cfg.importance_samples,
        resampler=cfg.resampler,
        ess_threshold=cfg.ess_threshold,
        generator=generator,
    )
    return loss, {
        "nll": -float(info.log_evidence.mean()),
        "ess": float(info.ess.mean()),
        "resampled": float(info.resampled.float().mean()),
        "mse": float(info.mse),
    }


def _elbo_step(
    model: nn.Module, x: Tensor, cfg: TrainConfig, generator: torch.Generator, ctx: StepContext
) -> tuple[Tensor, dict[str, float]]:
    loss, info = elbo_loss(model, x, generator=generator)
    return loss, {
        "elbo": float(info.elbo.mean()),
        "kl": float(info.kl.mean()),
        "mse": float(info.mse),
    }


def _langevin_settings(cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of the posterior samplers from ``train.langevin``."""
    lc = cfg.langevin
    return {
        "n_steps": lc.steps,
        "step_size": lc.step_size,
        "nonfinite": lc.nonfinite,
        "max_retries": lc.max_retries,
    }


def _ula_step(
    model: nn.Module, x: Tensor, cfg: TrainConfig, generator: torch.Generator, ctx: StepContext
) -> tuple[Tensor, dict[str, float]]:
    post = sample_posterior(
        model, x, sampler=cfg.langevin.sampler, generator=generator, **_langevin_settings(cfg)
    )
    loss, info = mle_loss(model, x, post.z, generator=generator)
    metrics = {
        "log_lik": float(info.log_lik.mean()),
        "mse": float(info.mse),
        "step_size": post.step_size,
        "retries": post.retries,
    }
    if cfg.langevin.sampler == "mala":
        metrics["acceptance"] = post.acceptance
    return loss, metrics


def _thermodynamic_step(
    model: nn.Module, x: Tensor, cfg: TrainConfig, generator: torch.Generator, ctx: StepContext
) -> tuple[Tensor, dict[str, float]]:
    tc = cfg.thermodynamic
    exponent = cosine_exponent_schedule(ctx.step - 1, ctx.total, tc.p_start, tc.p_end, tc.n_cycles)
    temperatures = power_temperatures(tc.n_temps, exponent, dtype=x.dtype).to(x.device)
    population = sample_power_posteriors(
        model,
        x,
        temperatures,
        n_chains=tc.chains,
        swap_every=tc.swap_every,
        sampler=cfg.langevin.sampler,
        generator=generator,
        **_langevin_settings(cfg),
    )
    loss, info = thermodynamic_loss(model, x, population.z, temperatures, generator=generator)
    trapezium, corrected = thermodynamic_integration(
        temperatures, population.trace_mean, population.trace_var
    )
    metrics = {
        "steppingstone": float(info.steppingstone.mean()),
        "ti_trapezium": float(trapezium.mean()),
        "ti_corrected": float(corrected.mean()),
        "exponent": exponent,
        "step_size": population.step_size,
        "retries": population.retries,
    }
    if cfg.langevin.sampler == "mala":
        metrics["acceptance"] = float(population.acceptance.nanmean())
    for k, rate in enumerate(population.swap_rate.tolist()):
        if rate == rate:  # the exact t = 0 level takes no swaps (NaN)
            metrics[f"swap_{k}_{k + 1}"] = rate
    return loss, metrics


#: Criterion name -> step function returning ``(loss, scalar diagnostics)``.
CRITERIA: dict[str, StepFn] = {
    "importance": _importance_step,
    "ula": _ula_step,
    "thermodynamic": _thermodynamic_step,
    "elbo": _elbo_step,
}


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0] >> 1)


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """Shuffled order of an epoch: a pure function of the seed, so resuming needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, 1, epoch)))


class _GridSchedule:
    """First update at step 1; the interval then starts at ``frequency`` and grows by 1/decay."""

    def __init__(self, frequency: int, decay: float) -> None:
        if frequency < 1:
            raise ValueError(f"grid update frequency must be at least 1, got {frequency}")
        if not 0 < decay <= 1:
            raise ValueError(f"grid update decay must lie in (0, 1], got {decay}")
        self.next_step = 1
        self.interval = float(frequency)
        self.decay = decay

    def due(self, step: int) -> bool:
        if step < self.next_step:
            return False
        self.next_step = step + max(1, round(self.interval))
        self.interval /= self.decay
        return True

    def state_dict(self) -> dict[str, float]:
        return {"next_step": self.next_step, "interval": self.interval}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.next_step = int(state["next_step"])
        self.interval = float(state["interval"])


def update_grids(model: KAEM, x: Tensor, cfg: TrainConfig, generator: torch.Generator) -> bool:
    """Grid update of the prior energies and of a KAN generator (Liu et al. 2024).

    The grids must cover the latents the model is evaluated at. With importance sampling
    every latent is a prior draw, so ``cfg.grid_update.samples`` prior samples are used; with
    Langevin criteria the chains explore beyond the prior (App. H), so the samples are short-run
    posterior samples of the batch ``x`` (repeated to reach the sample count). Returns whether
    anything changed.
    """
    g = cfg.grid_update
    if cfg.criterion == "importance":
        with torch.no_grad():
            z = model.prior.sample(g.samples, generator)
    else:
        reps = -(-g.samples // x.shape[0])
        z = sample_posterior(
            model,
            x.repeat(reps, *([1] * (x.ndim - 1)))[: g.samples],
            sampler=cfg.langevin.sampler,
            generator=generator,
            **_langevin_settings(cfg),
        ).z
    changed = False
    with torch.no_grad():
        if g.prior:
            model.prior.update_grid(z, g.ratio)
            changed = True
        if g.generator and isinstance(model.generator, KANGenerator):
            model.generator.update_grid(model.prior.generator_input(z), g.ratio)
            changed = True
    return changed


def _check_grid_update(model: nn.Module, cfg: TrainConfig) -> None:
    """Refuse, before any work, grid updates of a basis that has no grid to update."""
    g = cfg.grid_update
    if not (g.enabled and isinstance(model, KAEM)):
        return
    bad = []
    if g.prior and not model.prior.kan.basis.supports_grid_update:
        bad.append(f"the prior's {type(model.prior.kan.basis).__name__}")
    if g.generator and isinstance(model.generator, KANGenerator):
        for i, layer in enumerate(model.generator.layers):
            if not layer.basis.supports_grid_update:
                bad.append(f"generator layer {i}'s {type(layer.basis).__name__}")
    if bad:
        raise ValueError(
            f"grid updating is not defined for {', '.join(bad)} (only rbf and bspline bases have "
            "a grid that follows the samples); set train.grid_update.enabled (or its prior / "
            "generator flag) to false"
        )


def _as_images(data: Any) -> Tensor:
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, Tensor):
        raise TypeError(f"training data must be a tensor or numpy array, got {type(data).__name__}")
    return data


def _batch(images: Tensor, index: Tensor, device: torch.device) -> Tensor:
    x = images[index].to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    diff = sorted(
        k
        for k in set(saved) | set(current)
        if k not in _RESUMABLE_KEYS and saved.get(k) != current.get(k)
    )
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ValueError(
            f"the checkpoint in {path.parent} was written with different training settings "
            f"({detail}); use a new folder or restore the settings"
        )


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def train(
    model: nn.Module,
    images: Tensor | np.ndarray,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``images`` with the criterion of ``cfg``; resume if a checkpoint exists.

    Parameters
    ----------
    model
        The model (a :class:`~kaem.model.KAEM` for the KAEM criteria).
    images
        Training images, shape ``(N, C, H, W)``, uint8 (``0..255``) or float in ``[0, 1]``.
        They stay where they are; batches are moved to ``device``.
    cfg
        Training settings (:class:`~kaem.config.TrainConfig`).
    out_dir
        Folder for ``checkpoint.pt`` and ``log.csv``.
    device
        Where to train; CUDA when available if not given.
    progress
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult
    """
    if cfg.criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {cfg.criterion!r}; choose one of {sorted(CRITERIA)}")
    step_fn = CRITERIA[cfg.criterion]
    images = _as_images(images)
    shape = tuple(getattr(model, "image_shape", images.shape[1:]))
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"training images must have shape (N, {', '.join(map(str, shape))}) for this model, "
            f"got {tuple(images.shape)}"
        )
    _check_grid_update(model, cfg)
    if cfg.criterion in ("ula", "thermodynamic"):
        check_langevin_prior(model, f"train.criterion {cfg.criterion!r}")
    n = images.shape[0]
    if n < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {n} training images")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.csv"

    steps_per_epoch = n // cfg.batch_size
    total = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * steps_per_epoch)
    if total < 1:
        raise ValueError(f"training would run {total} steps; raise epochs or max_steps")

    model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps
    )
    rng = torch.Generator(device=device).manual_seed(_seed(cfg.seed, 2))
    schedule = _GridSchedule(cfg.grid_update.frequency, cfg.grid_update.decay)
    cfg_dict = to_dict(cfg)
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        state = read_checkpoint(ckpt_path, map_location=device)
        _check_resumable(state["train_config"], cfg_dict, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"].to(rng.get_state().device))
        schedule.load_state_dict(state["grid_schedule"])
        step, elapsed = int(state["step"]), float(state["elapsed"])

    def save_checkpoint() -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng.get_state(),
                "grid_schedule": schedule.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "train_config": cfg_dict,
                "model_kind": type(model).__name__,
                "model_config": to_dict(model.config) if hasattr(model, "config") else None,
                "kaem_version": __version__,
            },
            ckpt_path,
        )

    # Keep only log rows the checkpoint accounts for; later rows will be recomputed.
    rows = _read_log(log_path, step)
    fields: list[str] | None = list(rows[0].keys()) if rows else None
    with atomic_path(log_path) as tmp:
        with tmp.open("w", newline="") as f:
            if fields:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
    log_file = log_path.open("a", newline="")
    writer = csv.DictWriter(log_file, fieldnames=fields) if fields else None

    model.train()
    bar = tqdm(
        total=total, initial=step, disable=not progress, desc=f"train[{cfg.criterion}]", unit="step"
    )
    try:
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            order = _epoch_order(n, cfg.seed, epoch)
            x = _batch(images, order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size], device)
            t0 = time.perf_counter()
            step += 1
            grid_updated = bool(
                cfg.grid_update.enabled
                and isinstance(model, KAEM)
                and schedule.due(step)
                and update_grids(model, x, cfg, rng)
            )
            try:
                loss, metrics = step_fn(model, x, cfg, rng, StepContext(step, total))
            except FloatingPointError as exc:
                raise NonFiniteLossError(
                    f"training failed at step {step} (epoch {epoch}): {exc}; the last good "
                    f"checkpoint is {ckpt_path}"
                ) from exc
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {float(loss)} at step {step} (epoch {epoch}); the last good "
                    f"checkpoint is {ckpt_path}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, p in model.named_parameters():
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    raise NonFiniteLossError(
                        f"gradient of {name} became non-finite at step {step} (epoch {epoch})"
                    )
            optimizer.step()
            seconds = time.perf_counter() - t0
            elapsed += seconds
            if step % cfg.log_every == 0 or step == total:
                row = {"step": step, "epoch": epoch, "loss": loss.item(), **metrics}
                row.update(seconds=seconds, grid_updated=int(grid_updated))
                if writer is None:
                    writer = csv.DictWriter(log_file, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                log_file.flush()
            if step % cfg.checkpoint_every == 0 or step == total:
                save_checkpoint()
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:3]}, refresh=False)
    finally:
        bar.close()
        log_file.close()
    if not ckpt_path.exists():  # resumed a finished run: nothing new was computed
        save_checkpoint()
    model.eval()
    return TrainResult(model, step, ckpt_path, log_path)
