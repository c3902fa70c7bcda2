"""Triton kernel of linear.py (where the contract and the torch reference are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

NONE, NORM, NORM_RESIDUAL, SILU = 0, 1, 2, 3


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
def _linear_kernel(X, R, NW, W, B, OUT, H, M, N, stride_xm, stride_rm, stride_wn, stride_om, eps, K: tl.constexpr,
                   PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, DESIGN: tl.constexpr):
    # K is a compile-time constant: the loops over it unroll and pipeline (few distinct K per model)
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
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
    tl.store(OUT + rows[:, None] * stride_om + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# Launch configurations measured best on an H100 (scripts/tune_kernels.py, 7B and 8B weight shapes):
# (design, block_n, block_k, warps, stages). One input row: no MMA, long contiguous weight rows;
# more rows: the weight tile as the MMA's M side.
ONE_ROW = (2, 16, 1024, 8, 2)
FEW_ROWS = (1, 64, 256, 4, 4)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def fused_linear(x, weight, bias=None, *, residual=None, norm_weight=None, eps=0.0, silu=False,
                 block_n=None, block_k=None, num_warps=None, num_stages=None, design=None, block_m=None):
    """(out, h): see linear.py. h is x + residual for norm with residual, x for norm alone, None else."""
    K = x.shape[-1] // 2 if silu else x.shape[-1]
    N = weight.shape[0]
    M = x.numel() // x.shape[-1]
    prologue = SILU if silu else (NORM_RESIDUAL if residual is not None else NORM) if norm_weight is not None else NONE
    out = torch.empty((*x.shape[:-1], N), device=x.device, dtype=x.dtype)
    h = torch.empty_like(x) if prologue == NORM_RESIDUAL else (x if prologue == NORM else None)
    default = ONE_ROW if M == 1 else FEW_ROWS
    design = default[0] if design is None else design
    block_k = block_k or default[2]
    if block_n is None:
        block_n = default[1]
        # narrow outputs (o_proj and down_proj: 4096 rows; a tensor-parallel rank's share) would
        # leave SMs idle with 64-row tiles: narrower tiles until the grid covers the GPU
        while block_n > 16 and triton.cdiv(N, block_n) < _sm_count(x.device):
            block_n //= 2
    # float32 tiles are twice bf16's: half the pipeline stages keep them within shared memory
    num_warps = num_warps or default[3]
    num_stages = num_stages or (default[4] if x.element_size() <= 2 else max(2, default[4] // 2))
    if block_m is None:
        block_m = triton.next_power_of_2(M) if design == 2 else max(16, triton.next_power_of_2(M))
    _linear_kernel[(triton.cdiv(N, block_n),)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else weight, out, h if h is not None else out, M, N,
        x.shape[-1], residual.shape[-1] if residual is not None else 0, weight.stride(0), N, eps, K=K,
        PROLOGUE=prologue, HAS_BIAS=bias is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        DESIGN=design, num_warps=num_warps, num_stages=num_stages)
    return out, h
