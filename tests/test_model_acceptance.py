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
        assert script.root_acceptance(p, p, width, 4, g) == 1.0
    half = torch.zeros(6, 50)
    half[:, :25], other = 1 / 25, torch.zeros(6, 50)
    other[:, 25:] = 1 / 25
    assert script.root_acceptance(half, other, 8, 4, g) == 0.0
    q = torch.rand(6, 50, generator=g) ** 4
    q /= q.sum(-1, keepdim=True)
    one, eight = (script.root_acceptance(p, q, w, 200, g) for w in (1, 8))
    alpha = torch.minimum(p, q).sum(-1).mean().item()
    assert abs(one - alpha) < 0.05 and eight > one + 0.1
