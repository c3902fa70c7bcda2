"""triforce.bench.latency.warm_length: the warm-up prompt of every benchmark fills what the measured
run fills, so that no kernel compiles inside a measurement."""

from __future__ import annotations

from triforce.bench.latency import warm_length
from triforce.config import method_config


def test_the_warm_up_prompt_outgrows_the_middles_budget_and_the_drafts_window():
    assert warm_length(method_config({"name": "autoregressive"}), 32768) == 64
    # a StreamingLLM draft (sink 16 + window 240): full, so it evicts from the warm-up's first step
    assert warm_length(method_config({"name": "spec", "gamma": 8}), 32768) == 16 + 240 + 1
    assert warm_length(method_config({"name": "spec", "gamma": 8, "draft_cache": "full"}), 32768) == 64
    # a retrieval middle of 4096: chunks are chosen
    triforce = method_config({"name": "triforce", "budget": 4096, "chunk_size": 8})
    assert warm_length(triforce, 32768) == 4096 + 2 * 8 + 1
    assert warm_length(triforce, 1000) == 1000  # never more than the prompt
