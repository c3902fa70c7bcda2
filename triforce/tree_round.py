"""One top-level round over a token tree (method.tree; triforce/tree.py, docs/DESIGN.md §13).

The level below the top proposes the tree depth by depth: its forward after the last committed
token (the root) gives the root's distribution, the root's children are drawn from it without
replacement; each further depth is one forward of the level over the nodes of the depth before
(each attends to the committed prefix and its own ancestors), whose distributions give their
children. The top level then scores the root and every node in one forward with the tree mask, the
tree rule picks the accepted path and the token after it, and the top's cache keeps the path only
(`StaticKVCache.keep_path`: what a chain of those tokens would have left). The level below keeps the
accepted nodes it ran (all but the deepest) the same way and feeds the rest next round, as a chain's
round leaves its proposer.

Where a forward's block is causal anyway (every node of a chain; a depth of one node that sees all
the nodes before it), it runs without a tree mask, exactly the chain's forward: a tree of width 1
is the chain, token for token, for one sequence and a seed.

Eager executor only (a captured graph per tree shape is not built yet); one sequence or a batch (one
forward for the batch, the finished rows frozen; an offloaded cache: a forward per row).
"""

from __future__ import annotations

import torch

from triforce.sampling import probabilities
from triforce.tree import Tree, propose_children, verify_tree
from triforce.tree_shapes import RankCounts


def rooted(tree: Tree) -> Tree:
    """The tree with the root token as node 0 (what the top level's forward feeds)."""
    return Tree((-1,) + tuple(p + 1 for p in tree.parents))


def _block_mask(ancestors: torch.Tensor, first: int, stop: int) -> torch.Tensor | None:
    """Rows first..stop-1 of a tree's ancestor mask over its nodes 0..stop-1: what a forward of
    those nodes sees among the tree's slots; None where that is what a causal block sees (every
    earlier node and itself)."""
    block = ancestors[first:stop, :stop]
    causal = torch.ones(stop - first, stop, dtype=torch.bool, device=block.device).tril(first)
    return None if torch.equal(block, causal) else block


