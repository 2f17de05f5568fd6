"""Large CPU tensors on huge pages, and malloc keeping freed memory."""

import pytest
import torch

from kaem import memory


def test_large_cpu_tensors_come_from_numpy_and_small_ones_from_torch() -> None:
    big = memory.empty((memory.HUGE_PAGE_BYTES // 4 + 1,), dtype=torch.float32)
    small = memory.empty((10, 10), dtype=torch.float32)
    odd = memory.empty((memory.HUGE_PAGE_BYTES,), dtype=torch.bfloat16)  # no NumPy dtype
    for t, shape, dtype in (
        (big, (memory.HUGE_PAGE_BYTES // 4 + 1,), torch.float32),
        (small, (10, 10), torch.float32),
        (odd, (memory.HUGE_PAGE_BYTES,), torch.bfloat16),
    ):
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
    # The large one lives in a NumPy array's memory; it is written as any tensor is.
    assert isinstance(big.untyped_storage(), torch.UntypedStorage)
    big.fill_(2.0)
    assert float(big.sum()) == 2.0 * big.numel()
    assert memory.empty((3,), dtype=torch.float64, device="meta").device.type == "meta"


def test_keep_freed_memory_takes_on_glibc_and_refuses_a_bad_size() -> None:
    assert memory.keep_freed_memory() is True  # this test machine's C library is glibc
    with pytest.raises(ValueError, match="keep_bytes must be in"):
        memory.keep_freed_memory(2**31)


_REUSE = """
import resource
import torch
from kaem import memory

assert memory.keep_freed_memory()

def faults_to_fill():
    t = memory.empty((16 * 2**20,), dtype=torch.float32)  # 64 MiB, above malloc's mmap limit
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t.fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(faults_to_fill(), faults_to_fill())
"""


def test_kept_memory_serves_the_next_large_tensor_without_page_faults() -> None:
    # A fresh mapping of 64 MiB faults in at least 32 huge pages (16,384 small ones); the
    # same tensor again, from memory malloc kept, faults in none.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _REUSE], capture_output=True, text=True, check=True
    ).stdout
    first, again = map(int, out.split())
    assert first >= 32
    assert again < 8, f"the second 64 MiB tensor faulted in {again} pages"
