"""CPU memory that is cheap to write: large tensors on huge pages, freed memory kept for reuse.

PyTorch's CPU allocator maps fresh memory in 4 KiB pages unless ``THP_MEM_ALLOC_ENABLE=1`` is
set before ``torch`` starts, so the first write to a 130 MB tensor (10,000 draws of the NIST
prior) takes about 33,000 page faults: 48 ms to allocate and fill it on 2 cores, against 11 ms
when the memory comes from NumPy, which advises the kernel to back allocations of 4 MiB or
more with huge pages (where ``/sys/kernel/mm/transparent_hugepage/enabled`` allows it). The
tensor is an ordinary one that shares NumPy's memory; elsewhere (an accelerator, a small or
an unusual dtype) :func:`empty` is :func:`torch.empty`.

Freed memory is the other cost. glibc's ``malloc`` maps every block above 32 MiB afresh and
unmaps it when it is freed, and by default hands freed heap memory above a few MiB back to the
kernel too, so the next step's tensors of the same sizes fault in fresh pages again: one
inverse-transform draw of 200 samples of the NIST prior after an update took about 10,000
page faults (40 MB) and 27-35 ms on 2 cores, against none and 13-17 ms with freed memory kept
(measured between Langevin runs, which leave the heap trimmed). On a virtual machine that
reports free pages to its host (virtio-balloon free page reporting), memory handed back is
worse than slow to fault in: the host has taken it away, and the first touch waits for the host
to back it again. On such a 2-core machine, 10,000 draws of the NIST prior after an update
(a 130 MB result) took 0.20-0.23 s (median of five calls) in 2 of 10 fresh processes, and
0.12-0.26 s in some call of 7 of them, nearly all of it system time in the page faults of the
result; with the result's memory reused, the median was 0.020-0.033 s and no call of 10
processes took over 0.035 s.
:func:`keep_freed_memory` asks ``malloc`` to keep freed memory and to take large blocks from
its heap as well; the ``kaem`` command and ``python -m kaem.bench`` call it at start, and a
script of one's own may.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["HUGE_PAGE_BYTES", "empty", "keep_freed_memory"]

#: Size from which NumPy asks for huge pages, and :func:`empty` allocates through it.
HUGE_PAGE_BYTES = 4 * 2**20

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.int32: np.int32,
    torch.int64: np.int64,
}


def empty(
    shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Tensor:
    """An uninitialised tensor, on huge pages when it is a large one on the CPU.

    Parameters
    ----------
    shape, dtype, device
        As for :func:`torch.empty`.

    Returns
    -------
    Tensor
        Contiguous, of ``shape``.
    """
    device = torch.device(device)
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if (
        device.type != "cpu"
        or np_dtype is None
        or math.prod(shape) * np.dtype(np_dtype).itemsize < HUGE_PAGE_BYTES
    ):
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=np_dtype))


#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def keep_freed_memory(keep_bytes: int = 2**30) -> bool:
    """Ask glibc's ``malloc`` to keep up to ``keep_bytes`` of freed memory for reuse.

    Every block, however large, then comes from the heap instead of a fresh mapping (which
    ``free`` would unmap), and freed memory at the heap's top is handed back to the kernel
    only beyond ``keep_bytes``: the process keeps its peak memory, and repeated steps reuse it
    without page faults. Freed memory below the top stays with the process until it exits.
    Process-wide, so it is a choice for a program (as ``kaem`` makes it), not for a library at
    import. Threads other than the main one allocate from their own arenas, which still map
    blocks larger than an arena afresh.

    Parameters
    ----------
    keep_bytes
        Freed memory at the top of the heap that is kept (at most ``2**31 - 1``).

    Returns
    -------
    bool
        Whether the setting took (False where the C library is not glibc).
    """
    if not 0 <= keep_bytes < 2**31:
        raise ValueError(f"keep_bytes must be in [0, 2**31), got {keep_bytes}")
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, keep_bytes))
    return all([bool(mallopt(key, value)) for key, value in settings])
