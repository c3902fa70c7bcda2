"""The full KV cache: static, pre-allocated buffers with rollback to any earlier length.

Every cache in triforce (full, offloaded, StreamingLLM, retrieval / hybrid) is a StaticKVCache and
keeps one contract (docs/DESIGN.md §4). What a model's forward calls:

    positions = cache.next_positions(T)       # rotary positions of the next T tokens
    mask, is_causal = cache.attention_mask(T)  # once per forward
    q, keys, values = cache.store(layer, q, k, v, rope)  # rotate q and k, store k/v, return
                                               # what to attend over
    cache.advance(T)                           # after the last layer

What the engine calls, never asking which kind of cache it holds:

    cache.absorb(model, tokens, upto, chunk=..., source=...)  # prefill: take the prompt [seq_len, upto)
    cache.crop(seq_len)                         # roll back rejected speculative tokens
    cache.rebuild(source, query)                # a selection re-selects from its source; False: not one
    cache.serves(chunk_size, scorer)            # a selection will score this cache's chunks: keep what it needs
    cache.chunk_statistics(layer, ...) / cache.gather(layer, idx)  # what a selection reads of its source
    cache.traffic()                             # bytes moved over the host link (an offloaded cache)
    cache.snapshot() / restore(...)             # the prefill memo (None: this cache cannot be kept)
    Cache.memory(cfg, ...)                      # device and host bytes it will allocate (memory.py)
    capturable, max_step_tokens                 # how a forward may use it

A captured (CUDA-graph) forward uses it through `StaticView` (cache/static_view.py), which keeps
the lengths in device tensors and names its slots (`store_slots`: k cache, v cache, first slot),
so the decode plan's q/k/v projection writes them itself and then reports the rotated q (`stored`).

`seq_len` counts the sequence tokens the cache has absorbed; `length` counts filled slots. They
are equal here and differ for the StreamingLLM and retrieval caches, which keep a subset.
`crop(seq_len)` rolls back the most recent tokens (speculative tokens that were rejected).
"""

from __future__ import annotations

import dataclasses

import torch

from typing import Callable

from triforce.config import QUERY_HISTORY
from triforce.errors import ConfigError
from triforce.models.rope import apply_rotary

__all__ = ["QUERY_HISTORY", "CacheSnapshot", "StaticKVCache", "kv_bytes_per_token"]


def kv_bytes_per_token(cfg, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes in a cache of every layer of `cfg`."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes


def query_bytes(cfg, dtype_bytes: int) -> int:
    """The recorded queries (QUERY_HISTORY rows per layer and query head)."""
    return cfg.num_layers * cfg.num_heads * QUERY_HISTORY * cfg.head_dim * dtype_bytes


@dataclasses.dataclass(frozen=True)
class CacheSnapshot:
    k: torch.Tensor  # (L, B, Hkv, n, D), host memory
    v: torch.Tensor
    recent_queries: torch.Tensor
    query_rows: tuple[int, int]
    rows_written: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.recent_queries))


