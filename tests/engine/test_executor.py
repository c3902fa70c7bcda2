"""The static executor's sampling forward (a captured draft step samples inside its graph): the
token lands at the forward's start (a device value) + its length, as the host-indexed sample
would put it; a proposer's steps chained into one static forward draw the tokens of single steps.
Captured on a GPU (scripts/gpu_check.py); here the same bodies run uncaptured."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.engine.conftest import random_model
from tests.engine.test_greedy_identity import tiny_setup  # noqa: F401 - the shared fixture
from triforce.engine import Engine
from triforce.executor import StaticExecutor
from triforce.kernels.policy import KernelPolicy
from triforce.levels import Level
from triforce.kernels.verify import race_sample_reference
from triforce.metrics import GenerationStats
from triforce.sampling import SamplingParams


@torch.inference_mode()
def test_sampling_forward_writes_the_next_token_at_the_device_start():
    model = random_model(0)
    level = Level("draft", model, full_cache(model, 64))
    tokens = torch.full((1, 40), -1, dtype=torch.int64)  # the engine's buffer: one row per sequence
    tokens[0, :10] = torch.arange(10) % 7
    ex = StaticExecutor(tokens, SamplingParams(temperature=0.8, top_p=0.9), GenerationStats(tokens.device),
                        capture=False, generator=torch.Generator().manual_seed(0), policy=KernelPolicy.resolve("cpu"))
    for start in range(9):  # a one-token forward per position, as a draft step runs
        level.cache.reserve(1)
        runner = ex.runner(level, 1, 1, sample=True)
        runner.view.set([start], [start], [start])  # one sequence's [token, position, slot] starts
        probs = runner.body()
        level.cache.advance(1)
        # the body's race draws are all 1 when uncaptured: the winner is the most likely token
        last = probs[0, -1]  # (B, num_logits, V): the one sequence's last row
        assert int(tokens[0, start + 1]) == int(race_sample_reference(last, torch.ones_like(last)))
        tokens[0, start + 1] = start % 7  # the prompt again, for the next position's input
    assert int((tokens[0, 10:] != -1).sum()) == 0  # nothing written past the forwards' next slots


# a proposer of several one-token steps a round: a StreamingLLM draft (spec, triforce) or the middle
# (retrieval_spec); the draft windows leave room for a few rounds' steps, then evict between rounds
CHAINED_CASES = [
    ("spec-streaming", dict(name="spec", gamma=5, draft_sink=4, draft_window=24), "other"),
    ("spec-full", dict(name="spec", gamma=4, draft_cache="full"), "other"),
    ("triforce", dict(name="triforce", gamma=4, draft_gamma=4, budget=16, chunk_size=4, draft_sink=2,
                      draft_window=22), "other"),
    ("retrieval_spec", dict(name="retrieval_spec", gamma=4, budget=24, chunk_size=4), None),
]


@torch.inference_mode()
@pytest.mark.parametrize("batch", (1, 3), ids=("one", "batch3"))
@pytest.mark.parametrize("case", CHAINED_CASES, ids=[c[0] for c in CHAINED_CASES])
def test_chained_proposer_steps_draw_the_tokens_of_single_steps(tiny_setup, monkeypatch, case, batch):
    """A proposer's steps after its first of a round as one static forward (StaticExecutor.steps)
    give the tokens of one forward a step, sampled (not greedy): the same draws in the same order,
    each step reading the token the one before drew; one sequence and a ragged batch, whose rows
    finish their rounds at different lengths. The chained path really ran, and the planner's
    per-forward times count each of its steps."""
    setup = tiny_setup["gqa"]
    _, method, draft = case
    prompts = [setup.prompt, setup.prompt[:45], setup.prompt[:60]][:batch]
    sampling = SamplingParams(temperature=0.9, top_p=0.95)

    steps = StaticExecutor.steps

    def generate(chain: bool):
        calls = []
        monkeypatch.setattr(StaticExecutor, "steps", lambda self, *a, **kw: calls.append(a[2]) or steps(self, *a, **kw))
        engine = Engine(setup.target, setup.drafts.get(draft), method, sampling,
                        {"executor": "static", "kernels": {"chain_steps": chain}})
        out = engine.generate(prompts if batch > 1 else prompts[0], 24, seed=3, stop_at_eos=False)
        return [r.tokens for r in out] if batch > 1 else [out.tokens], calls, out.metrics

    single, none, metrics_single = generate(False)
    chained, calls, metrics = generate(True)
    assert not none and calls and all(k >= 2 for k in calls)
    assert chained == single
    proposer = "draft" if draft else "middle"
    assert metrics[f"forwards/{proposer}"] == metrics_single[f"forwards/{proposer}"]


def test_a_shared_timer_counts_each_forward_it_holds():
    stats = GenerationStats(torch.device("cpu"))
    with stats.timed("draft", key=("draft", 1), share=3):
        pass
    with stats.timed("verify", key=("target", 5)):
        pass
    drained = stats.drain()
    assert [k for k, _ in drained] == [("draft", 1)] * 3 + [("target", 5)]
    assert drained[0][1] == drained[1][1] == drained[2][1] and stats.drain() == []
