"""A cache seen by a static-shape forward: the lengths live in a device tensor, not in Python.

A CUDA graph replays exactly the kernels it captured, with the tensor addresses it captured: it
cannot take a Python int. So the graph path keeps, per captured forward, a small device tensor

    meta = [token_start, position_start, slot_start]    per sequence of the batch: (3, B)

(where each sequence's new tokens are read from its row of the engine's token buffer, their first
rotary position, the cache slot the first one is written to), set by the executor before each
replay from the cache's host bookkeeping, which stays the single source of truth. Through this view the model's
forward reads its tokens, positions and lengths from `meta` (kernels read the fields themselves:
no launch builds an index), writes the new keys from the q/k/v projection's epilogue
(`store_slots`, the decode plan) or through `store` (the model's own forward, the reference), and
attends with the split-KV decode kernel or its reference (`DeviceLength`). The host lengths
advance outside the graph (`cache.advance`), so `advance` here does nothing.
"""

from __future__ import annotations

import torch

from triforce.cache.static import QUERY_HISTORY, StaticKVCache
from triforce.inputs import DeviceLength, DevicePositions, TokenSlice
from triforce.kernels.rotary import rope_store_reference

TOKEN_START, POSITION_START, SLOT_START = range(3)


class StaticView:
    """meta (3, B): per sequence of the batch, [token_start, position_start, slot_start]."""

    def __init__(self, cache: StaticKVCache, num_tokens: int, tree: tuple[torch.Tensor, torch.Tensor] | None = None):
        """tree: a token tree's forward of a fixed shape, (its (T, W) mask over the last W slots or
        None for a causal block, each token's position after the first's (T,)): on the device, read
        at every replay."""
        self.cache = cache
        self.num_tokens = num_tokens
        self.batch_size = B = cache.batch_size
        self.tree_mask, offsets = tree if tree is not None else (None, None)
        # a tree's offsets stay on the host: set() writes each node's position beside meta, so a
        # replay reads them (a kernel adding them to the start in every layer's rotary had cost a
        # launch a layer and broke the chain of dependent launches around it)
        self._offsets = None if offsets is None else [int(o) for o in offsets.tolist()]
        extra = 0 if offsets is None else B * num_tokens
        self._buffer = torch.zeros(3 * B + extra, dtype=torch.int64, device=cache.device)
        self.meta = self._buffer[:3 * B].view(3, B)
        self._fields = self.meta.unbind()  # (B,) views, made once
        # (B, T): each tree node's position (None: a causal block's, from the start)
        self.positions = None if offsets is None else self._buffer[3 * B:].view(B, num_tokens)

    def set(self, token_starts: list[int], position_starts: list[int], slot_starts: list[int]) -> None:
        """Point the view at the next forward. One sequence: one fill kernel per value, the value a
        kernel argument (no host buffer to stage or keep alive, no synchronisation); a batch, or a
        tree's forward: one copy of the 3 x B values (and the nodes' B x T positions) from pinned
        host memory, without a synchronisation."""
        if self.batch_size == 1 and self._offsets is None:
            for field, values in enumerate((token_starts, position_starts, slot_starts)):
                self._fields[field].fill_(values[0])
            return
        values = [*token_starts, *position_starts, *slot_starts]
        if self._offsets is not None:  # and a tree's positions: each row's start + each node's offset
            values += [p + o for p in position_starts for o in self._offsets]
        host = torch.tensor(values, dtype=torch.int64)
        if self._buffer.is_cuda:
            host = host.pin_memory()  # the caching host allocator keeps it until the copy has run
        self._buffer.copy_(host, non_blocking=True)

    @property
    def token_start(self) -> torch.Tensor:
        """Each row's first token index in the engine's buffer, a (B,) device tensor."""
        return self._fields[TOKEN_START]

    def tokens(self, buffer: torch.Tensor) -> TokenSlice:
        """The forward's input: `num_tokens` ids of each row of `buffer` (B, N) from its token start."""
        return TokenSlice(buffer, self._fields[TOKEN_START], self.num_tokens)

    # -- the cache contract (as StaticKVCache's, with device-resident lengths) ---------------
    def next_positions(self, num_tokens: int) -> DevicePositions | torch.Tensor:
        assert num_tokens == self.num_tokens
        if self.positions is not None:  # a tree's: the first's + each node's depth below it, set() wrote them
            return self.positions[0] if self.batch_size == 1 else self.positions
        return DevicePositions(self._fields[POSITION_START], num_tokens)

    def attention_mask(self, num_tokens: int, tree: torch.Tensor | None = None):
        """The decode kernel's extent: the block's first slot + T; a tree view's own mask (fixed with
        its shape; a `tree` passed here is the one it was built with)."""
        return DeviceLength(self._fields[SLOT_START], num_tokens, tree=self.tree_mask), False

    def store_slots(self, layer: int):
        """(k cache, v cache, first slot as a device scalar): where the decode plan's q/k/v
        projection writes this forward's keys and values itself (its epilogue)."""
        return self.cache.k[layer], self.cache.v[layer], self._fields[SLOT_START]

    def stored(self, layer: int, q: torch.Tensor):
        """After the projection wrote the keys: record the rotated queries where a retrieval
        rebuild will read them; (q, keys, values) to attend over."""
        cache = self.cache
        if cache.record_queries:
            n = min(q.shape[2], QUERY_HISTORY)
            cache.recent_queries[layer, :, :, :n] = q[:, :, -n:]
        return q, cache.k[layer], cache.v[layer]

    def store(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope):
        """The model-facing contract (the reference forward through this view): rotate q and k,
        write k and v at the slots from the device start; (q, keys, values) to attend over."""
        rope_store_reference(q, k, v, rope, *self.store_slots(layer))
        return self.stored(layer, q)

    def advance(self, num_tokens: int) -> None:
        pass
