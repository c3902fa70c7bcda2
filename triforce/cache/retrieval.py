"""The middle level's cache: `budget` tokens selected from the full KV cache, at their true positions.

Built from a full cache of n tokens, per layer and KV head, as three parts within one budget:

    [ sink chunk | retrieved chunks ............ | recent window ]
      0..cs        top-scored whole chunks         the last `recent` tokens (at least the
                   between the sink and the        partial tail chunk), extended down to a
                   window                          chunk boundary when the budget has room

- retrieval (TriForce, `recent=0`): the window is only the partial tail chunk (the most recent
  tokens when n is not a multiple of chunk_size); everything else is retrieved;
- StreamingLLM of the same budget (`recent = budget - chunk_size`): sink chunk + recent window,
  nothing retrieved (no scoring at all);
- hybrid: anything in between. Retrieval finds distant relevant text, the window keeps the
  local context a small model leans on; each alone loses what the other keeps.

Chunks lie on a grid aligned to position 0 whatever the window, so `recent=0` reproduces the
retrieval layout exactly. Each candidate chunk is scored per KV head against the last query of
that layer, and per layer and KV head the best are gathered into a contiguous buffer. Keys carry
their rotary position, so gathered tokens need no position bookkeeping (unlike the draft's
StreamingLLM cache, whose positions are cache-relative: the middle level is the target model and
must see the positions the full cache sees). New tokens get their absolute positions and are
appended after the selection (and rolled back like any cache).

Scorers:
- "mean"  (the paper): q . mean(K_chunk); with grouped-query attention the query heads sharing a
  KV head are summed, i.e. scored with their summed query.
- "bound" (Quest, arXiv 2406.10774): sum_d max(q_d * min_d K, q_d * max_d K), an upper bound on
  any token's score in the chunk; the group's maximum keeps a chunk any of its heads needs.
"""

from __future__ import annotations

import torch

from triforce.cache.chunks import chunk_stats
from triforce.cache.static import StaticKVCache, kv_bytes_per_token, per_row, query_bytes
from triforce.config import SCORERS, validate_retrieval

__all__ = ["SCORERS", "RetrievalCache", "chunk_stats", "validate_retrieval"]


