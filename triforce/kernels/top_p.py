"""The sampling transform (temperature, softmax, nucleus) of logits rows, without a sort.

Sorting a 32K-token row is four radix passes plus a scan and a scatter: about 90 microseconds of
small launches, half of a 68M draft step and a visible share of a 7B verify (docs/DESIGN.md §7); a
128K-token row (Llama 3) takes 140 microseconds, 410 for seven rows. The nucleus needs no sort:
with G(t) = sum of the probabilities strictly greater than t, token i is kept iff G(p_i) < top_p,
i.e. iff p_i >= t* = the smallest t with G(t) < top_p. t* is found by bisection over the bit
patterns of non-negative floats (monotone in the value). Same definition as `sampling.nucleus`
(up to float rounding of the sums at the boundary).

Two kernels (triton_top_p.py):
- rows of up to SINGLE_MAX tokens: one program per row holds the row in registers and bisects
  on it, one launch;
- longer rows, any vocabulary: the split path, one program per (row, chunk of 4096 tokens) in
  four launches: softmax partials; probabilities and a histogram that brackets t*; the exact mass
  above the bracket and the candidates inside it, bisected by the row's last program; the mask.
"""

from __future__ import annotations

import torch

from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext

SINGLE_MAX = 4096  # rows up to this length: the one-program kernel (one chunk of the split path anyway)


def top_p_usable(logits: torch.Tensor, ctx: KernelContext | None) -> bool:
    """The policy runs kernels on these logits and the kernels take them."""
    return logits.is_contiguous() and runs_kernel(ctx, logits)


def top_p_probabilities(logits: torch.Tensor, temperature: float, top_p: float, *, ctx: KernelContext) -> torch.Tensor:
    """The sampling transform of `logits` rows by the Triton kernels (where `top_p_usable`)."""
    from triforce.kernels import triton_top_p

    if logits.shape[-1] <= SINGLE_MAX:
        return triton_top_p.top_p_probabilities(logits, temperature, top_p, pdl=ctx.pdl)
    return triton_top_p.top_p_split(logits, temperature, top_p, pdl=ctx.pdl)
