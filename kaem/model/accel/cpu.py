"""The inverse CDF of :func:`kaem.model.quadrature.inverse_cdf`, by compiled loops on the CPU.

``torch.searchsorted`` bisects every draw over its density's ``N + 1`` edges, about eight
dependent comparisons a draw. Two compiled loops (:mod:`kaem.model.accel.kernels`) find the same
cells with less work:

- draws shared by several densities (the univariate prior's ``u_p``, shared across ``q``) are
  sorted once per column, and each density's cells are found by one merge of its edges with
  them;
- other draws start from a per-density count of the edges in square-root buckets of ``u``
  and take one step (a guide table, Chen and Asau 1974).

Both invert the cell as :func:`kaem.model.quadrature.inverse_cdf` does, in the same
floating-point operations: for the same ``u`` they return the same ``z``, bit for bit. They take
CPU tensors of float32 or float64 without gradient; anything else goes to the plain
:func:`kaem.model.quadrature.inverse_cdf`.
Numba compiles them on first use (about ten seconds, then cached on disk).
"""

from __future__ import annotations

import math
from functools import cache
from types import ModuleType

import torch
from torch import Tensor

from kaem.model import quadrature
from kaem.model.quadrature import CDFTable

__all__ = ["inverse_cdf"]


@cache
def _kernels() -> ModuleType:
    from kaem.model.accel import kernels

    return kernels


def _compilable(*tensors: Tensor) -> bool:
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == dtype and not t.requires_grad for t in tensors
    )


def inverse_cdf(u: Tensor, table: CDFTable) -> Tensor:
    """:func:`kaem.model.quadrature.inverse_cdf` by the compiled loops: the same arguments, the
    same samples.

    Parameters
    ----------
    u
        Uniform draws, shape ``(..., S)``, one row per density of ``table`` (``cdf`` of shape
        ``(..., N + 1)``). Where ``u`` is broadcast over leading dimensions (an ``expand``
        of draws shared by several densities), each column is sorted once and merged.
    table
        The CDFs.

    Returns
    -------
    Tensor
        Shape ``(..., S)``.
    """
    cdf, edges, slope = table
    if not _compilable(u, cdf, edges, slope) or u.shape[:-1] != cdf.shape[:-1]:
        return quadrature.inverse_cdf(u, table)
    shared = 0  # leading dimensions along which every density sees the same draws
    while shared < u.ndim - 1 and u.stride(shared) == 0:
        shared += 1
    n_draws, n_rows = u.shape[-1], math.prod(cdf.shape[:-1])
    columns = u[(0,) * shared].reshape(-1, n_draws).T.contiguous()  # (S, C)
    arrays = [columns, cdf.reshape(n_rows, -1), edges, slope.reshape(n_rows, -1)]
    arrays = [a.detach().contiguous().numpy() for a in arrays]
    if columns.shape[1] < n_rows:  # shared draws: sorted once, merged with every row
        out = torch.empty(n_rows, n_draws, dtype=u.dtype)
        _kernels().merged_searches(*arrays, out.numpy())
        return out.reshape(u.shape)
    out = torch.empty(n_draws, n_rows, dtype=u.dtype)  # draw-major, as the draws come
    _kernels().searches(*arrays, out.numpy())
    return out.T.reshape(u.shape)
