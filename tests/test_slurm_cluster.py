"""The SLURM profile on a real one-node SLURM cluster, and the cluster helper itself.

Tests marked ``slurm`` install Debian's SLURM (as root, with apt-get), start a cluster on
localhost and run the throwaway workflow ``tests/slurm/Snakefile`` through the profile
derived from ``profiles/slurm/config.yaml``; every rule becomes its own SLURM job. The
other tests check the helper's pure parts and the user-facing profile without a cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_cluster as helper
import yaml
from slurm_cluster import (
    TEST_PROFILE_KEYS,
    USER_PROFILE,
    SlurmCluster,
    SlurmUnavailable,
    client_env,
    derive_test_profile,
    install_slurm,
    process_running,
    profile_partitions,
    render_slurm_conf,
    start_cluster,
    stop_by_pid_file,
    submitted_jobs,
)
from slurm_cluster import slurm_cluster as slurm_cluster  # the fixture, re-exported

SNAKEFILE = Path(__file__).parent / "slurm" / "Snakefile"


def _runtime_minutes(value: str) -> float:
    """Minutes in a Snakemake runtime string such as "36h", "90m" or "2d"."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([dhms])", value)
    assert match, f"runtime {value!r} is not of the form <number><d|h|m|s>"
    scale = {"d": 1440.0, "h": 60.0, "m": 1.0, "s": 1 / 60}[match.group(2)]
    return float(match.group(1)) * scale


