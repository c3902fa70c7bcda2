"""Sampling transforms and exact speculative verification.

Every level of the hierarchy uses the same two pieces:
- `probabilities(logits, params)`: temperature / top-k / top-p applied to logits, giving the
  distribution a level actually samples from (temperature 0 = one-hot at the argmax);
- `verify(tokens, q, p, generator)`: the exact speculative-sampling rule. Proposed tokens
  x_1..x_k were drawn from q_1..q_k; p_1..p_{k+1} come from one forward of the verifier.
  Accept x_i while u_i < min(1, p_i(x_i)/q_i(x_i)); at the first rejection emit a sample of
  norm(max(0, p_i - q_i)); if all k are accepted emit a bonus sample of p_{k+1}. The emitted
  tokens are distributed exactly as sampling from p would be.

Randomness comes only from the explicit `torch.Generator`, so a seed reproduces a run.

Everything here stays on the tensors' device: `verify_tensor` returns its verdict as a device
tensor, so a round of the engine synchronises with the host once, to read it. `sample_into` and
`verify_into` (what the engine calls) also write the drawn token into the engine's token buffer;
on a GPU each is one Triton kernel after the generator's draws (kernels/verify.py), the same
rule as the torch ops here.
"""

from __future__ import annotations

import dataclasses

import torch

from triforce.config import SamplingParams  # noqa: F401 - the sampling transform's parameters live there
from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext


def probabilities(logits: torch.Tensor, params: SamplingParams, *, ctx: KernelContext | None = None) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 probabilities after the sampling transform.

    Nucleus (top-p): token i is kept iff the tokens strictly more likely than i hold less than
    top_p of the mass (the most likely token always stays; tokens tied at the boundary are kept
    or dropped together, so the set does not depend on any sort order). Where the kernel context
    runs kernels (a GPU), without top-k, Triton kernels compute the whole transform without a sort,
    for any vocabulary (kernels/top_p.py); elsewhere these torch ops, which define it."""
    if params.greedy:  # (scatter, not one_hot: one_hot may check its input on the host)
        logits = logits.float()
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    if not params.top_k and runs_kernel(ctx, logits):
        from triforce.kernels.top_p import top_p_probabilities, top_p_usable

        if top_p_usable(logits, ctx):
            return top_p_probabilities(logits, params.temperature, params.top_p, ctx=ctx)
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        probs = nucleus(probs, params.top_p)
    return probs


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the tokens whose strictly-more-likely mass is below top_p; renormalise."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass ahead in sorted order (ties included)
    # for a run of tied values, the mass strictly greater is the mass ahead of the run's first
    first = torch.searchsorted(-sorted_probs.contiguous(), -sorted_probs.contiguous(), side="left")
    drop_sorted = before.gather(-1, first) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (..., V) probabilities.

    On the CPU: torch.multinomial (the reference). On a GPU: the exponential race, argmax of
    p_i / E_i with E_i ~ Exp(1) independent, which picks i with probability p_i / sum(p) exactly
    and runs as three kernels with no host synchronisation. (The floor on E keeps a zero draw
    from turning 0 / 0 into a NaN that argmax would pick; its bias is below 1e-37.)"""
    if probs.is_cuda:
        from triforce.kernels.verify import race_sample_reference

        return race_sample_reference(probs, torch.empty_like(probs).exponential_(generator=generator))
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def _race_draws(generator: torch.Generator | None, device: torch.device,
                shape: int | tuple[int, ...]) -> torch.Tensor:
    """Exp(1) draws for an exponential race over `shape` ((V,) or one row per sequence, (B, V)),
    as `sample` draws them on a GPU."""
    return torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=generator)


def sample_into(probs: torch.Tensor, generator: torch.Generator | None, out_tokens: torch.Tensor, index: int, *,
                index_from: torch.Tensor | None = None, ctx: KernelContext | None = None) -> None:
    """out_tokens[index] = a token drawn from probs (V,), on the device (no synchronisation). A
    batch: probs (B, V), out_tokens (B, N), out_tokens[b, index] = row b's token, or at
    index_from[b] + index with index_from a (B,) int64 device tensor (each sequence's own place)."""
    from triforce.kernels.verify import race_sample, write_tokens

    # the policy's path: the race kernel (or its torch twin, on the same draws); else the reference
    if probs.dim() in (1, 2) and runs_kernel(ctx, probs):
        race_sample(probs, _race_draws(generator, probs.device, tuple(probs.shape)), out_tokens=out_tokens,
                    index=index, index_from=index_from, ctx=ctx)
    elif probs.dim() == 1 and index_from is None:
        out_tokens[index] = sample(probs, generator)
    else:
        write_tokens(out_tokens, sample(probs, generator), index, index_from)


