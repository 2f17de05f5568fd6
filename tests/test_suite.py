"""The test suite itself: the long runs are marked, and time limits only catch hangs."""

import inspect
import subprocess
import sys
from pathlib import Path

from helpers import HANG_S

TESTS = Path(__file__).resolve().parent


def _collected(*marker: str) -> tuple[int, set[str]]:
    """The exit status and node ids of a collection with ``-m`` ``marker`` (none: default)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *(("-m", marker[0]) if marker else ()), str(TESTS)],
        cwd=TESTS.parent, capture_output=True, text=True, check=False, timeout=HANG_S,
    )  # fmt: skip
    return proc.returncode, {line for line in proc.stdout.splitlines() if "::" in line}


def test_quick_runs_leave_out_exactly_the_long_ones_and_every_end_to_end_run_is_long():
    status, full = _collected()
    quick_status, quick = _collected("not slow and not long")
    assert status == quick_status == 0
    left_out = full - quick
    assert quick < full and 0.9 * len(full) < len(quick)  # the quick run is still the suite
    assert any("test_slurm_workflow.py::" in n for n in left_out)
    assert any("test_workflow.py::test_tiny_run" in n for n in left_out)
    # No end-to-end run escapes the long mark; and a selection that collects nothing is a
    # failure (status 5), never a silent pass.
    assert _collected("(workflow or slurm) and not long") == (5, set())


def test_time_limits_in_the_tests_are_far_beyond_any_slow_run():
    import test_workflow
    from slurm_cluster import SlurmCluster

    assert HANG_S >= 30 * 60
    limits = [
        inspect.signature(test_workflow.snakemake).parameters["timeout"].default,
        inspect.signature(SlurmCluster.snakemake).parameters["timeout_s"].default,
    ]
    assert limits == [HANG_S, HANG_S]
