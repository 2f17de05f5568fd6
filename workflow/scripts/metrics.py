"""Snakemake job: FID/KID of a cell at each size and their extrapolation to 1/N -> 0."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.pipeline.artifacts import cell_metrics, write_json
from kaem.pipeline.config import job_context


def main(
    real: str,
    generated: str,
    out: str,
    sizes: list[int],
    *,
    seed: int,
    kid_subsets: int,
    kid_subset_size: int,
    cell: str = "",
    training_seed: int | None = None,
) -> dict:
    """Score ``generated`` against ``real`` features and write the metrics JSON to ``out``."""
    result = cell_metrics(
        real,
        generated,
        sizes,
        seed=seed,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
    )
    result = {"cell": cell, "training_seed": training_seed, **result}
    write_json(result, out)
    print(f"FID_inf {result['fid_inf']:.4f} (R^2 {result['fid_r2']:.3f})")
    print(f"KID_inf {result['kid_inf']:.5f} (R^2 {result['kid_r2']:.3f})")
    return result


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.input.real,
            job.input.generated,
            job.output[0],
            job.params.sizes,
            seed=job.params.seed,
            kid_subsets=job.params.kid_subsets,
            kid_subset_size=job.params.kid_subset_size,
            cell=job.wildcards.get("cell", f"real/{job.wildcards.get('dataset')}"),
            training_seed=int(job.wildcards["seed"]) if "seed" in job.wildcards.keys() else None,
        )
