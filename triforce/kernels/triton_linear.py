"""Triton kernel of linear.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

NONE, NORM, NORM_RESIDUAL, SILU = 0, 1, 2, 3

from triforce.kernels.triton_pdl import l2_prefetch, pdl_args, pdl_start, prefetch_bytes


@triton.jit
def _load_input(X, R, rows, row_ok, ks, k_ok, stride_xm, stride_rm, K, PROLOGUE: tl.constexpr):
    """One [rows, BLOCK_K] chunk of the product's input before normalisation: x (+ residual,
    rounded to the model's dtype as torch rounds the add), or silu(gate) * up."""
    mask = row_ok[:, None] & k_ok[None, :]
    x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0)
    if PROLOGUE == 2:
        r = tl.load(R + rows[:, None] * stride_rm + ks[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
    if PROLOGUE == 3:
        up = tl.load(X + rows[:, None] * stride_xm + K + ks[None, :], mask=mask, other=0.0)
        g = x.to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(X.dtype.element_ty)
        x = (silu.to(tl.float32) * up.to(tl.float32)).to(X.dtype.element_ty)
    return x


@triton.jit
def _rope_epilogue(y, rows, row_ok, head, j0, OUT, stride_om, POS, INV_FREQ, KC, VC, SLOT, rope_scale,
                   stride_ch, stride_cs, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM: tl.constexpr, HALF_N: tl.constexpr,
                   BLOCK_M: tl.constexpr, POS_FROM_START: tl.constexpr):
    """The q/k/v projection's rotary embedding and cache write (rotary.py's kernel, fused): this
    program's columns are dims j0.. j0+HALF_N and HEAD_DIM/2 + the same of one head, the rotary
    pairs. q is written back rotated, k rotated to its cache slots, v to its own."""
    y = y.to(OUT.dtype.element_ty).to(tl.float32)  # the projection rounds to the model's dtype first
    x1, x2 = tl.split(tl.permute(tl.reshape(y, [BLOCK_M, 2, HALF_N]), [0, 2, 1]))
    d = j0 + tl.arange(0, HALF_N)
    if POS_FROM_START:
        pos = tl.load(POS) + rows
    else:
        pos = tl.load(POS + rows, mask=row_ok, other=0)
    angle = pos.to(tl.float32)[:, None] * tl.load(INV_FREQ + d)[None, :]
    cos = (tl.cos(angle) * rope_scale).to(OUT.dtype.element_ty).to(tl.float32)
    sin = (tl.sin(angle) * rope_scale).to(OUT.dtype.element_ty).to(tl.float32)
    mask = row_ok[:, None]
    if head < NUM_Q_HEADS:
        base = OUT + rows[:, None] * stride_om + head * HEAD_DIM + d[None, :]
        tl.store(base, (x1 * cos - x2 * sin).to(OUT.dtype.element_ty), mask=mask)
        tl.store(base + HEAD_DIM // 2, (x2 * cos + x1 * sin).to(OUT.dtype.element_ty), mask=mask)
    else:
        slot = tl.load(SLOT).to(tl.int64) + rows
        if head < NUM_Q_HEADS + NUM_KV_HEADS:
            base = KC + (head - NUM_Q_HEADS) * stride_ch + slot[:, None] * stride_cs + d[None, :]
            tl.store(base, (x1 * cos - x2 * sin).to(KC.dtype.element_ty), mask=mask)
            tl.store(base + HEAD_DIM // 2, (x2 * cos + x1 * sin).to(KC.dtype.element_ty), mask=mask)
        else:
            base = VC + (head - NUM_Q_HEADS - NUM_KV_HEADS) * stride_ch + slot[:, None] * stride_cs + d[None, :]
            tl.store(base, x1.to(VC.dtype.element_ty), mask=mask)
            tl.store(base + HEAD_DIM // 2, x2.to(VC.dtype.element_ty), mask=mask)


@triton.jit
def _linear_kernel(X, R, NW, W, B, OUT, H, M, N, stride_xm, stride_rm, stride_wn, stride_om, eps,
                   POS, INV_FREQ, KC, VC, SLOT, rope_scale, stride_ch, stride_cs, NUM_Q_HEADS, NUM_KV_HEADS,
                   K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, DESIGN: tl.constexpr,
                   ROPE: tl.constexpr, HEAD_DIM: tl.constexpr, POS_FROM_START: tl.constexpr, PDL: tl.constexpr,
                   PREFETCH: tl.constexpr, ELEMENT_BYTES: tl.constexpr):
    # K is a compile-time constant: the loops over it unroll and pipeline (few distinct K per model)
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    if ROPE:  # columns in rotary pairs: half of them dims j0.., the other half HEAD_DIM/2 + j0..
        groups = HEAD_DIM // BLOCK_N  # programs per head
        head = pid // groups
        j0 = (pid % groups) * (BLOCK_N // 2)
        i = tl.arange(0, BLOCK_N)
        cols = head * HEAD_DIM + tl.where(i < BLOCK_N // 2, j0 + i, HEAD_DIM // 2 + j0 + i - BLOCK_N // 2)
    else:
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if PREFETCH > 0:  # with PDL: this program's first weight rows (two runs: rotary pairs), while the predecessor ends
        first = pid * BLOCK_N
        if ROPE:
            first = head * HEAD_DIM + j0
        second = first + (HEAD_DIM // 2 if ROPE else BLOCK_N // 2)
        l2_prefetch(W + first * stride_wn, tl.minimum(PREFETCH // 2, (N - first) * stride_wn * ELEMENT_BYTES))
        if second < N:
            l2_prefetch(W + second * stride_wn, tl.minimum(PREFETCH // 2, (N - second) * stride_wn * ELEMENT_BYTES))
    pdl_start(PDL)
    if PROLOGUE == 1 or PROLOGUE == 2:
        # first pass over the (few) input rows: their mean square; program 0 also writes h = x + r
        sq = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            x = _load_input(X, R, rows, row_ok, ks, k_ok, stride_xm, stride_rm, K, PROLOGUE)
            xf = x.to(tl.float32)
            sq += tl.sum(xf * xf, 1)
            if PROLOGUE == 2:
                if pid == 0:
                    tl.store(H + rows[:, None] * K + ks[None, :], x, mask=row_ok[:, None] & k_ok[None, :])
        rstd = 1.0 / tl.sqrt(sq / K + eps)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = _load_input(X, R, rows, row_ok, ks, k_ok, stride_xm, stride_rm, K, PROLOGUE)
        if PROLOGUE == 1 or PROLOGUE == 2:  # RMSNorm as the model computes it: round, then scale
            normed = (x.to(tl.float32) * rstd[:, None]).to(X.dtype.element_ty)
            nw = tl.load(NW + ks, mask=k_ok, other=0.0)
            x = (normed.to(tl.float32) * nw.to(tl.float32)[None, :]).to(X.dtype.element_ty)
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
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if ROPE:
        _rope_epilogue(acc, rows, row_ok, head, j0, OUT, stride_om, POS, INV_FREQ, KC, VC, SLOT, rope_scale,
                       stride_ch, stride_cs, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_N // 2, BLOCK_M,
                       POS_FROM_START)
    else:
        tl.store(OUT + rows[:, None] * stride_om + cols[None, :], acc.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


# Launch configurations measured best on an H100 (scripts/tune_kernels.py, 7B and 8B weight shapes):
# (design, block_n, block_k, warps, stages). One input row: no MMA, long contiguous weight rows;
# more rows: the weight tile as the MMA's M side.
ONE_ROW = (2, 16, 1024, 8, 2)
FEW_ROWS = (1, 64, 256, 4, 4)
# With PDL, each program pulls this many bytes of its weight rows into L2 before it waits for its
# predecessor (the first programs of a launch run beside the previous kernel's last ones).
PREFETCH_PER_PROGRAM = 16 * 1024


@dataclasses.dataclass(frozen=True)
class RopeStore:
    """The rotary + cache-write epilogue's operands (see linear.qkv_rope_store)."""
    positions: torch.Tensor  # (T,) positions, or a device scalar: the first of T consecutive ones
    from_start: bool
    inv_freq: torch.Tensor
    scale: float
    k_cache: torch.Tensor  # (1, Hkv, S, D) contiguous
    v_cache: torch.Tensor
    slot: torch.Tensor  # device scalar: the cache slot of the first new token
    num_heads: int
    num_kv_heads: int
    head_dim: int


def fused_linear(x, weight, bias=None, *, residual=None, norm_weight=None, eps=0.0, silu=False, rope=None,
                 block_n=None, block_k=None, num_warps=None, num_stages=None, design=None, block_m=None,
                 prefetch=None):
    """(out, h): see linear.py. h is x + residual for norm with residual, x for norm alone, None else.
    rope (a RopeStore): the columns are q|k|v heads; q is written rotated, k and v go to the cache."""
    K = x.shape[-1] // 2 if silu else x.shape[-1]
    N = weight.shape[0]
    M = x.numel() // x.shape[-1]
    prologue = SILU if silu else (NORM_RESIDUAL if residual is not None else NORM) if norm_weight is not None else NONE
    out = torch.empty((*x.shape[:-1], N), device=x.device, dtype=x.dtype)
    h = torch.empty_like(x) if prologue == NORM_RESIDUAL else (x if prologue == NORM else None)
    default = ONE_ROW if M == 1 else FEW_ROWS
    design = default[0] if design is None else design
    block_k = block_k or default[2]
    # 64-wide tiles also for narrow outputs (o_proj, down_proj: 4096 rows, 64 programs on 132 SMs):
    # narrower tiles that fill every SM measured slower in graphs on an H100 for 3-17 rows (o 0.72
    # vs 0.75 of the copy bandwidth, 8B q/k/v 0.76 vs 0.81: scripts/tune_kernels.py --linear)
    block_n = block_n or default[1]
    # float32 tiles are twice bf16's: half the pipeline stages keep them within shared memory
    num_warps = num_warps or default[3]
    num_stages = num_stages or (default[4] if x.element_size() <= 2 else max(2, default[4] // 2))
    if block_m is None:
        block_m = triton.next_power_of_2(M) if design == 2 else max(16, triton.next_power_of_2(M))
    if rope is not None:
        block_n = min(block_n, rope.head_dim)  # a program's columns lie within one head
        kc, vc, pos, inv_freq, slot = rope.k_cache, rope.v_cache, rope.positions, rope.inv_freq, rope.slot
    else:
        kc = vc = pos = inv_freq = slot = out  # unused
    _linear_kernel[(triton.cdiv(N, block_n),)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else weight, out, h if h is not None else out, M, N,
        x.shape[-1], residual.shape[-1] if residual is not None else 0, weight.stride(0), N, eps,
        pos, inv_freq, kc, vc, slot, rope.scale if rope else 1.0, kc.stride(1) if rope else 0,
        kc.stride(2) if rope else 0, rope.num_heads if rope else 0, rope.num_kv_heads if rope else 0, K=K,
        PROLOGUE=prologue, HAS_BIAS=bias is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        DESIGN=design, ROPE=rope is not None, HEAD_DIM=rope.head_dim if rope else 0,
        POS_FROM_START=bool(rope and rope.from_start), num_warps=num_warps, num_stages=num_stages,
        PREFETCH=prefetch_bytes(x, PREFETCH_PER_PROGRAM if prefetch is None else prefetch, weight.data_ptr(),
                                weight.stride(0) * weight.element_size()), ELEMENT_BYTES=weight.element_size(),
        **pdl_args(x))
    return out, h