def verify_into(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None,
                out_tokens: torch.Tensor, base: int | torch.Tensor, *, residual: bool = True,
                ctx: KernelContext | None = None) -> torch.Tensor:
    """`verify_tensor`, with the emitted token also written to out_tokens[base + num_accepted] on the
    device. Returns the packed int64 device tensor [num_accepted, next_token, *tokens] that the
    round reads back once (`Verdict.read`).

    A batch of B sequences: tokens (B, k), q (B, k, V), p (B, k + 1, V), out_tokens (B, N), base an
    int (every sequence) or a (B,) int64 device tensor (each sequence's own); writes
    out_tokens[b, base_b + n_b] = next_b and returns (B, 2 + k). The draws: u (B, k), then the
    race's (B, V) exponentials (for one sequence u (k,) then (V,), as always)."""
    from triforce.kernels.verify import race_verify, write_tokens

    base_from = base if isinstance(base, torch.Tensor) else None
    offset = 0 if base_from is not None else base
    # the policy's path: the race kernel (or its torch twin, on the same draws); else the reference
    if runs_kernel(ctx, p):
        u = torch.rand(tuple(tokens.shape), generator=generator, device=p.device)  # verify_tensor's draws, in its order
        race = _race_draws(generator, p.device, (*tokens.shape[:-1], p.shape[-1]))
        return race_verify(tokens, q, p, u, race, residual=residual, out_tokens=out_tokens, base=offset,
                           base_from=base_from, ctx=ctx)
    verdict = verify_tensor(tokens, q, p, generator, residual=residual)
    if tokens.dim() == 1 and base_from is None:
        out_tokens[base + verdict[0]] = verdict[1]
    else:
        write_tokens(out_tokens, verdict[..., 1], offset + verdict[..., 0], base_from)
    return torch.cat([verdict, tokens.to(torch.int64)], -1)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verification's outcome for each sequence of a batch, on the host: how many proposals it
    accepted, the token drawn after them (the residual sample at the first rejection, or the bonus
    token when all were accepted) and the proposals themselves."""
    accepted: tuple[int, ...]
    next_tokens: tuple[int, ...]
    proposals: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def read(cls, packed: torch.Tensor) -> "Verdict":
        """From the packed device tensor `verify_into` returns, (2 + k,) or (B, 2 + k): one read-back
        (the round's one synchronisation)."""
        rows = packed.reshape(-1, packed.shape[-1]).tolist()
        return cls(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(tuple(r[2:]) for r in rows))

    def emitted(self, b: int = 0) -> list[int]:
        """The tokens sequence b's round emits: its accepted proposals, then the next token."""
        return [*self.proposals[b][: self.accepted[b]], self.next_tokens[b]]

    @property
    def num_accepted(self) -> int:
        """One sequence's accepted count (a batch: `accepted`)."""
        (n,) = self.accepted
        return n

    @property
    def next_token(self) -> int:
        """One sequence's next token (a batch: `next_tokens`)."""
        (t,) = self.next_tokens
        return t


def verify_tensor(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                  generator: torch.Generator | None, *, residual: bool = True) -> torch.Tensor:
    """Exact speculative verification of k proposals (see module docstring), on the device.

    tokens: (k,) proposals; q: (k, V) the distributions they were drawn from;
    p: (k+1, V) the verifier's distributions at the same positions plus the bonus position.
    Returns the int64 tensor [num_accepted, next_token] without synchronising with the host.
    The bonus case needs no branch: against an all-zero proposal row, the residual
    norm(max(0, p_k - 0)) is p_k itself.
    residual=False replaces the residual by a plain sample of p_i — the biased rule of the
    published reference implementation's middle level, kept only so tests can show it fails.
    A batch of B sequences (tokens (B, k), q (B, k, V), p (B, k + 1, V)): the same rule on every
    row, vectorised, returning (B, 2); it draws u (B, k), then one sample per row.
    """
    if tokens.dim() == 2:
        return _verify_batch(tokens, q, p, generator, residual=residual)
    k = tokens.shape[0]
    idx = torch.arange(k, device=tokens.device)
    p_tok, q_tok = p[idx, tokens], q[idx, tokens]
    u = torch.rand(k, generator=generator, device=p.device)
    # u < p/q written without the division: q_tok > 0 because the token was drawn from q.
    accepted = (u * q_tok < p_tok).int()
    n = accepted.cumprod(0).sum(0, keepdim=True)  # (1,): the first rejection, or k
    p_n = p.index_select(0, n)[0]
    if residual:
        q_n = torch.cat([q, q.new_zeros(1, q.shape[-1])]).index_select(0, n)[0]
        dist = torch.clamp(p_n - q_n, min=0.0)
        total = dist.sum()
        # A rejection implies p_n != q_n, so the residual has mass; guard against rounding anyway.
        dist = torch.where(total > 0, dist / total.clamp_min(torch.finfo(dist.dtype).tiny), p_n)
    else:
        dist = p_n
    return torch.cat([n.to(torch.int64), sample(dist, generator).reshape(1).to(torch.int64)])


def _verify_batch(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None, *,
                  residual: bool) -> torch.Tensor:
    """verify_tensor's rule on each row of a batch, in the same ops with a leading B (row b's
    outcome is exactly what the one-sequence call would decide on row b's draws)."""
    B, k = tokens.shape
    V = p.shape[-1]
    at_token = tokens.to(torch.int64)[..., None]
    p_tok, q_tok = p[:, :k].gather(2, at_token)[..., 0], q.gather(2, at_token)[..., 0]
    u = torch.rand((B, k), generator=generator, device=p.device)
    accepted = (u * q_tok < p_tok).int()
    n = accepted.cumprod(1).sum(1)  # (B,): each row's first rejection, or k
    at_n = n.reshape(B, 1, 1).expand(B, 1, V)
    p_n = p.gather(1, at_n)[:, 0]
    if residual:
        q_n = torch.cat([q, q.new_zeros(B, 1, V)], 1).gather(1, at_n)[:, 0]
        dist = torch.clamp(p_n - q_n, min=0.0)
        total = dist.sum(-1, keepdim=True)
        dist = torch.where(total > 0, dist / total.clamp_min(torch.finfo(dist.dtype).tiny), p_n)
    else:
        dist = p_n
    return torch.stack([n.to(torch.int64), sample(dist, generator).to(torch.int64)], 1)


def verify(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
           generator: torch.Generator | None, *, residual: bool = True) -> Verdict:
    """`verify_tensor` read back to the host (one sequence)."""
    n, token = verify_tensor(tokens, q, p, generator, residual=residual).tolist()
    return Verdict((n,), (token,), (tuple(tokens.tolist()),))
