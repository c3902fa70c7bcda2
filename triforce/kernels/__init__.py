"""GPU kernels for the captured decode path, each beside the torch reference its tests compare with.

Triton is optional: on a CUDA device with Triton installed the kernels run; everywhere else the
torch references run (the CPU path never uses them). Tests on a CPU-only machine run the Triton
kernels through Triton's interpreter (`TRITON_INTERPRET=1`, set by the test suite before import).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

_ON_CPU = False  # tests: route CPU tensors through the kernels too (see triton_on_cpu)
# Programmatic dependent launch (Hopper and later): each kernel of a captured forward may launch
# while its predecessor finishes, prefetch its weights into L2 and wait for it in-kernel
# (triton_pdl.py). On by default (every level faster on an H100 and an H200:
# scripts/tune_launch.py); TRIFORCE_PDL=0 or use_pdl(False) turns it off.
PDL = os.environ.get("TRIFORCE_PDL", "1") == "1"


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


@contextlib.contextmanager
def triton_on_cpu():
    """Within this block every kernel entry point takes the Triton path for CPU tensors as well,
    through Triton's interpreter (which must be on): tests run the whole captured path's forward,
    kernels included, on a CPU."""
    global _ON_CPU
    if not interpreted():
        raise RuntimeError("triton_on_cpu needs TRITON_INTERPRET=1 (set before triton is imported)")
    previous, _ON_CPU = _ON_CPU, True
    try:
        yield
    finally:
        _ON_CPU = previous


def use_pdl(enabled: bool) -> None:
    """Launch the captured decode kernels with programmatic dependent launch (CUDA sm90+) or not."""
    global PDL
    PDL = bool(enabled)


@functools.lru_cache(maxsize=8)
def sm90(device: torch.device) -> bool:
    """A CUDA device of compute capability 9.0 or later (Hopper); True elsewhere, as sm_count
    answers an H100's SM count, so the interpreter and the CPU compile tool plan an H100's launches."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 132 (an H100's) elsewhere, so the interpreter
    and the CPU compile tool choose the launches an H100 gets."""
    return _sm_count(device.index or 0) if device.type == "cuda" else 132


def pdl_enabled(t: torch.Tensor) -> bool:
    """PDL for a kernel on `t`: on sm90+, while a CUDA graph is being captured (the captured levels,
    where gpu_check validates it; eager launches, e.g. an offloaded forward, stay plain)."""
    return (PDL and t.is_cuda and not interpreted() and sm90(t.device)
            and torch.cuda.is_current_stream_capturing())


def kernels_usable(t: torch.Tensor, use_triton: bool | None = None) -> bool:
    """Whether to run the Triton kernel on tensors like `t`: by default on CUDA tensors when Triton
    is installed; `use_triton=True` (or a `triton_on_cpu` block) also asks for it on CPU tensors
    (tests, through the interpreter)."""
    if use_triton is None and _ON_CPU:
        use_triton = True
    if use_triton is False or not (t.is_cuda or (use_triton and interpreted())):
        return False  # decided before importing Triton: CPU runs never import it
    return triton_available()