def _squeue_minutes(limit: str) -> float:
    """Minutes in a SLURM time limit as squeue prints it: [days-]hours:minutes:seconds."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


# --- the user-facing profile -------------------------------------------------------------


def test_user_profile_gives_train_and_sample_a_gpu_and_long_limits():
    profile = yaml.safe_load(USER_PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    assert Path(profile["conda-prefix"]).is_absolute()
    default = profile["default-resources"]
    assert {"slurm_partition", "runtime", "mem_mb"} <= default.keys()
    for rule in ("train", "sample"):
        res = profile["set-resources"][rule]
        assert res["gpu"] == 1 and res["cpus_per_gpu"] >= 1
        assert res["mem_mb"] > default["mem_mb"]
        assert res["slurm_partition"] != default["slurm_partition"]
    # SVHN/CelebA cells train for 12-24 h on one GPU: the limit must exceed a day.
    assert _runtime_minutes(profile["set-resources"]["train"]["runtime"]) > 24 * 60
    # Status checks keep the plugin's defaults; the test-only keys are comments only.
    status_keys = ("slurm-status-command", "slurm-no-account", "slurm-init-seconds")
    assert not [key for key in profile if key.startswith(status_keys)]
    text = USER_PROFILE.read_text()
    for key in status_keys:
        assert re.search(rf"^#.*{key}", text, re.MULTILINE), f"{key} is not explained"
    # Every line a user must adapt says so.
    for key in ("slurm_account", "slurm_partition", "gpu_model", "conda-prefix"):
        lines = [line for line in text.splitlines() if f"{key}:" in line]
        assert lines and all("EDIT" in line for line in lines), key


def test_snakemake_reads_the_user_profile(tmp_path):
    """Snakemake itself parses the profile and gives train its GPU and partition."""
    shutil.copy(SNAKEFILE, tmp_path / "Snakefile")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "snakemake", "--profile", str(USER_PROFILE.parent)),
            *("--executor", "dryrun", "-n", "--directory", str(tmp_path), "results/sample.txt"),
        ],
        cwd=tmp_path,
        env=client_env(None),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    train = re.search(r"rule train:.*?resources: ([^\n]*)", out, re.DOTALL)
    assert train, out[-3000:]
    resources = dict(item.split("=", 1) for item in train.group(1).split(", "))
    assert resources["gpu"] == "1"
    assert resources["slurm_partition"] == "gpu"
    assert int(resources["runtime"]) == _runtime_minutes("36h")
    assert int(resources["mem_mb"]) == 64000


# --- the helper's pure parts ---------------------------------------------------------------


def test_derive_test_profile_fits_the_cpu_node_and_keeps_the_rest():
    profile = {
        "executor": "slurm",
        "jobs": 7,
        "software-deployment-method": "conda",
        "conda-prefix": "/shared/envs",
        "retries": 2,
        "default-resources": ["slurm_account=acct", "slurm_partition=cpu", "mem_mb=500"],
        "set-resources": {
            "train": {
                "slurm_partition": "gpu",
                "gpu": 1,
                "gpu_model": "a100",
                "cpus_per_gpu": 8,
                "mem_mb": 64000,
                "runtime": "36h",
            },
        },
    }
    out = derive_test_profile(profile, cpus=2, max_mem_mb=4000, overrides={"jobs": 3})
    assert out["executor"] == "slurm" and out["jobs"] == 3
    assert "software-deployment-method" not in out and "conda-prefix" not in out
    assert out["default-resources"] == {"slurm_partition": "cpu", "mem_mb": 500}
    assert out["set-resources"]["train"] == {
        "slurm_partition": "gpu",
        "cpus_per_task": 2,
        "mem_mb": 4000,
        "runtime": "36h",
    }
    for key, value in TEST_PROFILE_KEYS.items():
        assert out[key] == value
    assert profile["set-resources"]["train"]["gpu"] == 1, "the input must not be modified"
    assert profile_partitions(profile) == ["cpu", "gpu"]
    with pytest.raises(ValueError, match="cpus"):
        derive_test_profile(profile, cpus=0, max_mem_mb=1)


def test_render_slurm_conf_describes_one_node_with_the_given_partitions(tmp_path):
    node = {"NodeName": "n1", "CPUs": "4", "CoresPerSocket": "4", "RealMemory": "9999"}
    text = render_slurm_conf(
        root=tmp_path,
        munge_socket=Path("/tmp/m/munge.socket"),
        node=node,
        real_memory_mb=1234,
        partitions=["cpu", "gpu"],
        ctld_port=16817,
        slurmd_port=16818,
    )
    conf = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        conf.setdefault(key, []).append(value)
    assert conf["SlurmctldPort"] == ["16817"] and conf["SlurmdPort"] == ["16818"]
    assert conf["AuthInfo"] == ["socket=/tmp/m/munge.socket"]
    assert conf["AccountingStorageType"] == ["accounting_storage/none"]
    assert (
        int(conf["MinJobAge"][0])
        >= 3 * TEST_PROFILE_KEYS["slurm-init-seconds-before-status-checks"]
    )
    assert conf["NodeName"] == [
        "n1 NodeAddr=127.0.0.1 CPUs=4 CoresPerSocket=4 RealMemory=1234 State=UNKNOWN"
    ]
    assert conf["PartitionName"] == [
        "cpu Nodes=n1 Default=YES MaxTime=INFINITE State=UP",
        "gpu Nodes=n1 Default=NO MaxTime=INFINITE State=UP",
    ]
    for value in conf["StateSaveLocation"] + conf["SlurmctldPidFile"] + conf["SlurmdLogFile"]:
        assert Path(value).is_relative_to(tmp_path)
    with pytest.raises(ValueError, match="'g p u'"):
        render_slurm_conf(
            root=tmp_path,
            munge_socket=Path("/s"),
            node=node,
            real_memory_mb=1,
            partitions=["g p u"],
            ctld_port=1,
            slurmd_port=2,
        )


def test_submitted_jobs_reads_ids_and_rules_from_the_log():
    log = (
        "Job 2 has been submitted with SLURM jobid 41 (log: /w/logs/slurm/rule_train/41.log).\n"
        "noise 99\n"
        "Job 1 has been submitted with SLURM jobid 42 "
        "(log: /w/logs/slurm/rule_sample/a_b/42.log).\n"
    )
    assert submitted_jobs(log) == {"41": "train", "42": "sample"}
    assert submitted_jobs("nothing submitted") == {}


def test_client_env_drops_inherited_slurm_settings_and_puts_the_venv_first():
    base = {"PATH": "/usr/bin", "SLURM_JOB_ID": "7", "SQUEUE_FORMAT": "%i", "HOME": "/h"}
    env = client_env(Path("/c/slurm.conf"), base)
    assert env["SLURM_CONF"] == "/c/slurm.conf" and env["HOME"] == "/h"
    assert "SLURM_JOB_ID" not in env and "SQUEUE_FORMAT" not in env
    path = env["PATH"].split(os.pathsep)
    assert path[:2] == [str(Path(sys.executable).parent), "/usr/bin"] and "/usr/sbin" in path
    assert base["SLURM_JOB_ID"] == "7", "the base environment must not be modified"
    with_bin = client_env(None, {"PATH": "/usr/bin:/c/bin"}, [Path("/c/bin")])
    assert with_bin["PATH"].split(os.pathsep)[1:3] == ["/c/bin", "/usr/bin"]
    assert "SLURM_CONF" not in with_bin


def test_install_slurm_skips_only_for_lack_of_root_or_apt(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SlurmUnavailable, match="uid 1000, not root"):
        install_slurm()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(helper, "_program", lambda name: None)  # nothing installed
    monkeypatch.setattr(shutil, "which", lambda name: None)  # and no apt-get
    with pytest.raises(SlurmUnavailable, match="apt-get not found"):
        install_slurm()


def test_stop_by_pid_file_stops_only_the_named_process(tmp_path):
    pid_file = tmp_path / "sleep.pid"
    proc = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{proc.pid}\n")
        # A pid that now belongs to another program is left alone.
        assert not stop_by_pid_file(pid_file, "slurmd", timeout_s=1)
        assert proc.poll() is None
        assert stop_by_pid_file(pid_file, "sleep", timeout_s=5)
        assert proc.wait(timeout=5) == -15  # ended by SIGTERM
        assert not stop_by_pid_file(pid_file, "sleep", timeout_s=1)  # already gone
        assert not stop_by_pid_file(tmp_path / "missing.pid", "sleep")
    finally:
        proc.kill()
        proc.wait()


# --- on the cluster ------------------------------------------------------------------------


def _run_workflow(cluster: SlurmCluster, tmp_path: Path, target: str):
    workdir = tmp_path / "work"
    workdir.mkdir()
    profile = cluster.profile_dir(tmp_path / "profile")
    proc = cluster.snakemake(
        target, profile=profile, workdir=workdir, snakefile=SNAKEFILE, timeout_s=240
    )
    assert proc.returncode != 137, "snakemake hung and was killed:\n" + proc.stderr[-4000:]
    return workdir, proc


@pytest.mark.slurm
def test_each_rule_runs_as_its_own_slurm_job(slurm_cluster, tmp_path):
    workdir, proc = _run_workflow(slurm_cluster, tmp_path, "all")
    assert proc.returncode == 0, proc.stderr[-4000:]

    jobs = submitted_jobs(proc.stderr)
    assert sorted(jobs.values()) == ["sample", "train"], proc.stderr[-4000:]
    by_rule = {rule: job_id for job_id, rule in jobs.items()}

    train = (workdir / "results" / "train.txt").read_text().splitlines()
    sample = (workdir / "results" / "sample.txt").read_text().splitlines()
    assert int(train[0]) == 45 and int(sample[0]) == 90
    # Jobs found the virtualenv's python on PATH, as the plugin's job command needs.
    assert Path(train[1]).parent == Path(sys.executable).parent
    profile = yaml.safe_load(USER_PROFILE.read_text())
    for rule, lines in (("train", train), ("sample", sample)):
        job_id, partition, cpus = lines[-1].split()  # as the job's environment saw them
        assert job_id == by_rule[rule], f"{rule} ran in SLURM job {job_id}, log says {jobs}"
        assert partition == profile["set-resources"][rule]["slurm_partition"]
        want_cpus = min(profile["set-resources"][rule]["cpus_per_gpu"], slurm_cluster.cpus)
        assert int(cpus) == want_cpus
        log = workdir / "logs" / "slurm" / f"rule_{rule}" / f"{job_id}.log"
        assert log.exists(), f"no SLURM log for {rule} at {log}"

    # The controller's view: both finished, with the profile's partition and time limit.
    queue = slurm_cluster.squeue(jobs)
    done = slurm_cluster.sacct(jobs)
    for rule, job_id in by_rule.items():
        res = profile["set-resources"][rule]
        assert queue[job_id]["state"] == "COMPLETED" and done[job_id]["state"] == "COMPLETED"
        assert done[job_id]["exit_code"] == "0:0"
        assert queue[job_id]["partition"] == res["slurm_partition"]
        assert _squeue_minutes(queue[job_id]["time_limit"]) == _runtime_minutes(res["runtime"])
        mem = min(res["mem_mb"], slurm_cluster.real_memory_mb // 2)
        assert queue[job_id]["min_memory"] == f"{mem}M"
    # One plugin run: both jobs carry the same run id as their SLURM job name.
    assert len({queue[j]["name"] for j in jobs}) == 1


@pytest.mark.slurm
def test_a_failing_rule_is_a_failed_slurm_job_and_a_failed_run(slurm_cluster, tmp_path):
    workdir, proc = _run_workflow(slurm_cluster, tmp_path, "results/broken.txt")
    assert proc.returncode != 0, proc.stderr[-4000:]
    jobs = submitted_jobs(proc.stderr)
    assert list(jobs.values()) == ["broken"], proc.stderr[-4000:]
    (job_id,) = jobs
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in proc.stderr
    # The failure came from inside the job, not from the submission.
    assert (workdir / "results" / "broken.txt.jobid").read_text().strip() == job_id
    assert not (workdir / "results" / "broken.txt").exists()
    done = slurm_cluster.sacct([job_id])[job_id]
    assert done["state"] == "FAILED"
    assert done["exit_code"] == "1:0"  # the job's snakemake reports the rule's failure
    assert slurm_cluster.squeue([job_id])[job_id]["state"] == "FAILED"
    # Rules without set-resources run in the default partition of the profile.
    profile = yaml.safe_load(USER_PROFILE.read_text())
    assert done["partition"] == profile["default-resources"]["slurm_partition"]


@pytest.mark.slurm
def test_stop_ends_only_the_daemons_that_cluster_started(slurm_cluster, tmp_path):
    def pids(cluster: SlurmCluster) -> list[int]:
        return [int(pid_file.read_text().split()[0]) for pid_file, _ in cluster.started]

    session_pids = pids(slurm_cluster)
    other = start_cluster(tmp_path / "other", ["solo"])
    other_pids: list[int] = []
    try:
        assert other.node_state() == "idle" and other.squeue() == {}
        other_pids = pids(other)
        assert len(other_pids) == 3 and not set(other_pids) & set(session_pids)
        assert all(process_running(pid) for pid in other_pids)
    finally:
        other.stop()
    assert not any(process_running(pid) for pid in other_pids)
    assert not other.munge_dir.exists() and (other.log_dir / "munged.log").exists()
    # The session's cluster is untouched and still answers.
    assert all(process_running(pid) for pid in session_pids)
    assert slurm_cluster.node_state() == "idle"
