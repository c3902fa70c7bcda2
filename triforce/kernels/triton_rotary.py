"""Triton kernel of rotary.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import triton
import triton.language as tl

from triforce.kernels.triton_pdl import pdl_args, pdl_start


@triton.jit
def _head_norm(x1, x2, W, eps, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """One head's RMSNorm over its two halves (float32 in, the model's rounding: the normalised
    vector to the model's dtype, times the weight, to the model's dtype again)."""
    d = tl.arange(0, HALF)
    r = tl.rsqrt((tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0)) / (2 * HALF) + eps)
    w1 = tl.load(W + d).to(tl.float32)
    w2 = tl.load(W + HALF + d).to(tl.float32)
    x1 = ((x1 * r).to(DTYPE).to(tl.float32) * w1).to(DTYPE).to(tl.float32)
    x2 = ((x2 * r).to(DTYPE).to(tl.float32) * w2).to(DTYPE).to(tl.float32)
    return x1, x2


@triton.jit
def _rope_store_kernel(Q, K, V, POS, INV_FREQ, KC, VC, SLOT, QW, KW, eps, stride_qb, stride_qh, stride_qt,
                       stride_kb, stride_kh,
                       stride_kt, stride_vb, stride_vh, stride_vt, stride_cb, stride_ch, stride_cs,
                       stride_pb, stride_pt, stride_sb, NUM_Q_HEADS, scale, HALF: tl.constexpr,
                       POS_FROM_START: tl.constexpr, NORM: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    head = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # the sequence (its positions, slots and cache row)
    d = tl.arange(0, HALF)
    # the eager path's arithmetic: float32 angle, cos / sin scaled, rounded to the model's dtype
    if POS_FROM_START:  # positions start, start + 1, ...: read from the captured view's metadata
        pos = tl.load(POS + b * stride_pb) + t
    else:
        pos = tl.load(POS + b * stride_pb + t * stride_pt)
    angle = pos.to(tl.float32) * tl.load(INV_FREQ + d)
    cos = (tl.cos(angle) * scale).to(Q.dtype.element_ty).to(tl.float32)
    sin = (tl.sin(angle) * scale).to(Q.dtype.element_ty).to(tl.float32)
    if head < NUM_Q_HEADS:
        base = Q + b * stride_qb + head * stride_qh + t * stride_qt
        x1 = tl.load(base + d).to(tl.float32)
        x2 = tl.load(base + HALF + d).to(tl.float32)
        if NORM:  # the head's q norm before rotary (Qwen3)
            x1, x2 = _head_norm(x1, x2, QW, eps, HALF, Q.dtype.element_ty)
        tl.store(base + d, (x1 * cos - x2 * sin).to(Q.dtype.element_ty))
        tl.store(base + HALF + d, (x2 * cos + x1 * sin).to(Q.dtype.element_ty))
    else:
        h = head - NUM_Q_HEADS
        slot = tl.load(SLOT + b * stride_sb).to(tl.int64) + t
        base = K + b * stride_kb + h * stride_kh + t * stride_kt
        x1 = tl.load(base + d).to(tl.float32)
        x2 = tl.load(base + HALF + d).to(tl.float32)
        if NORM:  # the head's k norm before rotary
            x1, x2 = _head_norm(x1, x2, KW, eps, HALF, K.dtype.element_ty)
        out = KC + b * stride_cb + h * stride_ch + slot * stride_cs
        tl.store(out + d, (x1 * cos - x2 * sin).to(KC.dtype.element_ty))
        tl.store(out + HALF + d, (x2 * cos + x1 * sin).to(KC.dtype.element_ty))
        vbase = V + b * stride_vb + h * stride_vh + t * stride_vt
        vout = VC + b * stride_cb + h * stride_ch + slot * stride_cs
        tl.store(vout + d, tl.load(vbase + d))
        tl.store(vout + HALF + d, tl.load(vbase + HALF + d))


def rope_store(q, k, v, rope, k_cache, v_cache, slot_start, *, pdl: bool = False, norms=None):
    """One program per (token, head, sequence); q/k/v/caches as rotary.rope_store checked them;
    norms: (q weight, k weight, eps) of each head's RMSNorm before rotary, or None."""
    from triforce.inputs import batch_stride, kernel_positions

    B, hq, T, D = q.shape
    hkv = k.shape[1]
    positions, from_start, stride_pb, stride_pt = kernel_positions(rope, B, T)
    q_weight, k_weight, eps = norms if norms is not None else (q, q, 0.0)  # (unread without NORM)
    _rope_store_kernel[(T, hq + hkv, B)](
        q, k, v, positions, rope.inv_freq, k_cache, v_cache, slot_start, q_weight, k_weight, float(eps),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
        v.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), stride_pb, stride_pt,
        batch_stride(slot_start, B), hq, float(rope.scale), HALF=D // 2, POS_FROM_START=from_start,
        NORM=norms is not None, num_warps=1, **pdl_args(pdl))
