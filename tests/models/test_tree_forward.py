"""A token tree in one forward (triforce/tree.py, the full cache's tree mask): each node's logits are
the model's after the prefix and that node's path, alone; keeping the accepted path leaves the cache
a chain of those tokens would have left; a batch's rows each get the tree after their own prefix."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.engine.conftest import random_model, shape_fields
from triforce.cache.streaming import StreamingCache
from triforce.tree import Tree

PROMPT = 20
TREE = Tree.from_widths((2, 2, 1))  # parents (-1, -1, 0, 0, 1, 1, 2, 3, 4, 5)


def plain_logits(model, ids: list[int]) -> torch.Tensor:
    """The last token's logits after `ids`, one plain forward over a fresh cache."""
    cache = full_cache(model, 64)
    return model(torch.tensor([ids]), None, cache)[0, -1]


def tree_forward(model, cache, tokens: list[int], start: int) -> torch.Tensor:
    positions = torch.tensor([start + d - 1 for d in TREE.depths])
    return model(torch.tensor([tokens]), positions, cache, tree=TREE.ancestors())[0]


@pytest.mark.parametrize("shape", ["llama", "qwen"])
@torch.inference_mode()
def test_each_nodes_logits_are_its_paths(shape):
    model = random_model(5, kv_heads=2, **shape_fields(shape, hidden=32, heads=4))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 64, (PROMPT,), generator=gen).tolist()
    tokens = torch.randint(0, 64, (TREE.size,), generator=gen).tolist()
    cache = full_cache(model, 64)
    model(torch.tensor([prompt]), None, cache)
    logits = tree_forward(model, cache, tokens, PROMPT)
    for node in range(TREE.size):
        path = [tokens[i] for i in TREE.path(node)]
        torch.testing.assert_close(logits[node], plain_logits(model, prompt + path), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_keeping_the_accepted_path_leaves_the_chains_cache():
    model = random_model(6, kv_heads=2)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 64, (PROMPT,), generator=gen).tolist()
    tokens = torch.randint(0, 64, (TREE.size,), generator=gen).tolist()
    cache = full_cache(model, 64)
    model(torch.tensor([prompt]), None, cache)
    tree_forward(model, cache, tokens, PROMPT)
    path = TREE.path(9)  # [1, 5, 9]: the second child, its second child, its one child
    cache.keep_path(path, TREE.size)
    accepted = [tokens[i] for i in path]
    chain = full_cache(model, 64)
    model(torch.tensor([prompt + accepted]), None, chain)
    n = PROMPT + len(path)
    assert cache.length == cache.seq_len == n
    torch.testing.assert_close(cache.k[:, :, :, :n], chain.k[:, :, :, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.v[:, :, :, :n], chain.v[:, :, :, :n], atol=1e-5, rtol=1e-5)
    # the retrieval middle level reads the query of the last accepted token: it moved with it
    torch.testing.assert_close(cache.query_at(n - 1), chain.query_at(n - 1), atol=1e-5, rtol=1e-5)
    # and the next token sees exactly the chain's context
    nxt = torch.tensor([[7]])
    torch.testing.assert_close(model(nxt, None, cache)[0, -1], model(nxt, None, chain)[0, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not all among the last 2 slots"):
        cache.keep_path([0, 2], 2)


@torch.inference_mode()
def test_a_batch_gets_the_tree_after_each_rows_prefix():
    model = random_model(7, kv_heads=2)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (PROMPT, PROMPT - 6)]
    tokens = torch.randint(0, 64, (2, TREE.size), generator=gen)
    cache = full_cache(model, 64, batch_size=2)
    for b, prompt in enumerate(prompts):  # ragged prefixes, one row at a time
        model(torch.tensor([prompt]), None, cache.row(b))
    positions = torch.tensor([[len(p) + d - 1 for d in TREE.depths] for p in prompts])
    logits = model(tokens, positions, cache, tree=TREE.ancestors())
    for b, prompt in enumerate(prompts):
        for node in (0, 4, 9):
            path = [int(tokens[b, i]) for i in TREE.path(node)]
            torch.testing.assert_close(logits[b, node], plain_logits(model, prompt + path), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["full", "streaming"])
@torch.inference_mode()
def test_keeping_every_rows_path_at_once_is_keeping_them_row_by_row(kind):
    """The batch cache's `keep_paths` (one gather per tensor) leaves exactly what `row(b).keep_path`
    leaves row by row: keys, values, recorded queries, lengths; a row not named is untouched, an
    empty path drops the whole block."""
    model = random_model(8, kv_heads=2)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (n,), generator=gen).tolist() for n in (PROMPT, PROMPT - 6, PROMPT - 3)]
    tokens = torch.randint(0, 64, (3, TREE.size), generator=gen)

    def tree_written():
        if kind == "full":
            cache = full_cache(model, 64, batch_size=3)
        else:  # a window wider than what is written: its slots are a full cache's, with its own type
            cache = StreamingCache.for_model(model, sink=4, window=60, batch_size=3)
        for b, prompt in enumerate(prompts):
            model(torch.tensor([prompt]), None, cache.row(b))
        positions = torch.tensor([[len(p) + d - 1 for d in TREE.depths] for p in prompts])
        model(tokens, positions, cache, tree=TREE.ancestors())
        return cache

    paths = {0: TREE.path(9), 1: []}  # row 2 not named
    one_by_one, at_once = tree_written(), tree_written()
    for b, path in paths.items():
        one_by_one.row(b).keep_path(path, TREE.size)
    untouched = at_once.k[:, 2].clone()
    at_once.keep_paths(paths, TREE.size)
    for name in ("length", "seq_len", "query_rows", "rows_written"):
        assert at_once.rows_of(name) == one_by_one.rows_of(name), name
    assert at_once.rows_of("length")[:2] == [PROMPT + 3, PROMPT - 6]
    torch.testing.assert_close(at_once.k, one_by_one.k, atol=0, rtol=0)
    torch.testing.assert_close(at_once.v, one_by_one.v, atol=0, rtol=0)
    torch.testing.assert_close(at_once.recent_queries, one_by_one.recent_queries, atol=0, rtol=0)
    torch.testing.assert_close(at_once.k[:, 2], untouched, atol=0, rtol=0)
    n = PROMPT + 3
    torch.testing.assert_close(at_once.row(0).query_at(n - 1), one_by_one.row(0).query_at(n - 1), atol=0, rtol=0)
    with pytest.raises(ValueError, match="row 1: nodes \\[0, 2\\] are not all among the last 2 slots"):
        at_once.keep_paths({1: [0, 2]}, 2)
