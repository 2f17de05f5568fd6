"""Snakemake job: the benchmarks of App. A (kaem.bench), one process per benchmark."""

import os
import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.bench import BENCHMARKS, payload, run_benchmarks
from kaem.pipeline.artifacts import write_json
from kaem.pipeline.config import job_context, resolve_device


def main(out: str, settings: dict) -> dict:
    """Run the benchmarks named in ``settings`` (config ``benchmark``) and write their JSON."""
    device = resolve_device(settings.get("device", "auto"))
    # Each benchmark runs in a fresh `python -m kaem.bench` process, which must find the
    # same kaem as this job.
    repo = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p
    )
    results = run_benchmarks(
        device,
        repeats=settings.get("repeats", 5),
        n_samples=settings.get("samples", 10_000),
        only=settings.get("only") or list(BENCHMARKS),  # kaem.bench alone runs a core set
    )
    summary = payload(results, device, settings.get("samples", 10_000))
    write_json(summary, out)
    for r in summary["results"]:
        print(f"{r['name']:<28s} {r['seconds']:10.4f} s {r['peak_mib']:10.1f} MiB")
    return summary


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(job.output[0], job.params.settings)
