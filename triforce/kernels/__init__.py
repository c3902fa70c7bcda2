"""GPU kernels for the captured decode path, each beside the torch reference its tests compare with.

Triton is optional: on a CUDA device with Triton installed the kernels run; everywhere else the
torch references run (the CPU path never imports Triton). Tests on a CPU-only machine run the
Triton kernels through Triton's interpreter (`TRITON_INTERPRET=1`, set by the test suite before
import) by asking for them explicitly (`use_triton=True`, or a policy with `kernels=True`).

Which kernel runs, with which launch, is the caller's argument, never a switch read here: the
decode plan and the executors pass what their `policy.KernelPolicy` resolved once.
"""

from __future__ import annotations

import torch

from triforce.kernels.policy import triton_available

__all__ = ["kernels_usable", "triton_available"]


def kernels_usable(t: torch.Tensor, use_triton: bool | None = None) -> bool:
    """Whether to run the Triton kernel on tensors like `t`: by default on CUDA tensors when Triton
    is installed; `use_triton=True` also on CPU tensors (through the interpreter, which the caller
    has turned on), False never."""
    if use_triton is False or not (t.is_cuda or use_triton):
        return False  # decided before importing Triton: CPU runs never import it
    return triton_available()
