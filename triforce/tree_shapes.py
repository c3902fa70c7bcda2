"""Tree shapes from measured acceptance: Sequoia's dynamic program (arXiv 2402.12374, §3.2).

A tree rule's acceptance is described by rank: `rank_accept[k]` is the probability that, at a node
the rule visits, its (k + 1)-th child in proposal order is the one accepted (the children are drawn
without replacement, so a later rank is a less likely token; Σ_k rank_accept[k] ≤ 1). Taken as the
same at every node (Sequoia's positional acceptance assumption), a tree's expected accepted tokens
are the sum over its nodes of the product of rank_accept along the node's path
(`expected_accepted`), and the best tree of at most n nodes (and depth) follows from a dynamic
program over (nodes left, next child rank, depth left) (`best_tree`). Which n is best depends on
the hardware: where a top-level forward costs the same for 1 token or 100 (offloading), the largest
tree that fits; on chip, the n that maximises tokens per second under the measured cost of a
forward of n + 1 tokens (`best_for_cost`).

`RankCounts` estimates rank_accept from the rounds a run made (tree_round.py counts, per visited
node, which rank was accepted and how many children it had)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

from triforce.tree import Tree


def expected_accepted(tree: Tree, rank_accept: Sequence[float]) -> float:
    """Expected accepted nodes of `tree` (the tokens a round emits: this + 1)."""
    reach = []
    rank_of = {}
    for kids in tree.children:
        for rank, child in enumerate(kids):
            rank_of[child] = rank
    for i, parent in enumerate(tree.parents):
        p = rank_accept[rank_of[i]] if rank_of[i] < len(rank_accept) else 0.0
        reach.append(p * (1.0 if parent < 0 else reach[parent]))
    return sum(reach)


def best_tree(rank_accept: Sequence[float], nodes: int, max_depth: int | None = None) -> tuple[Tree, float]:
    """The tree of at most `nodes` nodes (and `max_depth` levels) with the most expected accepted
    tokens under `rank_accept`, and that expectation. Children ranks beyond len(rank_accept) are never
    accepted and are not used."""
    p = tuple(float(x) for x in rank_accept)
    depth_cap = nodes if max_depth is None else min(max_depth, nodes)

    @functools.lru_cache(maxsize=None)
    def forest(m: int, k: int, d: int) -> tuple[float, tuple]:
        """Best value of the children of rank >= k of one node, using at most m nodes, each child's
        subtree at most d - 1 levels deep; with the choice: ((size of rank k's subtree), rest)."""
        if m <= 0 or d <= 0 or k >= len(p) or p[k] <= 0.0:
            return 0.0, ()
        best, choice = 0.0, ()  # no child of rank k (and so none of a later rank: ranks are contiguous)
        for size in range(1, m + 1):  # rank k's child with size - 1 nodes below it
            below, _ = forest(size - 1, 0, d - 1)
            rest, _ = forest(m - size, k + 1, d)
            value = p[k] * (1.0 + below) + rest
            if value > best + 1e-15:
                best, choice = value, (size,)
        return best, choice

    def build(m: int, k: int, d: int) -> list:
        """The children (each a list of its own children) of rank >= k that the program chose."""
        _, choice = forest(m, k, d)
        if not choice:
            return []
        size = choice[0]
        return [build(size - 1, 0, d - 1)] + build(m - size, k + 1, d)

    value, _ = forest(nodes, 0, depth_cap)
    return _breadth_first(build(nodes, 0, depth_cap)), value


def _breadth_first(children: list) -> Tree:
    """A tree given as nested child lists (the root's), numbered breadth-first."""
    parents: list[int] = []
    frontier = [(-1, children)]
    while frontier:
        nxt = []
        for parent, kids in frontier:
            for sub in kids:
                parents.append(parent)
                nxt.append((len(parents) - 1, sub))
        frontier = nxt
    return Tree(tuple(parents))


def best_for_cost(rank_accept: Sequence[float], cost: Callable[[int], float], max_nodes: int,
                  max_depth: int | None = None) -> tuple[Tree, float]:
    """The tree that maximises expected tokens per second, (1 + expected accepted) / cost(n), over
    n = 1..max_nodes nodes, where cost(n) is the seconds of a round that verifies n nodes (the
    proposer's forwards and the top's forward of n + 1 tokens); the tree and its tokens per second."""
    best: tuple[Tree, float] | None = None
    for n in range(1, max_nodes + 1):
        tree, value = best_tree(rank_accept, n, max_depth)
        rate = (1.0 + value) / cost(tree.size)
        if best is None or rate > best[1]:
            best = (tree, rate)
    assert best is not None
    return best


@dataclasses.dataclass
class RankCounts:
    """Per child rank: how often a visited node had a child of that rank, and how often the rule
    accepted it (tree_round.py adds each round's)."""
    offered: list[int] = dataclasses.field(default_factory=list)
    accepted: list[int] = dataclasses.field(default_factory=list)

    def add(self, children: int, accepted_rank: int | None) -> None:
        """One visited node with `children` children; the rank the rule accepted (None: none)."""
        while len(self.offered) < children:
            self.offered.append(0)
            self.accepted.append(0)
        for k in range(children):
            self.offered[k] += 1
        if accepted_rank is not None:
            self.accepted[accepted_rank] += 1

    def rank_accept(self) -> list[float]:
        """The estimated probability that a node's (k + 1)-th child is the one accepted."""
        return [a / o if o else 0.0 for a, o in zip(self.accepted, self.offered)]
