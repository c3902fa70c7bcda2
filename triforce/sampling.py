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
"""

from __future__ import annotations

import dataclasses

import torch

from triforce.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0  # 0 = off

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k={self.top_k} must be >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 probabilities after the sampling transform."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token once the more likely ones already cover top_p (the top-1 always stays)
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of (..., V) probabilities."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


@dataclasses.dataclass(frozen=True)
class Verdict:
    num_accepted: int
    next_token: int  # the residual sample at the first rejection, or the bonus token


def verify(tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
           generator: torch.Generator | None, *, residual: bool = True) -> Verdict:
    """Exact speculative verification of k proposals (see module docstring).

    tokens: (k,) proposals; q: (k, V) the distributions they were drawn from;
    p: (k+1, V) the verifier's distributions at the same positions plus the bonus position.
    residual=False replaces the residual by a plain sample of p_i — the biased rule of the
    published reference implementation's middle level, kept only so tests can show it fails.
    """
    k = tokens.shape[0]
    idx = torch.arange(k, device=tokens.device)
    p_tok, q_tok = p[idx, tokens], q[idx, tokens]
    u = torch.rand(k, generator=generator, device=p.device)
    # u < p/q written without the division: q_tok > 0 because the token was drawn from q.
    accepted = (u * q_tok < p_tok).int()
    n = int(accepted.cumprod(0).sum())
    if n == k:
        dist = p[k]
    elif residual:
        dist = torch.clamp(p[n] - q[n], min=0.0)
        total = dist.sum()
        # A rejection implies p_n != q_n, so the residual has mass; guard against rounding anyway.
        dist = dist / total if total > 0 else p[n]
    else:
        dist = p[n]
    return Verdict(n, int(sample(dist, generator)))
