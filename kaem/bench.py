"""Benchmarks: ``python -m kaem.bench``.

Prints one line per benchmark (name, median seconds over repetitions, peak memory in MiB)
followed by the ratios the paper's claims rest on: inverse-transform prior sampling against
Langevin sampling of a Pang et al. (2020) latent EBM prior (an MLP energy 200-200-1 with
LeakyReLU on an ``N(0, I)`` base, 60 ULA steps).

Peak memory is the growth of the process's peak resident set during the measured call (Linux
``VmHWM``, reset before each call), or ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from kaem.config import TrainConfig, from_dict
from kaem.losses import importance_loss
from kaem.model import KAEM, build_model
from kaem.presets import preset
from kaem.samplers import ula

__all__ = ["BenchResult", "langevin_prior", "main", "measure", "run_benchmarks"]

#: The SVHN model of Table 5: its prior mixes P = 40 Morlet components for each of Q = 81
#: coordinates.
SVHN_PRIOR = preset("svhn")["model"]


@dataclass(frozen=True)
class BenchResult:
    """Median wall time and peak memory of one benchmark."""

    name: str
    seconds: float
    peak_mib: float
    repeats: int
    device: str


def _read_status(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(
    name: str,
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    setup: Callable[[], object] | None = None,
) -> BenchResult:
    """Median seconds and peak memory of ``fn()`` over ``repeats`` calls.

    Memory is read from the first call, before any warm-up: in a fresh process (as
    :func:`run_benchmarks` arranges) that call's growth of the peak resident set is the
    memory the operation needs, where later calls would reuse pages the allocator kept.

    Parameters
    ----------
    name
        Label printed with the result.
    fn
        The measured call.
    repeats, warmup
        Timed calls and untimed warm-up calls.
    device
        CUDA calls are synchronised and their memory read from the caching allocator.
    setup
        Called (untimed) before every call, e.g. to change the parameters so caches are cold.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if setup is not None:
        setup()
    gc.collect()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        _reset_peak()
        base = _read_status("VmRSS") or 0.0
    fn()
    sync()
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - base
    else:
        peak = max(0.0, (_read_status("VmHWM") or base) - base)
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return BenchResult(name, statistics.median(times), peak, repeats, str(device))


class PangEnergy(nn.Module):
    """Latent EBM prior of Pang et al. (2020): ``log p(z) = -E(z) - ||z||^2 / 2``.

    ``E`` is an MLP ``dim -> 200 -> 200 -> 1`` with LeakyReLU (slope 0.1).
    """

    def __init__(self, dim: int, hidden: int = 200) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return -self.net(z).squeeze(-1) - 0.5 * z.square().sum(-1)


def langevin_prior(
    energy: PangEnergy, n: int, *, n_steps: int = 60, step_size: float = 0.4, generator=None
) -> torch.Tensor:
    """Short-run ULA prior samples of a Pang et al. (2020) energy (their 60 steps)."""
    dim = energy.net[0].in_features
    device = energy.net[0].weight.device
    z0 = torch.randn(n, dim, generator=generator, device=device)
    z, _ = ula(
        energy, z0, step_size=step_size, n_steps=n_steps, generator=generator, check_finite=False
    )
    return z


def _perturb(model: nn.Module) -> Callable[[], None]:
    """A parameter change, as an optimiser step makes, so per-version caches are cold."""

    def setup() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-6)

    return setup


#: Benchmarks of the core (NIST IS training, prior sampling against Langevin).
CORE = (
    "is_step",
    "its_prior",
    "its_prior_warm",
    "langevin_prior_3240",
    "langevin_prior_81",
    "its_mixture_svhn",
    "its_mixture_svhn_warm",
    "langevin_prior_svhn",
)
#: Training steps and generation with the SVHN settings (App. A): ULA-MLE, thermodynamic
#: steps for several numbers of temperatures, the VAE.
SVHN = (
    "ula_step_svhn",
    "thermo_step_svhn_nt2",
    "thermo_step_svhn_nt5",
    "thermo_step_svhn_nt10",
    "vae_step_svhn",
    "generate_kaem_svhn",
    "generate_vae_svhn",
)
BENCHMARKS = CORE + SVHN


