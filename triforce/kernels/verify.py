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

`race_verify_reference` / `race_sample_reference` are the same functions in torch ops, given the
same u and E (the kernel tests compare with them; ties go to the smallest index in both).
"""

from __future__ import annotations

import torch

from triforce.kernels import kernels_usable

MAX_PROPOSALS = 64


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def race_verify_reference(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor,
                          race: torch.Tensor, *, residual: bool = True) -> torch.Tensor:
    """[n, next token, *tokens] (int64) for proposals `tokens` (k,) drawn from q (k, V), verifier
    distributions p (k + 1, V), uniforms u (k,) and exponentials race (V,)."""
    k = tokens.shape[0]
    idx = torch.arange(k, device=p.device)
    accepted = (u * q[idx, tokens] < p[idx, tokens]).int()
    n = accepted.cumprod(0).sum(0, keepdim=True)
    p_n = p.index_select(0, n)[0]
    if residual:
        q_n = torch.cat([q, q.new_zeros(1, q.shape[-1])]).index_select(0, n)[0]
        w = torch.clamp(p_n - q_n, min=0.0)
        w = torch.where(w.sum() > 0, w, p_n)
    else:
        w = p_n
    token = (w / race.clamp_min(_tiny(race.dtype))).argmax()
    return torch.cat([n.to(torch.int64), token.reshape(1), tokens.to(torch.int64)])


def race_sample_reference(probs: torch.Tensor, race: torch.Tensor) -> torch.Tensor:
    """The token index (0-d int64) of one race over probs (V,)."""
    return (probs / race.clamp_min(_tiny(race.dtype))).argmax()


def race_usable(p: torch.Tensor, *others: torch.Tensor, use_triton: bool | None = None) -> bool:
    return (p.dtype == torch.float32 and p.is_contiguous() and all(t.is_contiguous() for t in others)
            and kernels_usable(p, use_triton))


def race_verify(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor, race: torch.Tensor, *,
                residual: bool = True, out_tokens: torch.Tensor | None = None, base: int = 0,
                use_triton: bool | None = None, workspace=None) -> torch.Tensor:
    """race_verify_reference, and out_tokens[base + n] = next token when given."""
    k = tokens.shape[0]
    if k <= MAX_PROPOSALS and race_usable(p, q, tokens, use_triton=use_triton):
        from triforce.kernels.triton_verify import race_verify as triton_race_verify

        return triton_race_verify(tokens, q, p, u, race, residual=residual, out_tokens=out_tokens, base=base,
                                  workspace=workspace)
    verdict = race_verify_reference(tokens, q, p, u, race, residual=residual)
    if out_tokens is not None:
        out_tokens[base + verdict[0]] = verdict[1]
    return verdict


def race_sample(probs: torch.Tensor, race: torch.Tensor, *, out_tokens: torch.Tensor | None = None,
                index: int = 0, index_from: torch.Tensor | None = None,
                use_triton: bool | None = None, workspace=None) -> torch.Tensor:
    """race_sample_reference, and out_tokens[index] = the token when given; with `index_from` (a
    one-element int64 device tensor) at index_from + index, read on the device (so a captured
    graph writes where its replay points it)."""
    if race_usable(probs, use_triton=use_triton):
        from triforce.kernels.triton_verify import race_sample as triton_race_sample

        return triton_race_sample(probs, race, out_tokens=out_tokens, index=index, index_from=index_from,
                                  workspace=workspace)
    token = race_sample_reference(probs, race)
    if out_tokens is not None:
        if index_from is None:
            out_tokens[index] = token
        else:
            out_tokens.index_copy_(0, index_from.reshape(1) + index, token.reshape(1))
    return token
