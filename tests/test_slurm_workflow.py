"""The project's workflow on a real one-node SLURM cluster, through the SLURM profile.

The tiny configuration (``tests/workflow_configs/tiny.yaml``: scikit-learn's 8x8 digits, one
cell per kind of training) runs through the profile derived from
``profiles/slurm/config.yaml`` (:meth:`SlurmCluster.profile_dir`), with the workflow
profile ``workflow/profiles/default`` applied after it as Snakemake does for every run.
Every rule is its own SLURM job except those the workflow marks ``localrule: True``:
``all``, which only names the targets, and the figure and table rules, each of which reads
a few small files and writes one picture or table in a few seconds, less than the queue
wait and fresh Snakemake start of a SLURM job (about 10 s here, often minutes on a busy
cluster). The tests hold the workflow to exactly that.

A training job made to fail (``device: cuda`` on the GPU-less node: a valid setting that only
the job can find wrong, the way a GPU rule sent to a CPU partition fails) must be a FAILED
SLURM job and a failed run; rerun with the setting corrected, only that job runs again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import HANG_S
from slurm_cluster import USER_PROFILE, SlurmCluster, submitted_jobs

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY = REPO / "tests" / "workflow_configs" / "tiny.yaml"
CELLS = ("tiny_is", "tiny_thermo", "tiny_vae")

pytestmark = pytest.mark.slurm

# Jobs of the tiny run per rule: one dataset, three cells, the benchmarks, figures, tables.
PLAN = {
    "all": 1,
    "prepare_data": 1,
    "classifier": 1,
    "features_real": 1,
    "train": 3,
    "sample": 3,
    "features_generated": 3,
    "metrics": 3,
    "benchmark": 1,
    "figure": 14,  # one job a figure, drawn on the login node
    "figure_benchmark": 1,
    "table": 4,  # one job a table
}
LOCAL_RULES = frozenset({"all", "figure", "figure_benchmark", "table"})
# Each SLURM job costs about 10 s of scheduling and Snakemake start-up; two run at a time.
# A run is killed only when it hangs (helpers.HANG_S), never because the machine is busy.
RUN_TIMEOUT_S = HANG_S


@dataclass(frozen=True)
class Run:
    """One Snakemake run on the cluster: where, its log, and the SLURM jobs it submitted."""

    workdir: Path
    proc: subprocess.CompletedProcess[str]
    jobs: dict[str, str]  # SLURM job id -> rule, in submission order

    @property
    def log(self) -> str:
        return self.proc.stderr


def one_seed_config(root: Path) -> Path:
    """The tiny config with one seed a cell, no real-vs-real row and no sweeps: the rules are
    the same, and each SLURM job costs about 10 s of scheduling and start-up."""
    cfg = yaml.safe_load(TINY.read_text())
    for cell in cfg["cells"].values():
        cell.pop("seeds", None)
    for table in cfg["tables"].values():
        table.pop("real", None)
    cfg["benchmark"]["sweeps"] = {"enabled": False}
    path = root / "tiny-one-seed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_workflow(cluster: SlurmCluster, root: Path, *args: str, workdir: Path | None = None) -> Run:
    """The workflow on the tiny config (:func:`one_seed_config`) through the test profile, with
    ``args`` (targets first: ``--configfile`` and ``--config`` take every value that follows
    them)."""
    workdir = workdir or root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    # One CPU per job: every rule runs one thread, so two jobs share the 2-CPU node.
    profile = cluster.profile_dir(root / "profile", cpus=1)
    proc = cluster.snakemake(
        *args,
        "--configfile",
        str(one_seed_config(root)),
        profile=profile,
        workdir=workdir,
        snakefile=SNAKEFILE,
        timeout_s=RUN_TIMEOUT_S,
    )
    assert proc.returncode != 137, "snakemake hung and was killed:\n" + proc.stderr[-6000:]
    return Run(workdir, proc, submitted_jobs(proc.stderr))


def job_stats(log: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule -> job count), from the start of a run's log."""
    match = re.search(r"Job stats:\n(.*?)\ntotal\s+\d+", log, re.DOTALL)
    assert match, "no job stats in the log:\n" + log[:3000]
    rows = (line.split() for line in match.group(1).splitlines())
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def slurm_logs(run: Run) -> dict[str, Path]:
    """SLURM job id -> the job's log file, from the log paths Snakemake printed."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]*?)\)", run.log)
    return {job_id: Path(path) for job_id, path in found}


def runtime_minutes(value: str) -> int:
    """Minutes in a Snakemake runtime string such as "48h" or "90m"."""
    match = re.fullmatch(r"(\d+)([dhm])", value)
    assert match, f"runtime {value!r} is not of the form <integer><d|h|m>"
    return int(match.group(1)) * {"d": 1440, "h": 60, "m": 1}[match.group(2)]


def squeue_minutes(limit: str) -> int:
    """Minutes in a time limit as squeue prints it: [days-]hours:minutes:seconds."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, _ = (int(p) for p in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + minutes


