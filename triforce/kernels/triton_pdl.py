"""Programmatic dependent launch (PDL) for the decode kernels. Imported only where kernels run.

A captured forward is a chain of a few hundred kernels, many of them a few microseconds long, so
the gap between one kernel's end and the next one's start is a visible share of a step. With PDL
(CUDA, sm90+) a kernel launched with the `launch_pdl` attribute may start while its predecessor
is still running: its first statement (`pdl_start`) waits until the predecessor has completed and
its memory is visible, then lets its own successor launch. Every access to memory comes after the
wait, so the order of every read and write is the stream's; only launch latency and the CTAs'
setup overlap. Kernels launched without the attribute (torch's) wait for their predecessors as
always. Off unless triforce.kernels.use_pdl(True) / TRIFORCE_PDL=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from triforce import kernels


@triton.jit
def pdl_start(PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def pdl_args(t: torch.Tensor) -> dict:
    """The launch keywords: the kernels' PDL constexpr, and Triton's launch_pdl option when on."""
    return {"PDL": True, "launch_pdl": True} if kernels.pdl_enabled(t) else {"PDL": False}
