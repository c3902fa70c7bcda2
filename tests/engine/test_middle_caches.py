"""The hybrid middle cache's two extremes are the dedicated middle caches: with no recent window
(`recent=0, recent_min=0`) it is the retrieval cache, with no retrieved chunk (`recent=1`, or
`recent_min >= budget - chunk_size`) StreamingLLM of the same budget — same tokens, same
acceptance in every step, with sampling, on both executors. In between it is neither (else the
hybrid would be a relabelling)."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import perturbed, random_model
from triforce.config import MethodConfig
from triforce.engine import Engine

SAMPLING = dict(temperature=0.8, top_p=0.95)
BASE = dict(name="triforce", gamma=4, draft_gamma=2, budget=40, chunk_size=4, draft_sink=2, draft_window=18)


@pytest.fixture(scope="module")
def models():
    target = random_model(seed=20, kv_heads=2, scale=2.0)
    draft = perturbed(target, random_model(seed=21, kv_heads=2, scale=2.0), 0.3)
    prompt = torch.randint(0, 64, (151,), generator=torch.Generator().manual_seed(22)).tolist()
    return target, draft, prompt


def run(models, executor="eager", **method):
    target, draft, prompt = models
    engine = Engine(target, draft, {**BASE, **method}, SAMPLING, {"executor": executor})
    results = [engine.generate(prompt, 40, seed=s, stop_at_eos=False) for s in range(4)]
    steps = [[{k: v for k, v in r.items() if k != "ms"} for r in res.rounds] for res in results]
    return [res.tokens for res in results], steps


@pytest.mark.parametrize("executor", ["eager", "static"])
@pytest.mark.parametrize("rebuild", ["never", "every_n"])
@pytest.mark.parametrize("recent,recent_min,dedicated", [(0, 0, "retrieval"), (1, 0, "streaming"),
                                                         (0, 36, "streaming"), (0.3, 1000, "streaming")])
def test_hybrid_extremes_are_the_dedicated_caches(models, recent, recent_min, dedicated, rebuild, executor):
    policy = dict(rebuild=rebuild, rebuild_every=8)
    assert run(models, executor, middle_cache="hybrid", recent=recent, recent_min=recent_min, **policy) == \
        run(models, executor, middle_cache=dedicated, **policy)


def test_hybrid_in_between_is_neither_extreme(models):
    hybrid = run(models, middle_cache="hybrid", recent=0.5, recent_min=0)
    assert hybrid != run(models, middle_cache="retrieval")
    assert hybrid != run(models, middle_cache="streaming")


@pytest.mark.parametrize("middle,recent,recent_min,tokens", [
    ("retrieval", 0.5, 20, 0), ("streaming", 0.1, 5, 36),  # the dedicated caches ignore both
    ("hybrid", 0, 0, 0), ("hybrid", 0.5, 0, 18), ("hybrid", 1, 0, 36), ("hybrid", 0.25, 0, 9),
    ("hybrid", 0.25, 20, 20), ("hybrid", 0.75, 20, 27), ("hybrid", 0.5, 500, 36)])
def test_recent_window_tokens(middle, recent, recent_min, tokens):
    """The hybrid's window: the share `recent` of the budget beyond the sink chunk (budget 40, chunks
    of 4: 36 tokens), at least `recent_min` tokens, at most all 36."""
    method = MethodConfig(**{**BASE, "middle_cache": middle, "recent": recent, "recent_min": recent_min})
    assert method.recent_tokens(40) == tokens
