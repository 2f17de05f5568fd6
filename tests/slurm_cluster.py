"""A real one-node SLURM cluster on localhost, for tests of the workflow's SLURM profile.

The cluster is Debian's SLURM (``slurmctld``, ``slurmd``, ``slurm-client``) with its own
``munged``, configured for a container without systemd or cgroups: one node (this machine,
as ``slurmd -C`` describes it, reached at 127.0.0.1), job accounting off, job completion
records written to a text file so that ``sacct --completion`` still reports finished jobs.
Everything it starts lives under a directory of its own (configuration, state, spool, pid
files, logs) and listens on free ports, so it neither reads nor disturbs a system cluster.
Clients find it through ``SLURM_CONF``, which :meth:`SlurmCluster.env` sets, and, inside
jobs, through wrappers of the client programs put first on ``PATH``
(:func:`write_client_wrappers` says why).

Use it through the session-scoped :func:`slurm_cluster` fixture::

    def test_something(slurm_cluster, tmp_path):
        profile = slurm_cluster.profile_dir(tmp_path / "profile")
        proc = slurm_cluster.snakemake(
            "all", profile=profile, workdir=tmp_path, snakefile=my_snakefile
        )
        jobs = submitted_jobs(proc.stderr)          # SLURM job id -> rule
        states = slurm_cluster.squeue(jobs)         # job id -> squeue fields

The fixture skips, with the reason, only where the scheduler cannot be installed (not root,
no ``apt-get``); a failed installation or start is an error, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import HANG_S

REPO_ROOT = Path(__file__).resolve().parents[1]
USER_PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"

DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "srun", "squeue", "sacct", "sinfo", "scontrol", "scancel", "munge")
MUNGE_KEY = Path("/etc/munge/munge.key")

# Keys the test profile adds to the user-facing profile. With accounting off `sacct` exits
# 1, and the plugin, which prefers `sacct` whenever the program exists, would poll forever;
# `squeue` works because MinJobAge keeps finished jobs listed for 10 minutes. The first
# status check comes after 2 s instead of 40 s, and each check that finds no job finished
# waits 10 s longer than the last (the plugin's rule), so checks fall 2, 14 and 36 s after
# a submission: a job of about 12 s (a Snakemake start inside the job, the usual cost
# here) is seen at 14 s. A one-job run then takes about 20 s instead of a minute.
# `slurm-no-account` is declared by plugin 2.8.0 but not read; what keeps `-A` off the
# sbatch line is dropping `slurm_account` (see `derive_test_profile`). Successful jobs'
# logs are kept so that tests can read them; retries are off so that a rule made to fail
# is one failed SLURM job, not one per attempt.
TEST_PROFILE_KEYS: dict[str, Any] = {
    "slurm-status-command": "squeue",
    "slurm-no-account": True,
    "slurm-init-seconds-before-status-checks": 2,
    "slurm-keep-successful-logs": True,
    "retries": 0,
}
# Software deployment: jobs run the driver's own interpreter (the project's virtualenv, on
# the shared filesystem), and conda environments cannot be built offline.
DROPPED_PROFILE_KEYS = ("software-deployment-method", "sdm", "use-conda", "conda-prefix")
# The node has no GPU, so GPU requests would leave jobs pending forever.
GPU_RESOURCES = ("gpu", "gpus", "nvidia_gpu", "gpu_model", "gres", "tasks_per_gpu")
PARTITION_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SUBMITTED = re.compile(
    r"has been submitted with SLURM jobid (\d+) \(log: (.*?/rule_([^/\s]+)/[^\s)]*)\)"
)


class SlurmUnavailable(RuntimeError):
    """The scheduler cannot be installed on this machine (the reason is the message)."""


def _program(name: str) -> str | None:
    """Full path of a program, also looking in the sbin directories a non-login PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _require(name: str) -> str:
    path = _program(name)
    if path is None:
        raise FileNotFoundError(f"program {name!r} not found after installing SLURM")
    return path


