"""Triton kernel of embedding.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.triton_pdl import pdl_args, pdl_start


@triton.jit
def _embed_kernel(W, IDS, START, OUT, hidden, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < hidden
    token = tl.load(IDS + tl.load(START) + t)
    tl.store(OUT + t * hidden + cols, tl.load(W + token * hidden + cols, mask=ok), mask=ok)


def embed_slice(weight: torch.Tensor, ids: torch.Tensor, start: torch.Tensor, count: int, *,
                pdl: bool = False) -> torch.Tensor:
    hidden = weight.shape[1]
    out = torch.empty((1, count, hidden), dtype=weight.dtype, device=weight.device)
    block = min(1024, triton.next_power_of_2(hidden))
    _embed_kernel[(count, triton.cdiv(hidden, block))](weight, ids, start, out, hidden, BLOCK=block, num_warps=4,
                                                       **pdl_args(pdl))
    return out
