"""Triton kernel of linear.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

NONE, NORM, NORM_RESIDUAL = 0, 1, 2

from triforce.kernels.prenormed import PreNormed
from triforce.kernels.policy import DeviceProps, KernelPolicy, LinearLaunch
from triforce.kernels.triton_pdl import l2_prefetch, pdl_args, pdl_start, prefetch_bytes
from triforce.kernels.workspace import Workspace, counters


@triton.jit
def _load_input(X, R, rows, row_ok, ks, k_ok, stride_xm, stride_rm, PROLOGUE: tl.constexpr):
    """One [rows, BLOCK_K] chunk of the product's input before normalisation: x (+ residual,
    rounded to the model's dtype as torch rounds the add)."""
    mask = row_ok[:, None] & k_ok[None, :]
    x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0)
    if PROLOGUE == 2:
        r = tl.load(R + rows[:, None] * stride_rm + ks[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
    return x


@triton.jit
def _rope_epilogue(y, rows, row_ok, head, j0, OUT, stride_om, POS, INV_FREQ, KC, VC, SLOT, rope_scale,
                   stride_cb, stride_ch, stride_cs, stride_pb, stride_pt, stride_sb, tokens, NUM_Q_HEADS,
                   NUM_KV_HEADS, HEAD_DIM: tl.constexpr, HALF_N: tl.constexpr, BLOCK_M: tl.constexpr,
                   POS_FROM_START: tl.constexpr):
    """The q/k/v projection's rotary embedding and cache write (rotary.py's kernel, fused): this
    program's columns are dims j0.. j0+HALF_N and HEAD_DIM/2 + the same of one head, the rotary
    pairs. q is written back rotated, k rotated to its cache slots, v to its own. Row r is token
    r % tokens of sequence r // tokens (a batch of B sequences of `tokens` new tokens each): its
    position and slot are its sequence's start + its token (or its own position), its cache row
    its sequence's (strides 0 for one sequence, or one value shared by all)."""
    y = y.to(OUT.dtype.element_ty).to(tl.float32)  # the projection rounds to the model's dtype first
    x1, x2 = tl.split(tl.permute(tl.reshape(y, [BLOCK_M, 2, HALF_N]), [0, 2, 1]))
    d = j0 + tl.arange(0, HALF_N)
    seq = rows // tokens
    t = rows % tokens
    if POS_FROM_START:
        pos = tl.load(POS + seq * stride_pb, mask=row_ok, other=0) + t
    else:
        pos = tl.load(POS + seq * stride_pb + t * stride_pt, mask=row_ok, other=0)
    angle = pos.to(tl.float32)[:, None] * tl.load(INV_FREQ + d)[None, :]
    cos = (tl.cos(angle) * rope_scale).to(OUT.dtype.element_ty).to(tl.float32)
    sin = (tl.sin(angle) * rope_scale).to(OUT.dtype.element_ty).to(tl.float32)
    mask = row_ok[:, None]
    if head < NUM_Q_HEADS:
        base = OUT + rows[:, None] * stride_om + head * HEAD_DIM + d[None, :]
        tl.store(base, (x1 * cos - x2 * sin).to(OUT.dtype.element_ty), mask=mask)
        tl.store(base + HEAD_DIM // 2, (x2 * cos + x1 * sin).to(OUT.dtype.element_ty), mask=mask)
    else:
        slot = tl.load(SLOT + seq * stride_sb, mask=row_ok, other=0).to(tl.int64) + t
        row = seq.to(tl.int64) * stride_cb + slot * stride_cs  # int64: B x Hkv x S x D may pass 2^31
        if head < NUM_Q_HEADS + NUM_KV_HEADS:
            base = KC + (head - NUM_Q_HEADS) * stride_ch + row[:, None] + d[None, :]
            tl.store(base, (x1 * cos - x2 * sin).to(KC.dtype.element_ty), mask=mask)
            tl.store(base + HEAD_DIM // 2, (x2 * cos + x1 * sin).to(KC.dtype.element_ty), mask=mask)
        else:
            base = VC + (head - NUM_Q_HEADS - NUM_KV_HEADS) * stride_ch + row[:, None] + d[None, :]
            tl.store(base, x1.to(VC.dtype.element_ty), mask=mask)
            tl.store(base + HEAD_DIM // 2, x2.to(VC.dtype.element_ty), mask=mask)


@triton.jit
def _split_k_sum(acc, row_ok, WS, COUNTERS, tile, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """Split-K's reduction without a second launch: each of a tile's SPLIT_K programs stores its
    partial sums and counts itself in; the last to arrive adds the partials in split order (the
    same float sum whichever program is last) and resets the tile's counter for the next call.
    Returns (sum, whether this program is the last)."""
    lr = tl.arange(0, BLOCK_M)
    lc = tl.arange(0, BLOCK_N)
    ws = WS + tile * (SPLIT_K * BLOCK_M * BLOCK_N) + lr[:, None] * BLOCK_N + lc[None, :]
    tl.store(ws + tl.program_id(1) * (BLOCK_M * BLOCK_N), acc, mask=row_ok[:, None])
    tl.debug_barrier()  # every thread's partial precedes the release below
    last = tl.atomic_add(COUNTERS + tile, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1
    total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for s in tl.static_range(SPLIT_K):  # read at L2 (.cg): the other programs' stores, not a stale L1 line
        total += tl.load(ws + s * (BLOCK_M * BLOCK_N), mask=row_ok[:, None] & last, other=0.0, cache_modifier=".cg")
    tl.atomic_xchg(COUNTERS + tile, 0, mask=last, sem="relaxed", scope="gpu")
    return total, last


@triton.jit
def _gated_epilogue(y, rows, row_ok, j0, gate_cols, OUT, stride_om, BLOCK_M: tl.constexpr, HALF_N: tl.constexpr):
    """SwiGLU as the gate/up projection's epilogue: this program's columns are gate columns
    j0.. j0+HALF_N and the same up columns; it writes silu(gate) * up, rounded as torch rounds
    the projection, the silu and the product (activation.silu_mul_reference)."""
    y = y.to(OUT.dtype.element_ty).to(tl.float32)
    gate, up = tl.split(tl.permute(tl.reshape(y, [BLOCK_M, 2, HALF_N]), [0, 2, 1]))
    silu = (gate / (1.0 + tl.exp(-gate))).to(OUT.dtype.element_ty).to(tl.float32)
    c = j0 + tl.arange(0, HALF_N)
    tl.store(OUT + rows[:, None] * stride_om + c[None, :], (silu * up).to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (c < gate_cols)[None, :])


@triton.jit
def _norm_out_epilogue(y, rows, row_ok, cols, col_ok, pid, M, res, H, N, nw, OUT, stride_om, SQ):
    """The product before an RMSNorm (o_proj, down_proj) adds the residual and does the norm's
    work that needs no full row: h = y + residual (rounded as torch rounds the add) to H, h * norm
    weight to OUT, and this tile's share of each row's sum of squares to SQ[tile, row]. The
    product after the norm scales its rows by 1/sqrt(mean square + eps) (ROW_SCALE). res and nw:
    this tile's residual and norm weights, loaded before the main loop."""
    mask = row_ok[:, None] & col_ok[None, :]
    y = y.to(OUT.dtype.element_ty).to(tl.float32)
    h = (y + res.to(tl.float32)).to(OUT.dtype.element_ty)
    tl.store(H + rows[:, None] * N + cols[None, :], h, mask=mask)
    hf = tl.where(mask, h.to(tl.float32), 0.0)
    tl.store(SQ + pid * M + rows, tl.sum(hf * hf, 1), mask=row_ok)
    tl.store(OUT + rows[:, None] * stride_om + cols[None, :], (hf * nw.to(tl.float32)[None, :]).to(OUT.dtype.element_ty),
             mask=mask)


@triton.jit
def _linear_kernel(X, R, NW, W, B, OUT, H, M, N, stride_xm, stride_rm, stride_wn, stride_om, eps,
                   POS, INV_FREQ, KC, VC, SLOT, rope_scale, stride_cb, stride_ch, stride_cs, stride_pb, stride_pt,
                   stride_sb, tokens, NUM_Q_HEADS, NUM_KV_HEADS,
                   WS, COUNTERS, gate_cols, SQ, sq_tiles,
                   K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, DESIGN: tl.constexpr,
                   ROPE: tl.constexpr, HEAD_DIM: tl.constexpr, POS_FROM_START: tl.constexpr, PDL: tl.constexpr,
                   PREFETCH: tl.constexpr, ELEMENT_BYTES: tl.constexpr, SPLIT_K: tl.constexpr,
                   GATED: tl.constexpr, NORM_OUT: tl.constexpr, ROW_SCALE: tl.constexpr, SQ_TILES: tl.constexpr):
    # K is a compile-time constant: the loops over it unroll and pipeline (few distinct K per model)
    pid = tl.program_id(0)
    # split-K: program (pid, s) sums over inputs [s * K_SPLIT, (s + 1) * K_SPLIT) only
    K_SPLIT: tl.constexpr = (K + SPLIT_K - 1) // SPLIT_K
    k_start = tl.program_id(1) * K_SPLIT
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    if GATED:  # columns in gate/up pairs: half of them gate columns j0.., the other half the same up columns
        j0 = pid * (BLOCK_N // 2)
        i = tl.arange(0, BLOCK_N)
        cols = tl.where(i < BLOCK_N // 2, j0 + i, gate_cols + j0 + i - BLOCK_N // 2)
        col_ok = j0 + i % (BLOCK_N // 2) < gate_cols
    elif ROPE:  # columns in rotary pairs: half of them dims j0.., the other half HEAD_DIM/2 + j0..
        groups = HEAD_DIM // BLOCK_N  # programs per head
        head = pid // groups
        j0 = (pid % groups) * (BLOCK_N // 2)
        i = tl.arange(0, BLOCK_N)
        cols = head * HEAD_DIM + tl.where(i < BLOCK_N // 2, j0 + i, HEAD_DIM // 2 + j0 + i - BLOCK_N // 2)
    else:
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if not GATED:
        col_ok = cols < N
    if PREFETCH > 0:  # with PDL: this program's first weight rows (two runs: rotary pairs), while the predecessor ends
        first = pid * BLOCK_N
        second = first + BLOCK_N // 2
        if ROPE:
            first = head * HEAD_DIM + j0
            second = first + HEAD_DIM // 2
        if GATED:
            first = j0
            second = gate_cols + j0
        l2_prefetch(W + first * stride_wn + k_start,
                    tl.minimum(PREFETCH // 2, ((N - first) * stride_wn - k_start) * ELEMENT_BYTES))
        if second < N:
            l2_prefetch(W + second * stride_wn + k_start,
                        tl.minimum(PREFETCH // 2, ((N - second) * stride_wn - k_start) * ELEMENT_BYTES))
    pdl_start(PDL)
    # what the epilogue reads from the predecessors is loaded first, so its latency hides behind the main loop
    if ROW_SCALE:  # the input is h * norm weight (a NORM_OUT product's): RMSNorm's row scale, from its sums of squares
        t = tl.arange(0, SQ_TILES)
        sq_in = tl.load(SQ + t[:, None] * M + rows[None, :], mask=(t < sq_tiles)[:, None] & row_ok[None, :], other=0.0)
    if NORM_OUT:
        res = tl.load(R + rows[:, None] * stride_rm + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        nw_out = tl.load(NW + cols, mask=col_ok, other=0.0)
    if PROLOGUE == 1 or PROLOGUE == 2:
        # first pass over the (few) input rows: their mean square; program 0 also writes h = x + r
        sq = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            x = _load_input(X, R, rows, row_ok, ks, k_ok, stride_xm, stride_rm, PROLOGUE)
            xf = x.to(tl.float32)
            sq += tl.sum(xf * xf, 1)
            if PROLOGUE == 2:
                if pid == 0 and k_start == 0:
                    tl.store(H + rows[:, None] * K + ks[None, :], x, mask=row_ok[:, None] & k_ok[None, :])
        rstd = 1.0 / tl.sqrt(sq / K + eps)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kk in range(0, K_SPLIT, BLOCK_K):
        ks = k_start + kk + tl.arange(0, BLOCK_K)
        k_ok = (kk + tl.arange(0, BLOCK_K) < K_SPLIT) & (ks < K)
        x = _load_input(X, R, rows, row_ok, ks, k_ok, stride_xm, stride_rm, PROLOGUE)
        if PROLOGUE == 1 or PROLOGUE == 2:  # RMSNorm as PreNormed computes it: h * weight here, the row scale after
            nw = tl.load(NW + ks, mask=k_ok, other=0.0)
            x = (x.to(tl.float32) * nw.to(tl.float32)[None, :]).to(X.dtype.element_ty)
        w = tl.load(W + cols[:, None] * stride_wn + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if DESIGN == 0:  # input rows as the MMA's M side
            acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
        elif DESIGN == 1:  # weight rows as the MMA's M side ("swap AB", the usual skinny-GEMM form)
            acc += tl.trans(tl.dot(w, tl.trans(x), input_precision=PRECISION))
        else:  # no MMA: a multiply-and-sum per input row (few rows)
            for m in tl.static_range(BLOCK_M):
                xm = tl.sum(tl.where(rows[:, None] == m, x.to(tl.float32), 0.0), 0)
                part = tl.sum(w.to(tl.float32) * xm[None, :], 1)
                acc += tl.where(rows[:, None] == m, part[None, :], 0.0)
    if SPLIT_K > 1:
        acc, last = _split_k_sum(acc, row_ok, WS, COUNTERS, pid, SPLIT_K, BLOCK_M, BLOCK_N)
        row_ok = row_ok & last  # only the last program of a tile writes the output
    if ROW_SCALE:  # (computed here, not before the main loop: nothing waits for the load there)
        acc = acc * (1.0 / tl.sqrt(tl.sum(sq_in, 0) / K + eps))[:, None]
    if PROLOGUE == 1 or PROLOGUE == 2:
        acc = acc * rstd[:, None]
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        _gated_epilogue(acc, rows, row_ok, j0, gate_cols, OUT, stride_om, BLOCK_M, BLOCK_N // 2)
    elif ROPE:
        _rope_epilogue(acc, rows, row_ok, head, j0, OUT, stride_om, POS, INV_FREQ, KC, VC, SLOT, rope_scale,
                       stride_cb, stride_ch, stride_cs, stride_pb, stride_pt, stride_sb, tokens, NUM_Q_HEADS,
                       NUM_KV_HEADS, HEAD_DIM, BLOCK_N // 2, BLOCK_M, POS_FROM_START)
    elif NORM_OUT:
        _norm_out_epilogue(acc, rows, row_ok, cols, col_ok, pid, M, res, H, N, nw_out, OUT, stride_om, SQ)
    else:
        tl.store(OUT + rows[:, None] * stride_om + cols[None, :], acc.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


MAX_TILES = 1 << 14  # tiles of one split-K launch (the arrival counters)


@dataclasses.dataclass(frozen=True)
class RopeStore:
    """The rotary + cache-write epilogue's operands (see linear.qkv_rope_store). The product's
    input x (B, T, K) is B sequences of T new tokens each; per-sequence values are one element
    (shared by every row) or (B,)."""
    positions: torch.Tensor  # (T,) / (B, T) positions, or from_start: each sequence's first, one element or (B,)
    from_start: bool
    inv_freq: torch.Tensor
    scale: float
    k_cache: torch.Tensor  # (B, Hkv, S, D) contiguous
    v_cache: torch.Tensor
    slot: torch.Tensor  # the cache slot of each sequence's first new token: one element or (B,)
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def strides(self, batch: int, tokens: int) -> tuple[int, int, int]:
        """(positions' batch stride, their token stride, slots' batch stride) for the kernel."""
        from triforce.inputs import batch_stride

        p = self.positions
        if self.from_start:
            stride_pb, stride_pt = batch_stride(p, batch), 0
        elif p.dim() == 1:
            stride_pb, stride_pt = 0, p.stride(0)
        else:
            stride_pb, stride_pt = p.stride(0) if p.shape[0] > 1 else 0, p.stride(1)
        stride_sb = batch_stride(self.slot, batch)
        if stride_pb is None or stride_sb is None or (not self.from_start and p.shape[-1] != tokens):
            raise ValueError(f"rotary epilogue: positions {tuple(p.shape)} / slots {tuple(self.slot.shape)} "
                             f"for {batch} sequences of {tokens} tokens")
        return stride_pb, stride_pt, stride_sb


def fused_linear(x, weight, bias=None, *, residual=None, norm_weight=None, eps=0.0, rope=None, gated=False,
                 norm_out=None, launch: LinearLaunch | None = None, pdl: bool = False, prefetch: int = 0,
                 workspace: Workspace | None = None, block_m: int | None = None):
    """(out, h): see linear.py. h is x + residual for norm with residual, x for norm alone, None else.
    rope (a RopeStore): the columns are q|k|v heads; q is written rotated, k and v go to the cache.
    gated: the columns are [gate | up]; out is silu(gate) * up (half as wide).
    norm_out (the next RMSNorm's weight, with residual): out is a linear.PreNormed of h = product +
    residual, for the next product. x may be a PreNormed too (its norm's eps given): its RMSNorm
    is finished in this product's epilogue.
    launch: tile, split-K and stages (the policy's rule for this product when None); pdl and
    prefetch (bytes per program before the PDL wait): what a captured forward launches with."""
    pre_normed = x if isinstance(x, PreNormed) else None
    if pre_normed is not None:
        if norm_weight is not None or norm_out is not None:
            raise ValueError("a PreNormed input takes neither a norm prologue nor a norm epilogue")
        x = pre_normed.scaled
    K = x.shape[-1]
    N = weight.shape[0]
    M = x.numel() // x.shape[-1]
    if gated and (rope is not None or N % 2):
        raise ValueError("gated: an even number of [gate | up] columns, and no rotary epilogue")
    if norm_out is not None and (residual is None or norm_weight is not None or rope is not None or gated):
        raise ValueError("norm_out: a residual, and no norm prologue, rotary or gated epilogue")
    if launch is None:
        launch = KernelPolicy(DeviceProps.of(x.device)).linear_launch(
            M, N, K, gated=gated, element_size=x.element_size(), rope_head_dim=rope.head_dim if rope else None)
    tile, split_k, num_stages = launch.tile, launch.split_k, launch.stages
    prologue = (NORM_RESIDUAL if residual is not None else NORM) if norm_weight is not None else NONE
    out = torch.empty((*x.shape[:-1], N // 2 if gated else N), device=x.device, dtype=x.dtype)
    h = torch.empty_like(x) if prologue == NORM_RESIDUAL else (x if prologue == NORM else None)
    if norm_out is not None:
        h = torch.empty_like(out)
    design, block_k, block_n = tile.design, tile.block_k, tile.block_n
    if block_m is None:
        block_m = triton.next_power_of_2(M) if design == 2 else max(16, triton.next_power_of_2(M))
    if rope is not None:
        block_n = min(block_n, rope.head_dim)  # a program's columns lie within one head
        kc, vc, pos, inv_freq, slot = rope.k_cache, rope.v_cache, rope.positions, rope.inv_freq, rope.slot
        tokens = x.shape[-2] if x.dim() > 1 else 1  # x (B, T, K): B sequences of T tokens (rows b * T + t)
        rope_strides = (kc.stride(0), kc.stride(1), kc.stride(2), *rope.strides(M // tokens, tokens), tokens)
    else:
        kc = vc = pos = inv_freq = slot = out  # unused
        rope_strides = (0, 0, 0, 0, 0, 0, 1)
    tiles = triton.cdiv(N // 2, block_n // 2) if gated else triton.cdiv(N, block_n)
    if split_k > 1:
        if tiles > MAX_TILES:
            raise ValueError(f"split-K over {tiles} column tiles: at most {MAX_TILES}")
        ws = torch.empty(tiles * split_k * block_m * block_n, device=x.device, dtype=torch.float32)
        arrivals = counters(workspace, "split_k", MAX_TILES, x.device)
    else:
        ws = arrivals = out  # unused
    k_split = triton.cdiv(K, split_k)
    if norm_out is not None:
        sq = torch.empty((tiles, M), device=x.device, dtype=torch.float32)
    elif pre_normed is not None:
        sq = pre_normed.sq
    else:
        sq = out  # unused
    _linear_kernel[(tiles, split_k)](
        x, residual if residual is not None else x,
        norm_weight if norm_weight is not None else norm_out if norm_out is not None else x, weight,
        bias if bias is not None else weight, out, h if h is not None else out, M, N,
        x.shape[-1], residual.shape[-1] if residual is not None else 0, weight.stride(0), out.shape[-1], eps,
        pos, inv_freq, kc, vc, slot, rope.scale if rope else 1.0, *rope_strides,
        rope.num_heads if rope else 0, rope.num_kv_heads if rope else 0,
        ws, arrivals, N // 2, sq, sq.shape[0] if pre_normed is not None else 0, K=K,
        PROLOGUE=prologue, HAS_BIAS=bias is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        DESIGN=design, ROPE=rope is not None, HEAD_DIM=rope.head_dim if rope else 0,
        POS_FROM_START=bool(rope and rope.from_start), num_warps=tile.warps, num_stages=num_stages,
        PREFETCH=prefetch_bytes(pdl, prefetch, weight.data_ptr(), weight.stride(0) * weight.element_size(),
                                k_split * weight.element_size()),
        ELEMENT_BYTES=weight.element_size(), SPLIT_K=split_k, GATED=gated, NORM_OUT=norm_out is not None,
        ROW_SCALE=pre_normed is not None,
        SQ_TILES=triton.next_power_of_2(pre_normed.sq.shape[0]) if pre_normed is not None else 1, **pdl_args(pdl))
    if norm_out is not None:
        return PreNormed(h=h, scaled=out, sq=sq), h
    return out, h
