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
is the chain, token for token, for a seed (one sequence or a batch: the children of a depth are one
draw over the rows, the rule one vectorised pass, as the chain draws).

Both executors (the static one keeps a captured forward per block of the tree); one sequence or a
batch (one forward for the batch, the finished rows frozen; an offloaded cache: a forward per row).
The draws and the rule run on the device; a round reads back once, its verdicts (then the caches keep
each row's path).
"""

from __future__ import annotations

import torch

from triforce.inputs import device_index
from triforce.sampling import probabilities
from triforce.tree import Tree, TreeVerdict, propose_children_batch
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
        self._constants: dict[tuple, torch.Tensor | None] = {}
        self._logits: torch.Tensor | None = None  # greedy: (B, N + 1, V) the level below's logits, reused

    def _constant(self, key: tuple, make) -> torch.Tensor | None:
        """What the tree's shape decides on the device (an index tensor, a block's mask), made once by
        `make()`: a copy from the host, or a comparison read back, waits for the device — never
        inside a round's forwards."""
        if key not in self._constants:
            self._constants[key] = make()
        return self._constants[key]

    def run(self, active: list[bool]) -> list[list[int]]:
        gen, tree = self.gen, self.tree
        below, top = gen.chain[-2], gen.chain[-1]
        base = gen.lengths  # row b's root is tokens[b, base_b - 1]: emitted, not yet seen by the top
        roots = device_index([n - 1 for n in base], gen.tokens.device)[:, None]  # (no synchronisation)
        rows = [b for b in range(gen.B) if active[b]]
        greedy = gen.engine.sampling.greedy
        # the forwards' sampling transform inside them, as a chain's forwards have it (greedy: the
        # level below's logits, whose most likely tokens are the children)
        transform = not greedy
        # the proposals: the root's distribution from the level below (it feeds what it has not seen)
        root = self._root(below, base, rows, transform)  # (B, V): q, or (greedy) logits
        V = root.shape[-1]
        # the rule's buffers, filled as the tree grows: the nodes, and q (the sampling distribution)
        # after each node the level below ran (a leaf's: unused); a node's children are drawn from its
        # q (greedy: the most likely by its logits, kept for that)
        rule = gen.executor.tree_rule(tree, gen.B, V, residual=top.residual)
        nodes, q = rule.tokens, rule.q
        if greedy and (self._logits is None or self._logits.shape[-1] != V):
            self._logits = torch.zeros(gen.B, self.full.size, V, device=root.device)
        depths = self.full.depths  # node j of the rooted tree (0: the root) at depth depths[j] - 1
        for depth in range(tree.depth):
            first = depths.index(depth + 1)  # the rooted tree's nodes of this depth: first..stop-1
            stop = depths.index(depth + 2) if depth + 2 in depths else self.full.size
            # the distributions after this depth's nodes (the root's, then one forward of the level
            # below a depth); greedy: their logits, transformed here as the forward returned them
            block = root[:, None] if not depth else self._forward(below, nodes, first, stop, roots, rows, transform)
            if greedy:
                q[:, first:stop] = probabilities(block, gen.engine.sampling, ctx=gen.ctx)
                self._logits[:, first:stop] = block
            else:
                q[:, first:stop] = block
            self._children(self._logits if greedy else q, nodes, first, stop, greedy)
        # the top: the root and every node in one forward
        for b in rows:  # (the top holds the committed prefix but its newest token, the root)
            cache = top.cache.row(b)
            if cache.seq_len > base[b] - 1:
                cache.crop(base[b] - 1)
        p = self._forward(top, nodes, 0, self.full.size, roots, rows, True)  # (B, N + 1, V) probabilities
        # the rule on every row at once (a frozen row's verdict unused, as the chain's batch rule
        # draws for every row), on the device; its verdicts read back once
        packed = rule.run(p)
        gen.plan_ahead(active)  # while the verification runs
        verdicts, proposed = TreeVerdict.read(packed, nodes)  # the round's one read-back
        emitted: list[list[int]] = [[] for _ in range(gen.B)]
        name = below.name
        kept_top, kept_below = {}, {}
        for b in rows:
            verdict = verdicts[b]
            tokens = verdict.emitted(proposed[b])
            for children, rank in verdict.visits:
                self.ranks.add(children, rank)
            kept_top[b] = [0] + [j + 1 for j in verdict.path]
            # the level below keeps the accepted nodes it was fed (all but the deepest), as a chain's
            # round leaves its proposer; it feeds the rest of the accepted tokens next round
            kept_below[b] = [j for j in verdict.path if j < self.fed]
            gen.rows[b].n = base[b] + len(tokens)
            gen.stats.verified(name, b, tree.depth, len(verdict.path))
            gen.planner.tree_verified(name, top.name, b, verdict.visits)
            emitted[b] = tokens
        # every row's path kept at once per cache (one index copy and one gather per tensor)
        top.cache.keep_paths(kept_top, self.full.size)
        below.cache.keep_paths(kept_below, self.fed)
        # the emitted tokens into each row's place: one copy to the device, without a synchronisation
        place = [(b, base[b] + i, t) for b in rows for i, t in enumerate(emitted[b])]
        if place:
            at = device_index([x for triple in zip(*place) for x in triple], gen.tokens.device).view(3, -1)
            gen.tokens[at[0], at[1]] = at[2]
        return emitted

    def metrics(self) -> dict[str, float]:
        """tree/rank_accept_<k>: the estimated probability that a visited node's k-th child (from 1,
        in proposal order) is the one accepted — what tree_shapes.best_tree takes."""
        return {f"tree/rank_accept_{k + 1}": value for k, value in enumerate(self.ranks.rank_accept())}

    def _children(self, scores: torch.Tensor, nodes: torch.Tensor, first: int, stop: int, greedy: bool) -> None:
        """Draw the children of the rooted tree's nodes first..stop-1 (one depth; 0 = the root) for
        every row from scores[:, j]: node j's sampling distribution q, or (greedy) its logits, whose
        most likely come first — one draw over the rows and the depth's nodes per number of children."""
        kids = {j: self.full.children[j + 1] for j in range(first, stop) if self.full.children[j + 1]}
        for width in sorted({len(k) for k in kids.values()}):
            parents = [j for j in kids if len(kids[j]) == width]
            if parents == list(range(parents[0], parents[-1] + 1)):  # (breadth-first: mostly a run of nodes)
                rows = scores[:, parents[0]:parents[-1] + 1]
            else:  # (indexing by a list would copy it to the device and wait)
                rows = scores.index_select(1, self._constant(("parents", first, width), lambda: torch.tensor(
                    parents, device=scores.device)))
            rows = rows.reshape(-1, scores.shape[-1])
            if greedy:
                rows = rows.softmax(-1)
            drawn = propose_children_batch(rows, width, self.gen.generator, greedy=greedy)
            places = self._constant(("places", first, width), lambda: torch.tensor(
                [[k - 1 for k in kids[j]] for j in parents], device=nodes.device))
            nodes[:, places] = drawn.reshape(nodes.shape[0], len(parents), width)

    def _root(self, level, base: list[int], rows: list[int], transform: bool) -> torch.Tensor:
        """Level's logits (transform: probabilities) after each active row's root (B, V): a forward
        of the tokens it has not seen, as wide as the row with the most (the others rolled back to
        feed as many, as a chain's step does: `feed_groups`); a row that cannot roll back gets a
        forward of its own width."""
        gen = self.gen
        active = [b in rows for b in range(gen.B)]
        out = None
        for T, group in gen.feed_groups(level.cache, level.cache.rows_of("seq_len"), active):
            ids = torch.stack([gen.tokens[b, max(base[b] - T, 0):][:T] for b in range(gen.B)])
            logits = self._run(level, ids, None, group, num_logits=1, phase=level.name, transform=transform)[:, -1]
            gen.stats.forward_of(level.name, group)
            out = logits if out is None else torch.where(
                device_index(group, logits.device).bool()[:, None], logits, out)
        return out

    def _run(self, level, ids: torch.Tensor, positions, group: list[bool], *, phase: str,
             tree: torch.Tensor | None = None, num_logits: int | None = None, first: int = 0,
             transform: bool = False) -> torch.Tensor:
        """One forward of `level` over ids (B, T) for the rows `group` marks (float32 logits, (B, T', V);
        transform: their sampling transform, inside the forward), through the executor's (batched
        where the cache serves a batch, else row by row). positions: None (the cache's next), or
        offsets from each row's root (the block's first slot holds the rooted tree's node `first`)."""
        gen = self.gen
        offsets = None if positions is None else positions - first
        # (a static executor keeps one forward per block of the tree: this names it)
        key = None if positions is None else (self.tree.parents, first, ids.shape[1])
        return gen.executor.logits(level, ids, group, num_logits=num_logits, offsets=offsets, tree=tree,
                                   shape_key=key, phase=phase, transform=transform).float()

    def _forward(self, level, nodes: torch.Tensor, first: int, stop: int, roots: torch.Tensor,
                 rows: list[int], transform: bool) -> torch.Tensor:
        """Level's logits (transform: probabilities) after the rooted tree's nodes first..stop-1
        (their KV written after what the level's cache holds, the nodes before them already there),
        every active row; (B, T, V). roots (B, 1): each row's root's index in the token buffer."""
        gen = self.gen
        ids = torch.cat([gen.tokens.gather(1, roots), nodes], 1)[:, first:stop]
        mask = self._constant(("mask", first, stop), lambda: _block_mask(self.ancestors, first, stop))
        offsets = self._constant(("offsets", first), lambda: torch.tensor(
            [d - 1 for d in self.full.depths[first:stop]], device=nodes.device))
        phase = "verify" if level is gen.chain[-1] else level.name
        group = [b in rows for b in range(gen.B)]
        out = self._run(level, ids, offsets, group, tree=mask, first=first, phase=phase, transform=transform)
        gen.stats.forward_of(level.name, group)
        return out
