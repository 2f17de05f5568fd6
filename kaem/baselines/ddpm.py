"""The DDPM baseline (Ho et al. 2020) on diffusers' UNet and schedulers.

A pixel-space reference beside the latent-prior models, set as in the KAEM authors' later
version (their ``baseline_*_config.ini``). With ``beta_1 .. beta_T`` linear from 1e-4 to
0.02, ``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s <= t} alpha_s``:

* forward process (eq. 4): ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``;
* training (eq. 14, ``L_simple``): ``E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 +
  sqrt(1 - abar_t) eps, t) ||^2`` with ``t`` uniform on the ``T`` steps and ``eps ~ N(0, I)``;
* ancestral sampling (Algorithm 2): ``x_T ~ N(0, I)``, ``x_{t-1} = (x_t - beta_t / sqrt(1 -
  abar_t) eps_theta(x_t, t)) / sqrt(alpha_t) + sigma_t z`` with ``z ~ N(0, I)`` for ``t > 1``
  and ``sigma_t^2 = beta_t`` (the authors'; ``variance: fixed_small`` takes the posterior's
  ``beta~_t``), over all ``T`` steps; DDIM (Song et al. 2021) for fewer.

Images in ``[0, 1]`` are mapped to ``[-1, 1]`` (``x_0 = 2 x - 1``), as Ho et al. scale them;
a generated image is clamped to ``[-1, 1]`` once, at the end, and mapped back. Step ``t`` of
the paper (1 to ``T``) is index ``t - 1`` here, as in diffusers.

The noise predictor is diffusers' ``UNet2DModel`` and the sampling updates are its
``DDPMScheduler`` and ``DDIMScheduler``: a well-kept library rather than code written by
hand, checked against diffusers' own pipelines and against Algorithm 2 by the tests.
diffusers is imported when a DDPM is built (:func:`diffusers_modules`), not with ``kaem``:
its import takes seconds. The model is a kind of :mod:`kaem.kinds` (criterion ``ddpm``),
trained, checkpointed and reloaded like the others; it has no latent prior and no
estimator of ``log p(x)`` here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kaem.config import ConfigError, DDPMConfig, from_dict

__all__ = [
    "DDPM",
    "SCHEDULERS",
    "DDPMInfo",
    "UNetDenoiser",
    "build_ddpm",
    "check_ddpm_config",
    "ddpm_loss",
    "diffusers_modules",
]

#: Sampling schedulers by name, with their default number of denoising steps (None: ``T``).
SCHEDULERS: dict[str, int | None] = {"ddpm": None, "ddim": 50}


def diffusers_modules() -> SimpleNamespace:
    """diffusers' ``UNet2DModel``, ``DDPMScheduler`` and ``DDIMScheduler``, imported on first
    use.

    Importing diffusers imports torch's inductor, which writes the default of its cache folder
    into ``os.environ``; the environment is put back as it was, so that building a DDPM
    changes no environment variable (the variable is recomputed whenever inductor needs it).
    """
    before = dict(os.environ)
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    return SimpleNamespace(
        UNet2DModel=UNet2DModel, DDPMScheduler=DDPMScheduler, DDIMScheduler=DDIMScheduler
    )


class UNetDenoiser(nn.Module):
    """``eps_theta(x_t, t)``: diffusers' ``UNet2DModel`` as a plain function of tensors.

    Parameters
    ----------
    unet
        A ``UNet2DModel`` whose input and output channels equal the images'.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predicted noise ``(B, C, H, W)`` of ``x_t`` ``(B, C, H, W)`` at steps ``t``
        (``(B,)`` or a 0-d tensor, indices from 0)."""
        return self.unet(x, t, return_dict=False)[0]


class DDPM(nn.Module):
    """A denoising diffusion model: a noise predictor and the betas of its forward process.

    Parameters
    ----------
    denoiser
        Module mapping ``(x_t, t)`` to the predicted noise, shapes ``(B, C, H, W)`` and
        ``(B,)`` (or a 0-d ``t``) to ``(B, C, H, W)`` (e.g. :class:`UNetDenoiser`).
    image_shape
        ``(C, H, W)``.
    n_timesteps, beta_start, beta_end, beta_schedule
        ``T`` and the betas (diffusers' schedules: ``linear``, ``scaled_linear``,
        ``squaredcos_cap_v2``).
    variance
        ``sigma_t^2`` of ancestral sampling: ``fixed_large`` (``beta_t``) or ``fixed_small``
        (``beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``).

    Attributes
    ----------
    alphas_cumprod
        ``abar_t`` of every step, shape ``(T,)``: a buffer (not saved; the config rebuilds it),
        so it moves with the model and a training step reads it on the device.
    config
        The :class:`~kaem.config.DDPMConfig` it was built from; set by :func:`build_ddpm`.
    """

    #: Why ``kaem evaluate`` has no estimate of ``log p(x)`` for this kind.
    no_evidence = (
        "a diffusion model's log p(x) needs the variational bound over all T steps (Ho et al. "
        "2020, eq. 5), which kaem does not compute; compare DDPMs by FID/KID"
    )

    def __init__(
        self,
        denoiser: nn.Module,
        image_shape: Sequence[int],
        *,
        n_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        variance: str = "fixed_large",
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive sizes, got {image_shape}")
        if n_timesteps < 2:
            raise ValueError(f"n_timesteps must be at least 2, got {n_timesteps}")
        if variance not in ("fixed_large", "fixed_small"):
            raise ValueError(f"variance must be fixed_large or fixed_small, got {variance!r}")
        self.denoiser = denoiser
        self.image_shape = tuple(int(s) for s in image_shape)
        self.n_timesteps = int(n_timesteps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.beta_schedule = beta_schedule
        self.variance = variance
        abar = self.scheduler("ddpm").alphas_cumprod  # diffusers' betas, float32
        self.register_buffer("alphas_cumprod", abar.clone(), persistent=False)

    def scheduler(self, name: str = "ddpm", steps: int | None = None) -> Any:
        """A fresh diffusers scheduler of this model's betas, set to ``steps`` denoising steps.

        Parameters
        ----------
        name
            ``ddpm`` (ancestral sampling, Algorithm 2; ``steps`` fewer than ``T`` respace
            them) or ``ddim`` (deterministic for ``eta = 0``).
        steps
            Denoising steps (default: ``T`` for ``ddpm``, 50 for ``ddim``), at most ``T``.
        """
        if name not in SCHEDULERS:
            raise ValueError(f"unknown DDPM scheduler {name!r}; choose one of {list(SCHEDULERS)}")
        steps = steps if steps is not None else SCHEDULERS[name] or self.n_timesteps
        if not 1 <= steps <= self.n_timesteps:
            raise ValueError(
                f"a {name} scheduler takes 1 to T = {self.n_timesteps} steps, got {steps}"
            )
        lib = diffusers_modules()
        common = {
            "num_train_timesteps": self.n_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "prediction_type": "epsilon",
            "clip_sample": False,  # clamped once, at the end
        }
        if name == "ddpm":
            sched = lib.DDPMScheduler(**common, variance_type=self.variance)
        else:
            sched = lib.DDIMScheduler(**common)
        sched.set_timesteps(steps)
        return sched

    def predict_noise(self, x: Tensor, t: Tensor) -> Tensor:
        """``eps_theta(x_t, t)``: ``(B, C, H, W)`` and ``(B,)`` (or 0-d) give ``(B, C, H, W)``."""
        return self.denoiser(x, t)

    def noisy(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (eq. 4): ``x0`` and ``noise`` of
        ``(B, C, H, W)``, ``t`` of ``(B,)`` (indices from 0)."""
        abar = self.alphas_cumprod.to(x0.dtype)[t].reshape(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def initial_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``x_T ~ N(0, I)``, shape ``(n, C, H, W)``, on the model's device and dtype."""
        if n < 1:
            raise ValueError(f"number of images must be positive, got {n}")
        ref = next(self.parameters())
        shape = (n, *self.image_shape)
        return torch.randn(shape, generator=generator, device=ref.device, dtype=ref.dtype)

    @torch.no_grad()
    def denoise(
        self,
        x: Tensor,
        scheduler: Any,
        generator: torch.Generator | None = None,
        *,
        eta: float = 0.0,
        n_steps: int | None = None,
    ) -> Tensor:
        """Run ``scheduler``'s denoising steps from ``x`` (``(B, C, H, W)``), unclamped.

        Parameters
        ----------
        x
            The start, ``x_T`` for a whole chain.
        scheduler
            From :meth:`scheduler`.
        generator
            Source of the ancestral noise (drawn by the scheduler, one ``(B, C, H, W)`` block
            per step but the last).
        eta
            DDIM's noise scale (0: deterministic); unused by ``ddpm``.
        n_steps
            Run only the first ``n_steps`` steps (the benchmarks time part of a chain).
        """
        ddim = type(scheduler).__name__ == "DDIMScheduler"
        extra = {"eta": eta} if ddim else {}
        for t in scheduler.timesteps[:n_steps]:
            eps = self.predict_noise(x, t)
            x = scheduler.step(eps, t, x, generator=generator, return_dict=False, **extra)[0]
        return x

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        scheduler: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
    ) -> Tensor:
        """``n`` images in ``[0, 1]``, shape ``(n, C, H, W)``: ``x_T ~ N(0, I)`` denoised by
        ``scheduler`` (default: ancestral sampling over all ``T`` steps, Algorithm 2), then
        clamped to ``[-1, 1]`` and mapped to ``[0, 1]``.

        Parameters
        ----------
        n
            Number of images.
        generator
            Source of ``x_T`` (drawn first) and of every step's noise, on the model's device.
        scheduler, steps, eta
            See :meth:`scheduler` and :meth:`denoise`.
        """
        sched = self.scheduler(scheduler, steps)
        x = self.denoise(self.initial_noise(n, generator), sched, generator, eta=eta)
        return (x.clamp(-1.0, 1.0) + 1.0) / 2.0


