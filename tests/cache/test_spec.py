"""Cache specs (cache/spec.py): the one decision of each level's cache, from which the memory plan
counts and the levels allocate. What the plan counts is exactly what the caches allocate."""

from __future__ import annotations

import itertools

import pytest
import torch

from triforce.cache.spec import cache_specs, spare_slots
from triforce.config import MethodConfig
from triforce.memory import plan_memory
from triforce.models.config import ModelConfig

TARGET = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                     num_kv_heads=2, head_dim=16, max_position_embeddings=4096)
DRAFT = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                    num_kv_heads=1, head_dim=16, max_position_embeddings=4096)
PROMPTS, NEW = [300, 180, 241], 24


def allocated(cache) -> dict[str, int]:
    """Bytes of every tensor a cache holds: pinned host buffers (an offloaded cache's layers) as
    host, everything else as device (but the model's rotary frequencies a streaming cache refers to)."""
    out = {"device": 0, "host": 0}
    for name, value in vars(cache).items():
        if name == "inv_freq":
            continue
        tensors = value if isinstance(value, list) else [value]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                out["host" if name.endswith("_host") else "device"] += t.numel() * t.element_size()
    return out


METHODS = [
    dict(name="autoregressive"),
    dict(name="spec", draft_cache="streaming", draft_window=64),
    dict(name="spec", draft_cache="full"),
    *[dict(name=name, middle_cache=middle, budget=96, chunk_size=8, draft_window=64)
      for name, middle in itertools.product(["retrieval_spec", "triforce"], ["retrieval", "hybrid", "streaming"])],
    dict(name="triforce", budget=None, budget_fraction=0.25, chunk_size=8, draft_window=64),
]


@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_every_cache_allocates_what_its_spec_counts(method, batch, offload):
    method = MethodConfig(**method)
    prompts = PROMPTS[:batch]
    specs = cache_specs(method, TARGET, DRAFT, prompts, NEW, dtype_bytes=4, offload=offload, on_chip_layers=1)
    assert set(specs) == {"top"} | ({"middle"} if method.uses_middle else set()) | (
        {"draft"} if method.uses_draft else set())
    for name, spec in specs.items():
        cache = spec.allocate(torch.float32, "cpu", inv_freq=torch.ones(8))
        assert allocated(cache) == spec.memory(), name
        assert cache.batch_size == batch and cache.spare == spare_slots(method, batch)
        if name == "middle":  # each sequence selects within its own budget (a fraction: its own prompt's)
            assert [cache.row(b).budget for b in range(batch)] == [method.for_prompt(n).budget for n in prompts]


@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_the_memory_plan_counts_the_allocated_caches(method, offload):
    """The plan's cache items are the allocated caches' bytes: the top level's as its own item,
    the lower levels' (with a rebuild's transient) where they outweigh the prefill's activations."""
    method = MethodConfig(**method)
    batch, prompt = 2, max(PROMPTS)
    specs = cache_specs(method, TARGET, DRAFT, [prompt] * batch, NEW, dtype_bytes=4, offload=offload, on_chip_layers=1)
    caches = {name: allocated(spec.allocate(torch.float32, "cpu", inv_freq=torch.ones(8)))
              for name, spec in specs.items()}
    plan = plan_memory(TARGET, method, prompt, NEW, dtype_bytes=4, prefill_chunk=16, draft=DRAFT,
                       offload=offload, on_chip_layers=1, batch_size=batch)
    if offload:
        assert plan.items["on-chip KV layers and staging"] == caches["top"]["device"]
        assert plan.host["offloaded KV cache"] == caches["top"]["host"]
    else:
        assert plan.items["full KV cache"] == caches["top"]["device"]
    lower = sum(c["device"] for name, c in caches.items() if name != "top")
    if "middle and draft caches, rebuild" in plan.items:
        assert plan.items["middle and draft caches, rebuild"] >= lower
        if not specs.get("middle") or not specs["middle"].scores:
            assert plan.items["middle and draft caches, rebuild"] == lower
    else:
        assert plan.items["prefill activations"] >= lower