def _tail(text: str, n_lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-n_lines:])


def install_slurm(timeout_s: float = 900.0) -> None:
    """Install Debian's SLURM and munge packages unless they are already present.

    Parameters
    ----------
    timeout_s : float
        Limit for each ``apt-get`` call, in seconds.

    Raises
    ------
    SlurmUnavailable
        When not running as root or without ``apt-get``: the only cases where the
        scheduler cannot be installed, and a test should skip.
    RuntimeError
        When ``apt-get`` fails; that is a broken environment, not a reason to skip.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"running as uid {os.geteuid()}, not root: cannot install SLURM or start "
            "slurmd and munged"
        )
    if all(_program(name) for name in DAEMONS + CLIENTS):
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("apt-get not found: cannot install Debian's SLURM packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for the dpkg lock rather than fail when another apt-get holds it.
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    for cmd in ([*apt, "update"], [*apt, "install", "-y", *DEBIAN_PACKAGES]):
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` exited with {proc.returncode}:\n"
                f"{_tail(proc.stdout + proc.stderr)}"
            )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def describe_node() -> dict[str, str]:
    """This machine as a SLURM node: the ``key=value`` pairs of ``slurmd -C``'s first line.

    Returns
    -------
    dict of str to str
        Keys such as ``NodeName``, ``CPUs``, ``CoresPerSocket``, ``RealMemory`` (MB).
    """
    out = subprocess.run(
        [_require("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    first = out.splitlines()[0]
    pairs = dict(item.split("=", 1) for item in first.split() if "=" in item)
    for key in ("NodeName", "CPUs", "RealMemory"):
        if key not in pairs:
            raise RuntimeError(f"`slurmd -C` printed no {key}: {first!r}")
    return pairs


def render_slurm_conf(
    *,
    root: Path,
    munge_socket: Path,
    node: Mapping[str, str],
    real_memory_mb: int,
    partitions: Sequence[str],
    ctld_port: int,
    slurmd_port: int,
) -> str:
    """Text of a ``slurm.conf`` for a one-node cluster whose files all live under ``root``.

    Parameters
    ----------
    root : Path
        Directory holding ``state/``, ``spool/``, ``log/`` and the pid files.
    munge_socket : Path
        Socket of the cluster's own ``munged``.
    node : Mapping[str, str]
        The node as :func:`describe_node` reports it; ``RealMemory`` is replaced.
    real_memory_mb : int
        Memory SLURM may hand out on the node, in MB.
    partitions : Sequence[str]
        Partition names, all on the one node; the first is the default.
    ctld_port, slurmd_port : int
        TCP ports of ``slurmctld`` and ``slurmd``.

    Returns
    -------
    str
        The configuration file's text.
    """
    if not partitions:
        raise ValueError("partitions is empty: the cluster needs at least one partition")
    for name in partitions:
        if not PARTITION_NAME.match(name):
            raise ValueError(f"partition name {name!r} is not a valid SLURM partition name")
    if real_memory_mb <= 0:
        raise ValueError(f"real_memory_mb must be positive, got {real_memory_mb}")
    node_name = node["NodeName"]
    hardware = " ".join(
        f"{key}={value}"
        for key, value in node.items()
        if key not in ("NodeName", "RealMemory", "UpTime")
    )
    lines = [
        "ClusterName=kaemtest",
        # "localhost" is accepted as this machine's name, so no DNS entry is needed.
        "SlurmctldHost=localhost",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        # Daemons and jobs run as root: the state directory sits inside the test's private
        # temporary directory, which a `slurm` user could not enter.
        "SlurmUser=root",
        "SlurmdUser=root",
        # Jobs are submitted as root (the default, stated because the test depends on it).
        "DisableRootJobs=NO",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        # No systemd and no cgroup hierarchy of our own in a container.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "JobAcctGatherType=jobacct_gather/none",
        # No slurmdbd: `sacct` then fails, except with --completion, which reads this file.
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'log' / 'jobcomp.txt'}",
        # Finished jobs stay visible to `squeue` for 10 minutes: the plugin's status
        # command needs at least 3x its first-check delay.
        "MinJobAge=600",
        "ReturnToService=2",
        "KillWait=5",
        "MailProg=/bin/true",  # no mail: silences the controller's complaint at start
        f"NodeName={node_name} NodeAddr=127.0.0.1 {hardware} "
        f"RealMemory={real_memory_mb} State=UNKNOWN",
    ]
    for i, name in enumerate(partitions):
        default = "YES" if i == 0 else "NO"
        lines.append(
            f"PartitionName={name} Nodes={node_name} Default={default} MaxTime=INFINITE State=UP"
        )
    return "\n".join(lines) + "\n"


def _resources(value: Any, where: str) -> dict[str, Any]:
    """Resources given as a mapping or as a list of ``name=value`` strings, as a dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        out = {}
        for item in value:
            name, sep, raw = str(item).partition("=")
            if not sep:
                raise ValueError(f"{where}: resource {item!r} is not of the form name=value")
            out[name.strip()] = yaml.safe_load(raw)
        return out
    raise TypeError(f"{where}: expected a mapping or a list, got {value!r}")