# ----------------------------------------------------------------------------- the tiny run


@pytest.fixture(scope="module")
def tiny_run(slurm_cluster, tmp_path_factory) -> Run:
    """The whole tiny workflow on the cluster, once for the tests below: 17 SLURM jobs, about
    3 minutes on a 2-CPU node (each job is mostly a Snakemake start, about 12 s)."""
    run = run_workflow(slurm_cluster, tmp_path_factory.mktemp("slurm_tiny"))
    assert run.proc.returncode == 0, run.log[-6000:]
    return run


def test_every_rule_but_the_local_ones_is_its_own_slurm_job(tiny_run):
    assert job_stats(tiny_run.log) == PLAN
    want = {rule: n for rule, n in PLAN.items() if rule not in LOCAL_RULES}
    assert Counter(tiny_run.jobs.values()) == want, tiny_run.log[-4000:]
    for rule in LOCAL_RULES:
        assert re.search(rf"^localrule {rule}:", tiny_run.log, re.MULTILINE), rule
        assert not re.search(rf"^rule {rule}:", tiny_run.log, re.MULTILINE), rule
    # The workflow profile came after the SLURM profile and left its resources alone (the
    # partitions and limits checked below would otherwise be its own).
    assert "workflow specific profile" in tiny_run.log
    default = yaml.safe_load(
        (REPO / "workflow" / "profiles" / "default" / "config.yaml").read_text()
    )
    assert not {"default-resources", "set-resources", "resources", "executor"} & set(default)
    # One SLURM job per rule and wildcard value: each cell trained, sampled... in its own.
    logs = slurm_logs(tiny_run)
    assert logs.keys() == tiny_run.jobs.keys()
    for rule in ("train", "sample", "features_generated", "metrics"):
        dirs = sorted(logs[j].parent.name for j, r in tiny_run.jobs.items() if r == rule)
        assert dirs == [f"{cell}_0" for cell in CELLS], (rule, dirs)  # wildcards cell, seed


def test_the_controller_saw_each_job_complete_with_its_rules_resources(tiny_run, slurm_cluster):
    queue = slurm_cluster.squeue(tiny_run.jobs)
    done = slurm_cluster.sacct(tiny_run.jobs)
    assert queue.keys() == done.keys() == tiny_run.jobs.keys()
    profile = yaml.safe_load(USER_PROFILE.read_text())
    default = profile["default-resources"]
    mem_cap = slurm_cluster.real_memory_mb // 2  # the test profile's cap (profile_dir)
    for job_id, rule in tiny_run.jobs.items():
        assert queue[job_id]["state"] == "COMPLETED", (rule, queue[job_id])
        assert done[job_id]["state"] == "COMPLETED" and done[job_id]["exit_code"] == "0:0"
        res = {**default, **profile["set-resources"].get(rule, {})}
        assert queue[job_id]["partition"] == res["slurm_partition"], rule
        assert squeue_minutes(queue[job_id]["time_limit"]) == runtime_minutes(res["runtime"])
        assert queue[job_id]["min_memory"] == f"{min(res['mem_mb'], mem_cap)}M", rule
        assert queue[job_id]["cpus"] == "1", rule
    # The rules the profile gives a GPU really reached the GPU partition, by rule name.
    for rule in ("train", "sample"):
        assert profile["set-resources"][rule]["slurm_partition"] != default["slurm_partition"]
        assert {done[j]["partition"] for j, r in tiny_run.jobs.items() if r == rule} == {
            profile["set-resources"][rule]["slurm_partition"]
        }
    # One plugin run: every job carries the run's id as its SLURM job name.
    assert len({queue[j]["name"] for j in tiny_run.jobs}) == 1


