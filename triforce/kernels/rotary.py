"""Rotary embedding of q and k and the cache write of k and v, in one kernel.

Called once per layer by the static (graph) path: q is rotated in place, k is rotated straight
into its cache slots and v copied beside it. The angles are computed in the kernel from the
positions (the eager path's cos/sin tables cost eight small launches per forward), and the slots
start at a device value, so a captured graph writes wherever the cache ends at replay time.

Models that normalise each head's queries and keys before rotary (Qwen3's q_norm / k_norm) pass
`norms` (q weight, k weight, eps): the same kernel normalises each head's vector first (it holds
the whole head), as the model's RMSNorm rounds it, so the norm costs no launch of its own.

A batch of B sequences: q (B, Hq, T, D), k, v (B, Hkv, T, D), caches (B, Hkv, S, D). Each
sequence has its own positions and its own first slot (ragged prompts, different accepted
counts): positions (T,) (the same for every row) or (B, T), or `DevicePositions` with a start of
one element or (B,); slot_start one element (every row) or (B,). Sequence b's T keys go to slots
slot_start[b] .. slot_start[b] + T of its own cache row.
"""

from __future__ import annotations

import torch

from triforce.inputs import apply_rotary, batch_stride, kernel_positions
from triforce.kernels import runs_kernel
from triforce.kernels.norm import rms_norm_reference
from triforce.kernels.policy import KernelContext

Norms = tuple  # (q weight (D,), k weight (D,), eps): each head's RMSNorm before rotary


def rope_store_reference(q, k, v, rope, k_cache, v_cache, slot_start, norms: Norms | None = None):
    """q, k, v: (B, H, T, D) views; rope: inputs.Rope of the positions ((T,), (B, T), or a
    DevicePositions); caches (B, Hkv, S, D); slot_start: a device value, or (B,) one per sequence.
    Rotates q in place, writes rotated k and v at slots slot_start[b] .. slot_start[b] + T; with
    `norms`, q and k are first normalised head by head (the model's RMSNorm, op for op)."""
    T = q.shape[2]
    if norms is not None:
        q_weight, k_weight, eps = norms
        q.copy_(rms_norm_reference(q, q_weight, eps)[0])
        k = rms_norm_reference(k, k_weight, eps)[0]
    cos, sin = rope.cos_sin
    q.copy_(apply_rotary(q, cos, sin))  # (cos_sin materialises DevicePositions)
    steps = torch.arange(T, device=q.device)
    if slot_start.numel() == 1:  # every row's keys at the same slots
        slots = slot_start.reshape(()).to(torch.int64) + steps
        k_cache.index_copy_(2, slots, apply_rotary(k, cos, sin))
        v_cache.index_copy_(2, slots, v)
        return
    # per-sequence slots: a scatter along the slot dimension, row by row (static shapes, no sync)
    slots = slot_start.reshape(-1, 1, 1, 1).to(torch.int64) + steps[:, None]  # (B, 1, T, 1)
    shape = (k.shape[0], k.shape[1], T, k.shape[3])
    k_cache.scatter_(2, slots.expand(shape), apply_rotary(k, cos, sin).to(k_cache.dtype))
    v_cache.scatter_(2, slots.expand(shape), v.to(v_cache.dtype))


def rope_store(q, k, v, rope, k_cache, v_cache, slot_start, *, ctx: KernelContext | None = None,
               norms: Norms | None = None) -> None:
    """rope_store_reference, in one Triton kernel where the policy runs kernels (any batch)."""
    B, _, T, D = q.shape
    half = D // 2
    ok = (runs_kernel(ctx, q) and half & (half - 1) == 0
          and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
          and k_cache.is_contiguous() and v_cache.is_contiguous()
          and kernel_positions(rope, B, T) is not None and batch_stride(slot_start, B) is not None)
    if not ok:
        return rope_store_reference(q, k, v, rope, k_cache, v_cache, slot_start, norms)
    from triforce.kernels.triton_rotary import rope_store as triton_rope_store

    triton_rope_store(q, k, v, rope, k_cache, v_cache, slot_start, pdl=ctx.pdl, norms=norms)
