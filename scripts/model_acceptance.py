"""Acceptance at the benchmarks' controlled acceptance, modelled on the CPU: chains against wide trees.

    python scripts/model_acceptance.py                                   # 8B shape and its draft, s = 1 and 0.1
    python scripts/model_acceptance.py --shape llama2-7b --scales 0.03 --widths 2,4,8

The benchmarks measure speed with random weights whose output heads are scaled by s (docs/DESIGN.md
§7). A random model's final hidden state has RMS 1 after its norm, and its output head's rows are
N(0, 0.02²): its logits over the vocabulary are close to independent Gaussians of standard deviation
0.02 · sqrt(hidden) · s, and the target's and the draft's are independent of each other. This script
draws such logits for the target and draft shapes, applies the benchmarks' sampling transform
(temperature 0.6, top-p 0.9) and runs the project's own rules on them: the chain's acceptance per
token α (a chain of γ accepts 1 + α + … + α^γ tokens a forward in expectation) and, for a root of
w children drawn without replacement, the probability the tree rule accepts one of them
(triforce.tree.verify_tree_batch). It predicts the measured chains well (8B shape: α = 0.148 at s = 1,
γ 3 accepting 1.17 a forward where the H100 measured 1.166; 0.80 at s = 0.1, γ 3 2.96 against 2.94):
a tree's shape can be sized here before a GPU run measures its cost (docs/PERFORMANCE.md, session 14).
Acceptance only: the speed also needs each round's cost, which only the GPU measures.
"""

from __future__ import annotations

import argparse

import torch

from triforce.bench.shapes import DRAFT_OF, SHAPES
from triforce.config import SamplingParams
from triforce.sampling import probabilities
from triforce.tree import Tree, TreeVerdict, propose_children_batch, verify_tree_batch
from triforce.tree_shapes import RankCounts, best_tree

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)  # the benchmarks' (experiments/*_benchmark.py)
INIT_STD = 0.02  # triforce.bench.shapes.random_model's weights