def test_each_slurm_log_holds_its_rules_job(tiny_run):
    """SLURM logs are kept (the test profile keeps successful ones) where the profile says."""
    slurm_dir = (tiny_run.workdir / "logs" / "slurm").resolve()
    for job_id, path in slurm_logs(tiny_run).items():
        rule = tiny_run.jobs[job_id]
        assert path.resolve().is_relative_to(slurm_dir / f"rule_{rule}"), path
        assert path.name == f"{job_id}.log" and path.exists(), path
        text = path.read_text()
        # The job's own Snakemake ran exactly this rule and finished it.
        assert re.search(rf"^rule {rule}:", text, re.MULTILINE), (rule, text[-2000:])
        assert "1 of 1 steps (100%) done" in text, (rule, text[-2000:])
    # Snakemake's own log file records every SLURM job id too.
    (log_file,) = (tiny_run.workdir / ".snakemake" / "log").glob("*.snakemake.log")
    text = log_file.read_text()
    assert all(f"SLURM jobid {job_id} " in text for job_id in tiny_run.jobs)


def test_the_outputs_of_the_jobs_are_complete_and_finite(tiny_run):
    res = tiny_run.workdir / "results"
    ours = ["FID_inf", "FID SE", "FID R2", "KID_inf", "KID SE", "KID R2"]
    tiny = pd.read_csv(res / "tables" / "tiny.csv")
    assert list(tiny["cell"]) == list(CELLS)
    assert np.isfinite(tiny[ours].to_numpy()).all() and (tiny["FID_inf"] > 0).all()
    cells = pd.read_csv(res / "tables" / "cells.csv")
    assert (cells["steps"] == 30).all()
    for name in ("tiny", "cells", "extractors", "benchmark"):
        for ext in ("csv", "md", "tex"):
            assert (res / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    bench = pd.read_csv(res / "tables" / "benchmark.csv").set_index("benchmark")
    assert (bench.loc[["its_prior", "langevin_prior_81", "is_step"], "seconds"] > 0).all()
    for cell in CELLS:
        metrics = json.loads((res / "metrics" / cell / "seed0.json").read_text())
        assert metrics["n_generated"] == 250 and metrics["sizes"] == [100, 150, 200, 250]
        for kind in ("samples", "training_curve", "extrapolation"):
            assert (res / "figures" / cell / f"{kind}.png").stat().st_size > 1000, (cell, kind)
    assert (res / "figures" / "benchmark.png").stat().st_size > 1000


def test_a_rerun_of_a_finished_run_submits_nothing(tiny_run, slurm_cluster, tmp_path):
    again = run_workflow(slurm_cluster, tmp_path, workdir=tiny_run.workdir)
    assert again.proc.returncode == 0, again.log[-4000:]
    assert again.jobs == {} and "Nothing to be done" in again.log


# ----------------------------------------------------------------------------- a failure


def test_a_failing_training_job_is_a_failed_slurm_job_and_a_failed_run(
    tiny_run, slurm_cluster, tmp_path
):
    workdir = tmp_path / "work"
    data = workdir / "results" / "data" / "tiny.h5"
    data.parent.mkdir(parents=True)
    shutil.copyfile(tiny_run.workdir / "results" / "data" / "tiny.h5", data)
    target = "results/train/tiny_is/seed0/model.pt"

    failed = run_workflow(
        slurm_cluster, tmp_path, target, "--config", "device=cuda", workdir=workdir
    )
    assert failed.proc.returncode != 0, failed.log[-4000:]
    assert list(failed.jobs.values()) == ["train"], failed.log[-4000:]
    (job_id,) = failed.jobs
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in failed.log
    done = slurm_cluster.sacct([job_id])[job_id]
    assert done["state"] == "FAILED" and done["exit_code"] == "1:0"
    assert slurm_cluster.squeue([job_id])[job_id]["state"] == "FAILED"
    profile = yaml.safe_load(USER_PROFILE.read_text())
    assert done["partition"] == profile["set-resources"]["train"]["slurm_partition"]
    # The error came from inside the job, said why, and reached the driver's output.
    reason = "device 'cuda' was asked for, but this machine has no GPU"
    assert reason in (workdir / "logs" / "train" / "tiny_is" / "seed0.log").read_text()
    assert reason in failed.log
    assert slurm_logs(failed)[job_id].exists()  # a failed job's SLURM log is always kept
    assert not (workdir / target).exists()

    # Rerun with the setting corrected: the one missing job runs, nothing else.
    fixed = run_workflow(slurm_cluster, tmp_path, target, workdir=workdir)
    assert fixed.proc.returncode == 0, fixed.log[-4000:]
    assert list(fixed.jobs.values()) == ["train"], fixed.log[-4000:]
    (fixed_id,) = fixed.jobs
    assert slurm_cluster.sacct([fixed_id])[fixed_id]["state"] == "COMPLETED"
    assert (workdir / target).exists()
