"""StreamingCache (StreamingLLM): sink + most recent window, cache-relative positions, re-rotation
of kept keys on eviction, rollback within the window, per-forward token limit."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from triforce.cache.streaming import StreamingCache
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer
from triforce.inputs import apply_rotary
from triforce.models.rope import RotaryEmbedding

TOL = 1e-5
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def config(num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, vocab=48, rope_scaling=None) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=num_layers,
                       num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                       max_position_embeddings=256, rope_scaling=rope_scaling)


def model(seed=0, **kw) -> Transformer:
    """A random model with O(1) weights, so attention is far from uniform (positions matter)."""
    torch.manual_seed(seed)
    m = Transformer(config(**kw)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(4.0)
    return m


def bare_cache(sink, window, cfg=None, num_layers=1, slack=0) -> tuple[StreamingCache, RotaryEmbedding]:
    """A streaming cache of `cfg`'s shape and the rotary embedding its keys are rotated with."""
    cfg = cfg or config(num_layers=num_layers)
    rope = RotaryEmbedding(cfg)
    cache = StreamingCache(sink=sink, window=window, slack=slack, inv_freq=rope.inv_freq, num_layers=num_layers,
                           num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, num_heads=cfg.num_heads,
                           dtype=torch.float32, device="cpu")
    return cache, rope


