"""Grid updates: the KAN grids follow the latents the model is evaluated at (Liu et al. 2024)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from kaem.config import GridUpdateConfig, TrainConfig
from kaem.inference.posterior import sample_posterior
from kaem.model import KAEM
from kaem.model.generators import KANGenerator

__all__ = ["GridUpdates"]


class GridUpdates:
    """When to refit the grids, and from which samples.

    The first update happens at step 1; the interval then starts at ``frequency`` steps and
    grows by ``1 / decay`` after every update. With importance sampling every latent is a
    prior draw, so ``samples`` prior samples are used; with the Langevin criteria the chains
    explore beyond the prior (App. H), so the samples are short-run posterior samples of the
    batch (repeated to reach the sample count).

    Parameters
    ----------
    frequency, decay
        The schedule.
    samples
        How many latents the grids are fitted to.
    ratio
        Weight of the uniform grid mixed into the sample quantiles.
    prior, generator
        Whether to update the prior's grid and a KAN generator's grids.
    posterior
        Keyword arguments of :func:`kaem.inference.posterior.sample_posterior`, or None to fit
        to prior draws.
    """

    def __init__(
        self,
        *,
        frequency: int,
        decay: float,
        samples: int,
        ratio: float,
        prior: bool = True,
        generator: bool = True,
        posterior: dict[str, Any] | None = None,
    ) -> None:
        if frequency < 1:
            raise ValueError(f"grid update frequency must be at least 1, got {frequency}")
        if not 0 < decay <= 1:
            raise ValueError(f"grid update decay must lie in (0, 1], got {decay}")
        self.samples, self.ratio = samples, ratio
        self.prior, self.generator, self.posterior = prior, generator, posterior
        self.decay = decay
        self.next_step = 1
        self.interval = float(frequency)

    @classmethod
    def from_config(cls, cfg: TrainConfig, model: nn.Module) -> GridUpdates | None:
        """The updates ``cfg.grid_update`` asks for, or None; refuses bases without a grid."""
        g: GridUpdateConfig = cfg.grid_update
        if not (g.enabled and isinstance(model, KAEM)):
            return None
        _check_grids(model, g)
        posterior = None if cfg.criterion == "importance" else dataclasses.asdict(cfg.langevin)
        return cls(
            frequency=g.frequency,
            decay=g.decay,
            samples=g.samples,
            ratio=g.ratio,
            prior=g.prior,
            generator=g.generator,
            posterior=posterior,
        )

    def due(self, step: int) -> bool:
        """Whether ``step`` updates the grids (a question: the schedule stays where it is)."""
        return step >= self.next_step

    def __call__(self, model: KAEM, x: Tensor, step: int, generator: torch.Generator) -> bool:
        """Update the grids if ``step`` is due, and move the schedule past it; returns whether
        anything changed."""
        if not self.due(step):
            return False
        self.next_step = step + max(1, round(self.interval))
        self.interval /= self.decay
        if self.posterior is None:
            with torch.no_grad():
                z = model.prior.sample(self.samples, generator)
        else:
            reps = -(-self.samples // x.shape[0])
            repeated = x.repeat(reps, *([1] * (x.ndim - 1)))[: self.samples]
            post = sample_posterior(model, repeated, generator=generator, **self.posterior)
            post.check.raise_if_failed()  # the grids follow finite samples only
            z = post.z
        changed = False
        with torch.no_grad():
            if self.prior:
                model.prior.update_grid(z, self.ratio)
                changed = True
            if self.generator and isinstance(model.generator, KANGenerator):
                model.generator.update_grid(model.prior.generator_input(z), self.ratio)
                changed = True
        return changed

    def state_dict(self) -> dict[str, float]:
        return {"next_step": self.next_step, "interval": self.interval}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.next_step = int(state["next_step"])
        self.interval = float(state["interval"])


def _check_grids(model: KAEM, g: GridUpdateConfig) -> None:
    """Refuse, before any work, grid updates of a basis that has no grid to update."""
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
