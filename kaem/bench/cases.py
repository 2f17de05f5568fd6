"""The benchmarks of App. A: one registry of cases, each with its suite, what it measures and
how to build it.

Pang et al. (2020)'s latent EBM prior, the peer of KAEM's inverse-transform sampling, is
:class:`kaem.baselines.lebm.LatentEBMPrior`: an MLP energy ``dim -> 200 -> 200 -> 1`` (GELU,
as their ``train_svhn.py`` trains it) on an ``N(0, I)`` base, sampled by 60 ULA steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kaem.baselines.lebm import LatentEBMPrior, energy_mlp
from kaem.config import TrainConfig, from_dict
from kaem.kinds import build as build_kind
from kaem.model import build_model
from kaem.presets import preset
from kaem.training import Progress, Updates, adam, build_step

__all__ = [
    "BENCHMARKS",
    "SMALL_BATCH",
    "SUITES",
    "Benchmark",
    "Case",
    "ddpm_generation_case",
    "generation_case",
    "its_case",
    "langevin_case",
    "thermo_case",
    "training_step_case",
]


@dataclass(frozen=True)
class Case:
    """A measured call, built: ``call()`` is timed; ``setup()`` runs untimed before each.

    A call that is a chain of ``steps`` steps of equal cost (a DDPM's denoising) may also
    give ``partial(k)``, which runs its first ``k`` steps: a sweep that cannot afford the
    whole chain times ``k`` steps and scales the time by ``steps / k``.
    """

    call: Callable[[], object]
    setup: Callable[[], object] | None = None
    repeats_scale: float = 1.0  # Langevin runs take seconds each: half as many repeats
    steps: int | None = None
    partial: Callable[[int], object] | None = None


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its name, suite, what it measures, and how to build it.

    ``build(device, n_samples, generator)`` returns the :class:`Case` to measure.
    """

    name: str
    suite: str
    description: str
    build: Callable[[torch.device, int, torch.Generator], Case]


def _perturb(model: nn.Module) -> Callable[[], None]:
    """A parameter change, as an optimiser step makes, so per-version caches are cold."""

    def setup() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-6)

    return setup


def langevin_case(dim: int) -> Callable[[torch.device, int, torch.Generator], Case]:
    """Pang et al.'s 60-step Langevin prior sampling on ``dim`` coordinates."""

    def build(device: torch.device, n: int, g: torch.Generator) -> Case:
        prior = LatentEBMPrior(energy_mlp(dim), dim).to(device)  # Pang et al.'s 60 steps
        return Case(lambda: prior.sample(n, g), repeats_scale=0.5)

    return build


def its_case(name: str, sampling: str) -> Callable[[torch.device, int, torch.Generator], Case]:
    """Inverse-transform sampling of preset ``name``'s prior, by ``model.prior.sampling``."""

    def build(device: torch.device, n: int, g: torch.Generator) -> Case:
        prior = build_model(preset(name, {"model": {"prior": {"sampling": sampling}}})["model"])
        prior = prior.prior.to(device)
        return Case(lambda: prior.sample(n, g), _perturb(prior))

    return build


#: The prior's ``model.prior.sampling`` of a benchmark name's suffix.
_PATHS = {"": "search", "_compiled": "compiled"}


def _at(n_fixed: int, build: Callable[[torch.device, int, torch.Generator], Case]):
    """``build`` for ``n_fixed`` samples, whatever ``--samples`` asks (the small-batch pair)."""
    return lambda device, n, g: build(device, n_fixed, g)


#: Samples of the small-batch pair: a few images, or the starts of a posterior chain.
SMALL_BATCH = 200


def training_step_case(
    name: str, model_settings: dict | None = None, **train: object
) -> Callable[[torch.device, int, torch.Generator], Case]:
    """One update of preset ``name``'s criterion (loss, gradient and Adam), on random images,
    judged as the training loop judges it; its ``model`` settings merged with
    ``model_settings``, its ``train`` keys replaced by ``train``. The update is the first of
    a run (schedules such as eq. 40 at their start)."""

    def build(device: torch.device, n: int, g: torch.Generator) -> Case:
        cfg = preset(name, {"model": model_settings or {}})
        tc = from_dict(TrainConfig, {**cfg["train"], **train})
        model = build_kind(cfg["model"], tc.criterion).to(device)
        x = torch.rand(tc.batch_size, *model.image_shape, generator=g, device=device)
        optimizer = adam(
            model.parameters(), lr=tc.learning_rate, betas=tc.betas, eps=tc.eps, device=device
        )
        update = Updates(model, optimizer, build_step(tc))

        def step() -> None:
            update(x, g, Progress(1, 1), "in the benchmark")
            update.settle()

        return Case(step, _perturb(model))

    return build


def generation_case(name: str) -> Callable[[torch.device, int, torch.Generator], Case]:
    """Images drawn by preset ``name``'s model, whatever its kind."""

    def build(device: torch.device, n: int, g: torch.Generator) -> Case:
        cfg = preset(name)
        model = build_kind(cfg["model"], cfg["train"].get("criterion", "importance"))
        model = model.to(device)
        return Case(lambda: model.generate(n, g))

    return build


