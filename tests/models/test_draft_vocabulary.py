"""A draft whose embedding table pads the target's tokenizer to fewer rows (Qwen2.5-0.5B: 151,936;
Qwen2.5-7B: 152,064): it proposes from the target's vocabulary with probability 0 on the rows it
lacks, takes the target's tokens beyond its own rows, and any other vocabulary mismatch is refused
(models/config.py: draft_vocabulary_problem)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.caches import full_cache
from triforce.engine import Engine
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig, draft_vocabulary_problem
from triforce.models.llama import Transformer
from triforce.models.loading import build_model
from triforce.models.tiny import random_state
from triforce.sampling import SamplingParams

BASE = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                   head_dim=8, max_position_embeddings=256, qkv_bias=True, tie_word_embeddings=True, family="qwen2")


def model(cfg: ModelConfig, seed: int) -> Transformer:
    return build_model(cfg, random_state(cfg, seed), dtype=torch.float32, device="cpu")


def test_which_drafts_may_propose_for_a_target():
    smaller = dataclasses.replace(BASE, vocab_size=280)
    assert draft_vocabulary_problem(BASE, BASE) is None
    assert draft_vocabulary_problem(BASE, smaller) is None  # one family, fewer rows
    assert "vocabulary" in draft_vocabulary_problem(smaller, BASE)  # more rows than the target has
    other = dataclasses.replace(smaller, family="llama")
    assert "share the target's tokenizer" in draft_vocabulary_problem(BASE, other)
    # Llama's sizes are two tokenizers (Llama-2: 32,000; Llama-3: 128,256): fewer rows is another vocabulary
    llama3, llama2 = (dataclasses.replace(BASE, family="llama", vocab_size=v) for v in (128256, 32000))
    assert "share the target's tokenizer" in draft_vocabulary_problem(llama3, llama2)


def test_a_draft_with_fewer_rows_proposes_none_of_them_and_reads_every_target_token():
    target, draft = model(BASE, 0), model(dataclasses.replace(BASE, vocab_size=280), 1)
    own_head = draft.lm_head.weight.clone()
    Engine(target, draft, dict(name="spec", gamma=3), SamplingParams(0.0))  # the engine widens the draft
    assert draft.output_vocab == 300 and draft.embed_tokens.weight.shape[0] == 300
    assert torch.equal(draft.lm_head.weight, own_head)  # its own head, still tied to its own rows
    ids = torch.tensor([[5, 290, 299]])  # ids only the target's rows have
    logits = draft(ids, None, full_cache(draft, 8))
    assert logits.shape == (1, 3, 300)
    assert torch.isneginf(logits[..., 280:]).all() and torch.isfinite(logits[..., :280]).all()


@pytest.mark.parametrize("method", ["spec", "triforce"])
def test_greedy_identity_and_sampling_with_a_draft_of_fewer_rows(method):
    target, draft = model(BASE, 0), model(dataclasses.replace(BASE, vocab_size=280), 1)
    prompt = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    m = dict(name=method, gamma=3, draft_gamma=2, budget=16, chunk_size=4, draft_sink=2, draft_window=16)
    plain = Engine(target, None, dict(name="autoregressive"), SamplingParams(0.0)).generate(prompt, 16, seed=0)
    assert Engine(target, draft, m, SamplingParams(0.0)).generate(prompt, 16, seed=0).tokens == plain.tokens
    sampled = Engine(target, draft, m, SamplingParams(1.0)).generate(prompt, 32, seed=3).tokens
    assert len(sampled) == 32 and max(sampled) < 300


def test_an_engine_refuses_a_draft_of_another_vocabulary():
    target = model(BASE, 0)
    draft = model(dataclasses.replace(BASE, vocab_size=320), 1)  # more rows than the target
    with pytest.raises(ConfigError, match="share the target's tokenizer"):
        Engine(target, draft, dict(name="spec", gamma=3), SamplingParams(0.0))
