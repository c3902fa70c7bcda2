"""Triton kernel of top_p.py (where the contract is; the torch definition is sampling.nucleus).
Imported only where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _top_p_kernel(LOGITS, OUT, V, inv_temperature, top_p, BLOCK: tl.constexpr, BISECT: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < V
    x = tl.load(LOGITS + row * V + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_temperature
    e = tl.exp(x - tl.max(x, 0))
    p = e / tl.sum(e, 0)
    if BISECT:
        # smallest bit pattern b (of a float in [0, 1]) with G(float(b)) < top_p
        lo = tl.zeros([], tl.int32)
        hi = tl.full([], 0x3F800000, tl.int32)  # 1.0: G(1.0) = 0 < top_p
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            t = mid.to(tl.float32, bitcast=True)
            above = tl.sum(tl.where(p > t, p, 0.0), 0)
            below_p = above < top_p
            hi = tl.where(below_p, mid, hi)
            lo = tl.where(below_p, lo, mid + 1)
        threshold = hi.to(tl.float32, bitcast=True)
        p = tl.where(p >= threshold, p, 0.0)
        p = p / tl.sum(p, 0)
    tl.store(OUT + row * V + cols, p, mask=ok)


def top_p_probabilities(logits: torch.Tensor, temperature: float, top_p: float, *, num_warps: int | None = None) -> torch.Tensor:
    V = logits.shape[-1]
    rows = logits.numel() // V
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    block = triton.next_power_of_2(V)
    _top_p_kernel[(rows,)](logits, out, V, 1.0 / temperature, top_p, BLOCK=block, BISECT=top_p < 1.0,
                           num_warps=num_warps or 8)  # measured on an H100: 8 warps 35 us, 32 warps 42 us (32K)
    return out
