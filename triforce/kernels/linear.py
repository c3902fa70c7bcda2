"""The decode path's matrix products, with the elementwise step before them fused in.

At batch 1 a linear layer reads its whole weight matrix for a handful of input rows: it should
stream the weights at the memory bandwidth. cuBLAS reaches about 0.84 of the device-to-device
copy bandwidth there (and adds split-K reduction kernels for the narrow outputs); this kernel
gives each program a slice of output columns, streams its rows of the weight matrix once and
applies the step that precedes every product in a Llama layer as it loads the input:

    norm_linear(x, residual, norm, linear)  ->  (rmsnorm(x + residual) @ W.T + b, x + residual)
    silu_linear(gate_up, linear)             ->  (silu(gate) * up) @ W.T + b
    linear(x, linear)                        ->  x @ W.T + b

so RMSNorm, the residual add and SwiGLU cost no launches of their own. That fusion pays for one
input row (a decode step: measured on an H100, the fused kernel is as fast as the product alone);
with several rows (verification, the middle level) the extra arithmetic between the loads and the
matrix unit stalls the pipeline (1.3-1.7x slower), so there the step runs as its own kernel and
the product as the plain Triton kernel. Longer inputs (prefill, > MAX_ROWS) take the reference
path, torch's own ops, which is also the CPU path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triforce.kernels import kernels_usable
from triforce.kernels.activation import silu_mul
from triforce.kernels.norm import rms_norm

MAX_ROWS = 32
# "triton": the fused kernel for decode-sized inputs on CUDA; "torch": always the reference path
# (cuBLAS), e.g. to compare the two in a benchmark (set through `use_backend`)
BACKEND = "triton"


def use_backend(name: str) -> None:
    global BACKEND
    if name not in ("triton", "torch"):
        raise ValueError(f"linear backend {name!r}: choose triton or torch")
    BACKEND = name


def _fused(x: torch.Tensor, weight: torch.Tensor, use_triton: bool | None, *, max_rows: int = MAX_ROWS) -> bool:
    if BACKEND == "torch" and not use_triton:
        return False
    rows = x.numel() // x.shape[-1]
    return rows <= max_rows and x.is_contiguous() and weight.is_contiguous() and kernels_usable(x, use_triton)


def norm_linear(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                use_triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(h) @ weight.T + bias, h) with h = x + residual (or x when residual is None)."""
    if _fused(x, weight, use_triton, max_rows=1) and (residual is None or residual.is_contiguous()):
        from triforce.kernels.triton_linear import fused_linear

        return fused_linear(x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps)
    normed, h = rms_norm(x, norm_weight, eps, residual, use_triton=use_triton)
    return linear(normed, weight, bias, use_triton=use_triton), h


def silu_linear(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                use_triton: bool | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ weight.T + bias, gate_up = [gate | up] on the last dim."""
    if _fused(gate_up, weight, use_triton, max_rows=1):
        from triforce.kernels.triton_linear import fused_linear

        return fused_linear(gate_up, weight, bias, silu=True)[0]
    return linear(silu_mul(gate_up, use_triton=use_triton), weight, bias, use_triton=use_triton)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           use_triton: bool | None = None) -> torch.Tensor:
    if _fused(x, weight, use_triton):
        from triforce.kernels.triton_linear import fused_linear

        return fused_linear(x, weight, bias)[0]
    return F.linear(x, weight, bias)
