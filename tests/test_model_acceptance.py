"""scripts/model_acceptance.py's root acceptance, where the answer is known: a draft equal to the target
has its first child accepted every time, whatever the width; a draft whose tokens the target never
samples has none accepted; more children never accept less (on the same distributions, in expectation)."""

from __future__ import annotations

import torch

from tests.script_module import load_script


def test_a_roots_children_are_accepted_as_the_rule_says():
    script = load_script("scripts/model_acceptance.py")
    g = torch.Generator().manual_seed(0)
    p = torch.rand(6, 50, generator=g)
    p /= p.sum(-1, keepdim=True)
    for width in (1, 3, 8):
        assert script.root_acceptance(p, p, width, 4, g) == (1.0, [1.0] + [0.0] * (width - 1))
    half = torch.zeros(6, 50)
    half[:, :25], other = 1 / 25, torch.zeros(6, 50)
    other[:, 25:] = 1 / 25
    assert script.root_acceptance(half, other, 8, 4, g) == (0.0, [0.0] * 8)
    q = torch.rand(6, 50, generator=g) ** 4
    q /= q.sum(-1, keepdim=True)
    one, eight = (script.root_acceptance(p, q, w, 200, g)[0] for w in (1, 8))
    alpha = torch.minimum(p, q).sum(-1).mean().item()
    assert abs(one - alpha) < 0.05 and eight > one + 0.1


def test_the_best_tree_and_chain_under_a_cost():
    """A chain is a tree: where a round costs the same whatever it verifies, the best tree accepts at
    least the best chain's tokens; where every token verified costs a whole forward, one proposal wins."""
    script = load_script("scripts/model_acceptance.py")
    ranks, alpha = [0.5, 0.2, 0.1], 0.5
    chain, tree = script.best_plans(alpha, ranks, lambda tokens, depth: 1.0, 32, 6)
    assert tree[1] >= chain[1] and tree[2] >= chain[2] and chain[0] == "chain, γ 8"
    chain, tree = script.best_plans(alpha, ranks, lambda tokens, depth: float(tokens), 32, 6)
    assert chain[0] == "chain, γ 1" and tree[2] <= chain[2] + 1e-12
