"""The split-KV decode attention kernels (Triton); decode_attention.py has the contract and the
torch reference. Imported only where a kernel runs, so CPU runs never import Triton.

Query rows: a KV head serves GROUP query heads x T new tokens = R rows, held in tiles of BLOCK_M
rows: 64 (one warpgroup, 4 warps) for R <= 64, else 128 (two warpgroups, 8 warps), so the products
run on Hopper's warpgroup MMA however few rows there are (measured on an H100, 8B shape at 32K keys:
4 rows 53.2 -> 49.2 us, 68 rows 62.3 -> 55.0 us, against a 16-row tile, resp. a 64-row tile plus a
16-row tail on the older MMA: scripts/tune_kernels.py --attention). More than 128 rows (a token
tree's verify: 47 nodes x a group of 4, or 21 x 7) take ceil(R / 128) tiles, one program each over
the same key slice; the tile is the grid's fastest axis, so a slice's tiles run side by side and
its keys come from HBM once and from L2 for the others. The tile, warps, stages and key slices are
the policy's (KernelPolicy.attention_launch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.policy import AttentionLaunch
from triforce.kernels.triton_pdl import l2_prefetch, pdl_args, pdl_start, prefetch_bytes


@triton.jit
def _update(q, k, v, keys, key_ok, last_key, m_i, l_i, acc, scale_log2, TREE, tree_rows, row_ok, TREE_W, T,
            PRECISION: tl.constexpr, HAS_TREE: tl.constexpr):
    """One key block of the online softmax for one tile of query rows. HAS_TREE: a key of the last
    TREE_W slots (the new block and the TREE_W - T before it that a tree's earlier forwards wrote)
    is seen where the tree mask says so (TREE: (T, TREE_W) int8, row t the slots query t sees: its
    ancestors and itself), not by position."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    visible = key_ok[None, :] & (keys[None, :] <= last_key[:, None])
    if HAS_TREE:
        # the key's column of the mask: its slot minus the window's first (the block's first - (W - T))
        j = keys[None, :] - (last_key[:, None] - tree_rows[:, None]) + (TREE_W - T)
        in_block = j >= 0
        seen = tl.load(TREE + tree_rows[:, None] * TREE_W + j, mask=visible & in_block & row_ok[:, None], other=0)
        visible = visible & ((~in_block) | (seen != 0))
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _finish(OUT, O_PART, L_PART, part, rows, row_ok, dims, b, h, T, GROUP, stride_ob, stride_ot, stride_oh,
            m_i, l_i, acc, ROWS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIRECT: tl.constexpr):
    """A tile's result: the output itself when there is one split, else its partial for the merge."""
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if DIRECT:
        g = rows // T
        t = rows % T
        tl.store(OUT + b * stride_ob + t[:, None] * stride_ot + (h * GROUP + g)[:, None] * stride_oh + dims[None, :],
                 out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    else:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(O_PART + (part * ROWS_PAD + rows[:, None]) * HEAD_DIM + dims[None, :], out, mask=row_ok[:, None])
        tl.store(L_PART + part * ROWS_PAD + rows, lse, mask=row_ok)


@triton.jit
def _slice(KV_LEN, kv_offset, split, num_splits, BLOCK_N: tl.constexpr):
    """(kv_len, start, end): this program's slice of its sequence's keys (KV_LEN points at that
    sequence's length), in whole blocks, derived from the live length so the work stays balanced
    as the cache grows."""
    kv_len = tl.load(KV_LEN).to(tl.int32) + kv_offset
    per_split = tl.cdiv(tl.cdiv(kv_len, BLOCK_N), num_splits)
    start = split * per_split * BLOCK_N
    return kv_len, start, tl.minimum(start + per_split * BLOCK_N, kv_len)


@triton.jit
def _block(q, k_base, v_base, stride_kn, stride_vn, dims, n0, end, last_key, m_i, l_i, acc, scale_log2,
           TREE, tree_rows, row_ok, TREE_W, T, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
           HAS_TREE: tl.constexpr):
    """The key block from n0 (of the slice ending at `end`): its keys and values, then _update."""
    keys = n0 + tl.arange(0, BLOCK_N)
    key_ok = keys < end
    k = tl.load(k_base + keys[:, None] * stride_kn + dims[None, :], mask=key_ok[:, None], other=0.0)
    v = tl.load(v_base + keys[:, None] * stride_vn + dims[None, :], mask=key_ok[:, None], other=0.0)
    return _update(q, k, v, keys, key_ok, last_key, m_i, l_i, acc, scale_log2, TREE, tree_rows, row_ok,
                   TREE_W, T, PRECISION, HAS_TREE)


@triton.jit
def _sweep(q, k_base, v_base, stride_kn, stride_vn, dims, lo, hi, end, last_key, m_i, l_i, acc, scale_log2,
           TREE, tree_rows, row_ok, TREE_W, T, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
           LOOP_FOR: tl.constexpr, HAS_TREE: tl.constexpr):
    """The key blocks [lo, hi) of the slice ending at `end`, one _block each."""
    if LOOP_FOR:  # compiled: a for loop, which Triton software-pipelines
        for n0 in range(lo, hi, BLOCK_N):
            m_i, l_i, acc = _block(q, k_base, v_base, stride_kn, stride_vn, dims, n0, end, last_key, m_i, l_i, acc,
                                   scale_log2, TREE, tree_rows, row_ok, TREE_W, T, BLOCK_N, PRECISION, HAS_TREE)
    else:  # Triton's CPU interpreter cannot take loaded values as range() bounds
        n0 = lo
        while n0 < hi:
            m_i, l_i, acc = _block(q, k_base, v_base, stride_kn, stride_vn, dims, n0, end, last_key, m_i, l_i, acc,
                                   scale_log2, TREE, tree_rows, row_ok, TREE_W, T, BLOCK_N, PRECISION, HAS_TREE)
            n0 += BLOCK_N
    return m_i, l_i, acc


@triton.jit
def _split_kernel(Q, K, V, KV_LEN, OUT, O_PART, L_PART, kv_offset, stride_lb,
                  stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_ob, stride_ot, stride_oh,
                  T, GROUP, NUM_KV_HEADS, num_splits, scale_log2,
                  BLOCK_M: tl.constexpr, ROW_TILES: tl.constexpr, ROWS_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr,
                  PRECISION: tl.constexpr, LOOP_FOR: tl.constexpr, DIRECT: tl.constexpr, PDL: tl.constexpr,
                  PREFETCH: tl.constexpr, KEY_BYTES: tl.constexpr, TREE, TREE_W, HAS_TREE: tl.constexpr):
    if ROW_TILES == 1:  # every row in one tile: the grid (sequence x KV head, slice)
        tile = 0
        bh = tl.program_id(0)
        split = tl.program_id(1)
    else:  # the tile the fastest axis: a slice's row tiles run side by side and share its keys in L2
        tile = tl.program_id(0)
        bh = tl.program_id(1)
        split = tl.program_id(2)
    b = bh // NUM_KV_HEADS
    h = bh % NUM_KV_HEADS
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    KV_LEN += b * stride_lb  # this sequence's length (stride 0: one length for every sequence)
    if PREFETCH > 0:  # with PDL (contiguous keys): the slice's first keys and values into L2
        # the length read before the wait may be the previous step's: a prefetch is only a hint
        hint_len, hint_start, hint_end = _slice(KV_LEN, kv_offset, split, num_splits, BLOCK_N)
        if hint_start < hint_end:
            nbytes = tl.minimum(PREFETCH, (hint_end - hint_start) * KEY_BYTES)
            l2_prefetch(k_base + hint_start * stride_kn, nbytes)
            l2_prefetch(v_base + hint_start * stride_vn, nbytes)
    pdl_start(PDL)
    kv_len, start, end = _slice(KV_LEN, kv_offset, split, num_splits, BLOCK_N)
    num_rows = GROUP * T
    dims = tl.arange(0, HEAD_DIM)
    q_base = Q + b * stride_qb + h * GROUP * stride_qh

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_rows
    q = tl.load(q_base + (rows // T)[:, None] * stride_qh + (rows % T)[:, None] * stride_qt + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    last_key = kv_len - T + rows % T  # causal limit of each query row
    tree_rows = rows % T  # each query row's node in the block (its row of a tree mask)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    if HAS_TREE:
        # the mask only where a block reaches the tree's window (the last TREE_W slots): the keys
        # before it are seen by every row, causally, and cost no mask load (the first block of the
        # window counts from the slice's start, so both sweeps stay on its block grid)
        window = start + (tl.maximum(kv_len - TREE_W - start, 0) // BLOCK_N) * BLOCK_N
        window = tl.minimum(window, end)
        m_i, l_i, acc = _sweep(q, k_base, v_base, stride_kn, stride_vn, dims, start, window, end, last_key,
                               m_i, l_i, acc, scale_log2, TREE, tree_rows, row_ok, TREE_W, T,
                               BLOCK_N, PRECISION, LOOP_FOR, False)
        m_i, l_i, acc = _sweep(q, k_base, v_base, stride_kn, stride_vn, dims, window, end, end, last_key,
                               m_i, l_i, acc, scale_log2, TREE, tree_rows, row_ok, TREE_W, T,
                               BLOCK_N, PRECISION, LOOP_FOR, True)
    else:
        m_i, l_i, acc = _sweep(q, k_base, v_base, stride_kn, stride_vn, dims, start, end, end, last_key,
                               m_i, l_i, acc, scale_log2, TREE, tree_rows, row_ok, TREE_W, T,
                               BLOCK_N, PRECISION, LOOP_FOR, False)
    part = bh * num_splits + split
    _finish(OUT, O_PART, L_PART, part, rows, row_ok, dims, b, h, T, GROUP, stride_ob, stride_ot, stride_oh,
            m_i, l_i, acc, ROWS_PAD, HEAD_DIM, DIRECT)


@triton.jit
def _merge_kernel(O_PART, L_PART, OUT, stride_ob, stride_ot, stride_oh,
                  T, GROUP, NUM_KV_HEADS, num_splits,
                  SPLITS_BLOCK: tl.constexpr, ROWS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    bh = tl.program_id(0)
    row = tl.program_id(1)
    b = bh // NUM_KV_HEADS
    h = bh % NUM_KV_HEADS
    splits = tl.arange(0, SPLITS_BLOCK)
    split_ok = splits < num_splits
    dims = tl.arange(0, HEAD_DIM)
    parts = bh * num_splits + splits
    lse = tl.load(L_PART + parts * ROWS_PAD + row, mask=split_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.exp2(lse - top)  # empty slices have lse = -inf: weight 0
    o = tl.load(O_PART + (parts[:, None] * ROWS_PAD + row) * HEAD_DIM + dims[None, :], mask=split_ok[:, None],
                other=0.0)
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    g = row // T
    t = row % T
    tl.store(OUT + b * stride_ob + t * stride_ot + (h * GROUP + g) * stride_oh + dims,
             out.to(OUT.dtype.element_ty))


def decode_attention(q, k, v, kv_len, scale, launch: AttentionLaunch, *, kv_offset: int = 0, pdl: bool = False,
                     prefetch: int = 0, interpreter: bool = False, tree: torch.Tensor | None = None):
    """The split kernel and, with more than one slice, the merge; `launch` from the policy
    (KernelPolicy.attention_launch); prefetch: bytes per program before the PDL wait. kv_len: one
    element, or (B,) one per sequence (program (b, head, slice) reads kv_len[b]). tree: (T, W)
    int8 (or bool) mask over the last W >= T slots (the new block and a tree's earlier nodes), or
    None (causal)."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    rows = group * T
    splits = launch.splits
    tiles = triton.cdiv(rows, launch.block_m)
    rows_pad = tiles * launch.block_m
    out = torch.empty((B, T, Hq, D), device=q.device, dtype=q.dtype)
    direct = splits == 1
    if direct:
        o_part = l_part = out  # unused
    else:
        o_part = torch.empty((B * Hkv * splits, rows_pad, D), device=q.device, dtype=torch.float32)
        l_part = torch.empty((B * Hkv * splits, rows_pad), device=q.device, dtype=torch.float32)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    e = k.element_size()
    if k.stride(2) == D and v.stride(2) == D:  # a program's slice of keys (of values) is one run of bytes
        prefetch = prefetch_bytes(pdl, prefetch, k.data_ptr(), v.data_ptr(),
                                  *(e * s for s in (*k.stride()[:3], *v.stride()[:3])))
    else:
        prefetch = 0
    grid = (B * Hkv, splits) if tiles == 1 else (tiles, B * Hkv, splits)
    _split_kernel[grid](
        q, k, v, kv_len, out, o_part, l_part, kv_offset, kv_len.stride(0) if kv_len.numel() > 1 else 0,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        T, group, Hkv, splits, scale * 1.4426950408889634,
        BLOCK_M=launch.block_m, ROW_TILES=tiles, ROWS_PAD=rows_pad, BLOCK_N=launch.block_n, HEAD_DIM=D, PRECISION=precision,
        LOOP_FOR=not interpreter, DIRECT=direct, num_warps=launch.warps, num_stages=launch.stages,
        PREFETCH=prefetch, KEY_BYTES=D * e, TREE=tree if tree is not None else kv_len,
        TREE_W=tree.shape[-1] if tree is not None else T, HAS_TREE=tree is not None,
        **pdl_args(pdl))
    if not direct:
        splits_block = triton.next_power_of_2(splits)
        _merge_kernel[(B * Hkv, rows)](
            o_part, l_part, out, out.stride(0), out.stride(1), out.stride(2),
            T, group, Hkv, splits, SPLITS_BLOCK=splits_block, ROWS_PAD=rows_pad, HEAD_DIM=D,
            num_warps=max(1, min(4, splits_block * D // 2048)), **pdl_args(pdl))  # about 64 values per thread
    return out