class DDPMInfo(NamedTuple):
    """Diagnostics of :func:`ddpm_loss`: per-image squared error of the predicted noise
    (mean over pixels) ``(B,)`` and the steps drawn ``(B,)``."""

    per_image: Tensor
    t: Tensor


def ddpm_loss(
    model: DDPM,
    x: Tensor,
    *,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, DDPMInfo]:
    """Ho et al.'s ``L_simple`` (eq. 14) on a batch: the mean over images and pixels of
    ``(eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t))^2``, ``x_0 = 2 x - 1``.

    Parameters
    ----------
    model
        The DDPM.
    x
        Images in ``[0, 1]``, ``(B, C, H, W)``.
    generator
        Source of ``t`` (uniform on the ``T`` steps, drawn first) and ``eps``.
    t, noise
        Given steps ``(B,)`` and noise ``(B, C, H, W)`` instead of drawn ones.

    Returns
    -------
    loss, info
        The scalar loss and :class:`DDPMInfo`.
    """
    if x.ndim != 4 or tuple(x.shape[1:]) != model.image_shape:
        raise ValueError(
            f"data batch must have shape (B, {', '.join(map(str, model.image_shape))}), "
            f"got {tuple(x.shape)}"
        )
    x0 = 2.0 * x - 1.0
    if t is None:
        t = torch.randint(0, model.n_timesteps, (x.shape[0],), generator=generator, device=x.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x.device, dtype=x.dtype)
    error = (noise - model.predict_noise(model.noisy(x0, t, noise), t)).square()
    per_image = error.mean(dim=(1, 2, 3))
    return per_image.mean(), DDPMInfo(per_image.detach(), t)


