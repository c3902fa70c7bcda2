"""Triton kernel of embedding.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.triton_pdl import pdl_args, pdl_start


@triton.jit
def _embed_kernel(W, IDS, START, OUT, hidden, count, stride_ids, stride_start, BLOCK: tl.constexpr,
                  PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    b = tl.program_id(2)  # the sequence: its own token row and start (strides 0 for one sequence)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < hidden
    token = tl.load(IDS + b.to(tl.int64) * stride_ids + tl.load(START + b * stride_start) + t)
    out = OUT + (b.to(tl.int64) * count + t) * hidden
    tl.store(out + cols, tl.load(W + token * hidden + cols, mask=ok), mask=ok)


def embed_slice(weight: torch.Tensor, ids: torch.Tensor, start: torch.Tensor, count: int, *,
                pdl: bool = False) -> torch.Tensor:
    """ids (N,) with a scalar start, or (B, N) with start (B,) (one element: the same for every row)."""
    hidden = weight.shape[1]
    batch = ids.shape[0] if ids.dim() == 2 else 1
    out = torch.empty((batch, count, hidden), dtype=weight.dtype, device=weight.device)
    block = min(1024, triton.next_power_of_2(hidden))
    _embed_kernel[(count, triton.cdiv(hidden, block), batch)](
        weight, ids, start, out, hidden, count, ids.stride(0) if ids.dim() == 2 else 0,
        start.stride(0) if start.dim() == 1 and start.numel() > 1 else 0, BLOCK=block, num_warps=4,
        **pdl_args(pdl))
    return out
