"""Programmatic dependent launch (PDL) for the decode kernels. Imported only where kernels run.

A captured forward is a chain of a few hundred kernels, many of them a few microseconds long, so
the gap between one kernel's end and the next one's start is a visible share of a step. With PDL
(CUDA, sm90+) a kernel launched with the `launch_pdl` attribute may start while its predecessor
is still running: its first statement (`pdl_start`) waits until the predecessor has completed and
its memory is visible, then lets its own successor launch. Every access to memory comes after the
wait, so the order of every read and write is the stream's; only launch latency and the CTAs'
setup overlap. Kernels launched without the attribute (torch's) wait for their predecessors as
always. The caller says whether a launch uses it (`pdl`): the decode plan and the executors pass
`policy.pdl` for what a CUDA graph captures (on by default on sm90+; `hardware.kernels.pdl=false`
or TRIFORCE_PDL=0 turns it off), False for everything launched eagerly.

The one thing a kernel does before the wait is `l2_prefetch`: data no predecessor writes (weights,
the cache prefix) is pulled into L2 while the predecessor's last programs finish, so the memory
system streams through the gap between two kernels instead of idling in it (the ramp-up and tail
that make a 4096-wide projection run at 0.8 of the copy bandwidth). A prefetch is only a hint: L2
is the GPU's point of coherence, so a line it holds is never stale, and the loads that follow the
wait read whatever the predecessors wrote.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def pdl_start(PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def l2_prefetch(ptr, nbytes):
    """Bring `nbytes` (a multiple of 16) from `ptr` (16-byte aligned; both scalars) into L2: one
    bulk prefetch (sm90), issued by the program's first thread only (a scalar is held by every
    thread, and each copy of the instruction would be a request of its own)."""
    tl.inline_asm_elementwise(
        "{\n\t.reg .pred first;\n\t.reg .b32 tid;\n\tmov.u32 tid, %tid.x;\n\tsetp.eq.u32 first, tid, 0;"
        "\n\t@first cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;\n\t}",
        "=r,l,r", [ptr + tl.zeros([1], tl.int32), nbytes + tl.zeros([1], tl.int32)], dtype=tl.int32,
        is_pure=False, pack=1)


def prefetch_bytes(pdl: bool, per_program: int, *byte_offsets: int) -> int:
    """Bytes a program prefetches before its wait (`per_program`, a multiple of 32): 0 without PDL
    (nothing to overlap, and the interpreter has no such instruction) or when any of the addresses
    and strides a program's prefetch address is built from (`byte_offsets`, in bytes) is not a
    multiple of 16, as a bulk prefetch requires."""
    if per_program <= 0 or not pdl or any(b % 16 for b in byte_offsets):
        return 0
    return per_program // 32 * 32


def pdl_args(pdl: bool) -> dict:
    """The launch keywords: the kernels' PDL constexpr, and Triton's launch_pdl option when on."""
    return {"PDL": True, "launch_pdl": True} if pdl else {"PDL": False}