class StaticKVCache:
    capturable = True  # a static-shape (captured) forward may run on it
    selects = False  # a selection of another cache, refilled by `rebuild` (retrieval, hybrid)
    snapshots = True  # its prefill can be kept for later generations (snapshot / restore)

    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str, batch_size: int = 1,
                 num_heads: int | None = None):
        self.capacity = capacity
        self.device = torch.device(device)
        self._allocate((num_layers, batch_size, num_kv_heads, capacity, head_dim), dtype)
        # Queries of the most recent forward's last rows, per layer: the retrieval cache scores
        # chunks with the query of a chosen committed token (a verify forward's last row may be a
        # proposal the verifier then rejected).
        q_shape = (num_layers, batch_size, num_heads or num_kv_heads, QUERY_HISTORY, head_dim)
        self.recent_queries = torch.zeros(q_shape, dtype=dtype, device=device)
        self._query_rows = (0, 0)  # (sequence position of recent_queries row 0, rows filled)
        self._rows_written = 0  # rows the latest forward filled
        # Captured forwards record queries only where a rebuild will read them (a copy per layer)
        self.record_queries = True
        self.length = 0
        self.seq_len = 0

    @classmethod
    def for_model(cls, cfg, capacity: int, dtype: torch.dtype, device, **kw) -> "StaticKVCache":
        return cls(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                   num_heads=cfg.num_heads, capacity=capacity, dtype=dtype, device=device, **kw)

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """The key and value storage, (L, B, Hkv, capacity, D) each (an offloaded cache keeps
        most of it in host memory: cache/offload.py)."""
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)

    @classmethod
    def memory(cls, cfg, tokens: int, dtype_bytes: int) -> dict[str, int]:
        """Bytes this cache allocates for `tokens` slots: {"device": ..., "host": ...}."""
        return {"device": tokens * kv_bytes_per_token(cfg, dtype_bytes) + query_bytes(cfg, dtype_bytes), "host": 0}

    # -- the engine-facing contract ----------------------------------------------------------
    def absorb(self, model, tokens: torch.Tensor, upto: int, *, chunk: int | None = None, source=None,
               report: Callable[[int, int], None] | None = None) -> None:
        """Prefill: run tokens[seq_len:upto] (the 1-D token buffer) through `model` into this cache,
        `chunk` tokens per forward (the whole span when None). report(done, total) after each one."""
        step = self.max_step_tokens or chunk or upto
        if report is not None:
            report(self.seq_len, upto)
        while self.seq_len < upto:
            end = min(upto, self.seq_len + step)
            model(tokens[self.seq_len:end][None], None, self, num_logits=1)
            if report is not None:
                report(self.seq_len, upto)

    def rebuild(self, source: "StaticKVCache", query: torch.Tensor | None = None) -> bool:
        """Refill from `source` if this cache is a selection of it (True); a cache that keeps its
        own tokens has nothing to rebuild (False)."""
        return False

    def serves(self, chunk_size: int, scorer: str) -> None:
        """A selection will score this cache's chunks of `chunk_size` with `scorer` (call before the
        prefill). A cache on the device computes chunk statistics from its keys when asked."""

    def chunk_statistics(self, layer: int, chunks: int, chunk_size: int, scorer: str) -> torch.Tensor:
        """The statistics `scorer` reads of the first `chunks` complete chunks of `layer`:
        (B, Hkv, chunks, S, D) (retrieval.chunk_stats)."""
        from triforce.cache.retrieval import chunk_stats

        return chunk_stats(self.k[layer, :, :, : chunks * chunk_size], chunk_size, scorer)

    def gather(self, layer: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of `layer` at slots `idx` (B, Hkv, m): (B, Hkv, m, D) each, on the device."""
        keys, values = self.k[layer], self.v[layer]
        index = idx[..., None].expand(*idx.shape, keys.shape[-1])
        return torch.gather(keys, 2, index), torch.gather(values, 2, index)

    def traffic(self) -> dict[str, int]:
        """Bytes this cache moved over the host link ({} for a cache on the device)."""
        return {}

    # -- the model-facing contract ---------------------------------------------------------
    def reserve(self, num_tokens: int) -> int:
        """Make room for the next T tokens (a StreamingLLM cache evicts here); their first rotary
        position."""
        self._check_room(num_tokens)
        return self.seq_len

    def next_positions(self, num_tokens: int) -> torch.Tensor:
        start = self.reserve(num_tokens)
        return torch.arange(start, start + num_tokens, device=self.device)

    def attention_mask(self, num_tokens: int):
        """What T new queries after `length` cached keys may see (see attention.py).

        Called once per forward before any write, so it also guards the capacity (positions
        may have been passed explicitly, bypassing next_positions)."""
        self._check_room(num_tokens)
        if num_tokens == 1:
            return None, False
        if self.length == 0:
            return None, True
        total = self.length + num_tokens
        if self.device.type == "cuda":
            # causal aligned to the end of the keys, never materialised: a 32K-token prefill chunk
            # after a 96K-token prefix would otherwise build a 3 GB boolean mask
            from torch.nn.attention.bias import causal_lower_right

            return causal_lower_right(num_tokens, total), False
        q_idx = torch.arange(num_tokens, device=self.device)[:, None] + self.length
        k_idx = torch.arange(total, device=self.device)[None, :]
        return k_idx <= q_idx, False

    def store_slots(self, layer: int) -> None:
        """(k cache, v cache, first slot as a device scalar) for a kernel that writes this
        forward's keys itself; None: use `store` (the host-side path)."""
        return None

    def store(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotate q and k to their positions (rope: models.rope.Rope), store k and v;
        (q, keys, values) to attend with."""
        cos, sin = rope.cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = self.write(layer, q, k, v)
        return q, keys, values

    def write(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        n = min(q.shape[2], QUERY_HISTORY)
        self.recent_queries[layer, :, :, :n] = q[:, :, -n:]
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        n = min(num_tokens, QUERY_HISTORY)
        self._query_rows = (self.seq_len + num_tokens - n, n)
        self._rows_written = n
        self.length += num_tokens
        self.seq_len += num_tokens

    def skip(self, num_tokens: int) -> None:
        """Count sequence tokens as seen without storing them (only caches that drop tokens)."""
        raise NotImplementedError(f"{type(self).__name__} keeps every token: it cannot skip any")

    @property
    def last_query(self) -> torch.Tensor:
        """(L, B, Hq, D) queries of the last token of the most recent forward (a view)."""
        return self.recent_queries[:, :, :, max(self._rows_written, 1) - 1]

    def query_at(self, position: int) -> torch.Tensor:
        """(L, B, Hq, D) queries of the token at sequence `position`, if the latest forward
        computed it among its last QUERY_HISTORY rows."""
        start, rows = self._query_rows
        if not start <= position < start + rows:
            raise ValueError(f"no recorded query for position {position} (have {start}..{start + rows - 1})")
        return self.recent_queries[:, :, :, position - start]

    # -- snapshots (triforce.prefill_memo) ------------------------------------------------------
    def snapshot(self) -> "CacheSnapshot":
        """A host copy of everything a later reader sees: the filled slots, the recorded queries and
        the lengths. Only for a plain full cache (slot i = position i; `snapshots`)."""
        n = self.length
        return CacheSnapshot(k=self.k[:, :, :, :n].to("cpu", copy=True), v=self.v[:, :, :, :n].to("cpu", copy=True),
                             recent_queries=self.recent_queries.to("cpu", copy=True), query_rows=self._query_rows,
                             rows_written=self._rows_written)

    def restore(self, snap: "CacheSnapshot") -> None:
        """Become the cache the snapshot was taken of (an empty cache of the same shape and dtype)."""
        n = snap.k.shape[3]
        if self.length or snap.k.shape[:3] != self.k.shape[:3] or snap.k.dtype != self.k.dtype:
            raise ValueError("restore needs an empty cache of the snapshot's shape and dtype")
        self._check_room(n)
        self.k[:, :, :, :n] = snap.k
        self.v[:, :, :, :n] = snap.v
        self.recent_queries.copy_(snap.recent_queries)
        self._query_rows, self._rows_written = snap.query_rows, snap.rows_written
        self.length = self.seq_len = n

    # -- bookkeeping -----------------------------------------------------------------------
    def crop(self, seq_len: int) -> None:
        """Forget every token at sequence position >= seq_len (slots are overwritten later)."""
        if seq_len > self.seq_len:
            raise ValueError(f"cannot crop a cache of {self.seq_len} tokens forward to {seq_len}")
        drop = self.seq_len - seq_len
        if drop > self.length:
            raise ValueError(f"cannot roll back {drop} tokens: only {self.length} are cached")
        self.length -= drop
        self.seq_len = seq_len

    def reset(self) -> None:
        self.length = 0
        self.seq_len = 0

    @property
    def max_step_tokens(self) -> int | None:
        """Largest number of tokens one forward may add (None: limited only by capacity)."""
        return None

    def _check_room(self, num_tokens: int) -> None:
        if self.length + num_tokens > self.capacity:
            raise ConfigError(
                f"KV cache full: {self.length} + {num_tokens} tokens exceed its capacity of "
                f"{self.capacity}; shorten the prompt or max_new_tokens, or raise the cache size"
            )
