"""The static executor's sampling forward (a captured draft step samples inside its graph): the
token lands at the forward's start (a device value) + its length, as the host-indexed sample
would put it. Captured on a GPU (scripts/gpu_check.py); here the same body runs uncaptured."""

from __future__ import annotations

import torch

from tests.caches import full_cache
from tests.engine.conftest import random_model
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
