"""The pre-flight memory plan: sizes from configs, and refusals that name what to change."""

from __future__ import annotations

import pytest

from triforce.config import MethodConfig
from triforce.errors import ConfigError
from triforce.memory import GiB, check_memory, kv_bytes_per_token, plan_memory, weight_bytes
from triforce.models.config import ModelConfig

LLAMA2_7B = ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                        num_kv_heads=32, head_dim=128, max_position_embeddings=131072)
LLAMA_68M = ModelConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_layers=2, num_heads=12,
                        num_kv_heads=12, head_dim=64, max_position_embeddings=2048)
PAPER = MethodConfig(name="triforce", budget=4096, chunk_size=8, gamma=6, draft_gamma=2, draft_sink=16,
                     draft_window=240)


def test_sizes_match_the_published_model_sizes():
    assert weight_bytes(LLAMA2_7B, 2) == 2 * 6_738_415_616  # Llama-2-7b's parameter count
    assert kv_bytes_per_token(LLAMA2_7B, 2) == 512 * 1024  # 0.5 MiB of KV per token
    assert abs(weight_bytes(LLAMA_68M, 2) / 2 - 68_030_208) < 1e6


def test_the_paper_setting_fits_an_80_gb_card_with_16k_prefill_chunks():
    plan = plan_memory(LLAMA2_7B, PAPER, 124_928, 256, dtype_bytes=2, prefill_chunk=16384, draft=LLAMA_68M)
    assert 70 * GiB < plan.total < 78 * GiB  # an H100 / A100 80GB leaves about 79 GiB to programs
    check_memory(plan, 79 * GiB, where="H100")
    assert plan.items["full KV cache"] > 60 * GiB
    assert 2 * GiB < plan.items["middle and draft caches, rebuild"] < 3 * GiB  # larger than a 16K chunk's


def test_a_setting_that_cannot_fit_names_the_prefill_that_would():
    plan = plan_memory(LLAMA2_7B, PAPER, 124_928, 256, dtype_bytes=2, prefill_chunk=16384, draft=LLAMA_68M)
    with pytest.raises(ConfigError, match=r"lower dataset.prefill to <= (\d+)") as err:
        check_memory(plan, 40 * GiB, where="a 40 GB card")
    room = int(err.value.args[0].split("dataset.prefill to <= ")[1].split(";")[0])
    smaller = plan_memory(LLAMA2_7B, PAPER, room, 256, dtype_bytes=2, prefill_chunk=16384, draft=LLAMA_68M)
    assert smaller.total <= 40 * GiB  # the suggestion really fits
    assert smaller.total > 39 * GiB  # and is not needlessly small


def test_large_prefill_chunks_are_named_when_they_are_the_excess():
    plan = plan_memory(LLAMA2_7B, PAPER, 124_928, 256, dtype_bytes=2, prefill_chunk=124_928, draft=LLAMA_68M)
    small = plan_memory(LLAMA2_7B, PAPER, 124_928, 256, dtype_bytes=2, prefill_chunk=4096, draft=LLAMA_68M)
    with pytest.raises(ConfigError, match="hardware.prefill_chunk to 4096"):
        check_memory(plan, small.total + GiB, where="H100")


def test_a_batch_that_cannot_fit_names_the_largest_batch_that_would():
    """Issue 20's measured case: a Llama-3-8B target at 32K on one H200 (about 139 GiB free) holds
    a batch of 16, not of 32; the refusal names a batch size that fits, and it is the largest."""
    llama3_8b = ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                            num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=131072)
    draft = ModelConfig(vocab_size=128256, hidden_size=768, intermediate_size=3072, num_layers=2, num_heads=12,
                        num_kv_heads=12, head_dim=64, max_position_embeddings=2048)

    def plan(batch):
        return plan_memory(llama3_8b, PAPER, 32768, 64, dtype_bytes=2, prefill_chunk=8192, draft=draft,
                           batch_size=batch)

    free = 139 * GiB
    check_memory(plan(16), free, where="H200")
    assert plan(16).batch_size == 16 and plan(32).total > plan(16).total + 15 * plan(1).items["full KV cache"]
    with pytest.raises(ConfigError, match=r"for a batch of 32 .* lower hardware\.batch_size to <= (\d+)") as e:
        check_memory(plan(32), free, where="H200")
    named = int(e.value.args[0].split("hardware.batch_size to <= ")[1].split(";")[0])
    check_memory(plan(named), free, where="H200")  # it fits ...
    with pytest.raises(ConfigError):
        check_memory(plan(named + 1), free, where="H200")  # ... and is the largest that does


def test_blocks_torch_keeps_cached_count_as_available(monkeypatch):
    """What a model's construction leaves in torch's cache is free to this process, not to the driver:
    a benchmark that loaded its models must not be refused for memory it can reuse."""
    import torch

    from triforce.memory import device_available

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 31 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 15 * GiB)  # the weights
    assert device_available() == 56 * GiB
