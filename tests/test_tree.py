"""Token trees (triforce/tree.py): the shape, the draft's sampling without replacement, and the exact
tree rule — its output distributed as plain sampling from the verifier (chi-square against the exact
law), a biased variant rejected, one child per node the chain's rule draw for draw, greedy the
verifier's argmax."""

from __future__ import annotations

import functools
import itertools
import zlib

import numpy as np
import pytest
import torch
from scipy import stats

from triforce.sampling import verify_tensor
from triforce.tree import Tree, TreeVerdict, propose_children, propose_children_batch, verify_tree, verify_tree_batch


# -- the shape -------------------------------------------------------------------------------------

def test_shapes_and_the_ancestor_mask():
    tree = Tree.from_widths((2, 3))
    assert tree.parents == (-1, -1, 0, 0, 0, 1, 1, 1)
    assert tree.depths == (1, 1, 2, 2, 2, 2, 2, 2) and tree.depth == 2
    assert tree.children[0] == (0, 1) and tree.children[2] == (5, 6, 7) and tree.children[3] == ()
    assert tree.path(6) == [1, 6]
    mask = tree.ancestors()
    assert mask[6].nonzero().flatten().tolist() == [1, 6]  # itself and its parent, not its cousins
    assert not mask[0, 1] and not mask[2, 5]
    chain = Tree.chain(5)
    assert chain == Tree.from_widths((1,) * 5) and chain.depth == 5
    assert torch.equal(chain.ancestors(), torch.ones(5, 5, dtype=torch.bool).tril())  # the causal mask
    with pytest.raises(ValueError, match="breadth-first"):
        Tree((-1, 0, -1))
    with pytest.raises(ValueError, match="not an earlier node"):
        Tree((-1, 1))
    with pytest.raises(ValueError, match="positive"):
        Tree.from_widths((2, 0))


# -- sampling without replacement ---------------------------------------------------------------

def test_children_are_drawn_without_replacement_in_sequential_order():
    """P(first = a, second = b) = q(a) q(b) / (1 - q(a)): the sequential draws' law."""
    q = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    counts: dict[tuple[int, int], int] = {}
    for _ in range(n):
        a, b = propose_children(q, 2, gen).tolist()
        counts[(a, b)] = counts.get((a, b), 0) + 1
    cells = [(a, b) for a in range(4) for b in range(4) if a != b]
    assert set(counts) <= set(cells)  # distinct, and never the token without mass
    law = np.array([float(q[a]) * float(q[b]) / (1 - float(q[a])) for a, b in cells])
    exact = law / law.sum() * n  # (sums to 1 up to the float32 q's rounding)
    observed = np.array([counts.get(c, 0) for c in cells])
    assert stats.chisquare(observed, exact).pvalue > 1e-4
    # fewer tokens with mass than asked: as many as there are; greedy: the most likely, in order
    assert sorted(propose_children(q, 9, gen).tolist()) == [0, 1, 2, 3]
    assert propose_children(q, 3, gen, greedy=True).tolist() == [0, 1, 2]


# -- the rule ------------------------------------------------------------------------------------

V = 4
LENGTH = 3  # tokens per generation compared with the exact law


@functools.lru_cache(maxsize=None)
def table(kind: str, prefix: tuple[int, ...]) -> torch.Tensor:
    """A fixed random distribution over V tokens for each prefix: the verifier's (`p`) and a draft's
    (`q`), far apart so that a biased rule is visible (sharpened draws, different seeds)."""
    seed = zlib.crc32(repr((kind, prefix)).encode())  # not hash(): a str's hash changes with the process
    logits = 2.5 * torch.randn(V, generator=torch.Generator().manual_seed(seed))
    return torch.softmax(logits, -1)