def _benchmark(name: str, device: torch.device, repeats: int, n_samples: int) -> BenchResult:
    """Set up and measure one benchmark of :data:`BENCHMARKS` in this process."""
    g = torch.Generator(device=device).manual_seed(0)
    if name.startswith("langevin"):
        dim = {"langevin_prior_3240": 81 * 40, "langevin_prior_81": 81, "langevin_prior_svhn": 81}
        energy = PangEnergy(dim[name]).to(device)
        return measure(
            name,
            lambda: langevin_prior(energy, n_samples, generator=g),
            repeats=max(1, repeats // 2),
            device=device,
        )
    if name.startswith("its_mixture_svhn"):
        mixture = build_model(SVHN_PRIOR).prior.to(device)
        setup = None if name.endswith("_warm") else _perturb(mixture)
        return measure(
            name, lambda: mixture.sample(n_samples, g), repeats=repeats, device=device, setup=setup
        )
    if name in SVHN:
        return _svhn_benchmark(name, device, repeats, n_samples, g)
    nist = preset("nist")
    model: KAEM = build_model(nist["model"]).to(device)
    if name.startswith("its_prior"):
        setup = None if name.endswith("_warm") else _perturb(model.prior)
        return measure(
            name,
            lambda: model.prior.sample(n_samples, g),
            repeats=repeats,
            device=device,
            setup=setup,
        )
    if name == "is_step":
        cfg = from_dict(TrainConfig, nist["train"])
        x = torch.rand(cfg.batch_size, *model.image_shape, generator=g, device=device)

        def is_step() -> None:
            loss, _ = importance_loss(
                model, x, n_samples=cfg.importance_samples, resampler=cfg.resampler, generator=g
            )
            model.zero_grad(set_to_none=True)
            loss.backward()

        return measure(name, is_step, repeats=repeats, device=device, setup=_perturb(model))
    raise ValueError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS)}")


def _svhn_benchmark(
    name: str, device: torch.device, repeats: int, n_samples: int, g: torch.Generator
) -> BenchResult:
    """One training step (loss and gradient) or a generation run with the SVHN settings."""
    from kaem.train import CRITERIA, StepContext
    from kaem.vae import build_vae

    vae = "vae" in name
    cfg = preset("vae_svhn" if vae else "svhn")
    model = (build_vae(cfg["model"]) if vae else build_model(cfg["model"])).to(device)
    if name.startswith("generate"):
        return measure(name, lambda: model.generate(n_samples, g), repeats=repeats, device=device)
    train_cfg = dict(cfg["train"])
    if name.startswith("thermo"):
        n_temps = int(name.rsplit("nt", 1)[1])
        train_cfg["criterion"] = "thermodynamic"
        train_cfg["thermodynamic"] = {**train_cfg["thermodynamic"], "n_temps": n_temps}
    tc = from_dict(TrainConfig, train_cfg)
    x = torch.rand(tc.batch_size, *model.image_shape, generator=g, device=device)
    step_fn = CRITERIA[tc.criterion]

    def step() -> None:
        loss, _ = step_fn(model, x, tc, g, StepContext(1, 40_000))
        model.zero_grad(set_to_none=True)
        loss.backward()

    return measure(name, step, repeats=repeats, device=device)


