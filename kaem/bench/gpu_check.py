"""One call that checks this package on a device and times it: ``python -m kaem.bench.gpu_check``.

Made for a machine with a CUDA device (it runs on any device, the CPU included), in about
five minutes on a GPU, and writes one JSON report:

1. **device checks**: the step function of every criterion (IS, ULA-MLE, thermodynamic, the
   VAE's ELBO, the latent EBM, the DDPM) runs on the device with a finite loss and finite
   gradients; the prior's inverse transform on the device returns the CPU's draws for the
   same uniforms; its log density agrees with the CPU's; held-out evidence runs with the
   images on the CPU and
   the model on the device; a run checkpointed on the device resumes on the CPU.
2. **benchmarks**: ``python -m kaem.bench --suite all`` on the device, each case in its own
   process;
3. **training**: ``--updates`` (500) ULA-MLE updates with the SVHN settings on synthetic
   32x32 images through :func:`kaem.train`, then generation; seconds per update;
4. **generation cost**: the ``generation`` sweep (:mod:`kaem.bench.sweeps`): time per image
   at batch 1, 100 and 1,000 of KAEM, the latent EBM, the VAE and the DDPM (1,000 ancestral
   and 50 DDIM steps; chains longer than 20,000 image-steps timed in part and scaled), and
   the training step of each.

``--quick`` shrinks every size so that the whole check runs in a minute on a CPU (the test
suite runs it that way). A failing check is recorded with its error and the others go on;
the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kaem.argtypes import positive_int
from kaem.bench.cases import SUITES
from kaem.bench.harness import ratios, run_benchmarks
from kaem.bench.sweeps import run_sweep
from kaem.config import TrainConfig, from_dict
from kaem.inference.evidence import evaluate_log_evidence
from kaem.io import atomic_write_text
from kaem.kinds import build
from kaem.model import quadrature as quad
from kaem.presets import preset
from kaem.training import Progress, build_step, resolve_device, train

__all__ = ["main", "run_checks"]

#: (criterion, preset) of the step functions checked on the device.
STEPS = (
    ("importance", "nist"),
    ("ula", "svhn"),
    ("thermodynamic", "svhn"),
    ("elbo", "vae_svhn"),
    ("lebm", "lebm_svhn"),
    ("ddpm", "ddpm_svhn"),
)


def _environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
        env["cuda"] = torch.version.cuda
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, criterion: str, shape: list[int] | None = None) -> tuple[Any, TrainConfig]:
    cfg = preset(name)
    train_cfg = from_dict(TrainConfig, {**cfg["train"], "criterion": criterion})
    model_cfg = dict(cfg["model"], **({"image_shape": shape} if shape else {}))
    return build(model_cfg, criterion), train_cfg


def _check_step(criterion: str, name: str, device: torch.device, batch: int) -> dict[str, Any]:
    model, cfg = _model(name, criterion)
    model.to(device)
    x = torch.rand(batch, *model.image_shape, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    step = build_step(cfg)
    step(model, x, g, Progress(1, 10))  # the first call pays for the device's warm-up
    t0 = time.perf_counter()
    loss, _, checks = step(model, x, g, Progress(2, 10))
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    for check in checks:
        check.raise_if_failed()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
    if not finite:
        raise FloatingPointError(f"{criterion}: non-finite loss or gradient on {device}")
    return {"seconds": seconds, "loss": float(loss.detach()), "batch": batch}


def _check_prior(device: torch.device, n: int) -> dict[str, Any]:
    model, _ = _model("nist", "importance")
    prior = model.prior.to(device)
    table = prior.cdf_table()
    u = torch.rand(
        *table.cdf.shape[:-1],
        n,
        generator=torch.Generator(device=device).manual_seed(1),
        device=device,
    )
    on_device = quad.inverse_cdf(u, table)
    on_cpu = quad.inverse_cdf(u.cpu(), prior.to("cpu").cdf_table())
    # The inverse is continuous in u, so tables that round differently move draws by little.
    gap = float((on_device.cpu() - on_cpu).abs().max())
    if gap > 1e-4:
        raise AssertionError(f"inverse-transform draws on {device} differ from the CPU's by {gap}")
    z = on_cpu.permute(2, 0, 1)[:64]  # (64, Q, P)
    cpu = prior.log_prob(z)
    on_device = prior.to(device).log_prob(z.to(device)).cpu()
    diff = float(((cpu - on_device).abs().max() / cpu.abs().max()).detach())
    if diff > 1e-4:
        raise AssertionError(f"log_prob on {device} differs from the CPU's by {diff} (relative)")
    return {"max_draw_gap": gap, "log_prob_relative_gap": diff}


def _check_evidence(device: torch.device) -> dict[str, Any]:
    model, _ = _model("nist", "importance")
    result = evaluate_log_evidence(model.to(device), torch.rand(4, 1, 28, 28), n_samples=200)
    return {"importance": result["importance"]["mean"]}


def _check_resume(device: torch.device, folder: Path) -> dict[str, Any]:
    tiny = preset("tiny")
    images = (torch.rand(100, 1, 8, 8) * 255).to(torch.uint8)
    cfg = from_dict(TrainConfig, {**tiny["train"], "max_steps": 4, "checkpoint_every": 2})
    train(build(tiny["model"], "importance"), images, cfg, folder, device=device, progress=False)
    more = from_dict(TrainConfig, {**tiny["train"], "max_steps": 6, "checkpoint_every": 2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(
            build(tiny["model"], "importance"), images, more, folder, device="cpu", progress=False
        )
    moved = any("resumes on cpu" in str(w.message) for w in caught)
    return {"steps": result.steps, "warned_of_the_device_change": moved}


def _check_training(device: torch.device, updates: int, batch: int) -> dict[str, Any]:
    model, cfg = _model("svhn", "ula")
    cfg = from_dict(
        TrainConfig,
        {
            **asdict(cfg),
            "max_steps": updates,
            "batch_size": batch,
            "checkpoint_every": updates,
            "log_every": max(1, updates // 10),
        },
    )
    images = (torch.rand(max(2 * batch, 200), 3, 32, 32) * 255).to(torch.uint8)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        result = train(model, images, cfg, folder, device=device, progress=False)
        _sync(device)
        seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    generated = result.model.generate(min(1000, 10 * batch), torch.Generator(device=device))
    _sync(device)
    return {
        "updates": updates,
        "batch": batch,
        "seconds_per_update": seconds / updates,
        "generation_seconds": time.perf_counter() - t0,
        "generated": int(generated.shape[0]),
        "finite": bool(torch.isfinite(generated).all()),
    }


def run_checks(device: torch.device, *, quick: bool, updates: int) -> dict[str, Any]:
    """Every check and timing, each recorded with its result or its error."""
    report: dict[str, Any] = {"environment": _environment(device), "checks": {}}
    batch = 4 if quick else 100

    def record(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            entry = {"ok": True, **fn()}
        except Exception as exc:  # a failing check is reported, and the others still run
            entry = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6),
            }
        entry["wall_seconds"] = time.perf_counter() - t0
        report["checks"][name] = entry
        print(f"{name:<28s} {'ok' if entry['ok'] else 'FAILED: ' + entry['error']}", flush=True)

    for criterion, name in STEPS:
        record(f"step_{criterion}", lambda c=criterion, n=name: _check_step(c, n, device, batch))
    record("prior_paths", lambda: _check_prior(device, 500 if quick else 20_000))
    record("evidence_cpu_images", lambda: _check_evidence(device))
    with tempfile.TemporaryDirectory() as folder:
        record("resume_on_cpu", lambda: _check_resume(device, Path(folder)))
    record("training", lambda: _check_training(device, 3 if quick else updates, batch))

    def bench() -> dict[str, Any]:
        only = ("its_prior", "langevin_prior_81") if quick else SUITES["all"]
        results = run_benchmarks(
            device,
            repeats=1 if quick else 5,
            n_samples=200 if quick else 10_000,
            only=only,
            isolate=not quick,  # quick: in this process, to save the interpreter starts
        )
        return {"results": [asdict(r) for r in results], "ratios": ratios(results)}

    record("benchmarks", bench)

    def generation() -> dict[str, Any]:
        # Quick: one image a call, one step of each DDPM chain, one repeat.
        options = {"values": [1], "repeats": 1, "timed_image_steps": 1} if quick else {}
        return run_sweep("generation", device, progress=False, **options)

    record("generation_sweep", generation)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the checks and write the report; the exit status is 1 if any check failed."""
    parser = argparse.ArgumentParser(prog="python -m kaem.bench.gpu_check", description=__doc__)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the report")
    parser.add_argument("--updates", type=positive_int, default=500, help="training updates")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    report = run_checks(device, quick=args.quick, updates=args.updates)
    report["total_seconds"] = time.perf_counter() - t0
    failed = [name for name, c in report["checks"].items() if not c["ok"]]
    report["failed"] = failed
    atomic_write_text(json.dumps(report, indent=2, default=str), args.out)
    print(
        f"{len(report['checks']) - len(failed)} of {len(report['checks'])} checks passed "
        f"in {report['total_seconds']:.0f} s on {device}; report: {args.out}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