def _fit_resources(resources: Mapping[str, Any], *, cpus: int, max_mem_mb: int) -> dict[str, Any]:
    """One rule's (or the default) resources, cut down to what the CPU test node offers."""
    out = {
        key: value
        for key, value in resources.items()
        if key not in GPU_RESOURCES and key != "slurm_account"
    }
    if "cpus_per_gpu" in out:
        # Without a GPU the plugin ignores cpus_per_gpu; keep the request as CPUs per task.
        out["cpus_per_task"] = max(1, min(int(out.pop("cpus_per_gpu")), cpus))
    if "cpus_per_task" in out:
        out["cpus_per_task"] = max(1, min(int(out["cpus_per_task"]), cpus))
    if "mem_mb" in out:
        out["mem_mb"] = min(int(out["mem_mb"]), max_mem_mb)
    return out


def derive_test_profile(
    profile: Mapping[str, Any],
    *,
    cpus: int,
    max_mem_mb: int,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The test cluster's profile: the user-facing one, fitted to a one-node CPU cluster.

    Kept as given: executor, jobs, latency-wait, rerun-incomplete and the other run
    options, each rule's partition and runtime (the test cluster has the same partitions,
    without time limits). Changed: conda deployment dropped, ``slurm_account`` dropped, GPU
    requests dropped with ``cpus_per_gpu`` turned into ``cpus_per_task``, CPU and memory
    requests capped at the node's, and :data:`TEST_PROFILE_KEYS` added.

    Parameters
    ----------
    profile : Mapping[str, Any]
        The parsed user-facing ``config.yaml``.
    cpus : int
        CPUs of the test node; larger CPU requests are capped to it.
    max_mem_mb : int
        Largest memory request per job, in MB.
    overrides : Mapping[str, Any], optional
        Top-level keys that replace the result's, applied last.

    Returns
    -------
    dict
        The test profile, ready for ``yaml.safe_dump``.
    """
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    if max_mem_mb < 1:
        raise ValueError(f"max_mem_mb must be at least 1, got {max_mem_mb}")
    out = {k: v for k, v in profile.items() if k not in DROPPED_PROFILE_KEYS}
    fit = {"cpus": cpus, "max_mem_mb": max_mem_mb}
    out["default-resources"] = _fit_resources(
        _resources(profile.get("default-resources"), "default-resources"), **fit
    )
    set_resources = profile.get("set-resources") or {}
    if not isinstance(set_resources, Mapping):
        raise TypeError(f"set-resources: expected a mapping of rule names, got {set_resources!r}")
    out["set-resources"] = {
        rule: _fit_resources(_resources(res, f"set-resources.{rule}"), **fit)
        for rule, res in set_resources.items()
    }
    out.update(TEST_PROFILE_KEYS)
    out.update(overrides or {})
    return out


def profile_partitions(profile: Mapping[str, Any]) -> list[str]:
    """Partitions a profile names: the default resources' first, then per-rule ones in order."""
    names = []
    default = _resources(profile.get("default-resources"), "default-resources")
    if "slurm_partition" in default:
        names.append(str(default["slurm_partition"]))
    for rule, res in (profile.get("set-resources") or {}).items():
        res = _resources(res, f"set-resources.{rule}")
        if "slurm_partition" in res and str(res["slurm_partition"]) not in names:
            names.append(str(res["slurm_partition"]))
    return names or ["debug"]


