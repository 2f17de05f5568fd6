"""Running the benchmarks, each in its own process (:func:`kaem.bench.measure.measure`), their
ratios, and the ``python -m kaem.bench`` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from kaem.argtypes import positive_int, thread_count
from kaem.bench.cases import BENCHMARKS, SMALL_BATCH, SUITES
from kaem.bench.measure import BenchResult, measure
from kaem.bench.sweeps import SWEEPS, run_sweep
from kaem.training import resolve_device

__all__ = ["RATIOS", "main", "payload", "ratios", "run_benchmarks"]


def _benchmark(name: str, device: torch.device, repeats: int, n_samples: int) -> BenchResult:
    """Build and measure one benchmark of :data:`BENCHMARKS` in this process."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS)}")
    g = torch.Generator(device=device).manual_seed(0)
    case = BENCHMARKS[name].build(device, n_samples, g)
    repeats = max(1, round(repeats * case.repeats_scale))
    return measure(name, case.call, repeats=repeats, device=device, setup=case.setup)


def run_benchmarks(
    device: str | torch.device = "cpu",
    *,
    repeats: int = 5,
    n_samples: int = 10_000,
    only: Sequence[str] | None = None,
    isolate: bool = True,
) -> list[BenchResult]:
    """Run benchmarks of :data:`kaem.bench.cases.BENCHMARKS` and return their results.

    Parameters
    ----------
    device
        ``cpu`` or ``cuda``.
    repeats
        Timed repetitions (Langevin runs use half as many: they take seconds each).
    n_samples
        Prior samples (or generated images) per call.
    only
        Names to run (default: the ``core`` suite).
    isolate
        Run each benchmark in its own Python process, so memory peaks and caches of one
        cannot affect another.
    """
    names = list(only) if only else list(SUITES["core"])
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
    (f"langevin_prior_81_{SMALL_BATCH}", f"its_prior_{SMALL_BATCH}"),
    ("langevin_prior_svhn", "its_mixture_svhn"),
    # What the compiled inverse CDF (model.prior.sampling: compiled) buys on each.
    ("its_prior", "its_prior_compiled"),
    (f"its_prior_{SMALL_BATCH}", f"its_prior_{SMALL_BATCH}_compiled"),
    ("its_mixture_svhn", "its_mixture_svhn_compiled"),
    ("is_step", "is_step_compiled"),
    ("langevin_prior_3240", "its_prior_compiled"),
    ("langevin_prior_81", "its_prior_compiled"),
    (f"langevin_prior_81_{SMALL_BATCH}", f"its_prior_{SMALL_BATCH}_compiled"),
    ("langevin_prior_svhn", "its_mixture_svhn_compiled"),
]


def ratios(results: Sequence[BenchResult]) -> dict[str, float]:
    """Speed-ups ``slow / fast`` for the pairs in :data:`RATIOS` that were measured."""
    by_name = {r.name: r.seconds for r in results}
    return {f"{a}/{b}": by_name[a] / by_name[b] for a, b in RATIOS if a in by_name and b in by_name}


def payload(results: Sequence[BenchResult], device: str | torch.device, n_samples: int) -> dict:
    """The results, their ratios and the machine, as one JSON-ready mapping."""
    device = torch.device(device)
    return {
        "results": [asdict(r) for r in results],
        "ratios": ratios(results),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "samples": n_samples,
    }


def _sweep_main(args: argparse.Namespace) -> dict:
    """Run ``args.sweep``, print a line per point and write the JSON if asked."""
    out = run_sweep(
        args.sweep,
        args.device,
        repeats=args.repeats,
        values=args.values,
        timed_image_steps=args.timed_image_steps,
    )
    print(f"# {out['title']} on {out['device_name']}; median [min, max] seconds, peak MiB")
    once = [*([out["reference"]] if out["reference"] else []), *out.get("extras", [])]
    for p in [*out["points"], *once]:
        where = f"{p['series']} @ {p['value']}" if "value" in p else p["series"]
        scaled = (
            f"  (timed {p['timed_steps']} of {p['steps']} steps, scaled)"
            if (p.get("scale") or 1.0) > 1.0
            else ""
        )
        print(
            f"{where:<52s} {p['seconds']:10.4f} [{p['seconds_min']:.4f}, "
            f"{p['seconds_max']:.4f}] s {p['peak_mib']:10.1f} MiB{scaled}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


def main(
    argv: Sequence[str] | None = None,
    *,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
    prog: str = "python -m kaem.bench",
) -> list[BenchResult]:
    """``python -m kaem.bench``: run a suite, print a line per benchmark, then the ratios.

    ``parser_class`` and ``prog`` let ``kaem bench`` parse the same options with its own
    error handling.
    """
    parser = parser_class(
        prog=prog,
        description="Benchmarks of App. A: one line per benchmark (median seconds over "
        "repeats, peak MiB), then the ratios the paper's claims rest on.",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument(
        "--samples", type=positive_int, default=10_000, help="prior samples per call"
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), help="benchmarks to run (default: a suite)"
    )
    parser.add_argument(
        "--suite",
        choices=list(SUITES),
        default="core",
        help="core: NIST IS and prior sampling; svhn: training steps and generation with the "
        "SVHN settings (minutes on a CPU); all: both",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        help="CPU threads, at most the cores this process may run on (default: PyTorch's choice)",
    )
    parser.add_argument(
        "--sweep",
        choices=list(SWEEPS),
        help="measure one of App. A's cost curves instead of the benchmarks: "
        + "; ".join(f"{n}: {s.title}" for n, s in SWEEPS.items()),
    )
    parser.add_argument(
        "--values", nargs="+", type=positive_int, help="the sweep's values (default: its own)"
    )
    parser.add_argument(
        "--timed-image-steps",
        type=positive_int,
        help="a sweep's chains (DDPM sampling): images x steps one timed call may run; longer "
        "ones are timed over their first steps and scaled (default: 50 on a CPU, 20,000 on CUDA)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.values and not args.sweep:
        parser.error("--values needs --sweep")
    if args.timed_image_steps and not args.sweep:
        parser.error("--timed-image-steps needs --sweep")
    if args.sweep:
        _sweep_main(args)
        return []
    if args.worker:  # one isolated benchmark: print its result as JSON
        result = _benchmark(args.worker, torch.device(args.device), args.repeats, args.samples)
        print(json.dumps(asdict(result)))
        return [result]
    results = run_benchmarks(
        args.device,
        repeats=args.repeats,
        n_samples=args.samples,
        only=args.only or SUITES[args.suite],
    )
    print(
        f"# kaem.bench on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.samples} prior samples; median seconds over repeats, peak MiB"
    )
    for r in results:
        print(f"{r.name:<24s} {r.seconds:10.4f} s {r.peak_mib:10.1f} MiB")
    summary = payload(results, args.device, args.samples)
    for name, value in summary["ratios"].items():
        print(f"# ratio {name:<44s} {value:8.1f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return results
