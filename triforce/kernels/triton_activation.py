"""Triton kernel of activation.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.triton_pdl import pdl_args, pdl_start


@triton.jit
def _silu_mul_kernel(GU, OUT, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    gate = tl.load(GU + row * 2 * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(GU + row * 2 * n_cols + n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(OUT + row * n_cols + cols, out.to(OUT.dtype.element_ty), mask=ok)


def silu_mul(gate_up, *, pdl: bool = False):
    n_cols = gate_up.shape[-1] // 2
    rows = gate_up.numel() // (2 * n_cols)
    out = torch.empty((*gate_up.shape[:-1], n_cols), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n_cols, block))](gate_up, out, n_cols, BLOCK=block, num_warps=4,
                                                         **pdl_args(pdl))
    return out
