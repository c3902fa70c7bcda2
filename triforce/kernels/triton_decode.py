"""The split-KV decode attention kernels (Triton); decode_attention.py has the contract and the
torch reference. Imported only where a kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels import interpreted
from triforce.kernels.decode_attention import BLOCK_N


@triton.jit
def _attend_block(q, k_base, v_base, stride_kn, stride_vn, n0, end, last_key, dims, m_i, l_i, acc, scale_log2,
                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One key block of the online softmax: scores, running max / sum, weighted values."""
    keys = n0 + tl.arange(0, BLOCK_N)
    key_ok = keys < end
    k = tl.load(k_base + keys[:, None] * stride_kn + dims[None, :], mask=key_ok[:, None], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    s = tl.where(key_ok[None, :] & (keys[None, :] <= last_key[:, None]), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + keys[:, None] * stride_vn + dims[None, :], mask=key_ok[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _split_kernel(Q, K, V, KV_LEN, O_PART, L_PART,
                  stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn,
                  T, GROUP, NUM_KV_HEADS, scale_log2,
                  NUM_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, LOOP_FOR: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // NUM_KV_HEADS
    h = bh % NUM_KV_HEADS
    kv_len = tl.load(KV_LEN).to(tl.int32)
    # this program's slice of the keys, in whole blocks, derived from the live length
    blocks = tl.cdiv(kv_len, BLOCK_N)
    per_split = tl.cdiv(blocks, NUM_SPLITS)
    start = split * per_split * BLOCK_N
    end = tl.minimum(start + per_split * BLOCK_N, kv_len)

    rows = tl.arange(0, BLOCK_M)
    g = rows // T
    t = rows % T
    row_ok = rows < GROUP * T
    dims = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * stride_qb + (h * GROUP + g)[:, None] * stride_qh + t[:, None] * stride_qt + dims[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    last_key = kv_len - T + t  # causal limit of each query row

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if LOOP_FOR:  # compiled: a for loop, which Triton software-pipelines
        for n0 in range(start, end, BLOCK_N):
            m_i, l_i, acc = _attend_block(q, k_base, v_base, stride_kn, stride_vn, n0, end, last_key, dims,
                                          m_i, l_i, acc, scale_log2, BLOCK_N, PRECISION)
    else:  # Triton's CPU interpreter cannot take loaded values as range() bounds
        n0 = start
        while n0 < end:
            m_i, l_i, acc = _attend_block(q, k_base, v_base, stride_kn, stride_vn, n0, end, last_key, dims,
                                          m_i, l_i, acc, scale_log2, BLOCK_N, PRECISION)
            n0 += BLOCK_N
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    part = bh * NUM_SPLITS + split
    tl.store(O_PART + (part * BLOCK_M + rows[:, None]) * HEAD_DIM + dims[None, :], out, mask=row_ok[:, None])
    tl.store(L_PART + part * BLOCK_M + rows, lse, mask=row_ok)


@triton.jit
def _merge_kernel(O_PART, L_PART, OUT, stride_ob, stride_ot, stride_oh,
                  T, GROUP, NUM_KV_HEADS,
                  NUM_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    bh = tl.program_id(0)
    row = tl.program_id(1)
    b = bh // NUM_KV_HEADS
    h = bh % NUM_KV_HEADS
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    parts = bh * NUM_SPLITS + splits
    lse = tl.load(L_PART + parts * BLOCK_M + row)
    top = tl.max(lse, 0)
    w = tl.exp2(lse - top)  # empty slices have lse = -inf: weight 0
    o = tl.load(O_PART + (parts[:, None] * BLOCK_M + row) * HEAD_DIM + dims[None, :])
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    g = row // T
    t = row % T
    tl.store(OUT + b * stride_ob + t * stride_ot + (h * GROUP + g) * stride_oh + dims,
             out.to(OUT.dtype.element_ty))


def decode_attention(q, k, v, kv_len, scale, splits, *, block_n=BLOCK_N, num_warps=None, num_stages=3):
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    rows = group * T
    block_m = max(16, triton.next_power_of_2(rows))
    o_part = torch.empty((B * Hkv * splits, block_m, D), device=q.device, dtype=torch.float32)
    l_part = torch.empty((B * Hkv * splits, block_m), device=q.device, dtype=torch.float32)
    out = torch.empty((B, T, Hq, D), device=q.device, dtype=q.dtype)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _split_kernel[(B * Hkv, splits)](
        q, k, v, kv_len, o_part, l_part,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        T, group, Hkv, scale * 1.4426950408889634,
        NUM_SPLITS=splits, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D, PRECISION=precision,
        LOOP_FOR=not interpreted(),
        num_warps=num_warps or (4 if block_m <= 64 else 8), num_stages=num_stages)
    _merge_kernel[(B * Hkv, rows)](
        o_part, l_part, out, out.stride(0), out.stride(1), out.stride(2),
        T, group, Hkv, NUM_SPLITS=splits, BLOCK_M=block_m, HEAD_DIM=D, num_warps=1)
    return out
