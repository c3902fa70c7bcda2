"""StreamingLLM cache for draft models: `sink` first tokens plus the most recent `window` tokens.

Positions are cache-relative (StreamingLLM, arXiv 2309.17453): a token's rotary position is its
slot in the cache, so a draft model never sees positions beyond sink + window, whatever the
length of the sequence. When the window overflows, the oldest window tokens are evicted and the
kept keys are re-rotated to their new slots (rotations compose, so this is exact up to rounding).

`slack`: slots the window may run over before it evicts; it then evicts down to `window` at once.
A draft step adds one token to a full window: without slack every step shifts the whole window (a
kernel launch and its host preparation per step, ~0.17 ms of host time at batch 8 on an H100,
docs/data/profile_rounds_8b_32k_b8_h100.txt); with slack s, one step in s + 1 does. The draft then
sees between `window` and `window + slack` recent tokens (a proposer's context: the output is exact
whatever it sees).
"""

from __future__ import annotations

from triforce.cache.static import StaticKVCache, kv_bytes_per_token, per_row, query_bytes
from triforce.errors import ConfigError
from triforce.kernels.streaming import shift_window


class StreamingCache(StaticKVCache):
    evicted = per_row("evicted", "tokens dropped from the window so far")

    def __init__(self, *, sink: int, window: int, inv_freq, kernels=None, slack: int = 0, **kw):
        if sink < 0 or window <= 0 or slack < 0:
            raise ConfigError(f"streaming cache needs sink >= 0, window > 0 and slack >= 0 "
                              f"(got sink={sink}, window={window}, slack={slack})")
        super().__init__(capacity=sink + window + slack, **kw)
        # keys are re-rotated with the model's rotary frequencies when the window shifts, by the
        # kernel the policy's launch context (`kernels`, a KernelContext) runs, or torch ops (None)
        self.sink, self.window, self.slack, self.inv_freq, self.kernels = sink, window, slack, inv_freq, kernels
        self._state.add(evicted=0)

    @classmethod
    def for_model(cls, model, *, sink: int, window: int, **kw) -> "StreamingCache":
        """A cache for `model` (any object with the model's config, rotary frequencies, dtype and
        device: the cache never runs it)."""
        cfg = model.config
        return cls(sink=sink, window=window, inv_freq=model.rotary.inv_freq, num_layers=cfg.num_layers,
                   num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, num_heads=cfg.num_heads,
                   dtype=model.dtype, device=model.device, **kw)

    @classmethod
    def memory(cls, cfg, tokens: int, dtype_bytes: int) -> dict[str, int]:
        """`tokens`: sink + window + slack (what it holds whatever the sequence's length)."""
        return {"device": tokens * kv_bytes_per_token(cfg, dtype_bytes) + query_bytes(cfg, dtype_bytes), "host": 0}

    @property
    def max_step_tokens(self) -> int:
        return self.window

    def kept_spans(self, upto: int) -> list[tuple[int, int]]:
        """The prompt's sink and last `window` tokens only, the ones this cache would keep (their
        keys then attend to sink + window while computed, not to the whole stream: a proposer's
        cache needs no more, and a 120K-token prompt is not run through the draft window by window)."""
        keep_from = upto - self.window
        if keep_from > self.sink:
            return [(self.seq_len, self.sink), (keep_from, upto)]
        return [(self.seq_len, upto)]

    def _drop(self, length: int, num_tokens: int) -> int:
        """Tokens to evict before num_tokens more: none while they fit the capacity, else as many
        as leave `window` after them (the slack's worth at once)."""
        if length + num_tokens <= self.capacity:
            return 0
        return length + num_tokens - (self.sink + self.window)

    def reserve(self, num_tokens: int) -> int:
        """Evict the oldest window tokens the next T need room for; positions are slots."""
        if num_tokens > self.window:
            raise ValueError(f"a streaming cache takes at most window={self.window} tokens per forward")
        drop = self._drop(self.length, num_tokens)
        if drop > 0:
            self._evict(drop)
        return self.length

    def reserve_rows(self, num_tokens: int) -> list[int]:
        """Every active row's eviction in one shift over the batch (rows evict different amounts:
        a rollback leaves some windows short); positions are slots."""
        if num_tokens > self.window:
            raise ValueError(f"a streaming cache takes at most window={self.window} tokens per forward")
        lengths = self.rows_of("length")
        drops = [self._drop(n, num_tokens) if self._is_active(b) else 0 for b, n in enumerate(lengths)]
        if any(drops):
            shift_window(self.k, self.v, self.sink, lengths, drops, self.inv_freq, ctx=self.kernels)  # one launch for the batch
            evicted = self.rows_of("evicted")
            for b, drop in enumerate(drops):
                if drop:
                    row = self.row(b)
                    row.length, row.evicted = lengths[b] - drop, evicted[b] + drop
        return self.rows_of("length")

    def first_position(self) -> int:
        return self.length

    def skip(self, num_tokens: int) -> None:
        """Count tokens as seen and already evicted (the prefill feeds only the sink and the last
        `window` tokens: kept_spans)."""
        if self.length < self.sink and num_tokens:
            raise ValueError("skip only after the sink tokens are stored")
        self.seq_len += num_tokens
        self.evicted += num_tokens

    def _evict(self, n: int) -> None:
        """Drop the n oldest non-sink tokens; shift the rest down n slots (and n rotary positions):
        one kernel on a GPU (kernels/streaming.py), torch ops elsewhere."""
        shift_window(self.k, self.v, self.sink, self.length, n, self.inv_freq, ctx=self.kernels)
        self.length -= n
        self.evicted += n

    def crop(self, seq_len: int) -> None:
        drop = self.seq_len - seq_len
        # Before the first eviction slot i holds position i, so any rollback is valid; after
        # it, the sink slots hold other positions and only window tokens can be dropped.
        if self.evicted and drop > self.length - self.sink:
            raise ValueError(f"cannot roll back {drop} tokens: the streaming window holds only "
                             f"{self.length - self.sink}; use a larger window")
        super().crop(seq_len)

    def can_crop(self, seq_len: int) -> bool:
        drop = self.seq_len - seq_len
        return super().can_crop(seq_len) and not (self.evicted and drop > self.length - self.sink)

    def reset(self) -> None:
        super().reset()
        self.evicted = 0
