"""Speculative verification and sampling on the device in one kernel each (the rule: sampling.py).

On a GPU, sampling is an exponential race: token j wins with probability w_j / sum(w) when it is
argmax_j w_j / E_j with E_j ~ Exp(1) independent. Verifying k proposals is then: the acceptance
prefix n (u_i * q_i(x_i) < p_i(x_i)), the residual w = max(0, p_n - q_n) (p_n itself after all k,
or if rounding emptied the residual), and one race over the vocabulary. In torch ops that is about
25 small launches per round (gathers, compares, a cumulative product, the residual, the race,
concatenations, the write of the token into the engine's buffer); here the uniforms and the
exponentials come from torch's generator as before (two launches, the same draws in the same
order) and one kernel does the rest: each program races one chunk of the vocabulary, the last
program of the launch (an atomic counter) picks the winner among the chunks, writes
[n, token, proposals...] for the host to read and the token into the engine's token buffer.

A batch of B sequences is one launch too: every argument gains a leading B (tokens (B, k), q (B, k,
V), p (B, k + 1, V), u (B, k), race (B, V); the token buffer (B, N), one row per sequence), each
row is the one-sequence rule on its own draws, and the kernel's grid is (chunks, B), with one
arrival counter per row. Where each row's token goes is its own: `base_from` / `index_from`, a (B,)
device tensor (each sequence's forward start, which the host does not hold in a captured graph),
plus a constant. The one-sequence calls (no leading B) are as before.

`race_verify_reference` / `race_sample_reference` are the same functions in torch ops, given the
same u and E (the kernel tests compare with them; ties go to the smallest index in both).
"""

from __future__ import annotations

import torch

from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext

MAX_PROPOSALS = 64


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def race_verify_reference(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor,
                          race: torch.Tensor, *, residual: bool = True) -> torch.Tensor:
    """[n, next token, *tokens] (int64) for proposals `tokens` (k,) drawn from q (k, V), verifier
    distributions p (k + 1, V), uniforms u (k,) and exponentials race (V,); with a leading batch
    dimension B on every argument, (B, 2 + k), row b the same rule on row b's arguments."""
    if tokens.dim() == 1:
        return race_verify_reference(tokens[None], q[None], p[None], u[None], race[None], residual=residual)[0]
    B, k = tokens.shape
    V = p.shape[-1]
    at_token = tokens.to(torch.int64)[..., None]
    p_tok, q_tok = p[:, :k].gather(2, at_token)[..., 0], q.gather(2, at_token)[..., 0]
    accepted = (u * q_tok < p_tok).int()
    n = accepted.cumprod(1).sum(1)  # (B,): each row's first rejection, or k
    at_n = n.reshape(B, 1, 1).expand(B, 1, V)
    p_n = p.gather(1, at_n)[:, 0]
    if residual:
        q_n = torch.cat([q, q.new_zeros(B, 1, V)], 1).gather(1, at_n)[:, 0]  # row k: an all-zero proposal
        w = torch.clamp(p_n - q_n, min=0.0)
        w = torch.where(w.sum(-1, keepdim=True) > 0, w, p_n)  # (a sum of non-negatives: > 0 in any order)
    else:
        w = p_n
    token = (w / race.clamp_min(_tiny(race.dtype))).argmax(-1)
    return torch.cat([n[:, None].to(torch.int64), token[:, None], tokens.to(torch.int64)], 1)


def race_sample_reference(probs: torch.Tensor, race: torch.Tensor) -> torch.Tensor:
    """The token index of one race over probs (V,) (0-d int64), or of each row of (B, V) ((B,))."""
    return (probs / race.clamp_min(_tiny(race.dtype))).argmax(-1)


def race_usable(p: torch.Tensor, *others: torch.Tensor) -> bool:
    """The race kernel takes these operands: float32 distributions, every last dimension contiguous
    (rows may be strided: a batch's proposals are a view of the token buffer)."""
    return p.dtype == torch.float32 and all(t.dim() > 0 and t.stride(-1) == 1 for t in (p, *others))


