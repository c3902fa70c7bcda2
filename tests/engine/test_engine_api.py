"""The public surface of Engine.generate: metrics, per-step records, and no caches held afterwards."""

from __future__ import annotations

import pytest
import torch

from triforce import Engine
from triforce.errors import ConfigError, PromptTooLongError
from triforce.models import tiny

METHODS = [("autoregressive", {}), ("spec", {}), ("retrieval_spec", {"budget": 32}), ("triforce", {"budget": 32})]


@pytest.fixture(scope="module")
def model():
    return tiny.build_tiny()


@pytest.mark.parametrize("name,extra", METHODS)
def test_metrics_rounds_and_released_caches(model, name, extra):
    engine = Engine(model, model, {"name": name, "gamma": 4, **extra}, {"temperature": 0.6})
    result = engine.generate(list(range(100)), 12, seed=1, stop_at_eos=False)
    assert len(result.tokens) == 12
    m = result.metrics
    for key in ("prefill_s", "ms_per_token", "tokens_per_s", "mean_accepted_len", "forwards/top", "new_tokens"):
        assert key in m
    assert m["mean_accepted_len"] == pytest.approx(sum(r["emitted"] for r in result.rounds) / m["forwards/top"])
    assert sum(r["emitted"] for r in result.rounds) >= 12  # the last step may overshoot; tokens are cut
    assert len(result.rounds) == m["forwards/top"]
    for level in ("draft", "middle"):
        if f"accept_rate/{level}" in m:
            assert sum(r.get(f"accepted/{level}", 0) for r in result.rounds) == m[f"accepted/{level}"]
    # per-generation state is the generation's, not the engine's: no caches kept between generations
    assert not any(isinstance(v, torch.Tensor) for v in vars(engine).values()) and "levels" not in vars(engine)
    stream = engine.stream(list(range(100)), 12, seed=1, stop_at_eos=False)
    steps = list(stream)
    assert [t for step in steps for t in step] == result.tokens  # streaming yields generate's tokens
    assert stream.result.tokens == result.tokens and stream.result.metrics["forwards/top"] == m["forwards/top"]
    assert stream._generation.levels == [] and stream._generation.tokens is None  # freed at the end


def test_bad_arguments_fail_before_work(model):
    engine = Engine(model, None, {"name": "autoregressive"}, {"temperature": 0})
    with pytest.raises(PromptTooLongError, match="exceeds the model's context"):
        engine.generate(list(range(10)) * 900, 8)
    with pytest.raises(PromptTooLongError, match="empty"):
        engine.generate([], 8)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        engine.generate([1, 2, 3], 0)
    vocab = model.config.vocab_size
    with pytest.raises(ConfigError, match=rf"token ids must lie in \[0, {vocab}\)"):
        engine.generate([1, vocab, 3], 4)
    with pytest.raises(ConfigError, match="token ids"):
        engine.generate([-1, 2], 4)
    with pytest.raises(ConfigError, match="needs a draft model"):
        Engine(model, None, {"name": "triforce"})


def test_budget_fraction_is_resolved_per_prompt(model):
    """budget_fraction sizes the middle cache from each prompt's length (reported as middle_budget)
    and gives exactly the tokens of the same budget in tokens; too small a fraction of a prompt is
    a ConfigError before any work."""
    method = {"name": "retrieval_spec", "gamma": 4, "budget": None, "budget_fraction": 0.25, "chunk_size": 4}
    engine = Engine(model, None, method, {"temperature": 0.6})
    for n in (100, 64):
        got = engine.generate(list(range(n)), 10, seed=3, stop_at_eos=False)
        assert got.metrics["middle_budget"] == n // 4
        same = Engine(model, None, {**method, "budget": n // 4, "budget_fraction": None}, {"temperature": 0.6})
        want = same.generate(list(range(n)), 10, seed=3, stop_at_eos=False)
        assert got.tokens == want.tokens
        assert got.rounds == [dict(r, ms=g["ms"]) for r, g in zip(want.rounds, got.rounds)]
    with pytest.raises(ConfigError, match="of a 20-token prompt gives a budget of 5 tokens"):
        engine.generate(list(range(20)), 4)
