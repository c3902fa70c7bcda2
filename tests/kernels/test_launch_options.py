"""Launch decisions of the decode kernels that do not need a GPU to check: which products take
their prologue inside, and what a kernel prefetches before its programmatic-launch wait."""

from __future__ import annotations

import pytest
import torch

from triforce import kernels
from triforce.kernels import linear, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed (pip install triton)")


def test_only_a_small_one_row_product_fuses_its_prologue():
    bf16 = torch.bfloat16
    one, three = torch.empty(1, 1, 768, dtype=bf16), torch.empty(1, 3, 768, dtype=bf16)
    draft_qkv = torch.empty(2304, 768, dtype=bf16)  # 3.4 MiB: its own norm launch would cost more
    assert linear.fuse_prologue(one, draft_qkv)
    assert not linear.fuse_prologue(three, draft_qkv)  # several rows: always apart
    row = torch.empty(1, 1, 4096, dtype=bf16)
    for n in (6144, 12288, 28672):  # 8B q/k/v, 7B q/k/v, 8B gate/up: apart
        assert not linear.fuse_prologue(row, torch.empty(n, 4096, dtype=bf16))


def test_prefetch_only_with_programmatic_launch_and_aligned_rows(monkeypatch):
    from triforce.kernels.triton_pdl import prefetch_bytes

    t = torch.empty(4)
    assert prefetch_bytes(t, 16384, 8192) == 0  # no PDL on a CPU tensor: nothing runs beside a predecessor
    monkeypatch.setattr(kernels, "pdl_enabled", lambda _: True)
    assert prefetch_bytes(t, 16384, 0x7F0000000100, 8192) == 16384
    assert prefetch_bytes(t, 1000, 8192) == 992  # two runs of a multiple of 16 bytes each
    assert prefetch_bytes(t, 16384, 8192, 8) == 0  # a stride not 16-byte aligned: a bulk prefetch would fault
    assert prefetch_bytes(t, 16384, 0x7F0000000108, 8192) == 0  # nor a base address
    assert prefetch_bytes(t, 0, 8192) == 0
