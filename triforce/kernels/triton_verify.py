"""Triton kernel of verify.py (where the contract and the torch references are). Imported only
where the kernel runs, so CPU runs never import Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.workspace import Workspace, counters

BLOCK = 4096  # vocabulary entries per program
SAMPLE, RESIDUAL, PLAIN = 0, 1, 2  # modes: one race over probs; verify with the residual; verify, p_n itself


@triton.jit(do_not_specialize=["base"])
def _race_kernel(P, Q, TOKENS, U, RACE, OUT, TOKEN_BUF, PART_F, PART_I, COUNTER, BASE_PTR, base, k, V, C, tiny,
                 BLOCK: tl.constexpr, K_BLOCK: tl.constexpr, C_BLOCK: tl.constexpr, MODE: tl.constexpr,
                 WRITE_TOKEN: tl.constexpr, BASE_FROM_PTR: tl.constexpr):
    c = tl.program_id(0)
    i = tl.arange(0, K_BLOCK)
    if MODE == 0:
        n = tl.zeros([], tl.int32)
    else:  # the acceptance prefix: every program computes it (k gathers)
        ok = i < k
        tok = tl.load(TOKENS + i, mask=ok, other=0)
        p_tok = tl.load(P + i * V + tok, mask=ok, other=0.0)
        q_tok = tl.load(Q + i * V + tok, mask=ok, other=1.0)
        u = tl.load(U + i, mask=ok, other=0.0)
        rejected = ok & (u * q_tok >= p_tok)  # u < p / q written without the division
        n = tl.min(tl.where(rejected, i, k), 0)
    cols = c * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < V
    p_n = tl.load(P + n * V + cols, mask=col_ok, other=0.0)
    if MODE == 1:
        # row k: an all-zero proposal. (n < k) compared as a block: a scalar condition in a mask is
        # not a boolean array to Triton's interpreter from 3.7 on
        q_n = tl.load(Q + n * V + cols, mask=col_ok & (cols * 0 + n < k), other=0.0)
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
    if tl.atomic_add(COUNTER, 1, sem="acq_rel") == C - 1:  # the last program: pick the winner
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


def _launch(p, q, tokens, u, race, out, out_tokens, base, k, mode, base_from=None, workspace: Workspace | None = None):
    # the kernel counts its finished programs in a zeroed int32 its last program sets back to zero
    # (so a workspace's counter serves every launch on its stream)
    V = p.shape[-1]
    C = triton.cdiv(V, BLOCK)
    part_f = torch.empty(C * 4, dtype=torch.float32, device=p.device)
    part_i = torch.empty(C * 2, dtype=torch.int32, device=p.device)
    _race_kernel[(C,)](p, q, tokens, u, race, out, out_tokens if out_tokens is not None else out, part_f, part_i,
                       counters(workspace, "race", 1, p.device), base_from if base_from is not None else out, base, k, V, C,
                       torch.finfo(torch.float32).tiny, BLOCK=BLOCK, K_BLOCK=max(2, triton.next_power_of_2(max(k, 1))),
                       C_BLOCK=max(2, triton.next_power_of_2(C)), MODE=mode, WRITE_TOKEN=out_tokens is not None,
                       BASE_FROM_PTR=base_from is not None, num_warps=4)
    return out


def race_verify(tokens, q, p, u, race, *, residual=True, out_tokens=None, base=0, workspace=None):
    k = tokens.shape[0]
    out = torch.empty(k + 2, dtype=torch.int64, device=p.device)
    return _launch(p, q, tokens, u, race, out, out_tokens, base, k, RESIDUAL if residual else PLAIN,
                   workspace=workspace)


def race_sample(probs, race, *, out_tokens=None, index=0, index_from=None, workspace=None):
    out = torch.empty(2, dtype=torch.int64, device=probs.device)
    _launch(probs, probs, out, race, race, out, out_tokens, index, 0, SAMPLE, base_from=index_from,
            workspace=workspace)
    return out[1]