def speculate(tree: Tree, prefix: tuple[int, ...], gen: torch.Generator, *, residual: bool = True,
              greedy: bool = False) -> list[int]:
    """One round: the draft proposes the tree (each node's children without replacement from q at
    its path), the verifier's p at the root and at every node, the tree rule."""
    def dist(kind, path):
        d = table(kind, prefix + path)
        return torch.zeros(V).scatter_(0, d.argmax().reshape(1), 1.0) if greedy else d

    tokens = [0] * tree.size
    paths: list[tuple[int, ...]] = [()]  # row 0: the root; row i + 1: node i
    for row, kids in enumerate(tree.children):
        if row > 0:
            paths.append(paths[tree.parents[row - 1] + 1] + (tokens[row - 1],))
        drawn = propose_children(dist("q", paths[row]), len(kids), gen, greedy=greedy).tolist() if kids else []
        for child, token in zip(kids, drawn):
            tokens[child] = token
    # a node the draft could not fill (its q had fewer tokens with mass than children) has no token:
    # these tables have full support, so every node is filled
    q = torch.stack([dist("q", path) for path in paths])
    p = torch.stack([dist("p", path) for path in paths])
    verdict = verify_tree(tree, torch.tensor(tokens), q, p, gen, residual=residual)
    return verdict.emitted(tokens)


def generate(tree: Tree, seed: int, **kw) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < LENGTH:
        out += speculate(tree, tuple(out), gen, **kw)
    return tuple(out[:LENGTH])


def exact_law() -> dict[tuple[int, ...], float]:
    law = {}
    for seq in itertools.product(range(V), repeat=LENGTH):
        prob = 1.0
        for i in range(LENGTH):
            prob *= float(table("p", seq[:i])[seq[i]])
        law[seq] = prob
    return law


def chi_square(tree: Tree, runs: int, **kw) -> float:
    law = exact_law()
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(runs):
        seq = generate(tree, seed, **kw)
        counts[seq] = counts.get(seq, 0) + 1
    cells = sorted(law)
    exp = np.array([law[c] * runs for c in cells])
    obs = np.array([counts.get(c, 0) for c in cells], dtype=float)
    big = exp >= 5  # the rare cells merged into one
    o, e = np.append(obs[big], obs[~big].sum()), np.append(exp[big], exp[~big].sum())
    return float(stats.chi2.sf(((o - e) ** 2 / e).sum(), len(o) - 1))


@pytest.mark.parametrize("widths,runs", [((3, 2), 6_000), ((2, 1, 1), 3_000)], ids=["w3-2", "w2-1-1"])
def test_the_tree_rule_samples_the_verifiers_distribution(widths, runs):
    assert chi_square(Tree.from_widths(widths), runs) > 1e-4


def test_a_biased_tree_rule_is_rejected():
    """Sampling p itself after a rejection (not the residual): the published middle level's bug, in a tree."""
    assert chi_square(Tree.from_widths((3, 2)), 1_500, residual=False) < 1e-12


def test_one_child_per_node_is_the_chains_rule_draw_for_draw():
    chain = Tree.chain(4)
    for seed in range(300):
        setup = torch.Generator().manual_seed(10_000 + seed)
        q = torch.softmax(2 * torch.randn(5, 7, generator=setup), -1)
        p = torch.softmax(2 * torch.randn(5, 7, generator=setup), -1)
        tokens = torch.stack([torch.multinomial(q[i], 1, generator=setup)[0] for i in range(4)])
        n, token = verify_tensor(tokens, q[:4], p, torch.Generator().manual_seed(seed)).tolist()
        verdict = verify_tree(chain, tokens, q, p, torch.Generator().manual_seed(seed))
        assert (len(verdict.path), verdict.next_token) == (n, token), seed
        assert list(verdict.path) == list(range(n))


def test_greedy_follows_the_verifiers_argmax():
    """One-hot distributions: the accepted path is the verifier's greedy continuation, as far as the
    draft's w most likely tokens cover it, then its next argmax."""
    tree = Tree.from_widths((2, 2, 2))
    for seed in range(20):
        out = generate(tree, seed, greedy=True)
        expect: list[int] = []
        while len(expect) < LENGTH:
            expect.append(int(table("p", tuple(expect)).argmax()))
        assert out == tuple(expect)


# -- the rule on a batch (vectorised, no host synchronisation) -------------------------------------

def test_the_batch_rule_on_a_chain_is_the_chains_batch_rule_draw_for_draw():
    chain = Tree.chain(3)
    for seed in range(100):
        setup = torch.Generator().manual_seed(20_000 + seed)
        q = torch.softmax(2 * torch.randn(4, 4, 6, generator=setup), -1)
        p = torch.softmax(2 * torch.randn(4, 4, 6, generator=setup), -1)
        tokens = torch.multinomial(q[:, :3].reshape(-1, 6), 1, generator=setup).reshape(4, 3)
        expect = verify_tensor(tokens, q[:, :3], p, torch.Generator().manual_seed(seed)).tolist()
        verdicts = TreeVerdict.read(verify_tree_batch(chain, tokens, q, p, torch.Generator().manual_seed(seed)))
        assert [[len(v.path), v.next_token] for v in verdicts] == expect, seed
        assert all(list(v.path) == list(range(len(v.path))) for v in verdicts)


