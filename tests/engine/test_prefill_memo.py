"""A prefill taken from the memo gives exactly what a fresh prefill gives (tokens, per-step
acceptance, with sampling, on both executors); the memo never serves another model's or another
prompt's cache, and keeps within its byte limit."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.engine.conftest import random_model
from triforce.engine import Engine, EngineOptions
from triforce.prefill_memo import PrefillMemo, weights_key

SAMPLING = dict(temperature=0.8)
METHOD = dict(name="triforce", gamma=4, draft_gamma=2, budget=24, chunk_size=4, middle_cache="hybrid", recent=0.45,
              recent_min=0, rebuild="every_n", rebuild_every=6, draft_sink=2, draft_window=18)


def prompt(n, seed=0):
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def steps(result):
    return result.tokens, [{k: v for k, v in r.items() if k != "ms"} for r in result.rounds]


@pytest.mark.parametrize("executor", ["eager", "static"])
def test_reused_prefill_is_exact(executor):
    target = random_model(seed=3, kv_heads=2)
    memo = PrefillMemo(max_bytes=1 << 30)
    hardware = {"executor": executor, "prefill_chunk": 16}
    fresh = Engine(target, target, METHOD, SAMPLING, hardware)
    memoized = Engine(target, target, METHOD, SAMPLING, hardware, EngineOptions(prefill_memo=memo))
    p = prompt(90)
    first = memoized.generate(p, 20, seed=1, stop_at_eos=False)
    assert first.metrics["prefill_reused"] == 0.0 and len(memo) == 1
    # another engine over the same target and prompt: another method, same memo
    other = Engine(target, target, {**METHOD, "middle_cache": "retrieval"}, SAMPLING, hardware,
                   EngineOptions(prefill_memo=memo))
    for seed in (1, 2):
        for engine, method in ((memoized, METHOD), (other, {**METHOD, "middle_cache": "retrieval"})):
            got = engine.generate(p, 20, seed=seed, stop_at_eos=False)
            assert got.metrics["prefill_reused"] == 1.0
            want = Engine(target, target, method, SAMPLING, hardware)
            assert steps(got) == steps(want.generate(p, 20, seed=seed, stop_at_eos=False))
    assert (memo.hits, memo.misses, len(memo)) == (4, 1, 1)
    assert fresh.generate(p, 20, seed=1, stop_at_eos=False).tokens == first.tokens


def test_memo_keys_weights_prompt_and_chunking():
    a, b = random_model(seed=3), random_model(seed=4)
    memo = PrefillMemo(max_bytes=1 << 30)

    def run(model, p, chunk=None):
        engine = Engine(model, None, {"name": "autoregressive"}, SAMPLING, {"prefill_chunk": chunk},
                        EngineOptions(prefill_memo=memo))
        return engine.generate(p, 3, seed=0, stop_at_eos=False).metrics["prefill_reused"]

    assert run(a, prompt(40)) == 0.0
    assert run(b, prompt(40)) == 0.0  # other weights, same config
    assert run(a, prompt(40, seed=1)) == 0.0  # another prompt
    assert run(a, prompt(40)[:39]) == 0.0  # a prefix is another prompt
    assert run(a, prompt(40), chunk=8) == 0.0  # chunked otherwise: other rounding
    assert run(a, prompt(40)) == 1.0 and run(b, prompt(40)) == 1.0
    assert weights_key(a) == weights_key(random_model(seed=3)) != weights_key(b)


def test_memo_keeps_within_its_byte_limit_least_recently_used_first():
    model = random_model(seed=3)
    one = full_cache(model, 40)
    model(torch.tensor([prompt(40)]), None, one)
    size = one.snapshot().nbytes
    memo = PrefillMemo(max_bytes=2 * size)
    for key in "abc":
        memo.put(key, one.snapshot())
        if key == "b":
            assert memo.get("a") is not None  # a is now the most recently used
    assert len(memo) == 2 and memo.get("b") is None and memo.get("a") is not None
    memo.resize(size)  # the least recently used (c) goes
    assert len(memo) == 1 and memo.get("a") is not None and memo.get("c") is None
    small = PrefillMemo(max_bytes=size - 1)
    small.put("x", one.snapshot())  # larger than the whole memo: not kept, no error
    assert len(small) == 0


def test_restore_refuses_a_cache_of_another_shape():
    model = random_model(seed=3)
    full = full_cache(model, 40)
    model(torch.tensor([prompt(40)]), None, full)
    snap = full.snapshot()
    with pytest.raises(ValueError, match="empty cache"):
        full.restore(snap)  # not empty
    other = full_cache(random_model(seed=3, kv_heads=2), 40)
    with pytest.raises(ValueError, match="shape"):
        other.restore(snap)