def distributions(contexts: int, hidden: int, vocab: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(contexts, vocab) sampling distributions of a random model's output head scaled by `scale`."""
    logits = torch.randn(contexts, vocab, generator=generator) * (INIT_STD * hidden ** 0.5 * scale)
    return probabilities(logits, SAMPLING)


def root_acceptance(p: torch.Tensor, q: torch.Tensor, width: int, draws: int,
                    generator: torch.Generator) -> tuple[float, list[float]]:
    """P(the tree rule accepts one of `width` children of the root drawn from q without replacement),
    over the rows of p and q (the target's and the draft's distributions at the root), `draws` each;
    and the acceptance by child rank those rounds measured (tree_shapes.RankCounts.rank_accept)."""
    tree, (rows, vocab) = Tree.from_widths([width]), p.shape
    # the rule reads q and p after every node: the leaves' rows are never used, the root's repeated
    qq, pp = q[:, None].expand(rows, width + 1, vocab), p[:, None].expand(rows, width + 1, vocab)
    counts = RankCounts()
    for _ in range(draws):
        nodes = propose_children_batch(q, width, generator)
        for verdict in TreeVerdict.read(verify_tree_batch(tree, nodes, qq, pp, generator)):
            for children, rank in verdict.visits:
                counts.add(children, rank)
    ranks = counts.rank_accept()
    return sum(ranks), ranks


def best_plans(alpha: float, ranks: list[float], cost, max_nodes: int, max_depth: int, gammas=range(1, 9)):
    """The best chain and the best tree (Sequoia's program over `ranks`, the same at every node) under
    cost(tokens a row verified, depth) in seconds a round: each (label, accepted a forward, tokens/s a row)."""
    chains = [(f"chain, γ {g}", sum(alpha ** k for k in range(g + 1)), g) for g in gammas]
    chain = max(((label, a, a / cost(g + 1, g)) for label, a, g in chains), key=lambda c: c[2])
    tree = None
    for n in range(1, max_nodes + 1):
        for depth in range(1, min(max_depth, n) + 1):
            shape, value = best_tree(ranks, n, depth)
            rate = (1 + value) / cost(shape.size + 1, shape.depth)
            if tree is None or rate > tree[2]:
                widths = [shape.depths.count(d) for d in range(1, shape.depth + 1)]
                tree = (f"tree {'-'.join(map(str, widths))} ({shape.size} nodes)", 1 + value, rate)
    return chain, tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(DRAFT_OF))
    ap.add_argument("--scales", default="1,0.1", help="output-head scales s, comma-separated")
    ap.add_argument("--widths", default="2,4,8,16", help="root widths of the trees, comma-separated")
    ap.add_argument("--gammas", default="3,6", help="chain lengths, comma-separated")
    ap.add_argument("--contexts", type=int, default=32, help="independent (target, draft) distribution pairs")
    ap.add_argument("--draws", type=int, default=16, help="tree draws per pair")
    ap.add_argument("--seed", type=int, default=0)
    # a round's cost, for the best chain and tree under it (defaults: the 8B shape at 32K, B = 8, one H100,
    # docs/PERFORMANCE.md sessions 12-13: the step 17.1 ms; a verify 0.9 % of it more a token a row;
    # a chain round's other work 2.3 ms; each depth of a tree beyond the first ~1.7 ms then)
    ap.add_argument("--step-ms", type=float, default=17.1)
    ap.add_argument("--slope", type=float, default=0.009)
    ap.add_argument("--round-ms", type=float, default=2.3)
    ap.add_argument("--depth-ms", type=float, default=1.7)
    ap.add_argument("--max-nodes", type=int, default=32)
    ap.add_argument("--max-depth", type=int, default=6)
    args = ap.parse_args()
    target, draft = SHAPES[args.shape], SHAPES[DRAFT_OF[args.shape]]
    vocab = min(target.vocab_size, draft.vocab_size)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"{args.shape} (hidden {target.hidden_size}) and its draft (hidden {draft.hidden_size}), vocabulary {vocab}; "
          f"temperature {SAMPLING.temperature}, top-p {SAMPLING.top_p}; {args.contexts} contexts x {args.draws} draws")
    by_scale: dict[float, tuple[float, list[float]]] = {}  # per s: alpha, the acceptance by child rank
    print("| s | plan | tokens a row verified | accepted a top-level forward (modelled) |")
    print("|---|---|---|---|")
    for scale in (float(s) for s in args.scales.split(",")):
        p = distributions(args.contexts, target.hidden_size, vocab, scale, generator)
        q = distributions(args.contexts, draft.hidden_size, vocab, scale, generator)
        alpha = torch.minimum(p, q).sum(-1).mean().item()
        for gamma in (int(g) for g in args.gammas.split(",")):
            print(f"| {scale:g} | chain, γ {gamma} (α = {alpha:.3f}) | {gamma + 1} | "
                  f"{sum(alpha ** k for k in range(gamma + 1)):.2f} |")
        ranks: list[float] = []
        for width in (int(w) for w in args.widths.split(",")):
            a, measured = root_acceptance(p, q, width, args.draws, generator)
            ranks = measured if len(measured) > len(ranks) else ranks
            print(f"| {scale:g} | tree, root of {width} | {width + 1} | {1 + a:.2f} |", flush=True)
        by_scale[scale] = (alpha, ranks)
    print(f"\nUnder a round's cost of {args.round_ms} ms + {args.step_ms} ms x (1 + {args.slope} x "
          f"(tokens a row - 1)) + {args.depth_ms} ms a depth beyond the first (modelled, not measured):")
    print("| s | acceptance by child rank (the widest root's) | best chain | best tree | tree / chain |")
    print("|---|---|---|---|---|")

    def cost(tokens: int, depth: int) -> float:
        return args.round_ms + args.depth_ms * max(depth - 1, 0) + args.step_ms * (1 + args.slope * (tokens - 1))

    for scale, (alpha, ranks) in by_scale.items():
        chain, tree = best_plans(alpha, ranks, cost, args.max_nodes, args.max_depth)
        print(f"| {scale:g} | {', '.join(f'{r:.3f}' for r in ranks[:6])}{', ...' if len(ranks) > 6 else ''} | "
              f"{chain[0]}: {chain[1]:.2f} a forward | {tree[0]}: {tree[1]:.2f} a forward | {tree[2] / chain[2]:.3f} |")


if __name__ == "__main__":
    main()
