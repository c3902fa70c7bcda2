"""OffloadedKVCache (cache/offload.py): host memory + two staging buffers hold exactly what an
on-device full cache holds, through forwards, rollbacks and a layer-major prefill; retrieval from
its kept chunk statistics chooses and gathers what the on-device cache does; the layer-major
prefill moves each token's keys and values across the host link once."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.engine.conftest import random_model
from triforce.cache.offload import OffloadedKVCache
from triforce.cache.retrieval import SCORERS, RetrievalCache
from triforce.prefill import layer_major_prefill

LAYERS = 5  # > 2 staging buffers + on-chip layers: every forward streams


def model(kv_heads=2):
    return random_model(3, layers=LAYERS, heads=4, kv_heads=kv_heads, max_positions=256)


def caches(m, capacity, on_chip, chunk_size=4, scorer="mean"):
    full = full_cache(m, capacity)
    off = OffloadedKVCache.for_model(m.config, capacity, m.dtype, m.device, on_chip_layers=on_chip)
    off.serves(chunk_size, scorer)  # what a selection will score: the cache keeps its chunks' statistics
    return full, off


def offloaded_layer(off: OffloadedKVCache, layer: int, n: int):
    if layer < off.on_chip:
        return off.k[layer, :, :, :n], off.v[layer, :, :, :n]
    h = layer - off.on_chip
    return off.k_host[h, :, :, :n], off.v_host[h, :, :, :n]


def feed(m, cache, toks):
    with torch.inference_mode():
        return m(toks[None], None, cache)


@pytest.mark.parametrize("on_chip", [0, 2])
def test_forwards_and_rollbacks_match_the_device_cache(on_chip):
    m = model()
    toks = torch.randint(0, 64, (90,), generator=torch.Generator().manual_seed(1))
    full, off = caches(m, 100, on_chip)
    out_full, out_off = feed(m, full, toks[:40]), feed(m, off, toks[:40])
    torch.testing.assert_close(out_off, out_full)
    # speculative blocks, partly rolled back (rewritten tokens land in staged and host memory)
    for start, width, keep in [(40, 7, 3), (43, 5, 5), (48, 9, 0), (48, 6, 2), (50, 1, 1), (51, 13, 10)]:
        for c in (full, off):
            c.crop(start)
        a, b = feed(m, full, toks[start:start + width]), feed(m, off, toks[start:start + width])
        torch.testing.assert_close(b, a)
        for c in (full, off):
            c.crop(start + keep)
    n = full.length
    assert off.length == n
    for layer in range(LAYERS):
        k, v = offloaded_layer(off, layer, n)
        torch.testing.assert_close(k, full.k[layer, :, :, :n])
        torch.testing.assert_close(v, full.v[layer, :, :, :n])


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_retrieval_from_chunk_statistics_matches_the_device_cache(scorer, kv_heads):
    m = model(kv_heads)
    toks = torch.randint(0, 64, (83,), generator=torch.Generator().manual_seed(2))
    full, off = caches(m, 100, on_chip=1, chunk_size=4, scorer=scorer)
    feed(m, full, toks[:70]), feed(m, off, toks[:70])
    for c in (full, off):  # a rejected block, then other tokens over its slots: stale statistics
        c.crop(61)
    feed(m, full, toks[61:83]), feed(m, off, toks[61:83])
    for selector_budget in (16, 40):
        a = RetrievalCache.for_model(m.config, budget=selector_budget, chunk_size=4, scorer=scorer,
                                     extra_capacity=8, dtype=m.dtype, device=m.device)
        b = RetrievalCache.for_model(m.config, budget=selector_budget, chunk_size=4, scorer=scorer,
                                     extra_capacity=8, dtype=m.dtype, device=m.device)
        a.rebuild(full), b.rebuild(off)
        assert a.length == b.length
        torch.testing.assert_close(b.k[:, :, :, :b.length], a.k[:, :, :, :a.length])
        torch.testing.assert_close(b.v[:, :, :, :b.length], a.v[:, :, :, :a.length])


def test_retrieval_needs_tracked_statistics():
    m = model()
    off = OffloadedKVCache.for_model(m.config, 64, m.dtype, m.device)
    feed(m, off, torch.arange(40) % 64)
    rc = RetrievalCache.for_model(m.config, budget=16, chunk_size=4, scorer="mean", extra_capacity=8,
                                  dtype=m.dtype, device=m.device)
    with pytest.raises(RuntimeError, match=r"serves\(chunk_size, scorer\)"):
        rc.rebuild(off)


@pytest.mark.parametrize("chunk", [None, 16, 25])
def test_layer_major_prefill_equals_token_major_and_moves_each_token_once(chunk):
    m = model()
    toks = torch.randint(0, 64, (1, 77), generator=torch.Generator().manual_seed(3))
    full, off = caches(m, 90, on_chip=1)
    with torch.inference_mode():
        step = chunk or 77
        for s in range(0, 77, step):
            ref = m(toks[:, s:s + step], None, full)
        got = layer_major_prefill(m, toks, off, chunk)
    torch.testing.assert_close(got[:, -1], ref[:, -1], rtol=1e-4, atol=1e-4)
    assert (off.length, off.seq_len) == (77, 77)
    for layer in range(LAYERS):
        k, v = offloaded_layer(off, layer, 77)
        torch.testing.assert_close(k, full.k[layer, :, :, :77], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, full.v[layer, :, :, :77], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(off.last_query, full.last_query, rtol=1e-5, atol=1e-5)
    per_token = 2 * m.config.num_kv_heads * m.config.head_dim * 4 * (LAYERS - 1)
    assert off.bytes_d2h == 77 * per_token  # each token's keys and values go to host once
    assert off.bytes_h2d == 0  # and nothing comes back: the layer's prefix stays staged
    # a following forward streams every offloaded layer's prefix in, once
    feed(m, off, toks[0, :3])
    assert off.bytes_h2d == 77 * per_token