def write_tokens(out_tokens: torch.Tensor, token: torch.Tensor, offset: torch.Tensor | int,
                  start: torch.Tensor | None) -> None:
    """out_tokens[start + offset] = token (one sequence), or out_tokens[b, start[b] + offset[b]] =
    token[b] (a batch; start None: 0), with torch ops, no host synchronisation and no copy from the
    host (a captured graph runs it: an integer offset becomes a fill or an add, never a transfer)."""
    if out_tokens.dim() == 1:
        slot = offset if start is None else start.reshape(()) + offset
        if isinstance(slot, int):
            out_tokens[slot] = token
        else:
            out_tokens.index_copy_(0, slot.reshape(1).to(torch.int64), token.reshape(1))
        return
    B = out_tokens.shape[0]
    if isinstance(offset, torch.Tensor):
        slot = offset.reshape(-1).to(torch.int64).expand(B)
        if start is not None:
            slot = start.reshape(-1).to(torch.int64) + slot
    elif start is not None:
        slot = start.reshape(-1).to(torch.int64).expand(B) + offset
    else:
        slot = torch.full((B,), offset, dtype=torch.int64, device=out_tokens.device)
    out_tokens.scatter_(1, slot.reshape(B, 1), token.reshape(B, 1).to(out_tokens.dtype))


def _check_rows(what: str, rows: torch.Size, out_tokens: torch.Tensor | None, start: torch.Tensor | None) -> None:
    batch = rows[0] if rows else 1
    if out_tokens is not None and out_tokens.shape[:-1] != rows:
        raise ValueError(f"{what}: a token buffer {tuple(out_tokens.shape)} for rows {tuple(rows)} "
                         "(one buffer row per sequence)")
    if start is not None and start.numel() not in (1, batch):
        raise ValueError(f"{what}: {start.numel()} start values for {batch} sequences")


def race_verify(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor, race: torch.Tensor, *,
                residual: bool = True, out_tokens: torch.Tensor | None = None, base: int = 0,
                base_from: torch.Tensor | None = None, ctx: KernelContext | None = None) -> torch.Tensor:
    """race_verify_reference, and out_tokens[base + n] = next token when given. Batched (tokens
    (B, k), out_tokens (B, N)): out_tokens[b, base_from[b] + base + n_b] = next token_b, base_from a
    (B,) int64 device tensor (None: 0; one element: the same for every row). The Triton kernel where
    the policy (`ctx`) runs kernels and the operands suit it, else its torch twin: the same draws
    decide the same outcome."""
    k = tokens.shape[-1]
    _check_rows("race_verify", tokens.shape[:-1], out_tokens, base_from)
    if k <= MAX_PROPOSALS and runs_kernel(ctx, p) and race_usable(p, q, tokens, u, race):
        from triforce.kernels.triton_verify import race_verify as triton_race_verify

        return triton_race_verify(tokens, q, p, u, race, residual=residual, out_tokens=out_tokens, base=base,
                                  base_from=base_from, workspace=ctx.workspace)
    verdict = race_verify_reference(tokens, q, p, u, race, residual=residual)
    if out_tokens is not None:
        if tokens.dim() == 1 and base_from is None:
            out_tokens[base + verdict[0]] = verdict[1]
        else:
            write_tokens(out_tokens, verdict[..., 1], base + verdict[..., 0], base_from)
    return verdict


def race_sample(probs: torch.Tensor, race: torch.Tensor, *, out_tokens: torch.Tensor | None = None,
                index: int = 0, index_from: torch.Tensor | None = None,
                ctx: KernelContext | None = None) -> torch.Tensor:
    """race_sample_reference, and out_tokens[index] = the token when given; with `index_from` (a
    one-element int64 device tensor) at index_from + index, read on the device (so a captured
    graph writes where its replay points it). Batched (probs, race (B, V), out_tokens (B, N),
    index_from (B,) or one element): out_tokens[b, index_from[b] + index] = token_b; returns (B,)."""
    _check_rows("race_sample", probs.shape[:-1], out_tokens, index_from)
    if runs_kernel(ctx, probs) and race_usable(probs, race):
        from triforce.kernels.triton_verify import race_sample as triton_race_sample

        return triton_race_sample(probs, race, out_tokens=out_tokens, index=index, index_from=index_from,
                                  workspace=ctx.workspace)
    token = race_sample_reference(probs, race)
    if out_tokens is not None:
        if probs.dim() == 1 and index_from is None:
            out_tokens[index] = token
        elif probs.dim() == 1:
            out_tokens.index_copy_(0, index_from.reshape(1) + index, token.reshape(1))
        else:
            write_tokens(out_tokens, token, index, index_from)
    return token
