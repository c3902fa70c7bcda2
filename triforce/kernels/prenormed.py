"""The hand-off between two fused products with an RMSNorm between them (kernels/linear.py)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class PreNormed:
    """An RMSNorm's input, half normalised by the product before it (o_proj or down_proj, on the
    kernel path; `linear_add_norm`): that product's epilogue adds the residual, writes h, h times
    the norm's weight and each of its column tiles' share of every row's sum of squares. The
    product after the norm (gate/up, the next q/k/v, the output head) multiplies h * weight by its
    weights and scales each row by 1/sqrt(mean square + eps) in its epilogue, which equals
    RMSNorm(h) @ W.T up to rounding (torch rounds h * rstd before the weight; this rounds
    h * weight). So the norm, which needs whole rows, takes no launch of its own."""
    h: torch.Tensor  # the new residual stream: product + residual
    scaled: torch.Tensor  # h * norm weight, rounded to h's dtype
    sq: torch.Tensor  # (tiles, rows) float32
