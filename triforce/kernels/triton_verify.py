"""Triton kernel of verify.py (where the contract and the torch references are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.workspace import Workspace, counters

BLOCK = 4096  # vocabulary entries per program
SAMPLE, RESIDUAL, PLAIN = 0, 1, 2  # modes: one race over probs; verify with the residual; verify, p_n itself
# arrival counters, one per row: at least this many, so a workspace's array (whose address a captured
# graph records) is not reallocated when a larger batch comes
MIN_ROWS = 256


@triton.jit(do_not_specialize=["base"])
def _race_kernel(P, Q, TOKENS, U, RACE, OUT, TOKEN_BUF, PART_F, PART_I, COUNTER, BASE_PTR, base, k, V, C, tiny,
                 stride_pb, stride_pk, stride_qb, stride_qk, stride_tb, stride_ub, stride_rb, stride_ob, stride_bb,
                 stride_fb, BLOCK: tl.constexpr, K_BLOCK: tl.constexpr, C_BLOCK: tl.constexpr, MODE: tl.constexpr,
                 WRITE_TOKEN: tl.constexpr, BASE_FROM_PTR: tl.constexpr):
    c = tl.program_id(0)
    # the row (sequence) of a batch: its own operands, partials and arrival counter (row strides 0
    # for one sequence)
    row = tl.program_id(1).to(tl.int64)
    P += row * stride_pb
    Q += row * stride_qb
    TOKENS += row * stride_tb
    U += row * stride_ub
    RACE += row * stride_rb
    OUT += row * stride_ob
    TOKEN_BUF += row * stride_bb
    BASE_PTR += row * stride_fb
    PART_F += row * (C * 4)
    PART_I += row * (C * 2)
    COUNTER += row
    i = tl.arange(0, K_BLOCK)
    if MODE == 0:
        n = tl.zeros([], tl.int32)
    else:  # the acceptance prefix: every program computes it (k gathers)
        ok = i < k
        tok = tl.load(TOKENS + i, mask=ok, other=0)
        p_tok = tl.load(P + i * stride_pk + tok, mask=ok, other=0.0)
        q_tok = tl.load(Q + i * stride_qk + tok, mask=ok, other=1.0)
        u = tl.load(U + i, mask=ok, other=0.0)
        rejected = ok & (u * q_tok >= p_tok)  # u < p / q written without the division
        n = tl.min(tl.where(rejected, i, k), 0)
    cols = c * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < V
    p_n = tl.load(P + n * stride_pk + cols, mask=col_ok, other=0.0)
    if MODE == 1:
        # row k: an all-zero proposal. (n < k) compared as a block: a scalar condition in a mask is
        # not a boolean array to Triton's interpreter from 3.7 on
        q_n = tl.load(Q + n * stride_qk + cols, mask=col_ok & (cols * 0 + n < k), other=0.0)
        w = tl.maximum(p_n - q_n, 0.0)
    else:
        w = p_n
    e = tl.maximum(tl.load(RACE + cols, mask=col_ok, other=1.0), tiny)
    r = tl.where(col_ok, w / e, -1.0)
    best = tl.max(r, 0)
    part = c * 4
    tl.store(PART_F + part, best)
    tl.store(PART_F + part + 1, tl.sum(w, 0))
    tl.store(PART_I + c * 2, tl.min(tl.where(r == best, cols, 2147483647), 0))  # ties: the smallest index
    if MODE == 1:  # the race over p_n itself, in case rounding emptied the residual
        r2 = tl.where(col_ok, p_n / e, -1.0)
        best2 = tl.max(r2, 0)
        tl.store(PART_F + part + 2, best2)
        tl.store(PART_I + c * 2 + 1, tl.min(tl.where(r2 == best2, cols, 2147483647), 0))
    tl.debug_barrier()  # every thread's stores precede the release
    if tl.atomic_add(COUNTER, 1, sem="acq_rel") == C - 1:  # the row's last program: pick the winner
        parts = tl.arange(0, C_BLOCK)
        part_ok = parts < C
        vals = tl.load(PART_F + parts * 4, mask=part_ok, other=-2.0, cache_modifier=".cg")
        idx = tl.load(PART_I + parts * 2, mask=part_ok, other=2147483647, cache_modifier=".cg")
        top = tl.max(vals, 0)
        token = tl.min(tl.where(vals == top, idx, 2147483647), 0)
        if MODE == 1:
            total = tl.sum(tl.load(PART_F + parts * 4 + 1, mask=part_ok, other=0.0, cache_modifier=".cg"), 0)
            vals2 = tl.load(PART_F + parts * 4 + 2, mask=part_ok, other=-2.0, cache_modifier=".cg")
            idx2 = tl.load(PART_I + parts * 2 + 1, mask=part_ok, other=2147483647, cache_modifier=".cg")
            top2 = tl.max(vals2, 0)
            token = tl.where(total > 0, token, tl.min(tl.where(vals2 == top2, idx2, 2147483647), 0))
        tl.store(OUT, n.to(tl.int64))
        tl.store(OUT + 1, token.to(tl.int64))
        if MODE != 0:
            tl.store(OUT + 2 + i, tl.load(TOKENS + i, mask=i < k, other=0).to(tl.int64), mask=i < k)
        if WRITE_TOKEN:  # (after the proposals are read: the slot may be the rejected proposal's)
            tl.debug_barrier()
            if BASE_FROM_PTR:  # the slot from a device value (a captured graph's forward start)
                tl.store(TOKEN_BUF + tl.load(BASE_PTR) + base + n, token.to(tl.int64))
            else:
                tl.store(TOKEN_BUF + base + n, token.to(tl.int64))
        tl.store(COUNTER, 0)  # ready for the next launch


def _row_stride(t: torch.Tensor, batched_dim: int) -> int:
    """The stride between a batch's rows of `t`, 0 for one sequence's (no batch dimension)."""
    return t.stride(0) if t.dim() == batched_dim else 0


def _launch(p, q, tokens, u, race, out, out_tokens, base, k, mode, base_from=None, workspace: Workspace | None = None):
    # the kernel counts each row's finished programs in a zeroed int32 that the row's last program
    # sets back to zero (so a workspace's counters serve every launch on its stream)
    batch = out.shape[0] if out.dim() == 2 else 1
    V = p.shape[-1]
    C = triton.cdiv(V, BLOCK)
    part_f = torch.empty(batch * C * 4, dtype=torch.float32, device=p.device)
    part_i = torch.empty(batch * C * 2, dtype=torch.int32, device=p.device)
    p_dims = 2 if mode == SAMPLE else 3  # probs (B, V) / p (B, k + 1, V)
    _race_kernel[(C, batch)](
        p, q, tokens, u, race, out, out_tokens if out_tokens is not None else out, part_f, part_i,
        counters(workspace, "race", max(batch, MIN_ROWS), p.device), base_from if base_from is not None else out,
        base, k, V, C, torch.finfo(torch.float32).tiny,
        _row_stride(p, p_dims), p.stride(-2) if p.dim() > 1 else V, _row_stride(q, p_dims),
        q.stride(-2) if q.dim() > 1 else V, _row_stride(tokens, 2), _row_stride(u, 2), _row_stride(race, 2),
        out.shape[-1] if batch > 1 else 0, _row_stride(out_tokens, 2) if out_tokens is not None else 0,
        base_from.stride(0) if base_from is not None and base_from.numel() > 1 else 0,
        BLOCK=BLOCK, K_BLOCK=max(2, triton.next_power_of_2(max(k, 1))),
        C_BLOCK=max(2, triton.next_power_of_2(C)), MODE=mode, WRITE_TOKEN=out_tokens is not None,
        BASE_FROM_PTR=base_from is not None, num_warps=4)
    return out


def race_verify(tokens, q, p, u, race, *, residual=True, out_tokens=None, base=0, base_from=None, workspace=None):
    """tokens (k,) or (B, k) (and the rest as verify.race_verify): the verdict (k + 2,) or (B, k + 2)."""
    k = tokens.shape[-1]
    out = torch.empty((*tokens.shape[:-1], k + 2), dtype=torch.int64, device=p.device)
    return _launch(p, q, tokens, u, race, out, out_tokens, base, k, RESIDUAL if residual else PLAIN,
                   base_from=base_from, workspace=workspace)


def race_sample(probs, race, *, out_tokens=None, index=0, index_from=None, workspace=None):
    """probs (V,) or (B, V): the token (0-d) or tokens (B,)."""
    out = torch.empty((*probs.shape[:-1], 2), dtype=torch.int64, device=probs.device)
    _launch(probs, probs, out, race, race, out, out_tokens, index, 0, SAMPLE, base_from=index_from,
            workspace=workspace)
    return out[..., 1]
