"""GPU kernels for the captured decode path, each beside the torch reference its tests compare with.

Triton is optional: on a CUDA device with Triton installed the kernels run; everywhere else the
torch references run (the CPU path never uses them). Tests on a CPU-only machine run the Triton
kernels through Triton's interpreter (`TRITON_INTERPRET=1`, set by the test suite before import).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Triton's CPU interpreter is on (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_usable(t: torch.Tensor, use_triton: bool | None = None) -> bool:
    """Whether to run the Triton kernel on tensors like `t`: by default on CUDA tensors when Triton
    is installed; `use_triton=True` also asks for it on CPU tensors (tests, through the interpreter)."""
    if use_triton is False or not (t.is_cuda or (use_triton and interpreted())):
        return False  # decided before importing Triton: CPU runs never import it
    return triton_available()