def check_ddpm_config(cfg: DDPMConfig) -> None:
    """What :func:`~kaem.config.from_dict` cannot check: the image fits the UNet's levels,
    the GroupNorm groups divide every width, and the betas increase.

    Raises
    ------
    ConfigError
        One line naming the ``model`` key at fault.
    """
    _, h, w = cfg.image_shape
    levels = len(cfg.channels)
    if levels < 1:
        raise ConfigError("model.channels: the UNet needs at least one level")
    factor = 2 ** (levels - 1)
    if h % factor or w % factor:
        fits = [k for k in range(1, levels) if h % 2 ** (k - 1) == 0 and w % 2 ** (k - 1) == 0]
        raise ConfigError(
            f"model.channels: a UNet of {levels} levels {list(cfg.channels)} halves the image "
            f"{levels - 1} times, so H and W must be divisible by {factor}, but "
            f"model.image_shape is {list(cfg.image_shape)}; use at most {max(fits)} levels "
            "(e.g. [32, 64, 128] for 28x28)"
        )
    bad = [ch for ch in cfg.channels if ch % cfg.norm_groups]
    if bad:
        raise ConfigError(
            f"model.norm_groups: GroupNorm's {cfg.norm_groups} groups must divide every width "
            f"of model.channels, and {bad} is not divisible"
        )
    if cfg.beta_start > cfg.beta_end:
        raise ConfigError(
            f"model.beta_start: {cfg.beta_start:g} exceeds model.beta_end {cfg.beta_end:g}; "
            "the betas of the forward process increase"
        )


def build_unet(cfg: DDPMConfig) -> nn.Module:
    """diffusers' ``UNet2DModel`` of ``cfg``: plain residual blocks (``DownBlock2D``,
    ``UpBlock2D``), no attention in any level or in the middle block."""
    levels = len(cfg.channels)
    return diffusers_modules().UNet2DModel(
        sample_size=tuple(cfg.image_shape[1:]),
        in_channels=cfg.image_shape[0],
        out_channels=cfg.image_shape[0],
        block_out_channels=tuple(cfg.channels),
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_groups,
        act_fn=cfg.activation,
        time_embedding_dim=cfg.time_embedding_dim,
        add_attention=False,
    )


def build_ddpm(cfg: Mapping[str, Any] | DDPMConfig, seed: int = 0) -> DDPM:
    """Build a :class:`DDPM` from the ``model`` mapping of a config (e.g. preset ``ddpm_svhn``).

    Parameters
    ----------
    cfg
        Keys of :class:`kaem.config.DDPMConfig`, or a ``DDPMConfig``.
    seed
        Seed of the initial parameters (the same seed gives the same model).

    Raises
    ------
    ConfigError
        Naming the key of a setting the UNet cannot take (:func:`check_ddpm_config`).
    """
    if not isinstance(cfg, DDPMConfig):
        cfg = from_dict(DDPMConfig, cfg, "model")
    check_ddpm_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    # diffusers initialises from the global generator: fork it, seeded from ours.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        unet = build_unet(cfg)
    model = DDPM(
        UNetDenoiser(unet),
        cfg.image_shape,
        n_timesteps=cfg.n_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        variance=cfg.variance,
    )
    model.config = cfg  # kept so checkpoints can rebuild the model (see kaem.kinds.load_model)
    return model
