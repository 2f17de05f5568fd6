"""The user-facing SLURM profile, and the one-node SLURM cluster helper the tests run on.

The profile checks run without a cluster: its keys, and a dry run of the real workflow
through it, which shows the rule names in ``set-resources`` are the workflow's. The helper's
pure parts (profile derivation, ``slurm.conf``, log parsing, environment, pid files) are
checked without a cluster too; one test marked ``slurm`` starts a second cluster and stops
it, leaving the session's alone. The workflow itself runs on the cluster in
``tests/test_slurm_workflow.py``.
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
from helpers import HANG_S
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

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "workflow_configs" / "tiny.yaml"
# The rules the profile must send to GPU nodes (the paper's GPU work, see the profile).
GPU_RULES = ("train", "sample", "features_real", "features_generated", "benchmark")


def _runtime_minutes(value: str) -> float:
    """Minutes in a Snakemake runtime string such as "36h", "90m" or "2d"."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([dhms])", value)
    assert match, f"runtime {value!r} is not of the form <number><d|h|m|s>"
    scale = {"d": 1440.0, "h": 60.0, "m": 1.0, "s": 1 / 60}[match.group(2)]
    return float(match.group(1)) * scale


def _planned_resources(out: str) -> dict[str, list[dict[str, str]]]:
    """Rule -> the resources of each of its jobs, from a dry run's printed plan."""
    planned: dict[str, list[dict[str, str]]] = {}
    for rule, line in re.findall(
        r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.M
    ):
        planned.setdefault(rule, []).append(dict(item.split("=", 1) for item in line.split(", ")))
    return planned


# --- the user-facing profile -------------------------------------------------------------


def test_user_profile_gives_the_gpu_rules_a_gpu_and_marks_what_to_edit():
    profile = yaml.safe_load(USER_PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    assert Path(profile["conda-prefix"]).is_absolute()
    assert profile["rerun-incomplete"] is True and profile["retries"] >= 1
    default = profile["default-resources"]
    assert {"slurm_partition", "runtime", "mem_mb"} <= default.keys()
    assert "gpu" not in default
    assert set(profile["set-resources"]) == set(GPU_RULES)
    for rule in GPU_RULES:
        res = profile["set-resources"][rule]
        assert res["gpu"] == 1 and res["cpus_per_gpu"] >= 1, rule
        assert res["mem_mb"] > 0 and _runtime_minutes(res["runtime"]) > 0, rule
        assert res["slurm_partition"] != default["slurm_partition"], rule
    # A thermodynamic CelebA cell trains for more than a day on the paper's GPU.
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


def test_snakemake_applies_the_user_profile_to_the_workflows_rules(tmp_path):
    """A dry run of the real workflow through the profile: every ``set-resources`` entry
    names one of its rules, and those rules' jobs get the profile's GPU, partition, memory
    and time limit, the others the default resources.

    Only the conda settings are dropped from the profile: Snakemake looks for ``conda``
    even in a dry run, and the test machine has none.
    """
    profile = yaml.safe_load(USER_PROFILE.read_text())
    copy = {
        k: v for k, v in profile.items() if k not in ("software-deployment-method", "conda-prefix")
    }
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(copy))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "snakemake", "--profile", str(tmp_path / "profile")),
            *("--executor", "dryrun", "-n", "--snakefile", str(REPO / "workflow" / "Snakefile")),
            *("--directory", str(work), "--configfile", str(TINY)),
        ],
        cwd=work,
        env=client_env(None),
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = _planned_resources(proc.stdout + proc.stderr)
    assert set(profile["set-resources"]) <= set(planned), sorted(planned)
    default = profile["default-resources"]
    for rule, jobs in planned.items():
        want = {**default, **profile["set-resources"].get(rule, {})}
        for res in jobs:
            assert res["slurm_partition"] == want["slurm_partition"], rule
            assert res["slurm_account"] == want["slurm_account"], rule
            assert int(res["mem_mb"]) == want["mem_mb"], rule
            assert int(res["runtime"]) == _runtime_minutes(want["runtime"]), rule
            # The rules' own `gpu` (1 on colour datasets only) yields to the profile's.
            assert int(res.get("gpu", 0)) == want.get("gpu", 0), rule


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
