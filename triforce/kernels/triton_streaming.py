"""Triton kernel of streaming.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["start", "end", "n"])
def _shift_kernel(K, V, INV_FREQ, END, N, stride_e, stride_n, start, end, n, batch, heads, stride_row, stride_slot,
                  HALF: tl.constexpr, BLOCK_S: tl.constexpr, PER_SEQUENCE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if PER_SEQUENCE:  # this row's sequence evicts its own count from its own end
        b = (row // heads) % batch
        end = tl.load(END + b * stride_e).to(tl.int32)
        n = tl.load(N + b * stride_n).to(tl.int32)
        stop = tl.where(n > 0, end - n, start)  # n_b = 0: the sequence keeps its slots (no copy onto itself)
    else:
        stop = end - n
    d = tl.arange(0, HALF)
    # the rotation by -n positions, in float32 without the magnitude scale (RotaryEmbedding.shift)
    angle = -n.to(tl.float32) * tl.load(INV_FREQ + d)
    cos = tl.cos(angle)[None, :]
    sin = tl.sin(angle)[None, :]
    k_row = K + row * stride_row
    v_row = V + row * stride_row
    j0 = start
    while j0 < stop:  # ascending tiles: a tile's sources lie at or after its destinations
        dst = j0 + tl.arange(0, BLOCK_S)
        ok = (dst < stop)[:, None]
        src = (dst + n)[:, None] * stride_slot
        x1 = tl.load(k_row + src + d[None, :], mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(k_row + src + HALF + d[None, :], mask=ok, other=0.0).to(tl.float32)
        v1 = tl.load(v_row + src + d[None, :], mask=ok, other=0.0)
        v2 = tl.load(v_row + src + HALF + d[None, :], mask=ok, other=0.0)
        tl.debug_barrier()  # the whole tile is read before any of it is overwritten
        out = dst[:, None] * stride_slot
        tl.store(k_row + out + d[None, :], (x1 * cos - x2 * sin).to(K.dtype.element_ty), mask=ok)
        tl.store(k_row + out + HALF + d[None, :], (x2 * cos + x1 * sin).to(K.dtype.element_ty), mask=ok)
        tl.store(v_row + out + d[None, :], v1, mask=ok)
        tl.store(v_row + out + HALF + d[None, :], v2, mask=ok)
        tl.debug_barrier()
        j0 += BLOCK_S


def shift_window(k, v, start: int, end: int, n: int, inv_freq) -> None:
    """Every sequence alike: the values are kernel arguments."""
    L, B, H, S, D = k.shape
    _shift_kernel[(L * B * H,)](k, v, inv_freq, inv_freq, inv_freq, 0, 0, start, end, n, B, H, S * D, D,
                                HALF=D // 2, BLOCK_S=32, PER_SEQUENCE=False, num_warps=4)


def shift_window_per_sequence(k, v, start: int, ends, ns, inv_freq) -> None:
    """ends, ns: (B,) integer device tensors, sequence b's end and eviction count (one element:
    the same for every sequence)."""
    from triforce.inputs import batch_stride

    L, B, H, S, D = k.shape
    _shift_kernel[(L * B * H,)](k, v, inv_freq, ends, ns, batch_stride(ends, B), batch_stride(ns, B), start, 0, 0, B,
                                H, S * D, D, HALF=D // 2, BLOCK_S=32, PER_SEQUENCE=True, num_warps=4)
