"""Shared test configuration."""

import os

import pytest
import torch

# The SLURM cluster fixture, for tests that send the workflow to a real scheduler.
from slurm_cluster import slurm_cluster  # noqa: F401


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Every test starts with the same PyTorch thread count and restores it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Run a test on one PyTorch thread: a subprocess it compares with bit for bit runs on
    one, and on a busy 2-core machine OpenMP threads mostly spin (10x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end runs (``workflow``, ``slurm``) are ``long`` too: minutes each on two
    cores, as are a few tests marked by hand (20 s or more on two busy cores). ``make test``
    runs them, as CI does; ``make test QUICK=1`` leaves them out."""
    for item in items:
        if item.get_closest_marker("workflow") or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.long)


def pytest_report_header(config: pytest.Config) -> str:
    ci = os.environ.get("CI", "")
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, CI={ci}"
