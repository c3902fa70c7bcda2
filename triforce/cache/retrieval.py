"""TriForce's retrieval cache: the most relevant chunks of the full KV cache, `budget` tokens.

Built from a full cache: its keys are cut into chunks of `chunk_size` tokens; each chunk is
scored per KV head against the last query of that layer, and per layer and KV head the best
chunks are gathered into a contiguous buffer. The first chunk (attention sink) and the partial
tail chunk (the most recent tokens when the length is not a multiple of chunk_size) are always
kept. Keys carry their rotary position, so gathered tokens need no position bookkeeping; new
tokens get their absolute positions and are appended after the retrieved ones (and rolled back
like any cache).

Scorers:
- "mean"  (the paper): q . mean(K_chunk); with grouped-query attention the query heads sharing a
  KV head are summed, i.e. scored with their summed query.
- "bound" (Quest, arXiv 2406.10774): sum_d max(q_d * min_d K, q_d * max_d K), an upper bound on
  any token's score in the chunk; the group's maximum keeps a chunk any of its heads needs.
"""

from __future__ import annotations

import torch

from triforce.cache.static import StaticKVCache
from triforce.errors import ConfigError

SCORERS = ("mean", "bound")


class RetrievalCache(StaticKVCache):
    def __init__(self, *, budget: int, chunk_size: int, scorer: str = "mean", extra_capacity: int = 64, **kw):
        validate_retrieval(budget, chunk_size, scorer)
        super().__init__(capacity=budget + extra_capacity, **kw)
        self.budget, self.chunk_size, self.scorer = budget, chunk_size, scorer
        self.retrieved = 0  # slots holding retrieved tokens; rollback never reaches below them
        self.rebuilds = 0

    @classmethod
    def for_model(cls, cfg, *, budget: int, chunk_size: int, scorer: str, extra_capacity: int,
                  dtype, device, **kw) -> "RetrievalCache":
        return cls(budget=budget, chunk_size=chunk_size, scorer=scorer, extra_capacity=extra_capacity,
                   num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                   num_heads=cfg.num_heads, dtype=dtype, device=device, **kw)

    def select(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Token indices to keep, (L, B, Hkv, m) in ascending order, for keys (L, B, Hkv, n, D)
        and the last query per layer (L, B, Hq, D)."""
        return torch.stack([self.select_layer(keys[i], query[i]) for i in range(keys.shape[0])])

    def select_layer(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """One layer: indices (B, Hkv, m) for keys (B, Hkv, n, D) and its query (B, Hq, D).

        Chunk statistics are reduced in the keys' own dtype (max / min are exact) or summed with
        a float32 accumulator; only the per-chunk statistics, an eighth of the layer for chunks of
        8, are ever float32 (a float copy of a 7B model's 120K-token cache would be 64 GB)."""
        B, H, n, D = keys.shape
        if n <= self.budget:
            return torch.arange(n, device=keys.device).expand(B, H, n)
        n_full = n // self.chunk_size
        stats = chunk_stats(keys[:, :, : n_full * self.chunk_size], self.chunk_size, self.scorer)
        return self.choose(stats, query, n)

    def choose(self, stats: torch.Tensor, query: torch.Tensor, n: int) -> torch.Tensor:
        """Indices (B, Hkv, m) of the kept tokens of an n-token layer, from its complete chunks'
        statistics (B, Hkv, n // chunk_size, S, D) (`chunk_stats`) and its query (B, Hq, D):
        an offloaded full cache keeps the statistics on the GPU and never streams its keys to
        choose (cache/offload.py)."""
        B, H = stats.shape[:2]
        D = stats.shape[-1]
        cs = self.chunk_size
        arange = torch.arange(n, device=stats.device)
        if n <= self.budget:
            return arange.expand(B, H, n)
        n_full = n // cs
        tail = n - n_full * cs
        chunks_kept = (self.budget - tail) // cs  # including the sink chunk
        stats = stats[:, :, :n_full].float()
        q = query.float().reshape(B, H, -1, D)  # (B, Hkv, group, D)
        if self.scorer == "mean":
            # summed over the group: (B, H, n_full)
            scores = (stats[:, :, :, 0] @ q.sum(2)[..., None])[..., 0]
        else:
            kmax, kmin = stats[:, :, :, 0], stats[:, :, :, 1]  # (B, H, n_full, D)
            qe = q[:, :, :, None]  # (B, H, group, 1, D)
            bound = torch.maximum(qe * kmax[:, :, None], qe * kmin[:, :, None]).sum(-1)
            scores = bound.amax(2)
        best = scores[..., 1:].topk(chunks_kept - 1, dim=-1).indices + 1
        sink = torch.zeros(*best.shape[:-1], 1, dtype=best.dtype, device=best.device)
        chunk_ids = torch.cat([sink, best.sort(-1).values], dim=-1)
        idx = (chunk_ids[..., None] * cs + torch.arange(cs, device=stats.device)).flatten(-2)
        tail_idx = arange[n_full * cs:].expand(B, H, tail)
        return torch.cat([idx, tail_idx], dim=-1)

    def rebuild(self, full: StaticKVCache, query: torch.Tensor | None = None) -> None:
        """Refill from `full` (which must be a plain full cache: slot i = sequence position i),
        scoring chunks with `query` (L, B, Hq, D); default: the last query of full's last forward.
        Layer by layer, so the transient memory is one layer's chunk statistics."""
        n = full.length
        query = full.last_query if query is None else query
        m = 0
        for layer in range(self.k.shape[0]):
            keys, values = full.retrieve(layer, n, self, query[layer])
            m = keys.shape[2]
            self.k[layer, :, :, :m] = keys
            self.v[layer, :, :, :m] = values
        self.length = self.retrieved = m
        self.seq_len = full.seq_len
        self.rebuilds += 1

    def crop(self, seq_len: int) -> None:
        drop = self.seq_len - seq_len
        if drop > self.length - self.retrieved:
            raise ValueError(f"cannot roll back {drop} tokens past the last retrieval rebuild")
        super().crop(seq_len)

    def reset(self) -> None:
        super().reset()
        self.retrieved = 0


def chunk_stats(keys: torch.Tensor, chunk_size: int, scorer: str) -> torch.Tensor:
    """Per-chunk statistics a scorer reads, (B, H, n // chunk_size, S, D) for keys (B, H, n, D)
    with n a multiple of chunk_size: the float32 mean (S = 1) or the max and min (S = 2, exact in
    the keys' dtype)."""
    B, H, n, D = keys.shape
    chunked = keys.reshape(B, H, n // chunk_size, chunk_size, D)
    if scorer == "mean":
        return (chunked.sum(-2, dtype=torch.float32) / chunk_size)[:, :, :, None]
    return torch.stack([chunked.amax(-2), chunked.amin(-2)], dim=3)


def validate_retrieval(budget: int, chunk_size: int, scorer: str) -> None:
    if chunk_size <= 0:
        raise ConfigError(f"method.chunk_size={chunk_size} must be a positive number of tokens")
    if budget < 2 * chunk_size:
        raise ConfigError(f"method.budget={budget} must be at least 2 * chunk_size = {2 * chunk_size} "
                          "(the sink chunk and the partial tail chunk are always kept)")
    if scorer not in SCORERS:
        raise ConfigError(f"method.scorer={scorer!r}: choose one of {', '.join(SCORERS)}")
