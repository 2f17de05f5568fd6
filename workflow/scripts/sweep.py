"""Snakemake job: one of App. A's cost curves (python -m kaem.bench --sweep)."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.bench.sweeps import run_sweep
from kaem.pipeline.artifacts import write_json
from kaem.pipeline.config import job_context, resolve_device


def main(
    sweep: str,
    out: str,
    *,
    repeats: int,
    values: list[int] | None,
    device: str,
    timed_image_steps: int | None = None,
) -> dict:
    """Measure ``sweep`` on ``device`` and write its JSON to ``out``."""
    result = run_sweep(
        sweep,
        resolve_device(device),
        repeats=repeats,
        values=values,
        timed_image_steps=timed_image_steps,
    )
    write_json(result, out)
    for p in result["points"]:
        print(f"{p['series']} @ {p['value']}: {p['seconds']:.4f} s, {p['peak_mib']:.1f} MiB")
    return result


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.wildcards.sweep,
            job.output[0],
            repeats=job.params.repeats,
            values=job.params.values,
            device=job.params.device,
            timed_image_steps=job.params.timed_image_steps,
        )
