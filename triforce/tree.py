"""Token trees for speculation at the top level: the tree's shape, the draft's sampling of a node's
children, and the exact rule that verifies a whole tree against one forward of the verifier.

A tree of N proposed tokens hangs below the last accepted token (the root, not a node). Nodes are
numbered in breadth-first order; `parents[i]` is node i's parent (-1: a child of the root), and the
children of one parent are numbered in the order they were proposed. A chain of k tokens is the
tree whose every node has one child, `Tree.chain(k)`.

The draft proposes a node's children by **sampling without replacement** from its distribution q at
that node (`propose_children`: the Gumbel-top-k race draws w distinct tokens in the order sequential
draws would give). The verifier's distributions p at the root and at every node come from one
forward over the tree (each node attends to the cached prefix and its own ancestors:
`Tree.ancestors`). `verify_tree` then walks down from the root (the rule of Sequoia, arXiv
2402.12374, a recursive rejection sampling; docs/DESIGN.md §13):

    at a node, with target r = p(node) and proposal g = q(node), for each child x in order:
        accept x with probability min(1, r(x) / g(x))            -> descend into x
        else  r <- norm(max(r - g, 0)),  g <- g without x, renormalised
    no child accepted: emit a sample of r (the residual); a leaf reached: emit a sample of p(leaf)

Why the emitted tokens are distributed exactly as sampling from the verifier: at one node, the
first child was drawn from g, so one step is the chain's rule (accept, or fall back to the
residual r'); the rule then does not sample r' but tries the next child, drawn from g without the
rejected x. A rejection implies r(x) < g(x), so r'(x) = 0: for every rejected x the next step is
again a proposal g' (x removed) against a target r' — the same lemma, whatever x was — so the
token the node ends with is distributed as r' given the rejection, and as r overall. The children
below the accepted one were drawn from the draft given that child, independently of the
verifier's coins: the next depth is the same argument one token on. With one child per node the
rule *is* the chain's (`sampling.verify_tensor`), draw for draw: the uniform draws are made for all
N nodes first, in node order (one per proposal, as the chain draws one per proposal), then the one
sample of the emitted token.

Greedy decoding (one-hot r): a child is accepted iff it is the verifier's argmax, and the residual
stays that argmax; the draft's children are then its w most likely tokens (`propose_children`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from triforce.sampling import sample


@dataclasses.dataclass(frozen=True)
class Tree:
    """A tree's shape: `parents[i]` is node i's parent, -1 for the root's children; breadth-first
    (a parent before its children, depth by depth)."""

    parents: tuple[int, ...]

    def __post_init__(self) -> None:
        for i, parent in enumerate(self.parents):
            if not -1 <= parent < i:
                raise ValueError(f"node {i}'s parent {parent} is not an earlier node (or -1, the root)")
        if any(d > e for d, e in zip(self.depths, self.depths[1:])):
            raise ValueError("nodes must be numbered breadth-first (depth by depth)")

    @classmethod
    def chain(cls, k: int) -> "Tree":
        """k tokens one after another: the chain of ordinary speculation."""
        return cls(tuple(range(-1, k - 1)))

    @classmethod
    def from_widths(cls, widths: tuple[int, ...] | list[int]) -> "Tree":
        """Every node of depth d has widths[d] children (the root: widths[0]); (1,) * k is the chain."""
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"tree widths must be positive, one per depth (got {tuple(widths)})")
        parents, frontier = [], [-1]
        for width in widths:
            nxt = []
            for parent in frontier:
                for _ in range(width):
                    nxt.append(len(parents))
                    parents.append(parent)
            frontier = nxt
        return cls(tuple(parents))

    @property
    def size(self) -> int:
        return len(self.parents)

    @functools.cached_property
    def depths(self) -> tuple[int, ...]:
        """Each node's depth: 1 for the root's children (its position after the root's)."""
        out: list[int] = []
        for parent in self.parents:
            out.append(1 if parent < 0 else out[parent] + 1)
        return tuple(out)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    @functools.cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """children[0]: the root's; children[i + 1]: node i's (in proposal order)."""
        out: list[list[int]] = [[] for _ in range(self.size + 1)]
        for i, parent in enumerate(self.parents):
            out[parent + 1].append(i)
        return tuple(tuple(c) for c in out)

    def ancestors(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N, N) bool: [i, j] iff node j is node i or one of its ancestors — what node i attends to
        among the new tokens (the cached prefix it sees whole). A chain's is the causal mask."""
        mask = torch.zeros(self.size, self.size, dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            mask[i, i] = True
            if parent >= 0:
                mask[i] |= mask[parent]
        return mask.to(device)

    def path(self, node: int) -> list[int]:
        """The nodes from the root's child down to `node`."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


def method_tree(method) -> Tree | None:
    """The top level's tree of a method (config.MethodConfig: method.tree_parents, else method.tree's
    widths), or None for a chain."""
    if method.tree_parents:
        return Tree(tuple(method.tree_parents))
    return Tree.from_widths(method.tree) if method.tree else None


def candidate_trees(method) -> list[tuple[str, Tree]]:
    """(label, tree) of each tree of an adaptive method's method.trees (widths per depth)."""
    return [("-".join(map(str, widths)), Tree.from_widths(widths)) for widths in method.trees]


def propose_children(q: torch.Tensor, width: int, generator: torch.Generator | None, *,
                     greedy: bool = False) -> torch.Tensor:
    """`width` distinct tokens drawn without replacement from q (V,), in the order sequential draws
    would give them (Gumbel-top-k: the w largest log q + Gumbel noise; a draw of one token is a
    sample of q). Greedy: q's w most likely tokens. Fewer than `width` where q has fewer tokens with
    mass (a one-hot q: one child)."""
    support = int((q > 0).sum())
    width = min(width, support)
    if greedy:
        return torch.topk(q, width).indices
    if width == 1:  # one draw: the chain's own sample (the same draws from the generator)
        return sample(q, generator).reshape(1)
    gumbel = -torch.empty_like(q, dtype=torch.float32).exponential_(generator=generator).log()
    keys = torch.where(q > 0, q.float().log() + gumbel, torch.full_like(gumbel, float("-inf")))
    return torch.topk(keys, width).indices


@dataclasses.dataclass(frozen=True)
class TreeVerdict:
    """The accepted path (node indices, root's child first) and the token emitted after it; `visits`:
    for each node the rule visited that had children, (its children, the rank accepted or None) —
    what tree shapes are chosen from (tree_shapes.RankCounts)."""

    path: tuple[int, ...]
    next_token: int
    visits: tuple[tuple[int, int | None], ...] = ()

    def emitted(self, tokens: list[int] | tuple[int, ...]) -> list[int]:
        return [tokens[i] for i in self.path] + [self.next_token]


def verify_tree(tree: Tree, tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                generator: torch.Generator | None, *, residual: bool = True) -> TreeVerdict:
    """The exact tree rule (module docstring). tokens (N,): the nodes' tokens; q (N + 1, V): the
    draft's distribution the children of the root (row 0) and of node i (row i + 1) were drawn from;
    p (N + 1, V): the verifier's distributions at the root (row 0) and after each node (row i + 1).
    Draws u (N,) first, then one sample. residual=False samples r unchanged after a rejection (p's
    own row, the bias a tree version of the published middle level's bug would have): kept only so
    a test can show it fails."""
    u = torch.rand(tree.size, generator=generator, device=p.device)
    toks = tokens.tolist()
    path: list[int] = []
    visits: list[tuple[int, int | None]] = []
    row = 0  # the root
    while True:
        r = p[row].float()
        kids = tree.children[row]
        if not kids:  # a leaf: the bonus token, normalised as the chain's rule does it
            return TreeVerdict(tuple(path), int(sample(_normalised(r, fallback=r), generator)), tuple(visits))
        g = q[row].float().clone()
        chosen = None
        for child in kids:
            x = toks[child]
            # u < r/g without the division (g(x) may be 0: greedy), in float32 as the chain's rule
            if bool(u[child] * g[x] < r[x]):
                chosen = child
                break
            if residual:
                r = _normalised(torch.clamp(r - g, min=0.0), fallback=r)
            g[x] = 0.0
            g = _normalised(g, fallback=g)
        visits.append((len(kids), None if chosen is None else kids.index(chosen)))
        if chosen is None:
            return TreeVerdict(tuple(path), int(sample(r, generator)), tuple(visits))
        path.append(chosen)
        row = chosen + 1


def _normalised(dist: torch.Tensor, *, fallback: torch.Tensor) -> torch.Tensor:
    total = dist.sum()
    return dist / total if bool(total > 0) else fallback
