"""The input embedding of a forward, gathered straight from the engine's token buffer.

A captured forward reads its T token ids from the token buffer at a start kept in device memory
(cache/static_view.py). Building the index (start + arange), selecting the ids and then looking
up their rows are three launches; the kernel here does it in one, reading the start itself.
Everywhere else (CPU, eager prefill) the ids are a plain (B, T) tensor and this is `F.embedding`.

A batch of B sequences keeps one token row per sequence, buffer (B, N), and one start per
sequence, start (B,): sequence b's ids are buffer[b, start[b] : start[b] + T] (the sequences
advance by their own accepted counts, so their starts differ). One sequence may keep a flat
buffer (N,) with a scalar start, as the engine does at batch 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triforce.inputs import TokenSlice
from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext


def embed_reference(weight: torch.Tensor, tokens: torch.Tensor | TokenSlice) -> torch.Tensor:
    return F.embedding(tokens.ids() if isinstance(tokens, TokenSlice) else tokens, weight)


def embed(weight: torch.Tensor, tokens: torch.Tensor | TokenSlice, *, ctx: KernelContext | None = None) -> torch.Tensor:
    """(B, T, hidden) rows of `weight` for the ids in `tokens`."""
    if (isinstance(tokens, TokenSlice) and weight.is_contiguous() and tokens.buffer.stride(-1) == 1
            and tokens.start.numel() in (1, tokens.batch) and runs_kernel(ctx, weight)):
        from triforce.kernels.triton_embedding import embed_slice

        return embed_slice(weight, tokens.buffer, tokens.start, tokens.count, pdl=ctx.pdl)
    return embed_reference(weight, tokens)
