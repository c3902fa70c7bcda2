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


def widths_of(label: str) -> tuple[int, ...]:
    """A tree's widths per depth from its label as tables write it (MethodConfig.tree_label): "4-2-1"
    -> (4, 2, 1). ValueError where it is not widths of at least 1 joined by "-"."""
    try:
        widths = tuple(int(w) for w in label.split("-"))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(f"{label!r} is not a tree's widths per depth, each at least 1, as 4-2-1")
    return widths


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
    would give them (`propose_children_batch` on one row). Fewer than `width` where q has fewer
    tokens with mass (a one-hot q: one child)."""
    drawn = propose_children_batch(q[None], width, generator, greedy=greedy)[0]
    return drawn[: min(width, int((q > 0).sum()))]


def propose_children_batch(q: torch.Tensor, width: int, generator: torch.Generator | None, *,
                           greedy: bool = False) -> torch.Tensor:
    """`width` distinct tokens per row of q (R, V), drawn without replacement in the order sequential
    draws would give them (Gumbel-top-k: the w largest log q + Gumbel noise; a draw of one token is a
    sample of q, the chain's own draw); greedy: each row's w most likely. (R, width) on the device, no
    host synchronisation. A row with fewer tokens of mass than `width` repeats its last drawn token
    in the places left (the rule never accepts a token twice: it zeroes a rejected token's mass)."""
    if width == 1 and not greedy:  # one draw: the chain's own sample (the same draws from the generator)
        return sample(q, generator).reshape(-1, 1)
    if greedy:
        keys = torch.where(q > 0, q.float(), torch.full_like(q, float("-inf"), dtype=torch.float32))
    else:
        gumbel = -torch.empty_like(q, dtype=torch.float32).exponential_(generator=generator).log()
        keys = torch.where(q > 0, q.float().log() + gumbel, torch.full_like(gumbel, float("-inf")))
    values, drawn = torch.topk(keys, min(width, keys.shape[-1]), dim=-1)
    valid = values > float("-inf")  # a prefix of each row (topk sorts)
    last = drawn.gather(-1, (valid.sum(-1, keepdim=True) - 1).clamp_min(0))
    drawn = torch.where(valid, drawn, last)
    return torch.cat([drawn, last.expand(-1, width - drawn.shape[-1])], -1)


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

    @classmethod
    def read(cls, packed: torch.Tensor, nodes: torch.Tensor | None = None):
        """Each row's verdict from `verify_tree_batch`'s packed (B, 1 + 3 * depth) tensor: one
        read-back, the round's one synchronisation. With the proposed tokens `nodes` (B, N): read in
        the same copy, (verdicts, each row's tokens as a list)."""
        width = packed.shape[1]
        depth = (width - 1) // 3
        values = (packed if nodes is None else torch.cat([packed, nodes.to(packed.dtype)], 1)).tolist()
        verdicts = []
        for row in values:
            path, widths, ranks = row[1:1 + depth], row[1 + depth:1 + 2 * depth], row[1 + 2 * depth:width]
            visits = tuple((w, None if r < 0 else r) for w, r in zip(widths, ranks) if w > 0)
            verdicts.append(cls(tuple(i for i in path if i >= 0), row[0], visits))
        return verdicts if nodes is None else (verdicts, [row[width:] for row in values])


def verify_tree(tree: Tree, tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                generator: torch.Generator | None, *, residual: bool = True) -> TreeVerdict:
    """The exact tree rule (module docstring) for one sequence: tokens (N,) the nodes' tokens; q (N + 1, V):
    the draft's distribution the children of the root (row 0) and of node i (row i + 1) were drawn
    from; p (N + 1, V): the verifier's distributions at the root (row 0) and after each node (row
    i + 1). `verify_tree_batch` on one row (its draws: u (N,), then one sample)."""
    return TreeVerdict.read(verify_tree_batch(tree, tokens[None], q[None], p[None], generator, residual=residual))[0]


def verify_tree_batch(tree: Tree, tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                      generator: torch.Generator | None, *, residual: bool = True) -> torch.Tensor:
    """The exact tree rule on each row of a batch, vectorised over the rows and run on the device
    without a host synchronisation: tokens (B, N), q and p (B, N + 1, V) as `verify_tree`'s. The
    walk takes one step per depth (every row is at a node of that depth) and tries the children
    rank by rank, each row's coins its own; the draws are u (B, N), then one sample per row — for a
    chain (one child per node) exactly the chain's batch rule (`sampling.verify_tensor`), draw for draw.

    Returns int64 (B, 1 + 3 * depth), read by `TreeVerdict.read`: the emitted token; the accepted
    path (node indices, -1 past its end); at each depth the visited node's number of children (0:
    none visited there) and the rank accepted (-1: none). residual=False samples r unchanged after a
    rejection (the bias a tree version of the published middle level's bug would have): kept only so
    a test can show it fails."""
    B, N = tokens.shape
    u = torch.rand((B, N), generator=generator, device=p.device)
    final, walked = tree_walk(tree, tokens, q, p, u, residual=residual)
    token = sample(final, generator).reshape(B, 1).to(torch.int64)
    return torch.cat([token, walked], 1)


def tree_walk(tree: Tree, tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor, *,
              residual: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`verify_tree_batch`'s walk with its uniform draws u (B, N) given: it draws nothing and never
    synchronises with the host (a CUDA graph holds it, the draws made before each replay). Returns
    the distribution each row's emitted token is sampled from (B, V) and the packed path, visited
    widths and ranks accepted (B, 3 * depth)."""
    B, N = tokens.shape
    dev = p.device
    depth = tree.depth
    kid_table, widths = _child_table(tree, dev)
    tok = tokens.to(torch.int64)
    rows = torch.arange(B, device=dev)
    node = torch.zeros(B, dtype=torch.int64, device=dev)  # rooted numbering: 0 the root, i + 1 node i
    live = torch.ones(B, dtype=torch.bool, device=dev)
    final = p[:, 0].float()
    path = torch.full((B, depth), -1, dtype=torch.int64, device=dev)
    visit_w = torch.zeros((B, depth), dtype=torch.int64, device=dev)
    visit_r = torch.full((B, depth), -1, dtype=torch.int64, device=dev)
    for d in range(depth + 1):  # step d: every live row at a node of depth d (0: the root)
        r, g = p[rows, node].float(), q[rows, node].float()
        kids, nk = kid_table[node], widths[node]
        chosen = torch.full((B,), -1, dtype=torch.int64, device=dev)
        rank = torch.full((B,), -1, dtype=torch.int64, device=dev)
        width = _max_width_at(tree, d)
        for k in range(width):
            child = kids[:, k]
            trying = live & (nk > k) & (chosen < 0)
            at = child.clamp_min(0)[:, None]
            x = tok.gather(1, at)
            # u < r/g without the division (g(x) may be 0: greedy), in float32 as the chain's rule
            accept = trying & (u.gather(1, at)[:, 0] * g.gather(1, x)[:, 0] < r.gather(1, x)[:, 0])
            chosen = torch.where(accept, child, chosen)
            rank = torch.where(accept, k, rank)
            rejected = (trying & ~accept)[:, None]
            if residual:
                r = torch.where(rejected, _normalised(torch.clamp(r - g, min=0.0), fallback=r), r)
            if k + 1 < width:  # (after a depth's last child g is not read again: the next depth reloads q)
                zeroed = g.scatter(1, x, 0.0)
                g = torch.where(rejected, _normalised(zeroed, fallback=zeroed), g)
        # where a row's walk ends: at a leaf, the bonus token (normalised as the chain's rule does);
        # after every child rejected, a sample of the residual
        final = torch.where((live & (nk == 0))[:, None], _normalised(r, fallback=r), final)
        final = torch.where((live & (nk > 0) & (chosen < 0))[:, None], r, final)
        if d < depth:
            visited = live & (nk > 0)
            visit_w[:, d] = torch.where(visited, nk, 0)
            visit_r[:, d] = torch.where(visited, rank, -1)
            path[:, d] = torch.where(live, chosen, -1)
        live = live & (chosen >= 0)
        node = torch.where(chosen >= 0, chosen + 1, node)
    return final, torch.cat([path, visit_w, visit_r], 1)


@functools.lru_cache(maxsize=64)
def _child_table(tree: Tree, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N + 1, max width) each node's children (rooted numbering: row 0 the root), -1 padded, and
    (N + 1,) their numbers: what the vectorised walk gathers by each row's node."""
    width = max((len(c) for c in tree.children), default=0)
    table = [list(c) + [-1] * (width - len(c)) for c in tree.children]
    return (torch.tensor(table, dtype=torch.int64, device=device).reshape(tree.size + 1, width),
            torch.tensor([len(c) for c in tree.children], dtype=torch.int64, device=device))


def _max_width_at(tree: Tree, depth: int) -> int:
    """The most children a node of `depth` has (0: the root)."""
    if depth == 0:
        return len(tree.children[0])
    return max((len(tree.children[i + 1]) for i, d in enumerate(tree.depths) if d == depth), default=0)


def _normalised(dist: torch.Tensor, *, fallback: torch.Tensor) -> torch.Tensor:
    """Each row over its sum, a row without mass its fallback's (no host synchronisation)."""
    total = dist.sum(-1, keepdim=True)
    return torch.where(total > 0, dist / total.clamp_min(torch.finfo(dist.dtype).tiny), fallback)
