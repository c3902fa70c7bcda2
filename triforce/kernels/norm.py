"""RMSNorm with the residual add fused in: one pass instead of a chain of small elementwise
kernels (at batch 1 a decode step is a few hundred tiny launches; each one costs its launch)."""

from __future__ import annotations

import torch

from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, h) with h = x + residual (or x): the model's own arithmetic, op for op."""
    h = x if residual is None else x + residual
    wide = h.dtype == torch.float32  # no casts to make (each a dispatch on a CPU's tiny tensors)
    hf = h if wide else h.float()
    normed = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (normed if wide else normed.to(h.dtype)), h


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             *, ctx: KernelContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm_reference, in one Triton kernel where the policy runs kernels."""
    contiguous = x.is_contiguous() and (residual is None or residual.is_contiguous())
    if not contiguous or not runs_kernel(ctx, x):
        return rms_norm_reference(x, weight, eps, residual)
    from triforce.kernels.triton_norm import rms_norm as triton_rms_norm

    return triton_rms_norm(x, weight, eps, residual, pdl=ctx.pdl)