def submitted_jobs(log: str) -> dict[str, str]:
    """SLURM job ids a Snakemake run submitted, read from its log.

    Parameters
    ----------
    log : str
        Snakemake's stderr (or its ``.snakemake/log`` file).

    Returns
    -------
    dict of str to str
        SLURM job id to rule name, in submission order.
    """
    return {m.group(1): m.group(3) for m in SUBMITTED.finditer(log)}


def process_running(pid: int) -> bool:
    """Whether a process runs; a zombie (its parent never reaped it) counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _wait(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def stop_by_pid_file(pid_file: Path, name: str, timeout_s: float = 15.0) -> bool:
    """Stop the daemon whose pid ``pid_file`` holds, if it is still that daemon.

    Sends SIGTERM, then SIGKILL after ``timeout_s``. Nothing is signalled when the file is
    missing, the process has ended, or the pid now belongs to a program not called
    ``name`` (a reused pid).

    Returns
    -------
    bool
        True when a process was signalled.
    """
    pid = _read_pid(pid_file)
    if pid is None or not process_running(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return False
    if comm != name[:15]:  # the kernel truncates comm to 15 characters
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait(lambda: not process_running(pid), timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait(lambda: not process_running(pid), 5.0)
    return True


def client_env(
    conf: Path | None,
    base: Mapping[str, str] | None = None,
    bin_dirs: Sequence[Path] = (),
) -> dict[str, str]:
    """Environment for SLURM clients and Snakemake talking to the cluster at ``conf``.

    Settings inherited from an enclosing SLURM job or the user's shell (``SLURM_*``,
    ``SBATCH_*``, ``SRUN_*``, ``SQUEUE_*``, ``SACCT_*``, ``SINFO_*``) are removed: they
    would redirect submissions or change the output formats parsed here. The running
    interpreter's ``bin`` directory goes first on ``PATH``, then ``bin_dirs``, because
    jobs inherit this environment (``sbatch --export=ALL``) and rules call ``python``.

    Parameters
    ----------
    conf : Path or None
        The cluster's ``slurm.conf``, exported as ``SLURM_CONF``; not set when None.
    base : Mapping[str, str], optional
        Environment to start from; ``os.environ`` when None.
    bin_dirs : Sequence[Path]
        Directories to put on ``PATH`` right after the interpreter's.

    Returns
    -------
    dict of str to str
        A new environment; ``base`` is not modified.
    """
    base = os.environ if base is None else base
    prefixes = ("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_", "SACCT_", "SINFO_")
    env = {k: v for k, v in base.items() if not k.startswith(prefixes)}
    first = [str(Path(sys.executable).parent), *(str(d) for d in bin_dirs)]
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in first]
    # The daemons and munged live in sbin, which a non-login root PATH may lack.
    path += [d for d in ("/usr/sbin", "/sbin") if d not in path]
    env["PATH"] = os.pathsep.join([*first, *path])
    if conf is not None:
        env["SLURM_CONF"] = str(conf)
    return env


def write_client_wrappers(bin_dir: Path, conf: Path) -> None:
    """Put shell wrappers for the SLURM clients in ``bin_dir`` that default ``SLURM_CONF``.

    The jobstep executor inside each job drops every ``SLURM_*`` variable it does not
    know, ``SLURM_CONF`` included, before it calls ``srun``; on a real cluster ``srun``
    then finds ``/etc/slurm/slurm.conf``. The test cluster keeps its configuration in its
    own directory instead, so ``srun`` (and the other clients) found on ``PATH`` first
    restore the variable when it is missing.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in CLIENTS:
        if name == "munge":
            continue
        wrapper = bin_dir / name
        wrapper.write_text(
            "#!/bin/sh\n"
            f'SLURM_CONF="${{SLURM_CONF:-{conf}}}"\n'
            "export SLURM_CONF\n"
            f'exec "{_require(name)}" "$@"\n'
        )
        wrapper.chmod(0o755)