class TreeRound:
    """A generation's tree rounds: `run(active)` is one top-level step of every active row;
    `metrics()` the acceptance by child rank they measured."""

    def __init__(self, gen, tree: Tree):
        self.gen, self.tree = gen, tree
        self.full = rooted(tree)
        self.ancestors = self.full.ancestors(gen.tokens.device)
        self.fed = sum(d < tree.depth for d in tree.depths)  # nodes the level below runs (not the deepest)
        self.ranks = RankCounts()  # which child rank the rule accepted, over the generation's rounds

    def run(self, active: list[bool]) -> list[list[int]]:
        gen, tree = self.gen, self.tree
        below, top = gen.chain[-2], gen.chain[-1]
        base = gen.lengths  # row b's root is tokens[b, base_b - 1]: emitted, not yet seen by the top
        rows = [b for b in range(gen.B) if active[b]]
        greedy = gen.engine.sampling.greedy
        # the proposals: the root's distribution from the level below (it feeds what it has not seen)
        root = self._root(below, base, rows)  # (B, V) logits
        V = root.shape[-1]
        # logits and q (the sampling distribution) after each node the level below ran (a leaf's: unused);
        # a node's children are drawn from its q (greedy: the most likely by its logits)
        logits = torch.zeros(gen.B, self.full.size, V, device=root.device)
        logits[:, 0] = root
        q = torch.full_like(logits, 1.0 / V)
        nodes = torch.zeros(gen.B, tree.size, dtype=torch.int64, device=gen.tokens.device)
        depths = self.full.depths  # node j of the rooted tree (0: the root) at depth depths[j] - 1
        for depth in range(tree.depth):
            first = depths.index(depth + 1)  # the rooted tree's nodes of this depth: first..stop-1
            stop = depths.index(depth + 2) if depth + 2 in depths else self.full.size
            if depth:  # the distributions after this depth's nodes: one forward of the level below
                logits[:, first:stop] = self._forward(below, nodes, first, stop, base, rows)
            q[:, first:stop] = probabilities(logits[:, first:stop], gen.engine.sampling, ctx=gen.ctx)
            for j in range(first, stop):
                self._children(logits if greedy else q, nodes, j, rows, greedy)
        # the top: the root and every node in one forward
        for b in rows:  # (the top holds the committed prefix but its newest token, the root)
            cache = top.cache.row(b)
            if cache.seq_len > base[b] - 1:
                cache.crop(base[b] - 1)
        p = probabilities(self._forward(top, nodes, 0, self.full.size, base, rows), gen.engine.sampling,
                          ctx=gen.ctx)  # (B, N + 1, V)
        emitted: list[list[int]] = [[] for _ in range(gen.B)]
        name = below.name
        for b in rows:  # row by row, each its draws (u over the nodes, then one sample)
            verdict = verify_tree(tree, nodes[b], q[b], p[b], gen.generator, residual=top.residual)
            tokens = verdict.emitted(nodes[b].tolist())
            for children, rank in verdict.visits:
                self.ranks.add(children, rank)
            top.cache.row(b).keep_path([0] + [j + 1 for j in verdict.path], self.full.size)
            # the level below keeps the accepted nodes it was fed (all but the deepest), as a chain's
            # round leaves its proposer; it feeds the rest of the accepted tokens next round
            below.cache.row(b).keep_path([j for j in verdict.path if j < self.fed], self.fed)
            gen.tokens[b, base[b]:base[b] + len(tokens)] = torch.tensor(tokens, device=gen.tokens.device)
            gen.rows[b].n = base[b] + len(tokens)
            gen.stats.verified(name, b, tree.depth, len(verdict.path))
            gen.planner.tree_verified(name, top.name, b, verdict.visits)
            emitted[b] = tokens
        return emitted

    def metrics(self) -> dict[str, float]:
        """tree/rank_accept_<k>: the estimated probability that a visited node's k-th child (from 1,
        in proposal order) is the one accepted — what tree_shapes.best_tree takes."""
        return {f"tree/rank_accept_{k + 1}": value for k, value in enumerate(self.ranks.rank_accept())}

    def _children(self, scores: torch.Tensor, nodes: torch.Tensor, j: int, rows: list[int], greedy: bool) -> None:
        """Draw node j's children (rooted numbering; 0 = the root) for every active row from
        scores[b, j]: its sampling distribution q, or (greedy) its logits, whose most likely come first."""
        kids = self.full.children[j + 1]
        if not kids:
            return
        gen = self.gen
        for b in rows:
            row = scores[b, j].softmax(-1) if greedy else scores[b, j]
            drawn = propose_children(row, len(kids), gen.generator, greedy=greedy)
            # (a q with fewer tokens of mass than children: the rest repeat the last; a repeated
            # child is never accepted twice: the rule zeroes a rejected token's proposal mass)
            drawn = torch.cat([drawn, drawn[-1:].expand(len(kids) - len(drawn))])
            nodes[b, [k - 1 for k in kids]] = drawn

    def _root(self, level, base: list[int], rows: list[int]) -> torch.Tensor:
        """Level's logits after each active row's root: a forward of the tokens it has not seen, one
        per count of unseen tokens (B, V)."""
        gen = self.gen
        out = torch.zeros(gen.B, level.model.output_vocab, device=gen.tokens.device)
        unseen = {b: base[b] - level.cache.row(b).seq_len for b in rows}
        for T in sorted(set(unseen.values()), reverse=True):
            group = [b for b in rows if unseen[b] == T]
            ids = torch.stack([gen.tokens[b, max(base[b] - T, 0):][:T] for b in range(gen.B)])
            with gen.stats.timed(level.name, key=(level.name, T)):
                logits = self._run(level, ids, None, group, num_logits=1)
            out[group] = logits[group, -1]
            gen.stats.forward_of(level.name, [b in group for b in range(gen.B)])
        return out

    def _run(self, level, ids: torch.Tensor, positions, group: list[int], *, tree: torch.Tensor | None = None,
             num_logits: int | None = None, first: int = 0) -> torch.Tensor:
        """One forward of `level` over ids (B, T) for the rows of `group` (float32 logits, (B, T', V)),
        through the executor's (batched where the cache serves a batch, else row by row). positions:
        None (the cache's next), or offsets from each row's root (the block's first slot holds the
        rooted tree's node `first`)."""
        gen = self.gen
        rows = [b in group for b in range(gen.B)]
        offsets = None if positions is None else positions - first
        # (a static executor keeps one forward per block of the tree: this names it)
        key = None if positions is None else (self.tree.parents, first, ids.shape[1])
        return gen.executor.logits(level, ids, rows, num_logits=num_logits, offsets=offsets, tree=tree,
                                   shape_key=key).float()

    def _forward(self, level, nodes: torch.Tensor, first: int, stop: int, base: list[int],
                 rows: list[int]) -> torch.Tensor:
        """Level's logits after the rooted tree's nodes first..stop-1 (their KV written after what the
        level's cache holds, the nodes before them already there), every active row; (B, T, V)."""
        gen = self.gen
        T = stop - first
        ids = torch.cat([gen.tokens.gather(1, torch.tensor([[n - 1] for n in base], device=nodes.device)),
                         nodes], 1)[:, first:stop]
        mask = _block_mask(self.ancestors, first, stop)
        offsets = torch.tensor([d - 1 for d in self.full.depths[first:stop]], device=nodes.device)
        phase = "verify" if level is gen.chain[-1] else level.name
        with gen.stats.timed(phase, key=(level.name, T)):
            out = self._run(level, ids, offsets, rows, tree=mask, first=first)
        gen.stats.forward_of(level.name, [b in rows for b in range(gen.B)])
        return out
