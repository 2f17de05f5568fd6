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