def ddpm_generation_case(
    name: str, scheduler: str, steps: int
) -> Callable[[torch.device, int, torch.Generator], Case]:
    """A DDPM of preset ``name`` drawing ``n`` images with ``steps`` steps of ``scheduler``;
    ``partial(k)`` denoises the same start for the first ``k`` steps (each step is one pass of
    the UNet over the batch and one scheduler update, whatever ``t``)."""

    def build(device: torch.device, n: int, g: torch.Generator) -> Case:
        model = build_kind(preset(name)["model"], "ddpm").to(device).eval()
        sched = model.scheduler(scheduler, steps)
        start = model.initial_noise(n, g)
        return Case(
            lambda: model.generate(n, g, scheduler=scheduler, steps=steps),
            repeats_scale=0.5,
            steps=steps,
            partial=lambda k: model.denoise(start, sched, g, n_steps=k),
        )

    return build


def thermo_case(n_temps: int) -> Callable[[torch.device, int, torch.Generator], Case]:
    thermo = {**preset("svhn")["train"]["thermodynamic"], "n_temps": n_temps}
    return training_step_case("svhn", criterion="thermodynamic", thermodynamic=thermo)


#: Every benchmark, by name. ``core``: NIST IS and prior sampling; ``svhn``: training steps and
#: generation with the SVHN settings (minutes on a CPU).
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        *(
            Benchmark(
                f"is_step{suffix}",
                "core",
                f"IS-MLE training step, loss, gradient and Adam (NIST, B = S = 100; {path})",
                training_step_case("nist", {"prior": {"sampling": path}}),
            )
            for suffix, path in _PATHS.items()
        ),
        *(
            Benchmark(
                f"its_prior{suffix}",
                "core",
                f"inverse-transform prior sampling after a parameter change (NIST prior; {path})",
                its_case("nist", path),
            )
            for suffix, path in _PATHS.items()
        ),
        Benchmark(
            "langevin_prior_3240",
            "core",
            "60 ULA steps of a Pang et al. prior on 3,240 coordinates",
            langevin_case(81 * 40),
        ),
        Benchmark(
            "langevin_prior_81",
            "core",
            "60 ULA steps of a Pang et al. prior on 81 coordinates",
            langevin_case(81),
        ),
        *(
            Benchmark(
                f"its_prior_{SMALL_BATCH}{suffix}",
                "core",
                f"inverse-transform sampling of {SMALL_BATCH} draws after a parameter change "
                f"(NIST prior; {path})",
                _at(SMALL_BATCH, its_case("nist", path)),
            )
            for suffix, path in _PATHS.items()
        ),
        Benchmark(
            f"langevin_prior_81_{SMALL_BATCH}",
            "core",
            f"60 ULA steps of a Pang et al. prior on 81 coordinates, {SMALL_BATCH} chains",
            _at(SMALL_BATCH, langevin_case(81)),
        ),
        *(
            Benchmark(
                f"its_mixture_svhn{suffix}",
                "core",
                f"inverse-transform sampling of the SVHN mixture prior, after an update ({path})",
                its_case("svhn", path),
            )
            for suffix, path in _PATHS.items()
        ),
        Benchmark(
            "langevin_prior_svhn",
            "core",
            "60 ULA steps of a Pang et al. prior on the SVHN latent (81)",
            langevin_case(81),
        ),
        Benchmark(
            "ula_step_svhn",
            "svhn",
            "ULA-MLE training step, 40 ULA steps (SVHN, eq. 4)",
            training_step_case("svhn"),
        ),
        *(
            Benchmark(
                f"thermo_step_svhn_nt{n}",
                "svhn",
                f"thermodynamic training step, N_t = {n} (SVHN, eq. 24)",
                thermo_case(n),
            )
            for n in (2, 5, 10)
        ),
        Benchmark(
            "vae_step_svhn",
            "svhn",
            "VAE training step, ELBO and gradient (SVHN)",
            training_step_case("vae_svhn"),
        ),
        Benchmark(
            "lebm_step_svhn",
            "svhn",
            "latent-EBM training step: 20 posterior and 60 prior ULA steps (SVHN, Pang et al.)",
            training_step_case("lebm_svhn"),
        ),
        Benchmark(
            "ddpm_step_svhn",
            "svhn",
            "DDPM training step, noise prediction and gradient (SVHN UNet, batch 50)",
            training_step_case("ddpm_svhn"),
        ),
        Benchmark(
            "generate_kaem_svhn",
            "svhn",
            "KAEM generation: inverse-transform prior samples and the CNN (SVHN)",
            generation_case("svhn"),
        ),
        Benchmark(
            "generate_vae_svhn",
            "svhn",
            "VAE generation: Gaussian latents and the decoder (SVHN)",
            generation_case("vae_svhn"),
        ),
    )
}

#: Benchmark names by suite (``all``: every one).
SUITES: dict[str, tuple[str, ...]] = {
    "core": tuple(n for n, b in BENCHMARKS.items() if b.suite == "core"),
    "svhn": tuple(n for n, b in BENCHMARKS.items() if b.suite == "svhn"),
    "all": tuple(BENCHMARKS),
}