def test_the_batch_rule_decides_each_row_as_the_one_sequence_rule():
    """Greedy (one-hot p and q: the rule's coins cannot change its outcome): row b of a batch of
    different rows ends exactly where the one-sequence rule on row b ends, visits included."""
    tree = Tree((-1, -1, -1, 0, 0, 2, 3))  # widths that differ within a depth
    setup = torch.Generator().manual_seed(7)
    B, N, V = 6, tree.size, 5
    onehot = lambda t: torch.nn.functional.one_hot(t, V).float()
    q = onehot(torch.randint(V, (B, N + 1), generator=setup))
    p = onehot(torch.randint(V, (B, N + 1), generator=setup))
    tokens = torch.randint(V, (B, N), generator=setup)
    p[::2, 0] = onehot(tokens[::2, 0])  # every other row: its first child accepted at the root
    batch = TreeVerdict.read(verify_tree_batch(tree, tokens, q, p, torch.Generator().manual_seed(0)))
    for b in range(B):
        assert batch[b] == verify_tree(tree, tokens[b], q[b], p[b], torch.Generator().manual_seed(1)), b
    assert len({v.path for v in batch}) > 2  # the rows ended in different places


def test_children_of_a_batch_are_distinct_and_fill_every_place():
    q = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 1.0, 0.0]])
    drawn = propose_children_batch(q, 3, torch.Generator().manual_seed(0))
    assert drawn.shape == (2, 3)
    assert sorted(drawn[0].tolist()) == [0, 1, 2]  # distinct, from the support
    assert drawn[1].tolist() == [2, 2, 2]  # one token of mass: it, repeated in the places left
    assert propose_children_batch(q, 2, None, greedy=True).tolist()[1] == [2, 2]


# -- the verifier's forward over a tree -------------------------------------------------------------

@torch.inference_mode()
@pytest.mark.parametrize("cache_kind", ["full", "retrieval"])
def test_each_nodes_logits_are_those_of_its_paths_forward(cache_kind):
    """The model's one forward over a rooted tree (the tree mask over the new block, each node at
    its depth's position) gives every node the logits a plain causal forward of the prefix and that
    node's root-to-node path gives: no node sees a sibling, a cousin or its own descendants. Through
    a full cache (the top level) and a retrieval cache after its selection (a middle level)."""
    from triforce.cache.retrieval import RetrievalCache
    from triforce.cache.static import StaticKVCache
    from triforce.models.tiny import build_tiny
    from triforce.tree_round import rooted

    model = build_tiny({"hidden_size": 64, "num_heads": 4, "num_kv_heads": 2}, seed=0)
    cfg = model.config
    tree = rooted(Tree.from_widths((3, 2, 1)))
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, cfg.vocab_size, (1, 50), generator=g)
    nodes = torch.randint(0, cfg.vocab_size, (1, tree.size), generator=g)
    shape = dict(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                 num_heads=cfg.num_heads, capacity=128, dtype=model.dtype, device="cpu")

    def filled():
        full = StaticKVCache(**shape)
        model(prefix, None, full)
        if cache_kind == "full":
            return full
        middle = RetrievalCache(budget=32, chunk_size=8, **{k: v for k, v in shape.items() if k != "capacity"})
        middle.rebuild(full)
        return middle

    cache = filled()
    start = cache.seq_len
    offsets = torch.tensor([d - 1 for d in tree.depths])
    out = model(nodes, start + offsets, cache, num_logits=tree.size, tree=tree.ancestors())[0]
    for i in range(tree.size):
        ref = model(nodes[:, tree.path(i)], None, filled(), num_logits=1)[0, -1]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)


def test_a_tree_label_gives_its_widths_back():
    from triforce.tree import widths_of

    assert widths_of("4-2-1") == (4, 2, 1) and widths_of("3") == (3,)
    for bad in ("", "4-0-1", "two", "4--1"):
        with pytest.raises(ValueError, match="widths per depth"):
            widths_of(bad)
