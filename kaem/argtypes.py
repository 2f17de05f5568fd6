"""Types of command-line arguments that the ``kaem`` command and the benchmarks share: each
parses one string or raises :class:`argparse.ArgumentTypeError` naming the value."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import Any

__all__ = ["positive_float", "positive_int", "seed", "thread_count"]


def _number(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` above ``low`` (``strict``) or at least ``low``."""
    what = {int: "an integer", float: "a number"}[kind]
    bound = f"greater than {low:g}" if strict else f"at least {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


#: A count (at least 1), a seed (at least 0) and a positive number.
positive_int = _number(int, 1, strict=False)
seed = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(text: str) -> int:
    """An argparse type: a thread count from 1 to the cores this process may run on.

    More threads than cores never run at once: PyTorch's extra threads only wait for the same
    cores and slow every operation down, so such a count is refused rather than obeyed.
    """
    value = positive_int(text)
    cores = _usable_cores()
    if value > cores:
        raise argparse.ArgumentTypeError(
            f"{value} is more than the {cores} CPU cores this process may run on; "
            f"give at most {cores}"
        )
    return value
