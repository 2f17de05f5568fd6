"""Compiled CPU kernels: the CDF tables, the guide table (built in one merge, read in one
pass), the search, and uniforms.

In PyTorch's eager ops, :func:`~kaem.quadrature.guided_inverse_cdf` and
:func:`~kaem.quadrature.guided_inverse_cdf_shared` locate each draw's interval (an ``acos``, a
conversion, a lookup), gather four table entries and evaluate ``base + d slope + max(d, kink)
jump``: about a dozen passes over arrays the size of the output, each a separate kernel, and
:func:`~kaem.quadrature.guide_table` locates every cell edge on the grid by histograms and
scatters. Here the same arithmetic runs in loops compiled by Numba:

- a table is one merge of each density's cell edges into the grid, with exact comparisons
  (the eager path locates an edge by the grid's closed-form inverse, which rounding can put a
  float to the wrong side: both tables give the same samples to float rounding);
- a draw's interval comes from a square-root bucket of ``u`` and one step, so that
  ``u_k <= u < u_{k+1}`` holds for the stored grid, and each draw reads its four entries
  (stored together) once and writes its sample once;
- an interval marked for search (``jump = NaN``) is inverted by the same bisection and the same
  ``e_c + (u - cdf_c) slope_c`` as :func:`~kaem.quadrature.inverse_cdf_rows`, and samples are
  clamped into the domain as the eager path clamps them.

:func:`searched_draws` is :func:`~kaem.quadrature.inverse_cdf_draws` (the search without a
table). Draws shared by several densities (the univariate prior's ``u_p``) are sorted once
per column, and each density's cells found by one merge of its edges with them. Otherwise
tiles of sixteen densities run in parallel, each building its cell starts (the
:func:`~kaem.quadrature.cell_index` of a row) and then finding every draw from its bucket in
one step, with bisection after it where a bucket holds several edges.

:func:`cdf_rows` builds the CDF tables of :func:`~kaem.quadrature.cdf_from_masses` with the
same operations in the same order (a float64 sum from the left, one rounding per stored value,
slopes from the stored CDF), so they are equal bit for bit, in one pass over each row instead
of a dozen eager ops over the whole table.

:func:`uniform_` fills the uniforms those draws invert, in parallel, from one seed drawn from
the caller's generator (PyTorch's CPU generator fills one value at a time).

The kernels take CPU tensors of float32 or float64 without gradient, are compiled on first
use (about 15 s, then cached on disk by Numba: well under a second in a new process) and use
as many threads as PyTorch does. ``KAEM_NATIVE=0`` in the environment, or :func:`set_enabled`,
turns them off and the eager path runs instead: the reference they are tested against, and
the path on every other device.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "enabled",
    "guide_entries",
    "guided_draws",
    "guided_shared",
    "searched_draws",
    "set_enabled",
    "shared_guide_entries",
    "uniform_",
    "usable",
]

_DTYPES = (torch.float32, torch.float64)
_enabled = os.environ.get("KAEM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")
_enabled = _enabled and importlib.util.find_spec("numba") is not None  # a pinned dependency


def set_enabled(on: bool) -> bool:
    """Turn the compiled kernels on or off for this process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(on)
    return previous


