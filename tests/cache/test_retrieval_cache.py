"""RetrievalCache: chunk selection (both scorers, GQA aggregation, sink chunk, recent window from the
partial tail chunk (retrieval) to the whole budget but the sink (StreamingLLM)) against a brute-force
reference; rebuild gathers; appended tokens attend exactly to the selected tokens plus themselves;
rollback down to (not below) the retrieved boundary."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from triforce.attention import sdpa_attention
from triforce.cache.retrieval import RetrievalCache, validate_retrieval
from triforce.cache.static import StaticKVCache
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer

SCORERS = ["mean", "bound"]


def cache(budget, chunk_size, scorer="mean", *, recent=0, layers=2, kv_heads=2, heads=4, head_dim=8, extra=16,
          batch=1):
    return RetrievalCache(budget=budget, chunk_size=chunk_size, scorer=scorer, recent=recent, extra_capacity=extra,
                          num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim, num_heads=heads,
                          dtype=torch.float32, device="cpu", batch_size=batch)




def reference_layout(n, budget, cs, recent):
    """(window start, chunks that may be retrieved, how many), spelled out: the window reaches back
    `recent` tokens and on to the chunk boundary below, unless sink + window would exceed the budget;
    the rest of the budget holds whole chunks lying between the sink chunk and the window."""
    start = n - recent
    while start % cs:
        start -= 1
    if cs + (n - start) > budget:
        start = n - (budget - cs)
    candidates = [c for c in range(1, n // cs) if (c + 1) * cs <= start]
    return start, candidates, (budget - cs - (n - start)) // cs


def reference_select(keys, query, budget, cs, scorer, recent=0):
    """Brute force, float64, one (layer, batch, KV head) at a time; also returns the score margin
    between the last chunk chosen and the best chunk left out (to skip float near-ties)."""
    L, B, H, n, D = keys.shape
    group = query.shape[2] // H
    if n <= budget:
        return [[[list(range(n)) for _ in range(H)] for _ in range(B)] for _ in range(L)], float("inf")
    start, candidates, retrieved = reference_layout(n, budget, cs, recent)
    kept = retrieved + 1  # with the sink chunk
    out, margin = [], float("inf")
    for layer in range(L):
        rows = []
        for b in range(B):
            heads = []
            for h in range(H):
                qs = [query[layer, b, h * group + j].double() for j in range(group)]  # the group of KV head h
                scores = {}
                for c in candidates:
                    K = keys[layer, b, h, c * cs:(c + 1) * cs].double()
                    if scorer == "mean":
                        scores[c] = sum(float(q @ K.mean(0)) for q in qs)
                    else:
                        bounds = [float(torch.maximum(q * K.amin(0), q * K.amax(0)).sum()) for q in qs]
                        for q, bound in zip(qs, bounds):  # an upper bound on every token's score
                            assert bound >= float((K @ q).max()) - 1e-9
                        scores[c] = max(bounds)
                ranked = sorted(candidates, key=lambda c: -scores[c])
                chosen = sorted(ranked[: kept - 1])
                if kept - 1 < len(ranked) and kept > 1:
                    margin = min(margin, scores[ranked[kept - 2]] - scores[ranked[kept - 1]])
                idx = [c * cs + i for c in [0] + chosen for i in range(cs)] + list(range(start, n))
                heads.append(idx)
            rows.append(heads)
        out.append(rows)
    return out, margin


def random_kv(n, *, layers=2, batch=1, kv_heads=2, heads=4, head_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(layers, batch, kv_heads, n, head_dim, generator=g)
    # chunk-level structure, so chunks really differ in relevance
    keys += 2 * torch.randn(layers, batch, kv_heads, n, head_dim, generator=g).cumsum(3) / n ** 0.5
    query = torch.randn(layers, batch, heads, head_dim, generator=g)
    return keys, query


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("n,budget,cs,kv_heads,heads", [
    (64, 16, 4, 2, 4),   # GQA, length a multiple of the chunk size
    (67, 16, 4, 2, 4),   # partial tail chunk of 3
    (101, 40, 8, 1, 3),  # MQA, tail of 5
    (90, 24, 8, 3, 3),   # MHA, tail of 2
    (50, 48, 8, 2, 4),   # budget almost the whole prompt
    (40, 8, 4, 2, 8),    # smallest budget, no tail: sink chunk + one chunk
    (33, 8, 4, 2, 8),  # sink chunk + tail only
    (30, 18, 8, 2, 4),  # tail of 6 leaves room for the sink chunk only
])
def test_select_matches_brute_force(scorer, n, budget, cs, kv_heads, heads):
    for seed in range(3):
        keys, query = random_kv(n, kv_heads=kv_heads, heads=heads, batch=2, seed=seed)
        rc = cache(budget, cs, scorer, kv_heads=kv_heads, heads=heads, batch=2)
        got = rc.select(keys, query)
        ref, margin = reference_select(keys, query, budget, cs, scorer)
        assert margin > 1e-4, "float near-tie in this draw: change the seed"
        assert got.tolist() == ref
        assert got.shape[-1] <= budget


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("n,budget,cs,recent", [
    (67, 24, 4, 1),    # window shorter than the tail chunk (3): the tail is kept whole
    (67, 24, 4, 5),    # window of 5 extended down to the chunk boundary (7 tokens)
    (67, 24, 4, 8),    # window of 8 extended to 11, 2 chunks retrieved
    (101, 40, 8, 17),  # MQA (below), tail of 5: window 21, 1 chunk retrieved
    (90, 48, 8, 24),   # window of 3 chunks + the tail of 2, 1 chunk retrieved
    (64, 24, 4, 19),   # no tail; window extended to 20 leaves no chunk: StreamingLLM
    (67, 24, 8, 15),   # extended to 19 it would exceed budget - cs = 16: clipped to 16
])
def test_hybrid_select_matches_brute_force(scorer, n, budget, cs, recent):
    kv_heads, heads = (1, 3) if n == 101 else (2, 4)
    for seed in range(3):
        keys, query = random_kv(n, kv_heads=kv_heads, heads=heads, batch=2, seed=seed)
        rc = cache(budget, cs, scorer, recent=recent, kv_heads=kv_heads, heads=heads, batch=2)
        got = rc.select(keys, query)
        ref, margin = reference_select(keys, query, budget, cs, scorer, recent)
        assert margin > 1e-4, "float near-tie in this draw: change the seed"
        assert got.tolist() == ref
        start, _, _ = reference_layout(n, budget, cs, recent)
        assert n - start >= recent and got.shape[-1] <= budget
        assert all(row[-(n - start):] == list(range(start, n)) for row in got.reshape(-1, got.shape[-1]).tolist())


@pytest.mark.parametrize("cs,budget", [(4, 8), (4, 13), (8, 40), (3, 10)])
def test_streaming_extreme_is_sink_plus_the_last_tokens_and_scores_nothing(cs, budget):
    """recent = budget - chunk_size is StreamingLLM of the same budget: the first chunk and the
    last budget - chunk_size tokens, whatever the keys. Keys between them are NaN: any scoring
    of them would make the selection depend on NaNs (topk) — none happens."""
    for n in range(budget + 1, budget + 3 * cs + 2):
        keys, query = random_kv(n, seed=n)
        keys[..., cs:n - (budget - cs), :] = float("nan")
        idx = cache(budget, cs, recent=budget - cs).select(keys, query)
        expect = list(range(cs)) + list(range(n - (budget - cs), n))
        assert idx.tolist() == [[[expect] * 2]] * 2


@pytest.mark.parametrize("recent", [0, 3, 10, 20])
def test_any_prompt_length_gives_a_well_formed_hybrid_selection(recent):
    cs, budget = 4, 24
    for n in range(budget + 1, budget + 6 * cs):
        keys, query = random_kv(n, seed=n)
        idx = cache(budget, cs, recent=recent).select(keys, query)
        start, _, retrieved = reference_layout(n, budget, cs, recent)
        assert idx.shape[-1] == cs * (1 + retrieved) + n - start <= budget
        assert n - start >= max(recent, n % cs)
        for row in idx.reshape(-1, idx.shape[-1]).tolist():
            assert row == sorted(set(row)) and row[:cs] == list(range(cs))
            body = row[cs:len(row) - (n - start)]
            assert all(body[i] % cs == 0 and body[i:i + cs] == list(range(body[i], body[i] + cs))
                       for i in range(0, len(body), cs))  # whole chunks, below the window
            assert not body or body[-1] < start


@pytest.mark.parametrize("recent", [-1, 21])
def test_recent_window_out_of_range_is_a_config_error(recent):
    with pytest.raises(ConfigError, match="recent window"):
        cache(24, 4, recent=recent)


@pytest.mark.parametrize("n", [1, 5, 15, 16])
def test_prompt_within_budget_keeps_everything(n):
    keys, query = random_kv(n)
    rc = cache(16, 4)
    assert rc.select(keys, query).tolist() == [[[list(range(n))] * 2]] * 2


@pytest.mark.parametrize("cs,budget", [(4, 8), (4, 12), (4, 16), (8, 24), (3, 10)])
def test_any_prompt_length_gives_a_well_formed_selection(cs, budget):
    for n in range(budget + 1, budget + 4 * cs + 3):
        keys, query = random_kv(n, seed=n)
        idx = cache(budget, cs).select(keys, query)
        n_full, tail = n // cs, n % cs
        assert idx.shape[-1] == (budget - tail) // cs * cs + tail <= budget
        for row in idx.reshape(-1, idx.shape[-1]).tolist():
            assert row == sorted(set(row)) and 0 <= row[0] and row[-1] < n
            assert row[:cs] == list(range(cs))  # sink chunk
            assert row[len(row) - tail:] == list(range(n_full * cs, n))  # partial tail chunk
            body = row[cs:len(row) - tail]
            assert all(body[i] % cs == 0 and body[i:i + cs] == list(range(body[i], body[i] + cs))
                       for i in range(0, len(body), cs))  # whole chunks


def planted(n, cs, *, head_dim=4, kv_heads=1):
    """Small-noise keys with nothing relevant anywhere (to plant chunks in)."""
    g = torch.Generator().manual_seed(0)
    return 0.01 * torch.randn(1, 1, kv_heads, n, head_dim, generator=g)


@pytest.mark.parametrize("scorer", SCORERS)
def test_sink_chunk_is_kept_even_when_it_scores_lowest(scorer):
    cs, n = 4, 30  # tail of 2
    keys = planted(n, cs)
    query = torch.tensor([1.0, 0, 0, 0]).reshape(1, 1, 1, 4)
    keys[..., :cs, 0] = -50.0  # the sink chunk points away from the query
    keys[..., n - 2:, 0] = -50.0  # so does the tail
    keys[..., 12:16, 0] = 5.0  # the one chunk that matters
    idx = cache(10, cs, scorer, layers=1, kv_heads=1, heads=1, head_dim=4).select(keys, query)
    assert idx[0, 0, 0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 28, 29]


def test_gqa_query_heads_are_grouped_by_consecutive_blocks():
    """Query heads 0,1 share KV head 0 and heads 2,3 share KV head 1 (as in attention). Chunk 3
    answers direction e0 and chunk 5 direction e1; KV head 0's group asks e0, KV head 1's asks e1.
    An interleaved grouping (head j -> KV head j % 2) would pick chunk 3 for both."""
    cs, n = 4, 32
    keys = planted(n, cs, kv_heads=2)
    keys[0, 0, :, 12:16, 0] = 3.0  # chunk 3 along e0 (a bit stronger)
    keys[0, 0, :, 20:24, 1] = 2.5  # chunk 5 along e1
    e0, e1 = torch.eye(4)[0], torch.eye(4)[1]
    query = torch.stack([e0, e0, e1, e1])[None, None]
    for scorer in SCORERS:
        idx = cache(8, cs, scorer, layers=1, kv_heads=2, heads=4, head_dim=4).select(keys, query)
        assert idx[0, 0, 0].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
        assert idx[0, 0, 1].tolist() == [0, 1, 2, 3, 20, 21, 22, 23]


def test_gqa_aggregation_sums_for_mean_and_takes_max_for_bound():
    """One KV head, two query heads qa = e0, qb = e1. Chunk X (all keys (10, -8)): scores 10 and
    -8, sum 2, max 10. Chunk Y (all keys (1, 1.5)): 1 and 1.5, sum 2.5, max 1.5. With constant
    keys the bound is exact, so `mean` (summed query) keeps Y and `bound` (group max) keeps X."""
    cs, n = 4, 24
    keys = torch.zeros(1, 1, 1, n, 2)
    keys[..., 8:12, :] = torch.tensor([10.0, -8.0])  # chunk 2 = X
    keys[..., 16:20, :] = torch.tensor([1.0, 1.5])  # chunk 4 = Y
    query = torch.eye(2)[None, None]
    mean = cache(8, cs, "mean", layers=1, kv_heads=1, heads=2, head_dim=2).select(keys, query)
    bound = cache(8, cs, "bound", layers=1, kv_heads=1, heads=2, head_dim=2).select(keys, query)
    assert mean[0, 0, 0].tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    assert bound[0, 0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]


def full_cache_with(keys, values, query, extra=8) -> StaticKVCache:
    L, B, H, n, D = keys.shape
    full = StaticKVCache(num_layers=L, num_kv_heads=H, head_dim=D, num_heads=query.shape[2],
                         capacity=n + extra, dtype=torch.float32, device="cpu", batch_size=B)
    full.k[:, :, :, :n] = keys
    full.v[:, :, :, :n] = values
    full.last_query.copy_(query)
    full.length = full.seq_len = n
    return full


@pytest.mark.parametrize("scorer", SCORERS)
def test_rebuild_gathers_the_selected_keys_and_values(scorer):
    keys, query = random_kv(45, batch=2, seed=7)
    values = torch.randn(keys.shape, generator=torch.Generator().manual_seed(8))
    full = full_cache_with(keys, values, query)
    rc = cache(16, 4, scorer, extra=8, batch=2)
    rc.rebuild(full)
    ref, _ = reference_select(keys, query, 16, 4, scorer)
    idx = torch.tensor(ref)
    m = idx.shape[-1]
    gather = idx[..., None].expand(*idx.shape, keys.shape[-1])
    assert (rc.length, rc.retrieved, rc.seq_len, rc.rebuilds) == (m, m, 45, 1)
    assert torch.equal(rc.k[:, :, :, :m], torch.gather(keys, 3, gather))
    assert torch.equal(rc.v[:, :, :, :m], torch.gather(values, 3, gather))
    # new tokens get absolute positions after the prompt
    assert rc.next_positions(3).tolist() == [[45, 46, 47]] * 2  # (B, T): each sequence its own positions
    # a second rebuild (longer sequence, appended tokens forgotten) starts over
    rc.advance(3)
    keys2, query2 = random_kv(53, batch=2, seed=9)
    rc.rebuild(full_cache_with(keys2, values[:, :, :, :1].expand_as(keys2).contiguous(), query2))
    ref2 = torch.tensor(reference_select(keys2, query2, 16, 4, scorer)[0])
    m2 = ref2.shape[-1]
    assert (rc.length, rc.retrieved, rc.seq_len, rc.rebuilds) == (m2, m2, 53, 2)
    assert torch.equal(rc.k[:, :, :, :m2], torch.gather(keys2, 3, ref2[..., None].expand(*ref2.shape, 8)))


# -- a model forward with the retrieval cache ---------------------------------------------------

def random_model(seed=0, layers=2, heads=4, kv_heads=2) -> Transformer:
    cfg = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=layers, num_heads=heads,
                      num_kv_heads=kv_heads, head_dim=8, max_position_embeddings=256)
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(4.0)  # sharp attention: which tokens are visible matters
    return m


class MaskedReference:
    """Attention over a FULL cache restricted, per layer and KV head, to the selected prompt tokens
    plus the causally visible new tokens; computed by hand in float64."""

    def __init__(self, selected: torch.Tensor, prompt_len: int, num_layers: int):
        self.selected, self.n, self.num_layers = selected, prompt_len, num_layers
        self.calls = 0
        self.restrict = True

    def __call__(self, q, k, v, *, mask, is_causal, scale):
        layer = self.calls % self.num_layers
        self.calls += 1
        B, Hq, T, D = q.shape
        H, S = k.shape[1], k.shape[2]
        allowed = torch.zeros(B, H, T, S, dtype=torch.bool)
        if self.restrict:
            allowed.scatter_(3, self.selected[layer][:, :, None, :].expand(B, H, T, -1), True)
        else:
            allowed[..., : self.n] = True
        new = S - self.n  # tokens after the prompt: those already appended, then this forward's T
        allowed[..., self.n:] = torch.ones(T, new, dtype=torch.bool).tril(new - T)
        allowed = allowed.repeat_interleave(Hq // H, dim=1)
        kk = k.double().repeat_interleave(Hq // H, dim=1)
        vv = v.double().repeat_interleave(Hq // H, dim=1)
        scores = (q.double() @ kk.transpose(-1, -2)) * scale
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
        return (weights @ vv).to(q.dtype).transpose(1, 2)  # (B, T, Hq, D), as every backend


# recent window: 0 (retrieval: sink chunk + 2 chunks + tail of 1 = 13 tokens), 5 (sink + 1 chunk
# + window of 5 = 13), 12 (StreamingLLM: sink + the last 12 = 16)
@pytest.mark.parametrize("recent,kept", [(0, 13), (5, 13), (12, 16)])
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_appended_tokens_attend_to_selected_tokens_and_rollback(scorer, kv_heads, recent, kept):
    m = random_model(seed=1, kv_heads=kv_heads)
    L = m.config.num_layers
    g = torch.Generator().manual_seed(2)
    n = 45  # not a multiple of chunk_size
    prompt = torch.randint(0, 48, (1, n), generator=g)
    new1, new2, alt = (torch.randint(0, 48, (1, t), generator=g) for t in (3, 1, 2))
    full = full_cache(m, n + 8)
    rc = RetrievalCache.for_model(m.config, budget=16, chunk_size=4, scorer=scorer, extra_capacity=8,
                                  dtype=torch.float32, device="cpu", recent=recent)
    with torch.inference_mode():
        m(prompt, None, full)
        rc.rebuild(full)
        selected = rc.select(full.k[:, :, :, :n], full.last_query)
        assert selected.shape[-1] == kept
        ref_attention = MaskedReference(selected, n, L)

        def reference(tokens, cache):
            m.attention = ref_attention  # the same weights, attention computed by hand
            try:
                return m(tokens, None, cache)
            finally:
                m.attention = sdpa_attention

        def both(tokens):
            return m(tokens, None, rc), reference(tokens, full)

        out, ref = both(new1)  # three appended tokens in one forward (causal among themselves)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        out, ref = both(new2)  # a later token sees the earlier appended ones
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        assert (rc.seq_len, rc.length, rc.retrieved) == (n + 4, kept + 4, kept)

        # sensitivity: unrestricted attention over the whole prompt gives different logits
        ref_attention.restrict = False
        full.crop(n + 3)
        unrestricted = reference(new2, full)
        assert (unrestricted - out).abs().max() > 1e-2
        ref_attention.restrict = True

        # roll back two appended tokens, continue differently
        rc.crop(n + 2)
        full.crop(n + 2)
        assert (rc.seq_len, rc.length) == (n + 2, kept + 2)
        out, ref = both(alt)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)

        # down to the retrieved boundary is fine, below it is not
        rc.crop(n)
        assert (rc.seq_len, rc.length) == (n, kept)
        with pytest.raises(ValueError, match="rebuild"):
            rc.crop(n - 1)
        assert (rc.seq_len, rc.length) == (n, kept)
        full.crop(n)
        out, ref = both(alt)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_reset_and_capacity():
    rc = cache(8, 4, extra=4)
    keys, query = random_kv(20)
    rc.rebuild(full_cache_with(keys, keys, query))
    assert rc.length == 8
    rc.next_positions(4)  # fills the extra capacity exactly
    with pytest.raises(ConfigError, match="capacity"):
        rc.next_positions(5)
    rc.reset()
    assert (rc.seq_len, rc.length, rc.retrieved) == (0, 0, 0)


@pytest.mark.parametrize("budget,chunk_size,scorer", [(8, 0, "mean"), (7, 4, "mean"), (16, 4, "dot")])
def test_invalid_settings_are_config_errors(budget, chunk_size, scorer):
    with pytest.raises(ConfigError):
        validate_retrieval(budget, chunk_size, scorer)
    with pytest.raises(ConfigError):
        cache(budget, chunk_size, scorer)


@pytest.mark.parametrize("scorer", SCORERS)
def test_sink_chunk_is_kept_when_only_one_chunk_fits(scorer):
    """budget = 2 * chunk_size (the smallest valid budget) with a partial tail: the selection
    must be the sink chunk plus the tail."""
    keys, query = random_kv(33, seed=3)
    idx = cache(8, 4, scorer).select(keys, query)
    assert idx[0, 0, 0].tolist() == [0, 1, 2, 3, 32]
