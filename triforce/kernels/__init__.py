"""GPU kernels for the captured decode path, each beside the torch reference its tests compare with.

Which kernel runs is decided in one place, the run's `policy.KernelPolicy` (docs/DESIGN.md §6),
and reaches every entry point as its `ctx` argument (a `policy.KernelContext`: the policy, PDL, the
workspace). An entry point has no default of its own: `ctx=None`, or a policy with kernels off,
runs the torch reference (the CPU path never imports Triton). Tests on a CPU-only machine run the
Triton kernels through Triton's interpreter (`TRITON_INTERPRET=1`, set by the test suite before
import) with a policy resolved with `kernels=True`.
"""

from __future__ import annotations

import torch

from triforce.kernels.policy import KernelContext, triton_available

__all__ = ["runs_kernel", "triton_available"]


def runs_kernel(ctx: KernelContext | None, t: torch.Tensor) -> bool:
    """The policy runs its Triton kernels on tensors like `t` (None: no policy, the reference)."""
    return ctx is not None and ctx.on(t)
