"""Engine.reference_acceptance: the expected acceptance of each lower level along a given
continuation, from caches built exactly as generate() builds them."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.engine.conftest import perturbed, random_model
from triforce.cache.retrieval import RetrievalCache
from triforce.config import MethodConfig
from triforce.engine import Engine
from triforce.sampling import SamplingParams, probabilities

SAMPLING = SamplingParams(temperature=0.7, top_p=0.95)


@pytest.fixture(scope="module")
def setup():
    target = random_model(seed=30, kv_heads=2, scale=2.0)
    draft = perturbed(target, random_model(seed=31, kv_heads=2, scale=2.0), 0.3)
    g = torch.Generator().manual_seed(32)
    prompt, continuation = (torch.randint(0, 64, (t,), generator=g).tolist() for t in (97, 30))
    return target, draft, prompt, continuation


@torch.inference_mode()
def by_hand(model, prompt, continuation, method: MethodConfig):
    """The middle level's expected acceptance, independently: full cache, middle cache rebuilt from
    it after prompt[:-1], both run over prompt[-1:] + continuation[:-1]."""
    n, T = len(prompt), len(continuation)
    full = full_cache(model, n + T)
    model(torch.tensor([prompt]), None, full)
    full.crop(n - 1)
    middle = RetrievalCache.for_model(model.config, budget=method.budget, chunk_size=method.chunk_size,
                                      scorer=method.scorer, recent=method.recent_tokens(method.budget),
                                      extra_capacity=T, dtype=torch.float32, device="cpu")
    middle.rebuild(full)
    x = torch.tensor([[prompt[-1], *continuation[:-1]]])
    p = probabilities(model(x, None, full)[0], SAMPLING)
    q = probabilities(model(x, None, middle)[0], SAMPLING)
    return torch.minimum(p, q).sum(-1)


@pytest.mark.parametrize("middle", ["retrieval", "streaming", "hybrid"])
def test_middle_matches_an_independent_computation(setup, middle):
    target, _, prompt, continuation = setup
    method = MethodConfig(name="retrieval_spec", budget=32, chunk_size=4, middle_cache=middle)
    got = Engine(target, None, method, SAMPLING).reference_acceptance(prompt, continuation)
    assert list(got) == ["middle"]
    want = by_hand(target, prompt, continuation, method)
    torch.testing.assert_close(torch.tensor(got["middle"]), want, atol=1e-5, rtol=0)
    assert 0.2 < want.mean() < 0.98  # a budget of 32 of 97 tokens loses something


def test_every_lower_level_and_a_lossless_middle(setup):
    target, draft, prompt, continuation = setup
    engine = Engine(target, draft, dict(name="triforce", gamma=4, budget=200, draft_sink=2, draft_window=18), SAMPLING)
    got = engine.reference_acceptance(prompt, continuation)
    assert set(got) == {"draft", "middle"} and all(len(v) == len(continuation) for v in got.values())
    # a budget above the prompt keeps every token: the middle is the target itself
    assert min(got["middle"]) > 1 - 1e-5
    assert 0 < sum(got["draft"]) / len(continuation) < 0.95
    assert "levels" not in vars(engine)  # the caches were the generation's, released with it


def test_a_draft_window_smaller_than_the_continuation(setup):
    target, draft, prompt, continuation = setup
    engine = Engine(target, draft, dict(name="spec", gamma=3, draft_gamma=1, draft_sink=2, draft_window=16), SAMPLING)
    assert len(engine.reference_acceptance(prompt, continuation)["draft"]) == len(continuation)
