"""SwiGLU's silu(gate) * up over the fused gate/up projection, in one kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gate_up: torch.Tensor, *, ctx: KernelContext | None = None) -> torch.Tensor:
    """silu_mul_reference, in one Triton kernel where the policy runs kernels."""
    if not runs_kernel(ctx, gate_up) or not gate_up.is_contiguous():
        return silu_mul_reference(gate_up)
    from triforce.kernels.triton_activation import silu_mul as triton_silu_mul

    return triton_silu_mul(gate_up, pdl=ctx.pdl)
