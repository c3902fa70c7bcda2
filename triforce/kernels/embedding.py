"""The input embedding of a forward, gathered straight from the engine's token buffer.

A captured forward reads its T token ids from the token buffer at a start kept in a device
scalar (cache/static_view.py). Building the index (start + arange), selecting the ids and then
looking up their rows are three launches; the kernel here does it in one, reading the start
itself. Everywhere else (CPU, eager prefill) the ids are a plain (B, T) tensor and this is
`F.embedding`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from triforce.kernels import kernels_usable


@dataclasses.dataclass(frozen=True)
class TokenSlice:
    """ids buffer[start : start + count] with `start` a device scalar: one sequence (B = 1)."""
    buffer: torch.Tensor  # (N,) int64
    start: torch.Tensor
    count: int

    @property
    def shape(self) -> tuple[int, int]:
        return (1, self.count)

    def ids(self) -> torch.Tensor:
        return self.buffer.index_select(0, self.start + torch.arange(self.count, device=self.buffer.device))[None]


def embed_reference(weight: torch.Tensor, tokens: torch.Tensor | TokenSlice) -> torch.Tensor:
    return F.embedding(tokens.ids() if isinstance(tokens, TokenSlice) else tokens, weight)


def embed(weight: torch.Tensor, tokens: torch.Tensor | TokenSlice, *, use_triton: bool | None = None,
          pdl: bool = False) -> torch.Tensor:
    """(B, T, hidden) rows of `weight` for the ids in `tokens`."""
    if isinstance(tokens, TokenSlice) and weight.is_contiguous() and kernels_usable(weight, use_triton):
        from triforce.kernels.triton_embedding import embed_slice

        return embed_slice(weight, tokens.buffer, tokens.start, tokens.count, pdl=pdl)
    return embed_reference(weight, tokens)