def enabled() -> bool:
    """Whether the compiled kernels are on (``KAEM_NATIVE``, :func:`set_enabled`)."""
    return _enabled


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels are on and can take ``tensors``: CPU, float32/float64, no gradient."""
    if not _enabled:
        return False
    dtype = tensors[0].dtype
    return all(
        t.device.type == "cpu" and t.dtype == dtype and not t.requires_grad for t in tensors
    ) and (dtype in _DTYPES)


@cache
def _kernels() -> ModuleType:
    """The module of the compiled kernels, imported on first use (each kernel is compiled, or
    loaded from Numba's cache, when it is first called)."""
    from kaem.quadrature import _kernels as k

    return k


def _nan(like: np.ndarray) -> np.generic:
    """NaN as a scalar of ``like``'s dtype (a Python float would make the kernels float64)."""
    return like.dtype.type(np.nan)


def _threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def guided_draws(
    u: Tensor,
    grid: Tensor,
    fields: Tensor,
    cdf: Tensor,
    edges: Tensor,
    slope: Tensor,
    searched: bool,
    out: Tensor,
) -> Tensor:
    """The kernel of :func:`~kaem.quadrature.guided_inverse_cdf`.

    Parameters
    ----------
    u, out
        Draws and samples, shape ``(R, S)``, any strides. They are read and written draw by
        draw with the rows innermost, so a transposed view (an ``(S, R)`` tensor's ``.T``)
        is the fast layout.
    grid
        The guide grid, shape ``(M + 1,)``.
    fields
        ``(base, slope, kink, jump)`` of every interval, shape ``(R, M, 4)``.
    cdf, edges, slope
        The CDF table with the batch flattened: shapes ``(R, N + 1)``, ``(N + 1,)``, ``(R, N)``.
    searched
        Whether some interval is marked for search (``jump = NaN``).
    """
    draws = _kernels().draws
    _threads()
    args = (u.T, grid, fields, cdf, edges, slope)
    draws(*(a.detach().numpy() for a in args), searched, out.T.detach().numpy())
    return out


def guided_shared(
    u: Tensor,
    grid: Tensor,
    rows: Tensor,
    fix: Tensor,
    cdf: Tensor,
    edges: Tensor,
    slope: Tensor,
    out: Tensor,
) -> Tensor:
    """The kernel of :func:`~kaem.quadrature.guided_inverse_cdf_shared`.

    Parameters
    ----------
    u
        Draws, shape ``(n, P)``.
    grid, rows, fix
        Of the :class:`~kaem.quadrature.SharedGuide`: ``(M + 1,)``, ``(P, M, 4 Q)``, ``(P, M)``.
    cdf, edges, slope
        The CDF table: ``(Q, P, N + 1)``, ``(N + 1,)``, ``(Q, P, N)``.
    out
        Samples, shape ``(P, n, Q)``.
    """
    shared = _kernels().shared
    _threads()
    args = (u, grid, rows, fix, cdf, edges, slope, out)
    shared(*(a.detach().numpy() for a in args))
    return out


def searched_draws(u: Tensor, cdf: Tensor, edges: Tensor, slope: Tensor, out: Tensor) -> Tensor:
    """The kernel of :func:`~kaem.quadrature.inverse_cdf_draws`: the search of
    :func:`~kaem.quadrature.inverse_cdf_rows` for every draw, CDF rows in parallel. Draws
    shared by several rows (``R > C``) are sorted once per column and merged with each row's
    edges; others are found from each row's cell starts, in tiles of rows.

    Parameters
    ----------
    u
        Draws, shape ``(S, C)``; row ``r`` of the table inverts column ``r % C``.
    cdf, edges, slope
        The CDF table with the batch flattened: shapes ``(R, N + 1)``, ``(N + 1,)``, ``(R, N)``,
        ``R`` a multiple of ``C``.
    out
        Samples, shape ``(S, R)``.
    """
    k = _kernels()
    kernel = k.merged_searches if cdf.shape[0] > u.shape[1] else k.searches
    _threads()
    kernel(*(a.detach().numpy() for a in (u, cdf, edges, slope, out)))
    return out


def guide_entries(
    cdf: Tensor, edges: Tensor, slope: Tensor, grid: Tensor, max_ratio: float, out: Tensor
) -> Tensor:
    """The kernel of :func:`~kaem.quadrature.guide_table`.

    Parameters
    ----------
    cdf, edges, slope
        The CDF table with the batch flattened: shapes ``(R, N + 1)``, ``(N + 1,)``, ``(R, N)``.
    grid
        The guide grid, shape ``(M + 1,)``.
    max_ratio
        :data:`~kaem.quadrature.MAX_SLOPE_RATIO`.
    out
        Where the entries go, shape ``(R, M, 4)``.
    """
    table = _kernels().table
    _threads()
    arrays = [a.detach().numpy() for a in (cdf, edges, slope, grid)]
    table(*arrays, max_ratio, _nan(arrays[0]), out.numpy())
    return out


def shared_guide_entries(
    cdf: Tensor,
    edges: Tensor,
    slope: Tensor,
    grid: Tensor,
    max_ratio: float,
    tol: float,
    rows: Tensor,
    ends: Tensor,
) -> None:
    """The kernel of :func:`~kaem.quadrature.shared_guide_table`.

    Parameters
    ----------
    cdf, edges, slope
        The CDF table: ``(Q, P, N + 1)``, ``(N + 1,)``, ``(Q, P, N)``.
    grid, max_ratio
        As for :func:`guide_entries`.
    tol
        How near an end of the domain the inverse may come before an interval is marked.
    rows, ends
        Outputs, shapes ``(P, M, 4, Q)`` and ``(P, M)`` (bool, zeroed by the caller).
    """
    shared_table = _kernels().shared_table
    _threads()
    arrays = [a.detach().numpy() for a in (cdf, edges, slope, grid)]
    shared_table(*arrays, max_ratio, _nan(arrays[0]), tol, rows.numpy(), ends.numpy())


def cdf_rows(mass: Tensor, width: Tensor, cdf: Tensor, slope: Tensor) -> None:
    """The kernel of :func:`~kaem.quadrature.cdf_from_masses`, bit for bit.

    Parameters
    ----------
    mass
        Cell masses, shape ``(R, N)``, contiguous.
    width
        Cell widths in the masses' dtype, shape ``(N,)``.
    cdf, slope
        Outputs, shapes ``(R, N + 1)`` and ``(R, N)``.
    """
    kernel = _kernels().cdf_rows
    _threads()
    big = mass.numpy().dtype.type(torch.finfo(mass.dtype).max)
    kernel(mass.numpy(), width.numpy(), big, cdf.numpy(), slope.numpy())


#: Bits of each uniform: a float's mantissa and its hidden bit.
_BITS = {torch.float32: 24, torch.float64: 53}


def uniform_(out: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``out`` with uniforms on ``[0, 1)``, in parallel, from one draw of ``generator``.

    One 63-bit seed is drawn from ``generator`` (PyTorch's default generator if None), so its
    state decides the uniforms and moves on as after any draw. The uniforms are the top 24
    (float32) or 53 (float64) bits of SplitMix64's outputs from that seed: a counter-based
    stream (output ``i`` depends on the seed and ``i`` only), so every thread count gives the
    same values. PyTorch's CPU generator (a Mersenne Twister) fills one value at a time on one
    thread, which for 10,000 draws of 81 coordinates took as long as inverting them.

    Parameters
    ----------
    out
        A contiguous CPU tensor of float32 or float64, any shape.
    generator
        A CPU generator, or None.

    Returns
    -------
    Tensor
        ``out``.
    """
    if not out.is_contiguous() or out.dtype not in _BITS or out.device.type != "cpu":
        raise ValueError(
            f"uniform_ fills a contiguous CPU float32 or float64 tensor, got {out.dtype} on "
            f"{out.device} (contiguous: {out.is_contiguous()})"
        )
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    bits = _BITS[out.dtype]
    uniforms = _kernels().uniforms
    _threads()
    uniforms(np.uint64(seed), 64 - bits, 2.0**-bits, out.view(-1).numpy())
    return out
