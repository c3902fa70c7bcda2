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

import dataclasses

import torch
import torch.nn.functional as F

from triforce.kernels import kernels_usable


@dataclasses.dataclass(frozen=True)
class TokenSlice:
    """ids buffer[b, start[b] : start[b] + count] for each sequence b: buffer (B, N) int64 with
    start (B,) a device tensor, or buffer (N,) with start a device scalar (one sequence, B = 1)."""
    buffer: torch.Tensor  # (N,) or (B, N) int64
    start: torch.Tensor  # 0-d / (1,) for a flat buffer, (B,) (or one element for all rows) for (B, N)
    count: int

    @property
    def batch(self) -> int:
        return self.buffer.shape[0] if self.buffer.dim() == 2 else 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.batch, self.count)

    def ids(self) -> torch.Tensor:
        """(B, count) ids, with torch ops (the reference; static shapes, so graph-capturable)."""
        steps = torch.arange(self.count, device=self.buffer.device)
        if self.buffer.dim() == 1:
            return self.buffer.index_select(0, self.start + steps)[None]
        index = self.start.reshape(-1, 1).to(torch.int64) + steps
        return self.buffer.gather(1, index.expand(self.batch, self.count))


def embed_reference(weight: torch.Tensor, tokens: torch.Tensor | TokenSlice) -> torch.Tensor:
    return F.embedding(tokens.ids() if isinstance(tokens, TokenSlice) else tokens, weight)


def embed(weight: torch.Tensor, tokens: torch.Tensor | TokenSlice, *, use_triton: bool | None = None,
          pdl: bool = False) -> torch.Tensor:
    """(B, T, hidden) rows of `weight` for the ids in `tokens`."""
    if (isinstance(tokens, TokenSlice) and weight.is_contiguous() and tokens.buffer.stride(-1) == 1
            and tokens.start.numel() in (1, tokens.batch) and kernels_usable(weight, use_triton)):
        from triforce.kernels.triton_embedding import embed_slice

        return embed_slice(weight, tokens.buffer, tokens.start, tokens.count, pdl=pdl)
    return embed_reference(weight, tokens)