# Job states in which a job still holds, or waits for, the node.
_ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
)


@dataclass
class SlurmCluster:
    """A running one-node cluster started by :func:`start_cluster`.

    Attributes
    ----------
    root : Path
        Directory holding ``slurm.conf``, ``state/``, ``spool/``, ``log/``, pid files and
        ``bin/`` (client wrappers, see :func:`write_client_wrappers`).
    conf : Path
        The ``slurm.conf``; clients find it through ``SLURM_CONF`` (see :meth:`env`).
    log_dir : Path
        Daemon logs (``slurmctld.log``, ``slurmd.log``, ``munged.log`` after stop) and
        ``jobcomp.txt``, the completion record of every finished job.
    munge_dir : Path
        The private ``munged``'s socket, pid file and log (removed by :meth:`stop`).
    node_name : str
        The node's name (this machine's short host name).
    cpus : int
        CPUs on the node.
    real_memory_mb : int
        Memory SLURM hands out on the node, in MB.
    partitions : tuple of str
        Partition names; the first is the default.
    """

    root: Path
    conf: Path
    log_dir: Path
    munge_dir: Path
    node_name: str
    cpus: int
    real_memory_mb: int
    partitions: tuple[str, ...]
    started: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment in which SLURM clients and Snakemake use this cluster."""
        return client_env(self.conf, base, [self.root / "bin"])

    def run(self, *cmd: str, check: bool = True, timeout_s: float = 300.0) -> str:
        """Run a SLURM client command against this cluster; return its stdout."""
        proc = subprocess.run(
            list(cmd),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` exited with {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc.stdout

    def node_state(self) -> str:
        """The node's state as ``sinfo`` abbreviates it (``idle``, ``mix``, ``down*``...)."""
        # sinfo prints the node once per partition; the states agree.
        out = self.run("sinfo", "--noheader", "--Node", "--format=%t", check=False)
        return " ".join(sorted(set(out.split())))

    def squeue(self, job_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """Jobs the controller still lists, finished ones included (for ``MinJobAge``).

        Parameters
        ----------
        job_ids : iterable of str, optional
            Keep only these job ids; all jobs when None.

        Returns
        -------
        dict
            Job id to ``state`` (``COMPLETED``, ``FAILED``, ``RUNNING``...), ``partition``,
            ``min_memory`` (e.g. ``4000M``), ``time_limit`` (e.g. ``1-12:00:00``), ``cpus``,
            ``name`` (the plugin's run id) and ``reason``.
        """
        fields = ("job_id", "state", "partition", "min_memory", "time_limit", "cpus", "name")
        out = self.run(
            "squeue",
            "--states=all",
            "--noheader",
            "--format=%i|%T|%P|%m|%l|%C|%j|%r",
        )
        return self._select(out, (*fields, "reason"), job_ids)

    def sacct(self, job_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """Finished jobs from the job completion record (``sacct --completion``).

        With accounting storage off, plain ``sacct`` fails; the completion record
        keeps every finished job, also after ``squeue`` has forgotten it.

        Parameters
        ----------
        job_ids : iterable of str, optional
            Keep only these job ids; all jobs when None.

        Returns
        -------
        dict
            Job id to ``name``, ``state``, ``exit_code`` (``status:signal``, e.g. ``3:0``),
            ``partition``, ``cpus``, ``time_limit`` (minutes or ``UNLIMITED``), ``nodes``.
        """
        fields = ("job_id", "name", "state", "exit_code", "partition", "cpus", "time_limit")
        out = self.run(
            "sacct",
            "--completion",
            "--parsable2",
            "--noheader",
            "--format=JobID,JobName,State,ExitCode,Partition,NCPUS,Timelimit,NodeList",
        )
        return self._select(out, (*fields, "nodes"), job_ids)

    @staticmethod
    def _select(
        text: str, fields: Sequence[str], job_ids: Iterable[str] | None
    ) -> dict[str, dict[str, str]]:
        wanted = None if job_ids is None else {str(j) for j in job_ids}
        rows = {}
        for line in text.splitlines():
            values = line.strip().split("|")
            if len(values) != len(fields):
                continue
            row = dict(zip(fields, values, strict=True))
            if wanted is None or row["job_id"] in wanted:
                rows[row["job_id"]] = row
        return rows

    def profile_dir(
        self,
        dest: Path,
        *,
        source: Path = USER_PROFILE,
        cpus: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the test profile derived from ``source`` to ``dest/config.yaml``.

        Parameters
        ----------
        dest : Path
            Profile directory to create (pass it to ``snakemake --profile``).
        source : Path
            The user-facing profile (default ``profiles/slurm/config.yaml``).
        cpus : int, optional
            Most CPUs one job may ask for; the node's CPUs when None. The workflow's rules
            each run one thread, so ``cpus=1`` lets jobs share the node instead of queueing
            behind a GPU rule whose ``cpus_per_gpu`` would otherwise take every CPU.
        overrides : Mapping[str, Any], optional
            Top-level profile keys to set last (e.g. ``{"jobs": 1}``).

        Returns
        -------
        Path
            ``dest``.
        """
        cpus = self.cpus if cpus is None else cpus
        if not 1 <= cpus <= self.cpus:
            raise ValueError(f"cpus must lie in [1, {self.cpus}] (the node's CPUs), got {cpus}")
        profile = yaml.safe_load(source.read_text())
        # Half the node's memory per job, so that two one-CPU jobs can run side by side.
        max_mem = max(1, self.real_memory_mb // 2)
        derived = derive_test_profile(profile, cpus=cpus, max_mem_mb=max_mem, overrides=overrides)
        dest.mkdir(parents=True, exist_ok=True)
        header = (
            f"# Generated for a one-node test cluster from {source}.\n"
            "# Changed from that file: conda deployment dropped (jobs run in the test's\n"
            "# virtualenv); slurm_account dropped (the cluster has no accounting);\n"
            "# gpu/gpu_model removed and cpus_per_gpu turned into cpus_per_task, because\n"
            f"# the node has no GPU; CPUs capped at {cpus} and mem_mb at {max_mem};\n"
            "# status checks with squeue after 2 s; successful jobs' logs kept; no retries.\n"
        )
        (dest / "config.yaml").write_text(header + yaml.safe_dump(derived, sort_keys=False))
        return dest

    def snakemake(
        self,
        *args: str,
        profile: Path,
        workdir: Path,
        snakefile: Path | None = None,
        timeout_s: int = HANG_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run Snakemake with ``profile`` on this cluster, killed after ``timeout_s``.

        Snakemake runs under ``timeout -s KILL``: the plugin has been seen to ignore
        SIGTERM while it waits on a status command, and a hang must fail the test rather
        than stall CI (exit status 137 then). Jobs it left behind are cancelled by
        :meth:`stop`.

        Parameters
        ----------
        *args : str
            Further arguments, e.g. targets.
        profile : Path
            Profile directory, e.g. from :meth:`profile_dir`.
        workdir : Path
            Working directory (``--directory``); SLURM logs land under it.
        snakefile : Path, optional
            The Snakefile; Snakemake's own lookup in ``workdir`` when None.
        timeout_s : int
            Wall-clock limit in seconds: only a hang reaches the default (helpers.HANG_S).

        Returns
        -------
        subprocess.CompletedProcess
            With ``returncode``, ``stdout`` and ``stderr`` (Snakemake logs to stderr).
        """
        cmd = ["timeout", "-s", "KILL", str(int(timeout_s)), sys.executable, "-m", "snakemake"]
        # Absolute paths: Snakemake runs in ``workdir``, not in the caller's directory.
        workdir = Path(workdir).resolve()
        cmd += ["--profile", str(Path(profile).resolve()), "--directory", str(workdir)]
        if snakefile is not None:
            cmd += ["--snakefile", str(Path(snakefile).resolve())]
        cmd += list(args)
        return subprocess.run(
            cmd, cwd=workdir, env=self.env(), capture_output=True, text=True, check=False
        )

    def cancel_all(self, timeout_s: float = 30.0) -> None:
        """Cancel every job of this cluster and wait until none is running."""
        active = [j for j, row in self.squeue().items() if row["state"] in _ACTIVE_STATES]
        if not active:
            return
        self.run("scancel", *active, check=False)

        def drained() -> bool:
            rows = self.squeue(active).values()
            return not any(row["state"] in _ACTIVE_STATES for row in rows)

        _wait(drained, timeout_s, 0.5)

    def stop(self) -> None:
        """Cancel leftover jobs, then stop the daemons this cluster started, by pid file.

        Only processes recorded in the cluster's own pid files are signalled, so a system
        ``munged`` or another cluster on the machine keeps running.
        """
        with contextlib.suppress(Exception):
            self.cancel_all()
        for pid_file, name in reversed(self.started):
            stop_by_pid_file(pid_file, name)
        self.started.clear()
        munge_log = self.munge_dir / "munged.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(munge_log, self.log_dir / "munged.log")
        shutil.rmtree(self.munge_dir, ignore_errors=True)


def _ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    # The package's post-install script normally creates the key; create it if it did not.
    MUNGE_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run([_require("mungekey"), "--create", f"--keyfile={MUNGE_KEY}"], check=True)
    shutil.chown(MUNGE_KEY.parent, "munge", "munge")
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o600)


def _start_munged(munge_dir: Path, log_dir: Path) -> None:
    """Start a private munged as the munge user, with its pid file in ``munge_dir``."""
    socket_path = munge_dir / "munge.socket"
    pid_file = munge_dir / "munged.pid"
    cmd = [
        _require("munged"),
        f"--socket={socket_path}",
        f"--pid-file={pid_file}",
        f"--log-file={munge_dir / 'munged.log'}",
        f"--seed-file={munge_dir / 'munged.seed'}",
        f"--key-file={MUNGE_KEY}",
    ]
    # Run as the munge user, who owns the key; munged daemonizes itself.
    status, output = _launch(
        cmd,
        log_dir / "munged.console",
        user="munge",
        group="munge",
        extra_groups=[],
        cwd=munge_dir,
    )
    if status != 0:
        raise RuntimeError(f"munged exited with {status}: {output}")

    def answers() -> bool:
        cred = subprocess.run(
            [_require("munge"), f"--socket={socket_path}", "--no-input"],
            capture_output=True,
            check=False,
        )
        return cred.returncode == 0

    if not _wait(answers, 120.0):
        raise RuntimeError(f"munged did not answer on {socket_path}")


def _launch(cmd: list[str], out_file: Path, **kwargs: Any) -> tuple[int, str]:
    """Run a self-daemonizing program; return its exit status and console output.

    The output goes to a file, not a pipe: a daemon that kept an inherited pipe open
    would make the call wait for it forever.
    """
    with out_file.open("w") as out:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
            **kwargs,
        )
    return proc.returncode, out_file.read_text().strip()


def _start_daemon(cmd: list[str], pid_file: Path, log_file: Path, name: str) -> None:
    status, output = _launch(cmd, log_file.with_name(f"{name}.console"))
    if status != 0 or not _wait(
        lambda: (pid := _read_pid(pid_file)) is not None and process_running(pid), 120.0
    ):
        log = log_file.read_text() if log_file.exists() else ""
        raise RuntimeError(f"{name} did not start (exit {status}): {output}\n{_tail(log)}")


def start_cluster(
    root: Path,
    partitions: Sequence[str] = ("debug",),
    *,
    memory_fraction: float = 0.8,
    timeout_s: float = 300.0,
) -> SlurmCluster:
    """Configure and start munged, slurmctld and slurmd for a one-node cluster.

    Parameters
    ----------
    root : Path
        Empty or missing directory for the cluster's files (must be writable by root).
    partitions : Sequence[str]
        Partition names, all on the one node; the first is the default.
    memory_fraction : float
        Share of the node's memory, as ``slurmd -C`` reports it, that SLURM may hand out.
    timeout_s : float
        How long to wait for the node to become idle.

    Returns
    -------
    SlurmCluster
        The running cluster; call :meth:`SlurmCluster.stop` when done.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    root = Path(root).resolve()
    log_dir = root / "log"
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _ensure_munge_key()
    # munged, running as the munge user, must reach its socket directory, so it cannot
    # live inside pytest's private temporary directory; a short path also keeps the
    # socket path within the limit of Unix sockets.
    munge_dir = Path(tempfile.mkdtemp(prefix="kaem-munge-", dir="/tmp"))
    shutil.chown(munge_dir, "munge", "munge")
    munge_dir.chmod(0o711)  # munged insists that every user can traverse the socket's dir

    node = describe_node()
    real_memory = int(int(node["RealMemory"]) * memory_fraction)
    conf = root / "slurm.conf"
    conf.write_text(
        render_slurm_conf(
            root=root,
            munge_socket=munge_dir / "munge.socket",
            node=node,
            real_memory_mb=real_memory,
            partitions=partitions,
            ctld_port=free_port(),
            slurmd_port=free_port(),
        )
    )
    write_client_wrappers(root / "bin", conf)
    cluster = SlurmCluster(
        root=root,
        conf=conf,
        log_dir=log_dir,
        munge_dir=munge_dir,
        node_name=node["NodeName"],
        cpus=int(node["CPUs"]),
        real_memory_mb=real_memory,
        partitions=tuple(partitions),
    )
    try:
        # Each daemon is recorded before it starts, so a failed start is still cleaned up.
        cluster.started.append((munge_dir / "munged.pid", "munged"))
        _start_munged(munge_dir, log_dir)
        ctld_pid = root / "slurmctld.pid"
        cluster.started.append((ctld_pid, "slurmctld"))
        _start_daemon(
            [_require("slurmctld"), "-i", "-f", str(conf)],
            ctld_pid,
            log_dir / "slurmctld.log",
            "slurmctld",
        )
        slurmd_pid = root / "slurmd.pid"
        cluster.started.append((slurmd_pid, "slurmd"))
        _start_daemon(
            [_require("slurmd"), "-f", str(conf), "-N", node["NodeName"]],
            slurmd_pid,
            log_dir / "slurmd.log",
            "slurmd",
        )
        if not _wait(lambda: cluster.node_state() == "idle", timeout_s, 0.5):
            raise RuntimeError(
                f"node {node['NodeName']} is {cluster.node_state()!r}, not idle, after "
                f"{timeout_s} s\n{_tail((log_dir / 'slurmctld.log').read_text())}"
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster for the whole session, with the user profile's partitions.

    Skips where SLURM cannot be installed (not root, no apt-get). Stops, at the end of the
    session, only the daemons it started.
    """
    try:
        install_slurm()
    except SlurmUnavailable as err:
        pytest.skip(f"SLURM cluster unavailable: {err}")
    partitions = profile_partitions(yaml.safe_load(USER_PROFILE.read_text()))
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"), partitions)
    try:
        yield cluster
    finally:
        cluster.stop()
