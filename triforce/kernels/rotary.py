"""Rotary embedding of q and k and the cache write of k and v, in one kernel.

Called once per layer by the static (graph) path: q is rotated in place, k is rotated straight
into its cache slots and v copied beside it. The angles are computed in the kernel from the
positions (the eager path's cos/sin tables cost eight small launches per forward), and the slots
start at a device scalar, so a captured graph writes wherever the cache ends at replay time.
"""

from __future__ import annotations

import torch

from triforce.kernels import kernels_usable
from triforce.models.rope import DevicePositions, apply_rotary


def positions_1d(rope) -> bool:
    return isinstance(rope.positions, DevicePositions) or rope.positions.dim() == 1


def rope_store_reference(q, k, v, rope, k_cache, v_cache, slot_start):
    """q, k, v: (B, H, T, D) views; rope: models.rope.Rope of the T positions; caches
    (B, Hkv, S, D); slot_start: device scalar. Rotates q in place, writes rotated k and v at slots
    slot_start .. slot_start + T."""
    T = q.shape[2]
    cos, sin = rope.cos_sin
    q.copy_(apply_rotary(q, cos, sin))  # (cos_sin materialises DevicePositions)
    slots = slot_start.reshape(()).to(torch.int64) + torch.arange(T, device=q.device)
    k_cache.index_copy_(2, slots, apply_rotary(k, cos, sin))
    v_cache.index_copy_(2, slots, v)


def rope_store(q, k, v, rope, k_cache, v_cache, slot_start, *, use_triton: bool | None = None,
               pdl: bool = False) -> None:
    half = q.shape[-1] // 2
    ok = (kernels_usable(q, use_triton) and half & (half - 1) == 0 and q.shape[0] == 1
          and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1 and positions_1d(rope)
          and k_cache.is_contiguous() and v_cache.is_contiguous())
    if not ok:
        return rope_store_reference(q, k, v, rope, k_cache, v_cache, slot_start)
    from triforce.kernels.triton_rotary import rope_store as triton_rope_store

    triton_rope_store(q, k, v, rope, k_cache, v_cache, slot_start, pdl=pdl)
