"""The full KV cache: static, pre-allocated buffers with rollback to any earlier length.

Every cache in triforce (full, offloaded, StreamingLLM, retrieval / hybrid) is a StaticKVCache and
keeps one contract (docs/DESIGN.md §4). What a model's forward calls:

    positions = cache.next_positions(T)       # rotary positions of the next T tokens
    mask, is_causal = cache.attention_mask(T)  # once per forward
    q, keys, values = cache.store(layer, q, k, v, rope)  # rotate q and k, store k/v, return
                                               # what to attend over
    cache.advance(T)                           # after the last layer

What the engine and the prefill call, never asking which kind of cache it holds (a cache never
runs a model: prefill.py does, over the spans it keeps):

    cache.kept_spans(upto)                      # the prompt positions it stores (prefill.absorb)
    cache.crop(seq_len)                         # roll back rejected speculative tokens
    cache.rebuild(source, query)                # a selection re-selects from its source; False: not one
    cache.serves(chunk_size, scorer)            # a selection will score this cache's chunks: keep what it needs
    cache.chunk_statistics(layer, ...) / cache.gather(layer, idx)  # what a selection reads of its source
    cache.traffic()                             # bytes moved over the host link (an offloaded cache)
    cache.snapshot() / restore(...)             # the prefill memo (None: this cache cannot be kept)
    Cache.memory(cfg, ...)                      # device and host bytes it will allocate (memory.py)
    capturable, max_step_tokens, layer_major    # how a forward and a prefill may use it
    selects                                     # a selection: takes its prompt with rebuild(source)

A captured (CUDA-graph) forward uses it through `StaticView` (cache/static_view.py), which keeps
the lengths in device tensors and names its slots (`store_slots`: k cache, v cache, first slot),
so the decode plan's q/k/v projection writes them itself and then reports the rotated q (`stored`).

`seq_len` counts the sequence tokens the cache has absorbed; `length` counts filled slots. They
are equal here and differ for the StreamingLLM and retrieval caches, which keep a subset.
`crop(seq_len)` rolls back the most recent tokens (speculative tokens that were rejected).

**Batches** (docs/DESIGN.md §4): a cache of B sequences keeps its storage as one tensor (L, B, Hkv,
S, D) and every per-sequence scalar (`length`, `seq_len`, a StreamingLLM cache's evictions, ...) per
row (`RowState`). `cache.row(b)` is a cache of one sequence over row b of the same storage and
state: everything written for one sequence (a prefill, a rollback, a rebuild) goes through it, with
the single-sequence code. A forward over all B sequences at once (T new tokens each, at per-row
positions and slots) uses the model-facing contract of the batch cache itself; `active` names the
rows a forward advances (the others, frozen for the rest of a round or finished, keep their state:
their writes land in `spare` slots past the capacity and are never read).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from triforce.cache.chunks import chunk_stats
from triforce.config import QUERY_HISTORY
from triforce.errors import ConfigError
from triforce.inputs import apply_rotary, device_index

__all__ = ["QUERY_HISTORY", "CacheSnapshot", "StaticKVCache", "kv_bytes_per_token"]


def kv_bytes_per_token(cfg, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes in a cache of every layer of `cfg`."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes


def query_bytes(cfg, dtype_bytes: int) -> int:
    """The recorded queries (QUERY_HISTORY rows per layer and query head)."""
    return cfg.num_layers * cfg.num_heads * QUERY_HISTORY * cfg.head_dim * dtype_bytes


@dataclasses.dataclass(frozen=True)
class CacheSnapshot:
    k: torch.Tensor  # (L, 1, Hkv, n, D), host memory
    v: torch.Tensor
    recent_queries: torch.Tensor
    query_rows: tuple[int, int]
    rows_written: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.recent_queries))


class RowState:
    """The per-sequence scalars of a batch cache, one list per field, shared with its row views."""

    def __init__(self, batch_size: int, **fields):
        self.values = {name: [value] * batch_size for name, value in fields.items()}

    def add(self, **fields) -> None:
        for name, value in fields.items():
            self.values.setdefault(name, [value] * len(next(iter(self.values.values()))))


def per_row(name: str, doc: str = "") -> property:
    """A cache attribute kept per sequence: a row view reads and writes its own row; a batch cache
    reads the value all its rows share (an error if they differ) and writes it to every row."""

    def get(self):
        values = self._state.values[name]
        if self._row is not None:
            return values[self._row]
        if any(v != values[0] for v in values[1:]):
            raise ValueError(f"{name} differs between the sequences of this batch: use cache.row(b) or "
                             f"cache.rows_of({name!r})")
        return values[0]

    def put(self, value) -> None:
        values = self._state.values[name]
        if self._row is not None:
            values[self._row] = value
        else:
            values[:] = [value] * len(values)

    return property(get, put, doc=doc)


class StaticKVCache:
    capturable = True  # a static-shape (captured) forward may run on it
    selects = False  # a selection of another cache, refilled by `rebuild` (retrieval, hybrid)
    layer_major = False  # a prefill should run every chunk of one layer before the next (offloaded)
    snapshots = True  # its prefill can be kept for later generations (snapshot / restore)

    length = per_row("length", "filled slots")
    seq_len = per_row("seq_len", "sequence tokens absorbed")
    _query_rows = per_row("query_rows", "(sequence position of recent_queries row 0, rows filled)")
    _rows_written = per_row("rows_written", "rows the latest forward filled")
    # Captured forwards record queries only where a rebuild will read them (a copy per layer)
    record_queries = per_row("record_queries", "this cache's forwards record their queries")

    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str, batch_size: int = 1,
                 num_heads: int | None = None, spare: int = 0):
        self.capacity = capacity
        self.spare = spare  # slots past the capacity a frozen row's forward may write into (batches)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._row: int | None = None  # a row view: the sequence it is
        self._state = RowState(batch_size, length=0, seq_len=0, query_rows=(0, 0), rows_written=0,
                               record_queries=True)
        self.active: tuple[bool, ...] | None = None  # rows the next batched forward advances (None: all)
        self._allocate((num_layers, batch_size, num_kv_heads, capacity + spare, head_dim), dtype)
        # Queries of the most recent forward's last rows, per layer: the retrieval cache scores
        # chunks with the query of a chosen committed token (a verify forward's last row may be a
        # proposal the verifier then rejected).
        q_shape = (num_layers, batch_size, num_heads or num_kv_heads, QUERY_HISTORY, head_dim)
        self.recent_queries = torch.zeros(q_shape, dtype=dtype, device=device)

    @classmethod
    def for_model(cls, cfg, capacity: int, dtype: torch.dtype, device, **kw) -> "StaticKVCache":
        return cls(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                   num_heads=cfg.num_heads, capacity=capacity, dtype=dtype, device=device, **kw)

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """The key and value storage, (L, B, Hkv, capacity + spare, D) each (an offloaded cache keeps
        most of it in host memory: cache/offload.py)."""
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)

    @classmethod
    def memory(cls, cfg, tokens: int, dtype_bytes: int) -> dict[str, int]:
        """Bytes this cache allocates for `tokens` slots: {"device": ..., "host": ...}."""
        return {"device": tokens * kv_bytes_per_token(cfg, dtype_bytes) + query_bytes(cfg, dtype_bytes), "host": 0}

    # -- sequences of a batch ----------------------------------------------------------------
    def row(self, b: int) -> "StaticKVCache":
        """The cache of sequence b: a one-sequence cache of the same kind over row b of this
        storage and state (writes through it are this cache's)."""
        if self._row is not None:
            if b != 0:
                raise IndexError(f"a row view holds one sequence, not row {b}")
            return self
        if not 0 <= b < self.batch_size:
            raise IndexError(f"row {b} of a batch of {self.batch_size}")
        views = self.__dict__.setdefault("_views", {})  # made once: a round crops every row
        if b not in views:
            view = copy.copy(self)
            view._row, view.batch_size, view.active, view._views = b, 1, None, None
            self._row_storage(view, b)
            views[b] = view
        return views[b]

    def _row_storage(self, view: "StaticKVCache", b: int) -> None:
        """Point a row view's tensors at row b (subclasses add their own)."""
        view.k, view.v = self.k[:, b:b + 1], self.v[:, b:b + 1]
        view.recent_queries = self.recent_queries[:, b:b + 1]

    def rows_of(self, name: str) -> list:
        """A per-sequence attribute for every row (a copy)."""
        values = self._state.values[name]
        return list(values) if self._row is None else [values[self._row]]

    @property
    def rows(self) -> range:
        return range(self.batch_size)

    def _is_active(self, b: int) -> bool:
        return self.active is None or self.active[b]

    # -- the engine-facing contract ----------------------------------------------------------
    def kept_spans(self, upto: int) -> list[tuple[int, int]]:
        """The spans of sequence positions [seq_len, upto) this cache stores when it takes a prompt
        (prefill.absorb runs the model over them; a gap between spans is counted as seen, `skip`)."""
        return [(self.seq_len, upto)]

    def rebuild(self, source: "StaticKVCache", query: torch.Tensor | None = None) -> bool:
        """Refill from `source` if this cache is a selection of it (True); a cache that keeps its
        own tokens has nothing to rebuild (False)."""
        return False

    def serves(self, chunk_size: int, scorer: str) -> None:
        """A selection will score this cache's chunks of `chunk_size` with `scorer` (call before the
        prefill). A cache on the device computes chunk statistics from its keys when asked."""

    def chunk_statistics(self, layer: int, chunks: int, chunk_size: int, scorer: str) -> torch.Tensor:
        """The statistics `scorer` reads of the first `chunks` complete chunks of `layer`:
        (B, Hkv, chunks, S, D) (cache/chunks.py)."""
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

    def reserve_rows(self, num_tokens: int) -> list[int]:
        """Every row's `reserve`: the first position of each sequence's T new tokens (a frozen row
        reserves nothing and keeps its slots: its forward writes past its length)."""
        return [self.row(b).reserve(num_tokens) if self._is_active(b) else self.row(b).first_position()
                for b in self.rows]

    def first_position(self) -> int:
        """The rotary position the next token would get (without making room)."""
        return self.seq_len

    def next_positions(self, num_tokens: int) -> torch.Tensor:
        if self.batch_size > 1:
            starts = torch.tensor(self.reserve_rows(num_tokens), device=self.device)
            return starts[:, None] + torch.arange(num_tokens, device=self.device)
        start = self.reserve(num_tokens)
        return torch.arange(start, start + num_tokens, device=self.device)

    def attention_mask(self, num_tokens: int, tree: torch.Tensor | None = None):
        """What T new queries after `length` cached keys may see (see attention.py).

        Called once per forward before any write, so it also guards the capacity (positions
        may have been passed explicitly, bypassing next_positions). tree: a (T, W) boolean mask of the
        new tokens over the last W slots, the new ones and W - T a tree's earlier forwards wrote
        (triforce.tree.Tree.ancestors: each node sees the cached prefix, itself and its ancestors),
        in place of the causal one."""
        if self.batch_size > 1:
            mask = self._batch_mask(num_tokens)
            return (mask if tree is None else self._with_tree(mask, tree, self.rows_of("length"))), False
        self._check_room(num_tokens)
        if tree is not None:
            slots = torch.arange(self.length + num_tokens, device=self.device)
            return self._with_tree((slots < self.length)[None].expand(num_tokens, -1), tree, [self.length]), False
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

    @staticmethod
    def _with_tree(mask: torch.Tensor, tree: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """`mask` ((T, S), or (B, 1, T, S) with row b's T new tokens at lengths[b]) with the tree's
        (T, W) rows over the last W slots up to the new tokens' end (W >= T: nodes written by earlier
        forwards of the same tree, then the new ones)."""
        mask = mask.clone()
        T, W = tree.shape
        if mask.dim() == 2:
            mask[:, lengths[0] + T - W:lengths[0] + T] = tree
            return mask
        for b, start in enumerate(lengths):
            mask[b, 0, :, start + T - W:start + T] = tree
        return mask

    def keep_path(self, path: list[int] | tuple[int, ...], block: int) -> None:
        """After a tree's forwards wrote its nodes into the last `block` slots (breadth-first; one
        sequence): keep the nodes of the accepted `path` (indices in the block, increasing) in the
        block's first slots, and forget the rest — the cache then holds what a chain of the accepted
        tokens would have left (their positions are the slots they move to: the block's first slot's
        position plus their depth). Their recorded queries move with them where the forward recorded
        them."""
        if self.batch_size > 1:
            raise ValueError("keep_path is per sequence: call it on row(b)")
        start, query_rows = self._keep_path_state(path, block)
        n = len(path)
        idx = device_index([start + i for i in path], self.device)
        self.k[:, :, :, start:start + n] = self.k.index_select(3, idx)
        self.v[:, :, :, start:start + n] = self.v.index_select(3, idx)
        if query_rows is not None:
            rows_idx = device_index(query_rows, self.device)
            self.recent_queries[:, :, :, :n] = self.recent_queries.index_select(3, rows_idx)

    def _keep_path_state(self, path: list[int] | tuple[int, ...], block: int) -> tuple[int, list[int] | None]:
        """One sequence's bookkeeping for keeping `path` (`keep_path`): the path checked, the lengths
        and the recorded queries' rows set to what the path leaves. Returns the block's first slot and
        the rows of recent_queries to move to rows 0.. (None: the forward recorded none for the path)."""
        start = self.length - block
        if start < 0 or any(not 0 <= i < block for i in path):
            raise ValueError(f"nodes {list(path)} are not all among the last {block} slots ({self.length} written)")
        n = len(path)
        seq_start = self.seq_len - block  # the block's first sequence position (what queries are named by)
        first, rows = self._query_rows  # the recorded queries: rows of sequence positions first..
        kept = [seq_start + i - first for i in path]
        recorded = n > 0 and all(0 <= r < rows for r in kept)
        # none recorded for the path: nothing to read (query_at raises)
        self._query_rows, self._rows_written = ((seq_start, n), n) if recorded else ((seq_start + n, 0), 0)
        drop = block - n  # (a cache whose positions run ahead of its slots keeps that offset)
        self.length -= drop
        self.seq_len -= drop
        return start, kept if recorded else None

    def keep_paths(self, paths: dict[int, list[int] | tuple[int, ...]], block: int) -> None:
        """`keep_path` for rows of a batch at once: row b keeps paths[b] (rows not named untouched).
        The same result as `row(b).keep_path(paths[b], block)` row by row, with every row's keys,
        values and recorded queries moved by one gather per tensor after one index copy to the device
        (row by row, each row costs an index copy and four launches). A cache that moves more than
        these (offloaded: host memory too) goes row by row."""
        if self._row is not None or self.batch_size == 1 or type(self).keep_path is not StaticKVCache.keep_path:
            for b, path in paths.items():
                self.row(b).keep_path(path, block)
            return
        width = max((len(p) for p in paths.values()), default=0)
        slots = [list(range(width)) for _ in self.rows]  # (B, width) source slots; identity where nothing moves
        targets = [list(range(width)) for _ in self.rows]
        history = self.recent_queries.shape[3]
        query_src = [list(range(history)) for _ in self.rows]  # recorded query rows, likewise
        moved_queries = False
        for b, path in paths.items():
            try:
                start, query_rows = self.row(b)._keep_path_state(path, block)
            except ValueError as e:
                raise ValueError(f"row {b}: {e}") from None
            slots[b] = [start + i for i in path] + [start + i for i in range(len(path), width)]
            targets[b] = [start + i for i in range(width)]
            if query_rows is not None:
                query_src[b][:len(path)] = query_rows
                moved_queries = True
        batch = torch.arange(self.batch_size, device=self.device)[:, None]
        if width:
            index = device_index([i for row in slots + targets for i in row], self.device)
            src, dst = index.view(2, self.batch_size, width)
            self.k[:, batch, :, dst] = self.k[:, batch, :, src]
            self.v[:, batch, :, dst] = self.v[:, batch, :, src]
        if moved_queries:
            src = device_index([i for row in query_src for i in row], self.device).view(self.batch_size, history)
            self.recent_queries.copy_(self.recent_queries[:, batch, :, src].permute(2, 0, 3, 1, 4))

    def _batch_mask(self, num_tokens: int) -> torch.Tensor:
        """(B, 1, T, S) booleans: query t of row b sees the slots below length_b + t + 1."""
        lengths = self.rows_of("length")
        for b in self.rows:
            if self._is_active(b):
                self.row(b)._check_room(num_tokens)
            elif lengths[b] + num_tokens > self.capacity + self.spare:
                raise ValueError(f"row {b} is frozen at {lengths[b]} slots: a {num_tokens}-token forward needs "
                                 f"{num_tokens} spare slots past the capacity of {self.capacity} ({self.spare})")
        last = torch.tensor(lengths, device=self.device)[:, None] + torch.arange(num_tokens, device=self.device)
        slots = torch.arange(self.k.shape[3], device=self.device)
        return (slots[None, None, :] <= last[:, :, None])[:, None]

    def store_slots(self, layer: int) -> None:
        """(k cache, v cache, first slot as a device scalar) for a kernel that writes this
        forward's keys itself; None: use `store` (the host-side path)."""
        return None

    def store(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotate q and k to their positions (rope: inputs.Rope), store k and v;
        (q, keys, values) to attend with."""
        cos, sin = rope.cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = self.write(layer, q, k, v)
        return q, keys, values

    def write(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        n = min(q.shape[2], QUERY_HISTORY)
        self.recent_queries[layer, :, :, :n] = q[:, :, -n:]
        if self.batch_size > 1:  # every row at its own slots; attention reads all slots, masked
            for b, start in enumerate(self.rows_of("length")):
                self.k[layer, b, :, start:start + k.shape[2]] = k[b]
                self.v[layer, b, :, start:start + k.shape[2]] = v[b]
            return self.k[layer], self.v[layer]
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        if self.batch_size > 1:
            for b in self.rows:
                if self._is_active(b):
                    self.row(b).advance(num_tokens)
            return
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
        """A host copy of everything a later reader sees of one sequence: the filled slots, the
        recorded queries and the lengths. Only for a plain full cache (slot i = position i;
        `snapshots`)."""
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

    def can_crop(self, seq_len: int) -> bool:
        """Whether `crop(seq_len)` would succeed (a batch rolls rows back to feed one width)."""
        return seq_len <= self.seq_len and self.seq_len - seq_len <= self.length

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
