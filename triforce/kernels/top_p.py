"""The sampling transform (temperature, softmax, nucleus) of one row in one kernel.

Sorting a 32K-token row is four radix passes plus a scan and a scatter: about 90 microseconds of
small launches, half of a 68M draft step and a visible share of a 7B verify (DESIGN.md §7). The
nucleus needs no sort: with G(t) = sum of the probabilities strictly greater than t, token i is
kept iff G(p_i) < top_p, i.e. iff p_i >= t* = the smallest t with G(t) < top_p. t* is found by
bisection over the 31 bits of a positive float, each step one masked sum over the row, with the
whole row held in registers by one program (rows of up to MAX_VOCAB tokens). Same definition as
`sampling.nucleus` (up to float rounding of the sums at the boundary).
"""

from __future__ import annotations

import torch

from triforce.kernels import kernels_usable

MAX_VOCAB = 32768  # one program holds the row in registers (32 values per thread over 32 warps)


def top_p_usable(logits: torch.Tensor, use_triton: bool | None = None) -> bool:
    return logits.shape[-1] <= MAX_VOCAB and logits.is_contiguous() and kernels_usable(logits, use_triton)


def top_p_probabilities(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    from triforce.kernels.triton_top_p import top_p_probabilities as triton_top_p

    return triton_top_p(logits, temperature, top_p)
