"""StreamingLLM eviction in one kernel: drop the oldest window tokens, shift the rest down.

Positions in a StreamingLLM cache are slots (cache/streaming.py), so evicting n tokens moves every
kept window key down n slots and re-rotates it by -n positions (rotations compose), and moves the
values with them. A draft cache stays full, so this happens at every draft step; as torch ops it
is some twenty small launches (the rotation's tables, the float copies, rotate_half, the copies
back) between two graph replays. The kernel does all layers and heads at once: one program per
(layer, batch, head) row walks the window in ascending slot tiles, each read before it is
overwritten.
"""

from __future__ import annotations

import torch

from triforce.kernels import kernels_usable


def shift_window_reference(k: torch.Tensor, v: torch.Tensor, start: int, end: int, n: int, rope) -> None:
    """k, v: (L, B, H, S, D); slots [start + n, end) move to [start, end - n), keys re-rotated by
    -n positions (rope: models.rope.RotaryEmbedding)."""
    kept = slice(start + n, end)
    k[:, :, :, start:end - n] = rope.shift(k[:, :, :, kept], -n)
    v[:, :, :, start:end - n] = v[:, :, :, kept].clone()


def shift_window(k: torch.Tensor, v: torch.Tensor, start: int, end: int, n: int, rope, *,
                 use_triton: bool | None = None) -> None:
    half = k.shape[-1] // 2
    if (n <= 0 or end - n <= start or not (k.is_contiguous() and v.is_contiguous()) or half & (half - 1)
            or not kernels_usable(k, use_triton)):
        if n > 0 and end - n > start:
            shift_window_reference(k, v, start, end, n, rope)
        return
    from triforce.kernels.triton_streaming import shift_window as triton_shift_window

    triton_shift_window(k, v, start, end, n, rope.inv_freq)
