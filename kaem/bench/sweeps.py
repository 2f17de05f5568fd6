"""App. A's cost curves: how sampling and training time grow with the quantity that sets them.

Each :class:`Sweep` measures one or more *series* (KAEM and its peer) at every value of one
setting, with the median, the fastest and the slowest of the repeats and the peak memory of
each point (:func:`kaem.bench.harness.measure`), and optionally a *reference* measured once
and drawn as a line (the VAE's step, which no swept setting changes) and *extras* measured
once and listed beside the curve:

- ``prior_samples``: prior sampling time against the number of samples, KAEM's
  inverse-transform sampling of the NIST (3,240 coordinates) and SVHN mixture (81) priors
  against Pang et al.'s 60-step Langevin prior of the same latent sizes;
- ``is_step_nz``: the IS training step (NIST) against the latent width ``n_z`` (the prior's
  output width, which the generator's input takes; its hidden width doubles it, eq. 32);
- ``thermo_nt``: the thermodynamic step (SVHN) against the number of temperatures ``N_t``;
- ``ula_steps``: the ULA-MLE step (SVHN) against the number of posterior Langevin steps;
- ``generation``: time per generated image at batch 1, 100 and 1,000 of KAEM (ITS and the
  generator), Pang et al.'s latent EBM (60 prior Langevin steps and the generator), the VAE
  and the DDPM (1,000 ancestral steps, and DDIM with 50), all with the SVHN networks, and the
  training step of each as extras, beside the authors' claims.

A DDPM chain costs one UNet pass over the batch per step, whatever the step, so where a
whole chain would take too long (``timed_image_steps``: images times steps per timed call)
its first ``k`` steps are timed and the times scaled by ``steps / k``; each point records
``steps``, ``timed_steps`` and ``scale``, and the table and figure say which were scaled.

``python -m kaem.bench --sweep NAME`` runs one and writes its JSON (:func:`sweep_payload`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from kaem.bench.cases import (
    Case,
    ddpm_generation_case,
    generation_case,
    its_case,
    langevin_case,
    thermo_case,
    training_step_case,
)
from kaem.bench.measure import measure
from kaem.presets import preset

__all__ = ["SWEEPS", "TIMED_IMAGE_STEPS", "Sweep", "run_sweep", "sweep_payload"]

Build = Callable[[torch.device, int, torch.Generator], Case]


@dataclass(frozen=True)
class Sweep:
    """One cost curve: ``series[label](value)`` builds the case measured at ``value``.

    ``samples`` is the number of samples a case draws when ``value`` is not itself the
    number of samples (``None``: the value is the number of samples).
    """

    name: str
    title: str
    x_label: str
    values: tuple[int, ...]
    series: Mapping[str, Callable[[int], Build]]
    reference: tuple[str, Build] | None = None
    samples: int | None = 1
    log_x: bool = False
    notes: str = ""
    #: ``(slower, faster)`` series whose time ratio at each value the table gives.
    ratios: tuple[tuple[str, str], ...] = ()
    #: The series' times are per sample (``value`` samples a call): the table and the figure
    #: give seconds per sample.
    per_sample: bool = False
    #: Measured once each and listed beside the curve (the models' training steps).
    extras: tuple[tuple[str, Build], ...] = ()
    #: ``(slower, faster)`` extras whose time ratio the table gives.
    extra_ratios: tuple[tuple[str, str], ...] = ()
    #: What the authors claim, by series, extra or ratio label (``"slow / fast"``).
    claims: Mapping[str, str] = field(default_factory=dict)


#: Images times denoising steps one timed call of a DDPM chain may run, by device type; a
#: longer chain is timed over its first steps and scaled (a point of the full chain at batch
#: 1,000 would take hours on a CPU: about 40 s a step on two cores).
TIMED_IMAGE_STEPS: dict[str, int] = {"cpu": 50, "cuda": 20_000}


def _nist_width(nz: int) -> Build:
    """The NIST IS step with latent width ``nz`` and the generator's hidden width ``2 nz``."""
    nist = preset("nist")["model"]
    model = {
        "prior": {**nist["prior"], "widths": [nist["prior"]["widths"][0], nz]},
        "generator": {**nist["generator"], "hidden_widths": [2 * nz]},
    }
    return training_step_case("nist", model_settings=model)


def _ula_steps(n_steps: int) -> Build:
    langevin = {**preset("svhn")["train"]["langevin"], "n_steps": n_steps}
    return training_step_case("svhn", langevin=langevin)


_NIST_Z = 40 * 81  # coordinates of a NIST prior draw: P x Q

#: The series and extras of the generation sweep, by label.
KAEM_GEN = "KAEM (ITS + generator)"
LEBM_GEN = "LEBM (60 Langevin steps + generator)"
VAE_GEN = "VAE"
DDPM_GEN = "DDPM (1,000 ancestral steps)"
DDIM_GEN = "DDPM (DDIM, 50 steps)"
ULA_STEP = "KAEM ULA-MLE step (batch 100)"
IS_STEP = "KAEM IS step (batch 100, S = 100)"
LEBM_STEP = "LEBM step (batch 100)"
VAE_STEP = "VAE step (batch 100)"
DDPM_STEP = "DDPM step (batch 50)"


