"""Fixtures for the engine tests: tiny random models built from a ModelConfig, an independent
greedy reference, and SmolLM2 with a Gutenberg prompt (slow tests)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.caches import full_cache
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer


# The non-Llama shapes the engine runs (issue 27), as ModelConfig fields over random_model's sizes:
# "qwen" has Qwen2's q/k/v biases and Qwen3's q/k head norms together; "mistral" an explicit head
# size other than hidden / heads (Mistral-Nemo's 128 of 5120 / 32) and a sliding window (v0.1's)
# wider than any sequence the tests run, so the model is computed exactly.
SHAPES = ("llama", "qwen", "mistral")


def shape_fields(shape: str, *, hidden: int, heads: int, window: int = 128) -> dict:
    if shape == "qwen":
        return dict(qkv_bias=True, qk_norm=True, family="qwen3")
    if shape == "mistral":
        return dict(head_dim=hidden // heads + 4, sliding_window=window, family="mistral")
    assert shape == "llama", shape
    return {}


def random_model(seed: int, *, vocab: int = 64, hidden: int = 32, layers: int = 2, heads: int = 4,
                 kv_heads: int = 4, scale: float = 3.0, max_positions: int = 512,
                 eos: tuple[int, ...] = (), qk_scale: float = 2.0, **fields) -> Transformer:
    """A seeded random fp32 Llama (or another shape: `fields`, ModelConfig fields such as
    shape_fields'). Weights are scaled up (`scale`) so that attention is sharp and next-token
    distributions depend on the context: then dropping tokens from a cache (retrieval budget,
    streaming window) really changes the distributions and the hierarchy is non-trivial. q/k head
    norms (qk_norm) get weights of about `qk_scale`, varying by dimension: a normalised query and key
    would otherwise make attention too flat for the hierarchy to matter."""
    fields.setdefault("head_dim", hidden // heads)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                      num_heads=heads, num_kv_heads=kv_heads, max_position_embeddings=max_positions,
                      eos_token_id=eos, **fields)
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    head_norms = torch.Generator().manual_seed(seed)  # their own draws: the other weights stay as they were
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(qk_scale * (1.0 + 0.25 * torch.randn(p.shape, generator=head_norms)))
            elif not name.endswith("norm.weight"):
                p.mul_(scale)
    return model


def perturbed(model: Transformer, noise: Transformer, amount: float) -> Transformer:
    """A copy of `model` whose non-norm weights get `amount` times `noise`'s weights added: a draft
    that agrees with the target part of the time (as a real draft model does)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for (name, p), (_, r) in zip(out.named_parameters(), noise.named_parameters()):
            if not name.endswith("norm.weight"):
                p.add_(amount * r)
    return out


@torch.inference_mode()
def greedy_reference(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding with a full cache, one token per forward (no engine code)."""
    cache = full_cache(model, len(prompt) + n)
    logits = model(torch.tensor([prompt]), None, cache)
    out: list[int] = []
    for _ in range(n):
        token = int(logits[0, -1].argmax())
        out.append(token)
        logits = model(torch.tensor([[token]]), None, cache)
    return out


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """SmolLM2-135M in fp32 (skips, via smollm2_dir, when the weights are not fetched)."""
    from triforce.models.loading import load_model

    return load_model(str(smollm2_dir), dtype="float32")


@pytest.fixture(scope="session")
def gutenberg_prompt(smollm2_dir, gutenberg_dir) -> list[int]:
    """603 tokens of Hamlet (not a multiple of 8 or 16)."""
    from triforce.data.gutenberg import load_books
    from triforce.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_dir))
    book = load_books(gutenberg_dir, names=["hamlet_gut"])[0]
    ids = tokenizer(book.text[20000:40000], add_special_tokens=False)["input_ids"]
    assert len(ids) >= 603
    return ids[:603]
