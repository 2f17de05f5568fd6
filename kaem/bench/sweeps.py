"""App. A's cost curves: how sampling and training time grow with the quantity that sets them.

Each :class:`Sweep` measures one or more *series* (KAEM and its peer) at every value of one
setting, with the median, the fastest and the slowest of the repeats and the peak memory of
each point (:func:`kaem.bench.harness.measure`), and optionally a *reference* measured once
and drawn as a line (the VAE's step, which no swept setting changes):

- ``prior_samples``: prior sampling time against the number of samples, KAEM's
  inverse-transform sampling of the NIST (3,240 coordinates) and SVHN mixture (81) priors
  against Pang et al.'s 60-step Langevin prior of the same latent sizes;
- ``is_step_nz``: the IS training step (NIST) against the latent width ``n_z`` (the prior's
  output width, which the generator's input takes; its hidden width doubles it, eq. 32);
- ``thermo_nt``: the thermodynamic step (SVHN) against the number of temperatures ``N_t``;
- ``ula_steps``: the ULA-MLE step (SVHN) against the number of posterior Langevin steps.

``python -m kaem.bench --sweep NAME`` runs one and writes its JSON (:func:`sweep_payload`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from kaem.bench.cases import Case, _its, _langevin, _thermo, _training_step
from kaem.presets import preset

__all__ = ["SWEEPS", "Sweep", "run_sweep", "sweep_payload"]

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


def _nist_width(nz: int) -> Build:
    """The NIST IS step with latent width ``nz`` and the generator's hidden width ``2 nz``."""
    nist = preset("nist")["model"]
    model = {
        "prior": {**nist["prior"], "widths": [nist["prior"]["widths"][0], nz]},
        "generator": {**nist["generator"], "hidden_widths": [2 * nz]},
    }
    return _training_step("nist", model_settings=model)


def _ula_steps(n_steps: int) -> Build:
    langevin = {**preset("svhn")["train"]["langevin"], "n_steps": n_steps}
    return _training_step("svhn", langevin=langevin)


_NIST_Z = 40 * 81  # coordinates of a NIST prior draw: P x Q


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
                "ITS, NIST prior (3,240)": lambda n: _its("nist", "search"),
                "ITS compiled, NIST prior (3,240)": lambda n: _its("nist", "compiled"),
                "Langevin, 60 steps (3,240)": lambda n: _langevin(_NIST_Z),
                "ITS, SVHN mixture prior (81)": lambda n: _its("svhn", "search"),
                "ITS compiled, SVHN mixture prior (81)": lambda n: _its("svhn", "compiled"),
                "Langevin, 60 steps (81)": lambda n: _langevin(81),
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
            {"thermodynamic step": _thermo},
            reference=("VAE step", _training_step("vae_svhn")),
        ),
        Sweep(
            "ula_steps",
            "ULA-MLE training step (SVHN) against the posterior Langevin steps",
            "Langevin steps",
            (10, 20, 40, 70, 100),
            {"ULA-MLE step": _ula_steps},
            reference=("VAE step", _training_step("vae_svhn")),
        ),
    )
}


def run_sweep(
    name: str,
    device: str | torch.device = "cpu",
    *,
    repeats: int = 3,
    values: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every series of sweep ``name`` at every value, and its reference once.

    Parameters
    ----------
    name
        A key of :data:`SWEEPS`.
    device
        ``cpu`` or ``cuda``.
    repeats
        Timed calls per point (Langevin cases half as many, at least one).
    values
        The values to measure (default: the sweep's own), ascending.

    Returns
    -------
    dict
        :func:`sweep_payload` of the measurements.
    """
    from kaem.bench.harness import measure

    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {sorted(SWEEPS)}")
    sweep, device = SWEEPS[name], torch.device(device)
    values = tuple(sorted(int(v) for v in (values or sweep.values)))
    if not values or values[0] < 1:
        raise ValueError(f"sweep {name}: values must be positive integers, got {list(values)}")
    points = [(label, v) for label in sweep.series for v in values]
    rows = []
    for label, value in tqdm(points, desc=name, disable=not progress):
        g = torch.Generator(device=device).manual_seed(0)
        n = value if sweep.samples is None else sweep.samples
        case = sweep.series[label](value)(device, n, g)
        reps = max(1, round(repeats * case.repeats_scale))
        r = measure(f"{label} @ {value}", case.call, repeats=reps, device=device, setup=case.setup)
        rows.append({"series": label, "value": value, **asdict(r)})
    reference = None
    if sweep.reference is not None:
        label, build = sweep.reference
        case = build(device, 1, torch.Generator(device=device).manual_seed(0))
        r = measure(label, case.call, repeats=repeats, device=device, setup=case.setup)
        reference = {"series": label, **asdict(r)}
    return sweep_payload(sweep, rows, reference, device)


def sweep_payload(
    sweep: Sweep,
    rows: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Any] | None,
    device: torch.device,
) -> dict[str, Any]:
    """A sweep's measurements with what they are and the machine, as one JSON-ready mapping."""
    return {
        "sweep": sweep.name,
        "title": sweep.title,
        "x_label": sweep.x_label,
        "log_x": sweep.log_x,
        "notes": sweep.notes,
        "ratios": [list(pair) for pair in sweep.ratios],
        "points": [dict(r) for r in rows],
        "reference": dict(reference) if reference else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