#: Every sweep, by name, with the paper's settings and values.
SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in (
        Sweep(
            "prior_samples",
            "Prior sampling: inverse transform against 60-step Langevin",
            "samples drawn",
            (1, 10, 100, 1_000, 10_000, 100_000),
            {
                "ITS, NIST prior (3,240)": lambda n: its_case("nist", "search"),
                "ITS compiled, NIST prior (3,240)": lambda n: its_case("nist", "compiled"),
                "Langevin, 60 steps (3,240)": lambda n: langevin_case(_NIST_Z),
                "ITS, SVHN mixture prior (81)": lambda n: its_case("svhn", "search"),
                "ITS compiled, SVHN mixture prior (81)": lambda n: its_case("svhn", "compiled"),
                "Langevin, 60 steps (81)": lambda n: langevin_case(81),
            },
            samples=None,
            log_x=True,
            notes="ITS after a parameter change (its CDFs rebuilt), as after every update; "
            "'compiled' is model.prior.sampling: compiled, the same samples",
            ratios=(
                ("Langevin, 60 steps (3,240)", "ITS, NIST prior (3,240)"),
                ("Langevin, 60 steps (81)", "ITS, SVHN mixture prior (81)"),
                ("Langevin, 60 steps (81)", "ITS, NIST prior (3,240)"),
                ("ITS, NIST prior (3,240)", "ITS compiled, NIST prior (3,240)"),
                ("ITS, SVHN mixture prior (81)", "ITS compiled, SVHN mixture prior (81)"),
            ),
        ),
        Sweep(
            "is_step_nz",
            "IS training step (NIST, B = S = 100) against the latent width",
            "latent width n_z",
            (20, 40, 81, 162),
            {"IS step": _nist_width},
            log_x=True,
        ),
        Sweep(
            "thermo_nt",
            "Thermodynamic training step (SVHN) against the number of temperatures",
            "temperatures N_t",
            (2, 4, 6, 8, 10, 12),
            {"thermodynamic step": thermo_case},
            reference=("VAE step", training_step_case("vae_svhn")),
        ),
        Sweep(
            "ula_steps",
            "ULA-MLE training step (SVHN) against the posterior Langevin steps",
            "Langevin steps",
            (10, 20, 40, 70, 100),
            {"ULA-MLE step": _ula_steps},
            reference=("VAE step", training_step_case("vae_svhn")),
        ),
        Sweep(
            "generation",
            "Generation per image: KAEM, the latent EBM, the VAE and the DDPM (SVHN networks)",
            "images per call (batch)",
            (1, 100, 1_000),
            {
                KAEM_GEN: lambda n: generation_case("svhn"),
                LEBM_GEN: lambda n: generation_case("lebm_svhn"),
                VAE_GEN: lambda n: generation_case("vae_svhn"),
                DDPM_GEN: lambda n: ddpm_generation_case("ddpm_svhn", "ddpm", 1_000),
                DDIM_GEN: lambda n: ddpm_generation_case("ddpm_svhn", "ddim", 50),
            },
            samples=None,
            log_x=True,
            per_sample=True,
            notes=(
                "Generation with fixed parameters (KAEM's CDF tables built once, as at "
                "inference). Training steps at the presets' batch sizes on random images."
            ),
            ratios=(
                (LEBM_GEN, KAEM_GEN),
                (VAE_GEN, KAEM_GEN),
                (DDPM_GEN, KAEM_GEN),
                (DDIM_GEN, KAEM_GEN),
                (DDPM_GEN, VAE_GEN),
            ),
            extras=(
                (ULA_STEP, training_step_case("svhn")),
                (IS_STEP, training_step_case("svhn", criterion="importance")),
                (LEBM_STEP, training_step_case("lebm_svhn")),
                (VAE_STEP, training_step_case("vae_svhn")),
                (DDPM_STEP, training_step_case("ddpm_svhn")),
            ),
            extra_ratios=(
                (ULA_STEP, VAE_STEP),
                (IS_STEP, VAE_STEP),
                (LEBM_STEP, VAE_STEP),
                (DDPM_STEP, VAE_STEP),
            ),
            claims={
                KAEM_GEN: "2.30-2.45 ms an image (ITS, n_z 10-50)",
                LEBM_GEN: "3.58-3.66 ms an image",
                VAE_GEN: "2.09-2.18 ms an image",
                DDPM_GEN: "1.622 s an image",
                f"{LEBM_GEN} / {KAEM_GEN}": "1.5-1.6x (3.6 ms / 2.3 ms)",
                f"{VAE_GEN} / {KAEM_GEN}": "0.85-0.95x (2.1 ms / 2.3 ms)",
                f"{DDPM_GEN} / {KAEM_GEN}": "~700x (1.62 s / 2.3 ms)",
                ULA_STEP: "23.8-24.6 ms",
                IS_STEP: "6.0-7.2 ms; 4.6 ms (their page)",
                VAE_STEP: "5.95-6.09 ms; 5.8 ms (their page)",
                f"{IS_STEP} / {VAE_STEP}": "0.79x (4.6 ms / 5.8 ms, their page)",
            },
        ),
    )
}


