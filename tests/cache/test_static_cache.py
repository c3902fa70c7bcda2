"""StaticKVCache: incremental forwards equal one full forward; rollback; capacity; masks."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.conftest import TINY
from triforce.cache.static import StaticKVCache
from triforce.errors import ConfigError

TOL = 1e-4


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def run_chunks(model, toks: torch.Tensor, sizes: list[int], cache=None) -> torch.Tensor:
    """Feed `toks` through one cache in consecutive chunks of `sizes`; concatenated logits."""
    assert sum(sizes) == toks.shape[1]
    cache = cache if cache is not None else full_cache(model, toks.shape[1], batch_size=toks.shape[0])
    out, start = [], 0
    with torch.no_grad():
        for n in sizes:
            out.append(model(toks[:, start:start + n], None, cache))
            start += n
    return torch.cat(out, dim=1)


def full(model, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(toks, None, full_cache(model, toks.shape[1], batch_size=toks.shape[0]))


@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_then_token_by_token_decode_equals_full_forward(tiny_model, batch):
    toks = tokens(batch, 40)
    ref = full(tiny_model, toks)
    out = run_chunks(tiny_model, toks, [24] + [1] * 16)
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("sizes", [[17, 5, 18], [1, 30, 9], [3, 3, 34]])
def test_uneven_chunked_prefill_equals_full_forward(tiny_model, sizes):
    toks = tokens(1, 40, seed=1)
    out = run_chunks(tiny_model, toks, sizes)
    assert (out - full(tiny_model, toks)).abs().max().item() <= TOL


def test_chunk_without_causal_mask_would_differ(tiny_model):
    """Sensitivity: a later chunk that ignored its causal mask would give different logits."""
    toks = tokens(1, 30, seed=2)
    cache = full_cache(tiny_model, 30)
    with torch.no_grad():
        tiny_model(toks[:, :20], None, cache)
        cache.attention_mask = lambda n, tree=None: (None, False)  # every new query sees every new key
        leaky = tiny_model(toks[:, 20:], None, cache)
    assert (leaky - full(tiny_model, toks)[:, 20:]).abs().max().item() > 100 * TOL


def test_crop_then_continue_equals_fresh_run(tiny_model):
    a, b, c = tokens(1, 20, seed=3), tokens(1, 7, seed=4), tokens(1, 5, seed=5)
    cache = full_cache(tiny_model, 40)
    with torch.no_grad():
        tiny_model(a, None, cache)
        tiny_model(b, None, cache)  # speculative tokens, then rejected
        assert (cache.seq_len, cache.length) == (27, 27)
        cache.crop(20)
        assert (cache.seq_len, cache.length) == (20, 20)
        assert cache.next_positions(5).tolist() == list(range(20, 25))
        after_rollback = tiny_model(c, None, cache)
    fresh = full(tiny_model, torch.cat([a, c], dim=1))[:, 20:]
    assert (after_rollback - fresh).abs().max().item() <= TOL
    # sensitivity: without the crop, C would see B and its logits would differ
    with_b = full(tiny_model, torch.cat([a, b, c], dim=1))[:, 27:]
    assert (with_b - fresh).abs().max().item() > 100 * TOL


def test_crop_to_zero_and_reset_start_over(tiny_model):
    a, c = tokens(1, 12, seed=6), tokens(1, 9, seed=7)
    cache = full_cache(tiny_model, 32)
    ref = full(tiny_model, c)
    with torch.no_grad():
        tiny_model(a, None, cache)
        cache.crop(0)
        assert tiny_model(c, None, cache).sub(ref).abs().max().item() <= TOL
        cache.reset()
        assert (cache.seq_len, cache.length) == (0, 0)
        assert tiny_model(c, None, cache).sub(ref).abs().max().item() <= TOL


def test_crop_forward_is_an_error(tiny_model):
    cache = full_cache(tiny_model, 16)
    with torch.no_grad():
        tiny_model(tokens(1, 5), None, cache)
    with pytest.raises(ValueError, match="forward"):
        cache.crop(6)
    assert (cache.seq_len, cache.length) == (5, 5)  # unchanged by the failed crop


def test_crop_beyond_what_is_cached_is_an_error(tiny_model):
    cache = full_cache(tiny_model, 16)
    with torch.no_grad():
        tiny_model(tokens(1, 5), None, cache)
    with pytest.raises(ValueError, match="roll back"):
        cache.crop(-1)
    assert (cache.seq_len, cache.length) == (5, 5)


def test_filling_exactly_to_capacity_is_fine(tiny_model):
    cache = full_cache(tiny_model, 10)
    with torch.no_grad():
        tiny_model(tokens(1, 9), None, cache)
        tiny_model(tokens(1, 1), None, cache)
    assert cache.length == cache.capacity == 10


def test_capacity_overflow_is_a_helpful_config_error(tiny_model):
    cache = full_cache(tiny_model, 10)
    with torch.no_grad():
        tiny_model(tokens(1, 8), None, cache)
        with pytest.raises(ConfigError, match=r"KV cache full: 8 \+ 3 tokens exceed its capacity of 10"):
            tiny_model(tokens(1, 3), None, cache)
    assert (cache.seq_len, cache.length) == (8, 8)  # nothing was written


def test_capacity_overflow_with_explicit_positions_is_a_config_error(tiny_model):
    cache = full_cache(tiny_model, 10)
    with torch.no_grad():
        tiny_model(tokens(1, 10), None, cache)
        with pytest.raises(ConfigError, match="KV cache full"):
            tiny_model(tokens(1, 1), torch.tensor([10]), cache)
    assert cache.length <= cache.capacity


def test_attention_mask_shapes_and_values():
    cache = StaticKVCache(num_layers=1, num_kv_heads=1, head_dim=4, capacity=16, dtype=torch.float32,
                          device="cpu")
    assert cache.attention_mask(5) == (None, True)  # fresh prefill: causal fast path
    assert cache.attention_mask(1) == (None, False)  # one query sees every key
    cache.advance(4)
    mask, is_causal = cache.attention_mask(3)
    assert is_causal is False and mask.dtype == torch.bool and mask.shape == (3, 7)
    expected = torch.tensor([[1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert cache.next_positions(3).tolist() == [4, 5, 6]


def test_write_returns_the_filled_prefix():
    cache = StaticKVCache(num_layers=2, num_kv_heads=2, head_dim=4, capacity=8, dtype=torch.float32,
                          device="cpu", num_heads=4)
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    q1 = torch.randn(1, 4, 3, 4)
    keys, values = cache.write(1, q1, k1, v1)
    assert torch.equal(keys, k1) and torch.equal(values, v1)
    cache.advance(3)
    assert torch.equal(cache.last_query[1], q1[:, :, -1])
    k2, v2 = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    keys, values = cache.write(1, torch.randn(1, 4, 1, 4), k2, v2)
    assert torch.equal(keys, torch.cat([k1, k2], dim=2)) and torch.equal(values, torch.cat([v1, v2], dim=2))


def test_full_cache_matches_the_model(tiny_model):
    cache = full_cache(tiny_model, 12, batch_size=3)
    cfg = tiny_model.config
    assert cache.k.shape == (cfg.num_layers, 3, cfg.num_kv_heads, 12, cfg.head_dim)
    assert cache.k.dtype == tiny_model.dtype and cache.capacity == 12


def test_query_at_returns_the_queries_of_recent_positions(tiny_model):
    """The retrieval cache rebuilds from the query of a committed token, which need not be the
    last row of the latest forward (that row may be a rejected proposal)."""
    cache = full_cache(tiny_model, 64)
    with torch.no_grad():
        tiny_model(tokens(1, 10), None, cache)
        rows = {}
        real_write = cache.write

        def spy(layer, q, k, v):
            rows[layer] = q.clone()
            return real_write(layer, q, k, v)

        cache.write = spy
        tiny_model(tokens(1, 5), None, cache)  # positions 10..14
    for layer, q in rows.items():
        for i in range(5):
            assert torch.equal(cache.query_at(10 + i)[layer], q[:, :, i])
    assert torch.equal(cache.query_at(14), cache.last_query)
    with pytest.raises(ValueError, match="no recorded query for position 9"):
        cache.query_at(9)
    with pytest.raises(ValueError):
        cache.query_at(15)