def run_benchmarks(
    device: str | torch.device = "cpu",
    *,
    repeats: int = 5,
    n_samples: int = 10_000,
    only: Sequence[str] | None = None,
    isolate: bool = True,
) -> list[BenchResult]:
    """Run the benchmarks and return their results.

    Benchmarks (NIST settings of Table 4 unless stated):
    ``is_step``: one IS-MLE step, loss and gradient, batch 100, S = 100;
    ``its_prior``: ``n_samples`` exact prior samples (3,240 coordinates) after a parameter
    change (tables rebuilt, as after a training step); ``its_prior_warm``: the same with
    unchanged parameters (inference); ``langevin_prior_3240`` / ``langevin_prior_81``: 60 ULA
    steps of the Pang et al. prior on as many coordinates as the KAEM prior / as the generator
    input; ``its_mixture_svhn`` (and ``_warm``): samples of the SVHN mixture prior;
    ``langevin_prior_svhn``: Langevin on its 81 coordinates.

    Parameters
    ----------
    device
        ``cpu`` or ``cuda``.
    repeats
        Timed repetitions (Langevin runs use half as many: they take seconds each).
    n_samples
        Prior samples per call.
    only
        Names to run (default: all).
    isolate
        Run each benchmark in its own Python process, so memory peaks and caches of one
        cannot affect another.
    """
    names = list(only) if only else list(CORE)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    device = torch.device(device)
    if not isolate:
        return [_benchmark(n, device, repeats, n_samples) for n in names]
    results = []
    for name in names:
        cmd = [
            sys.executable,
            "-m",
            "kaem.bench",
            "--worker",
            name,
            "--device",
            str(device),
            "--repeats",
            str(repeats),
            "--samples",
            str(n_samples),
            "--threads",
            str(torch.get_num_threads()),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark {name} failed:\n{proc.stderr[-4000:]}")
        results.append(BenchResult(**json.loads(proc.stdout.strip().splitlines()[-1])))
    return results


RATIOS = [
    ("thermo_step_svhn_nt2", "ula_step_svhn"),
    ("thermo_step_svhn_nt5", "ula_step_svhn"),
    ("thermo_step_svhn_nt10", "ula_step_svhn"),
    ("ula_step_svhn", "vae_step_svhn"),
    ("generate_vae_svhn", "generate_kaem_svhn"),
    ("langevin_prior_3240", "its_prior"),
    ("langevin_prior_81", "its_prior"),
    ("langevin_prior_svhn", "its_mixture_svhn"),
    ("langevin_prior_3240", "its_prior_warm"),
    ("langevin_prior_81", "its_prior_warm"),
    ("langevin_prior_svhn", "its_mixture_svhn_warm"),
]


def ratios(results: Sequence[BenchResult]) -> dict[str, float]:
    """Speed-ups ``slow / fast`` for the pairs in :data:`RATIOS` that were measured."""
    by_name = {r.name: r.seconds for r in results}
    return {f"{a}/{b}": by_name[a] / by_name[b] for a, b in RATIOS if a in by_name and b in by_name}


def main(argv: Sequence[str] | None = None) -> list[BenchResult]:
    parser = argparse.ArgumentParser(
        prog="python -m kaem.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=10_000, help="prior samples per call")
    parser.add_argument(
        "--only", nargs="*", choices=BENCHMARKS, help="benchmarks to run (default: the core set)"
    )
    parser.add_argument(
        "--suite",
        choices=["core", "svhn", "all"],
        default="core",
        help="core: NIST IS and prior sampling; svhn: training steps and generation with the "
        "SVHN settings (minutes on a CPU); all: both",
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:  # one isolated benchmark: print its result as JSON
        result = _benchmark(args.worker, torch.device(args.device), args.repeats, args.samples)
        print(json.dumps(asdict(result)))
        return [result]
    suites = {"core": CORE, "svhn": SVHN, "all": BENCHMARKS}
    results = run_benchmarks(
        args.device,
        repeats=args.repeats,
        n_samples=args.samples,
        only=args.only or suites[args.suite],
    )
    print(
        f"# kaem.bench on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.samples} prior samples; median seconds over repeats, peak MiB"
    )
    for r in results:
        print(f"{r.name:<24s} {r.seconds:10.4f} s {r.peak_mib:10.1f} MiB")
    speedups = ratios(results)
    for name, value in speedups.items():
        print(f"# ratio {name:<44s} {value:8.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "results": [asdict(r) for r in results],
            "ratios": speedups,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "samples": args.samples,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