def _timed_steps(case: Case, n_images: int, budget: int) -> int | None:
    """How many of a chain's steps one timed call runs: all where ``n_images * steps`` fits
    ``budget``, else as many as fit (at least one); None for a case that is no chain."""
    if case.steps is None or case.partial is None:
        return None
    return max(1, min(case.steps, budget // max(1, n_images)))


def _measure_case(
    label: str, case: Case, n_images: int, repeats: int, device: torch.device, budget: int
) -> dict[str, Any]:
    """``measure`` of ``case``, its chain cut to what ``budget`` allows and scaled back."""

    reps = max(1, round(repeats * case.repeats_scale))
    timed = _timed_steps(case, n_images, budget)
    if timed is None or timed == case.steps:
        r = measure(label, case.call, repeats=reps, device=device, setup=case.setup)
        chain = {} if timed is None else {"steps": case.steps, "timed_steps": timed, "scale": 1.0}
        return {**asdict(r), **chain}
    partial = case.partial
    r = measure(label, lambda: partial(timed), repeats=reps, device=device, setup=case.setup)
    scale = case.steps / timed
    row = asdict(r)
    for key in ("seconds", "seconds_min", "seconds_max", "cpu_seconds"):
        row[key] = row[key] * scale
    return {**row, "steps": case.steps, "timed_steps": timed, "scale": scale}


def run_sweep(
    name: str,
    device: str | torch.device = "cpu",
    *,
    repeats: int = 3,
    values: Sequence[int] | None = None,
    progress: bool = True,
    timed_image_steps: int | None = None,
) -> dict[str, Any]:
    """Measure every series of sweep ``name`` at every value, its reference and extras once.

    Parameters
    ----------
    name
        A key of :data:`SWEEPS`.
    device
        ``cpu`` or ``cuda``.
    repeats
        Timed calls per point (Langevin and DDPM cases half as many, at least one).
    values
        The values to measure (default: the sweep's own), ascending.
    timed_image_steps
        Images times steps one timed call of a chain may run (default
        :data:`TIMED_IMAGE_STEPS` of the device type); longer chains are timed over their
        first steps and scaled.

    Returns
    -------
    dict
        :func:`sweep_payload` of the measurements.
    """
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {sorted(SWEEPS)}")
    sweep, device = SWEEPS[name], torch.device(device)
    values = tuple(sorted(int(v) for v in (values or sweep.values)))
    if not values or values[0] < 1:
        raise ValueError(f"sweep {name}: values must be positive integers, got {list(values)}")
    budget = timed_image_steps or TIMED_IMAGE_STEPS.get(device.type, TIMED_IMAGE_STEPS["cuda"])
    if budget < 1:
        raise ValueError(f"timed_image_steps must be at least 1, got {budget}")
    points = [(label, v) for label in sweep.series for v in values]
    n_extras = len(sweep.extras) + (sweep.reference is not None)
    bar = tqdm(total=len(points) + n_extras, desc=name, disable=not progress)
    rows = []
    with bar:
        for label, value in points:
            g = torch.Generator(device=device).manual_seed(0)
            n = value if sweep.samples is None else sweep.samples
            case = sweep.series[label](value)(device, n, g)
            row = _measure_case(f"{label} @ {value}", case, n, repeats, device, budget)
            rows.append({"series": label, "value": value, **row})
            bar.update(1)
        once = []
        for label, build in ([sweep.reference] if sweep.reference else []) + list(sweep.extras):
            case = build(device, 1, torch.Generator(device=device).manual_seed(0))
            once.append({"series": label, **_measure_case(label, case, 1, repeats, device, budget)})
            bar.update(1)
    reference = once.pop(0) if sweep.reference is not None else None
    return sweep_payload(sweep, rows, reference, device, extras=once, timed_image_steps=budget)


def sweep_payload(
    sweep: Sweep,
    rows: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Any] | None,
    device: torch.device,
    *,
    extras: Sequence[Mapping[str, Any]] = (),
    timed_image_steps: int | None = None,
) -> dict[str, Any]:
    """A sweep's measurements with what they are and the machine, as one JSON-ready mapping."""
    return {
        "sweep": sweep.name,
        "title": sweep.title,
        "x_label": sweep.x_label,
        "log_x": sweep.log_x,
        "per_sample": sweep.per_sample,
        "notes": sweep.notes,
        "ratios": [list(pair) for pair in sweep.ratios],
        "extra_ratios": [list(pair) for pair in sweep.extra_ratios],
        "claims": dict(sweep.claims),
        "points": [dict(r) for r in rows],
        "reference": dict(reference) if reference else None,
        "extras": [dict(r) for r in extras],
        "timed_image_steps": timed_image_steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
