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
from triforce.tree import Tree, propose_children_batch, verify_tree_batch

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)  # the benchmarks' (experiments/*_benchmark.py)
INIT_STD = 0.02  # triforce.bench.shapes.random_model's weights


def distributions(contexts: int, hidden: int, vocab: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(contexts, vocab) sampling distributions of a random model's output head scaled by `scale`."""
    logits = torch.randn(contexts, vocab, generator=generator) * (INIT_STD * hidden ** 0.5 * scale)
    return probabilities(logits, SAMPLING)


def root_acceptance(p: torch.Tensor, q: torch.Tensor, width: int, draws: int, generator: torch.Generator) -> float:
    """P(the tree rule accepts one of `width` children of the root drawn from q without replacement),
    over the rows of p and q (the target's and the draft's distributions at the root), `draws` each."""
    tree, (rows, vocab) = Tree.from_widths([width]), p.shape
    # the rule reads q and p after every node: the leaves' rows are never used, the root's repeated
    qq, pp = q[:, None].expand(rows, width + 1, vocab), p[:, None].expand(rows, width + 1, vocab)
    accepted = 0.0
    for _ in range(draws):
        nodes = propose_children_batch(q, width, generator)
        packed = verify_tree_batch(tree, nodes, qq, pp, generator)
        accepted += (packed[:, 1] >= 0).float().sum().item()  # the path's first node: -1 where none
    return accepted / (draws * rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(DRAFT_OF))
    ap.add_argument("--scales", default="1,0.1", help="output-head scales s, comma-separated")
    ap.add_argument("--widths", default="2,4,8,16", help="root widths of the trees, comma-separated")
    ap.add_argument("--gammas", default="3,6", help="chain lengths, comma-separated")
    ap.add_argument("--contexts", type=int, default=32, help="independent (target, draft) distribution pairs")
    ap.add_argument("--draws", type=int, default=16, help="tree draws per pair")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    target, draft = SHAPES[args.shape], SHAPES[DRAFT_OF[args.shape]]
    vocab = min(target.vocab_size, draft.vocab_size)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"{args.shape} (hidden {target.hidden_size}) and its draft (hidden {draft.hidden_size}), vocabulary {vocab}; "
          f"temperature {SAMPLING.temperature}, top-p {SAMPLING.top_p}; {args.contexts} contexts x {args.draws} draws")
    print("| s | plan | tokens a row verified | accepted a top-level forward (modelled) |")
    print("|---|---|---|---|")
    for scale in (float(s) for s in args.scales.split(",")):
        p = distributions(args.contexts, target.hidden_size, vocab, scale, generator)
        q = distributions(args.contexts, draft.hidden_size, vocab, scale, generator)
        alpha = torch.minimum(p, q).sum(-1).mean().item()
        for gamma in (int(g) for g in args.gammas.split(",")):
            print(f"| {scale:g} | chain, γ {gamma} (α = {alpha:.3f}) | {gamma + 1} | "
                  f"{sum(alpha ** k for k in range(gamma + 1)):.2f} |")
        for width in (int(w) for w in args.widths.split(",")):
            a = root_acceptance(p, q, width, args.draws, generator)
            print(f"| {scale:g} | tree, root of {width} | {width + 1} | {1 + a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
