"""Triton kernel of norm.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.triton_pdl import pdl_args, pdl_start


@triton.jit
def _rms_norm_kernel(X, R, W, Y, H, SQ, n_cols, eps, HAS_RESIDUAL: tl.constexpr, PRE_NORMED: tl.constexpr,
                     BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(R + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)).to(
            X.dtype.element_ty)
        tl.store(H + row * n_cols + cols, x, mask=ok)
    xf = x.to(tl.float32)
    w = tl.load(W + cols, mask=ok, other=0.0)
    if PRE_NORMED:  # linear.PreNormed: h * weight and the row's sum of squares; the next product scales the row
        tl.store(SQ + row, tl.sum(xf * xf, 0))
        tl.store(Y + row * n_cols + cols, (xf * w.to(tl.float32)).to(Y.dtype.element_ty), mask=ok)
    else:
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n_cols + eps)
        normed = (xf * rstd).to(X.dtype.element_ty)
        tl.store(Y + row * n_cols + cols, (w.to(tl.float32) * normed.to(tl.float32)).to(Y.dtype.element_ty), mask=ok)


def rms_norm(x, weight, eps, residual, pre_normed: bool = False, *, pdl: bool = False):
    """(normed, h); pre_normed: (h * weight, h, sums of squares (1, rows)) for a linear.PreNormed."""
    n_cols = x.shape[-1]
    rows = x.numel() // n_cols
    y = torch.empty_like(x)
    h = torch.empty_like(x) if residual is not None else x
    sq = torch.empty((1, rows), device=x.device, dtype=torch.float32) if pre_normed else y
    _rms_norm_kernel[(rows,)](x, residual if residual is not None else x, weight, y, h, sq, n_cols, eps,
                              HAS_RESIDUAL=residual is not None, PRE_NORMED=pre_normed,
                              BLOCK=triton.next_power_of_2(n_cols), num_warps=4 if n_cols <= 4096 else 8,
                              **pdl_args(pdl))
    return (y, h, sq) if pre_normed else (y, h)