class RetrievalCache(StaticKVCache):
    selects = True
    retrieved = per_row("retrieved", "slots holding selected tokens; rollback never reaches below them")
    rebuilds = per_row("rebuilds", "selections made")
    # each sequence's own (a budget given as a fraction of the prompt): the capacity fits the largest
    budget = per_row("budget", "tokens a selection keeps")
    recent = per_row("recent", "tokens of the recent window")

    def __init__(self, *, budget: int, chunk_size: int, scorer: str = "mean", recent: int = 0,
                 extra_capacity: int = 64, **kw):
        validate_retrieval(budget, chunk_size, scorer, recent)
        super().__init__(capacity=budget + extra_capacity, **kw)
        self.chunk_size, self.scorer = chunk_size, scorer
        self._state.add(retrieved=0, rebuilds=0, budget=budget, recent=recent)

    @classmethod
    def for_model(cls, cfg, *, budget: int, chunk_size: int, scorer: str, extra_capacity: int,
                  dtype, device, recent: int = 0, **kw) -> "RetrievalCache":
        return cls(budget=budget, chunk_size=chunk_size, scorer=scorer, recent=recent, extra_capacity=extra_capacity,
                   num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                   num_heads=cfg.num_heads, dtype=dtype, device=device, **kw)

    @classmethod
    def memory(cls, cfg, tokens: int, dtype_bytes: int) -> dict[str, int]:
        """`tokens`: budget + room for the generated tokens (what it allocates)."""
        return {"device": tokens * kv_bytes_per_token(cfg, dtype_bytes) + query_bytes(cfg, dtype_bytes), "host": 0}

    @property
    def scores(self) -> bool:
        """It ranks chunks (retrieval, hybrid); a StreamingLLM selection of the budget does not."""
        return self.recent < self.budget - self.chunk_size

    def select(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Token indices to keep, (L, B, Hkv, m) in ascending order, for keys (L, B, Hkv, n, D)
        and the last query per layer (L, B, Hq, D)."""
        return torch.stack([self.select_layer(keys[i], query[i]) for i in range(keys.shape[0])])

    def window_start(self, n: int) -> int:
        """First position of the recent window of an n-token sequence (n > budget): `recent`
        tokens back, extended down to the chunk boundary below (so the partial tail chunk is
        always in it), but never so far that the sink chunk and the window exceed the budget."""
        cs = self.chunk_size
        return max((n - self.recent) // cs * cs, n - (self.budget - cs))

    def select_layer(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """One layer: indices (B, Hkv, m) for keys (B, Hkv, n, D) and its query (B, Hq, D).

        Chunk statistics are reduced in the keys' own dtype (max / min are exact) or summed with
        a float32 accumulator; only the per-chunk statistics, an eighth of the layer for chunks of
        8, are ever float32 (a float copy of a 7B model's 120K-token cache would be 64 GB)."""
        n = keys.shape[2]
        stats = None
        if self.retrieved_chunks(n) > 0:
            stats = chunk_stats(keys[:, :, : self.candidates(n) * self.chunk_size], self.chunk_size, self.scorer)
        return self.choose(stats, query, n)

    def candidates(self, n: int) -> int:
        """Whole chunks below the recent window of an n-token sequence (chunk 0 is the sink)."""
        return self.window_start(n) // self.chunk_size

    def retrieved_chunks(self, n: int) -> int:
        """Chunks the selection of an n-token sequence ranks and keeps beside the sink and window."""
        if n <= self.budget:
            return 0
        start = self.window_start(n)
        return (self.budget - self.chunk_size - (n - start)) // self.chunk_size  # <= candidates - 1

    def choose(self, stats: torch.Tensor | None, query: torch.Tensor, n: int) -> torch.Tensor:
        """Indices (B, Hkv, m) of the kept tokens of an n-token layer, from the statistics of its
        complete chunks (B, Hkv, >= candidates, S, D) (`chunk_stats`; None when nothing is
        retrieved) and its query (B, Hq, D). The statistics come from the source cache
        (`chunk_statistics`): an offloaded full cache keeps them on the GPU and never streams its
        keys to choose (cache/offload.py)."""
        cs = self.chunk_size
        B, H = self.k.shape[1], self.k.shape[2]
        arange = torch.arange(n, device=query.device)
        if n <= self.budget:
            return arange.expand(B, H, n)
        start = self.window_start(n)
        candidates = start // cs  # whole chunks below the window; chunk 0 is the sink
        retrieved = self.retrieved_chunks(n)
        ids = torch.zeros(B, H, 1, dtype=torch.int64, device=query.device)  # the sink chunk
        if retrieved > 0:
            scores = self._scores(stats[:, :, :candidates], query)
            best = scores[..., 1:].topk(retrieved, dim=-1).indices + 1
            ids = torch.cat([ids, best.sort(-1).values], dim=-1)
        idx = (ids[..., None] * cs + torch.arange(cs, device=query.device)).flatten(-2)
        return torch.cat([idx, arange[start:].expand(B, H, n - start)], dim=-1)

    def _scores(self, stats: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, chunks) scores of chunk statistics (B, Hkv, chunks, S, D) against the query
        heads (B, Hq, D), aggregated over each KV head's group of query heads."""
        B, H, _, _, D = stats.shape
        stats = stats.float()
        q = query.float().reshape(B, H, -1, D)  # (B, Hkv, group, D)
        if self.scorer == "mean":
            return (stats[:, :, :, 0] @ q.sum(2)[..., None])[..., 0]  # summed over the group
        kmax, kmin = stats[:, :, :, 0], stats[:, :, :, 1]  # (B, H, chunks, D)
        qe = q[:, :, :, None]  # (B, H, group, 1, D)
        bound = torch.maximum(qe * kmax[:, :, None], qe * kmin[:, :, None]).sum(-1)
        return bound.amax(2)

    def rebuild(self, source: StaticKVCache, query: torch.Tensor | None = None) -> bool:
        """Refill from `source` (a full cache: slot i = sequence position i), scoring chunks with
        `query` (L, B, Hq, D); default: the last query of source's last forward. Layer by layer,
        so the transient memory is one layer's chunk statistics."""
        n = source.length
        query = source.last_query if query is None else query
        m = 0
        for layer in range(self.k.shape[0]):
            stats = None
            if self.retrieved_chunks(n) > 0:
                stats = source.chunk_statistics(layer, self.candidates(n), self.chunk_size, self.scorer)
            idx = self.choose(stats, query[layer], n)
            keys, values = source.gather(layer, idx)
            m = keys.shape[2]
            self.k[layer, :, :, :m] = keys
            self.v[layer, :, :, :m] = values
        self.length = self.retrieved = m
        self.seq_len = source.seq_len
        self.rebuilds += 1
        return True

    def crop(self, seq_len: int) -> None:
        drop = self.seq_len - seq_len
        if drop > self.length - self.retrieved:
            raise ValueError(f"cannot roll back {drop} tokens past the last retrieval rebuild")
        super().crop(seq_len)

    def can_crop(self, seq_len: int) -> bool:
        return super().can_crop(seq_len) and self.seq_len - seq_len <= self.length - self.retrieved

    def reset(self) -> None:
        super().reset()
        self.retrieved = 0