def rotate(rope: RotaryEmbedding, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """k (B, H, T, D) rotated to `positions` (T,) exactly as the model's forward does."""
    cos, sin = rope.cos_sin(positions, k.dtype)
    return apply_rotary(k, cos, sin)


class Tracker:
    """Feeds synthetic tokens through the cache contract and remembers each token's raw key.

    Token i's value vector is filled with i, so the cache's values tell which tokens it holds."""

    def __init__(self, cache: StreamingCache, rope: RotaryEmbedding, seed=0):
        self.cache, self.rope = cache, rope
        h, d = cache.k.shape[2], cache.k.shape[4]
        self.raw = torch.randn(1, h, 1000, d, generator=torch.Generator().manual_seed(seed))
        self.positions: list[torch.Tensor] = []

    def feed(self, n: int) -> torch.Tensor:
        c = self.cache
        start = c.seq_len
        positions = c.next_positions(n)
        self.positions.append(positions)
        c.attention_mask(n)
        k = rotate(self.rope, self.raw[:, :, start:start + n], positions)
        v = torch.arange(start, start + n, dtype=torch.float32)[None, None, :, None].expand_as(k)
        for layer in range(c.k.shape[0]):
            c.write(layer, torch.zeros(1, c.last_query.shape[2], n, k.shape[-1]), k, v)
        c.advance(n)
        return positions

    def held(self) -> list[int]:
        """Sequence index of the token in each filled slot."""
        return self.cache.v[0, 0, 0, : self.cache.length, 0].round().long().tolist()


def expected_held(seq_len: int, sink: int, window: int) -> list[int]:
    if seq_len <= sink + window:
        return list(range(seq_len))
    return list(range(sink)) + list(range(seq_len - window, seq_len))


@pytest.mark.parametrize("sink,window,chunks", [
    (3, 8, [5, 1, 4, 7, 1, 8, 2, 1, 1]),
    (0, 6, [4, 4, 1, 6, 3]),  # no sink: a plain sliding window
    (4, 4, [1] * 15),
    (2, 10, [10, 10, 10, 3]),  # full-window forwards evict a whole window at once
])
def test_eviction_keeps_sink_and_most_recent_window(sink, window, chunks):
    cache, rope = bare_cache(sink, window)
    t = Tracker(cache, rope)
    for n in chunks:
        positions = t.feed(n)
        # positions are cache-relative: the slots the new tokens occupy
        assert positions.tolist() == list(range(cache.length - n, cache.length))
        assert int(positions.max()) < sink + window
        assert t.held() == expected_held(cache.seq_len, sink, window)
        assert cache.length == min(cache.seq_len, sink + window)
        assert cache.evicted == cache.seq_len - cache.length


@pytest.mark.parametrize("slack", [3, 5])
def test_slack_evicts_down_to_the_window_at_once_and_never_below_it(slack):
    """With slack s the window runs over by up to s tokens, then evicts back to sink + window in one
    shift: one eviction per s + 1 one-token steps, and what it then holds is what a cache without
    slack holds at that point (the same tokens, keys re-rotated to the same slots)."""
    sink, window = 3, 8
    cache, rope = bare_cache(sink, window, slack=slack)
    plain, _ = bare_cache(sink, window)
    t, p = Tracker(cache, rope, seed=2), Tracker(plain, rope, seed=2)
    shifts = 0
    for step, n in enumerate([6, 5] + [1] * 30):
        before = cache.evicted
        t.feed(n)
        p.feed(n)
        shifts += cache.evicted > before
        held = t.held()
        assert cache.length <= sink + window + slack
        assert held[:sink] == list(range(sink)) and held[sink:] == list(range(cache.seq_len - len(held) + sink,
                                                                              cache.seq_len))
        assert len(held) >= min(cache.seq_len, sink + window)  # never fewer recent tokens than the window
        if cache.evicted > before:  # just evicted: exactly the slack-free cache
            assert held == p.held()
            torch.testing.assert_close(cache.k[0, :, :, :cache.length], plain.k[0, :, :, :plain.length],
                                       atol=TOL, rtol=TOL)
    assert shifts == pytest.approx(plain.evicted / (slack + 1), abs=1)


@pytest.mark.parametrize("rope_scaling", [None, YARN])
def test_kept_keys_are_rerotated_to_their_new_slot(rope_scaling):
    """After any number of evictions, the key in slot s equals the token's raw key rotated to
    position s (what a fresh computation at the new slot gives); YaRN's magnitude scale kept."""
    cfg = config(rope_scaling=rope_scaling)
    cache, rope = bare_cache(3, 9, cfg)
    t = Tracker(cache, rope, seed=1)
    for n in [7, 3, 1, 9, 4, 1, 1, 6, 9, 2]:
        t.feed(n)
        held = t.held()
        slots = torch.arange(cache.length)
        fresh = rotate(rope, t.raw[:, :, held], slots)
        torch.testing.assert_close(cache.k[0, :, :, : cache.length], fresh, atol=TOL, rtol=TOL)
        # values move with their keys unchanged
        assert cache.v[0, 0, :, : cache.length, 0].round().long()[0].tolist() == held
    assert cache.evicted > 0


def test_model_after_eviction_equals_fresh_forward_at_new_slots():
    """With one layer the cached K/V of a token depend only on the token and its rotary
    position, so after evictions the streaming forward must equal a fresh full-cache forward
    over exactly the kept tokens (sink + recent window) at positions 0, 1, 2, ..."""
    m = model(seed=3, num_layers=1)
    seq = torch.randint(0, 48, (1, 60), generator=torch.Generator().manual_seed(0))
    sink, window = 4, 12
    cache = StreamingCache.for_model(m, sink=sink, window=window)
    start = 0
    with torch.inference_mode():
        for n in [9, 1, 5, 12, 3, 1, 1, 7, 12, 2, 1, 6]:
            logits = m(seq[:, start:start + n], None, cache)
            start += n
            kept = expected_held(start, sink, window)
            ref = m(seq[:, kept], None, full_cache(m, len(kept)))
            torch.testing.assert_close(logits, ref[:, -n:], atol=1e-4, rtol=1e-4)
    assert cache.evicted == start - sink - window


def test_multi_layer_keys_are_rerotated_exactly():
    """All layers (GQA model): each kept key equals the key the model computed for that token,
    un-rotated from its original position and rotated to its current slot."""
    m = model(seed=4, num_layers=2)
    cache = StreamingCache.for_model(m, sink=2, window=10)
    seen: dict[tuple[int, int], torch.Tensor] = {}  # (layer, seq index) -> key without rotation
    write = cache.write

    def recording_write(layer, q, k, v):
        positions = torch.arange(cache.length, cache.length + k.shape[2])
        raw = rotate(m.rotary, k, -positions)  # R(-pos) undoes R(pos)
        for i in range(k.shape[2]):
            seen[(layer, cache.seq_len + i)] = raw[:, :, i]
        return write(layer, q, k, v)

    cache.write = recording_write
    seq = torch.randint(0, 48, (1, 40), generator=torch.Generator().manual_seed(1))
    start = 0
    with torch.inference_mode():
        for n in [6, 5, 1, 10, 3, 1, 9, 5]:
            m(seq[:, start:start + n], None, cache)
            start += n
    held = expected_held(start, 2, 10)
    for layer in range(2):
        raw = torch.stack([seen[(layer, i)] for i in held], dim=2)
        fresh = rotate(m.rotary, raw, torch.arange(len(held)))
        torch.testing.assert_close(cache.k[layer, :, :, : len(held)], fresh, atol=1e-4, rtol=1e-4)


def test_without_eviction_it_is_a_full_cache():
    m = model(seed=5, num_layers=2)
    seq = torch.randint(0, 48, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = StreamingCache.for_model(m, sink=4, window=16)
    with torch.inference_mode():
        out = torch.cat([m(seq[:, a:b], None, cache) for a, b in [(0, 7), (7, 8), (8, 20)]], dim=1)
        ref = m(seq, None, full_cache(m, 20))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert cache.evicted == 0


def test_crop_within_window_then_continue():
    m = model(seed=6, num_layers=1)
    seq = torch.randint(0, 48, (1, 40), generator=torch.Generator().manual_seed(3))
    alt = torch.randint(0, 48, (1, 5), generator=torch.Generator().manual_seed(4))
    sink, window = 3, 12
    cache = StreamingCache.for_model(m, sink=sink, window=window)
    with torch.inference_mode():
        for a, b in [(0, 12), (12, 20), (20, 30)]:
            m(seq[:, a:b], None, cache)
        assert (cache.seq_len, cache.length) == (30, 15)  # holds 0..2 and 18..29
        cache.crop(26)  # roll back 4 speculative tokens: 0..2 and 18..25
        assert (cache.seq_len, cache.length) == (26, 11)
        logits = m(alt, None, cache)  # 11 + 5 > 15: evicts token 18
        kept = torch.cat([seq[:, :3], seq[:, 19:26], alt], dim=1)
        ref = m(kept, None, full_cache(m, kept.shape[1]))
    torch.testing.assert_close(logits, ref[:, -5:], atol=1e-4, rtol=1e-4)


def test_crop_to_the_sink_boundary_works_and_beyond_raises():
    cache, rope = bare_cache(3, 8)
    t = Tracker(cache, rope)
    for n in [8, 8, 4]:
        t.feed(n)
    assert (cache.seq_len, cache.length) == (20, 11)
    with pytest.raises(ValueError, match="window"):
        cache.crop(20 - 9)  # the window holds only 8
    assert (cache.seq_len, cache.length) == (20, 11)  # a failed crop changes nothing
    cache.crop(12)
    assert (cache.seq_len, cache.length) == (12, 3)
    assert t.held() == [0, 1, 2]
    with pytest.raises(ValueError):
        cache.crop(13)  # forward: not a rollback


def test_crop_before_any_eviction_can_reach_zero():
    """While nothing was evicted the cache is a plain prefix (slot i = position i), so speculative
    tokens sitting in the sink slots can be rolled back too: a prompt shorter than `sink`.
    Fix: in StreamingCache.crop, only enforce `drop <= length - sink` when self.evicted > 0."""
    cache, rope = bare_cache(4, 8)
    t = Tracker(cache, rope)
    t.feed(1)  # a one-token prompt
    t.feed(3)  # three speculative tokens
    cache.crop(1)
    assert (cache.seq_len, cache.length) == (1, 1)
    cache.crop(0)
    assert t.feed(2).tolist() == [0, 1]


def test_per_forward_token_limit_is_the_window():
    cache, _ = bare_cache(2, 6)
    assert cache.max_step_tokens == 6
    with pytest.raises(ValueError, match="window"):
        cache.next_positions(7)
    assert cache.next_positions(6).tolist() == list(range(6))
    m = model(seed=7)
    mc = StreamingCache.for_model(m, sink=2, window=6)
    with pytest.raises(ValueError):
        with torch.inference_mode():
            m(torch.zeros(1, 7, dtype=torch.long), None, mc)


@pytest.mark.parametrize("sink,window", [(-1, 4), (2, 0)])
def test_invalid_sizes_are_config_errors(sink, window):
    with pytest.raises(ConfigError):
        bare_cache(sink, window)


def test_reset_forgets_everything():
    cache, rope = bare_cache(2, 4)
    t = Tracker(cache, rope)
    t.feed(4)
    t.feed(4)
    assert cache.evicted == 2
    cache.reset()
    assert (cache.seq_len, cache.length, cache.evicted) == (0, 0, 0)
    assert cache.next_positions(3).tolist() == [0, 1, 2]
