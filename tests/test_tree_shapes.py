"""Tree shapes from acceptance by rank (triforce/tree_shapes.py): the dynamic program finds the best
tree of every size (checked against every tree up to 7 nodes), a chain where only the first child is
ever accepted, and the size a cost curve favours; rank counts from the rule's visits."""

from __future__ import annotations

import pytest
import torch

from triforce.tree import Tree, verify_tree
from triforce.tree_shapes import RankCounts, best_for_cost, best_tree, expected_accepted


def all_trees(n: int):
    """Every rooted tree shape of n nodes with ordered children (as parent tuples, breadth-first)."""
    def forests(m: int):  # lists of child subtrees (nested lists) with m nodes in all
        if m == 0:
            yield []
            return
        for size in range(1, m + 1):
            for first in forests(size - 1):
                for rest in forests(m - size):
                    yield [first] + rest

    from triforce.tree_shapes import _breadth_first

    seen = set()
    for forest in forests(n):
        tree = _breadth_first(forest)
        if tree.parents not in seen:
            seen.add(tree.parents)
            yield tree


def test_expected_accepted_of_a_chain_and_a_star():
    p = [0.6, 0.2, 0.1]
    assert expected_accepted(Tree.chain(3), p) == pytest.approx(0.6 + 0.36 + 0.216)
    assert expected_accepted(Tree.from_widths((3,)), p) == pytest.approx(0.9)
    assert expected_accepted(Tree.from_widths((2, 1)), p) == pytest.approx(0.8 + 0.6 * 0.6 + 0.2 * 0.6)


@pytest.mark.parametrize("p", [[0.6, 0.2, 0.1], [0.3, 0.25, 0.2, 0.1], [0.9, 0.05]], ids=["steep", "flat", "sharp"])
def test_the_program_finds_the_best_tree_of_every_size(p):
    for n in range(1, 8):
        tree, value = best_tree(p, n)
        assert tree.size <= n
        assert value == pytest.approx(expected_accepted(tree, p))
        brute = max(expected_accepted(t, p) for m in range(1, n + 1) for t in all_trees(m))
        assert value == pytest.approx(brute), n


def test_only_the_first_child_accepted_gives_a_chain_and_depth_is_capped():
    tree, value = best_tree([0.8], 5)
    assert tree == Tree.chain(5) and value == pytest.approx(sum(0.8 ** d for d in range(1, 6)))
    capped, _ = best_tree([0.7, 0.2], 12, max_depth=2)
    assert capped.depth <= 2 and capped.size <= 12


def test_a_flat_cost_favours_the_largest_tree_and_a_steep_one_a_small_tree():
    p = [0.6, 0.2, 0.1]
    flat, _ = best_for_cost(p, lambda n: 1.0, 16)  # offloaded: one forward costs the same for any n
    assert flat.size == 16
    steep, _ = best_for_cost(p, lambda n: 1.0 + 0.5 * n, 16)  # every node costs half a step
    assert steep.size < 4


def test_rank_counts_estimate_acceptance_by_rank_from_the_rules_visits():
    """With p = q at every node the first child is always accepted; the counts say so."""
    tree = Tree.from_widths((3, 2))
    counts = RankCounts()
    gen = torch.Generator().manual_seed(0)
    for seed in range(50):
        dist = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(seed)), -1)
        q = p = dist.expand(tree.size + 1, -1)
        tokens = torch.multinomial(dist, tree.size, replacement=True, generator=gen)
        verdict = verify_tree(tree, tokens, q, p, gen)
        for children, rank in verdict.visits:
            counts.add(children, rank)
    assert counts.rank_accept()[0] == pytest.approx(1.0)
    assert counts.offered == [100, 100, 50]
