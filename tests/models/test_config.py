"""ModelConfig.from_hf and the rotary embedding helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig
from triforce.inputs import apply_rotary
from triforce.models.rope import RotaryEmbedding, rope_parameters


def llama_config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, **overrides})


def test_from_hf_reads_the_llama_fields():
    cfg = ModelConfig.from_hf(llama_config(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=5e5,
                                           eos_token_id=[2, 7]))
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers) == (96, 64, 2)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_groups) == (4, 2, 16, 2)
    assert cfg.tie_word_embeddings is True
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling is None and cfg.rope_type == "default"
    assert cfg.eos_token_id == (2, 7)


def test_from_hf_keeps_scaling_parameters():
    cfg = ModelConfig.from_hf(llama_config(
        max_position_embeddings=131072,
        rope_scaling={"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096}))
    assert cfg.rope_type == "yarn"
    assert cfg.rope_scaling["factor"] == 32.0
    assert cfg.rope_scaling["original_max_position_embeddings"] == 4096
    assert "rope_theta" not in cfg.rope_scaling


def test_from_hf_reads_legacy_type_key():
    """transformers 4.x configs may spell the rope type `type` inside `rope_scaling`."""
    hf = SimpleNamespace(**{**TINY, "num_key_value_heads": 4, "model_type": "llama", "bos_token_id": 1,
                            "eos_token_id": 2, "rope_theta": 1e4,
                            "rope_scaling": {"type": "linear", "factor": 2.0}})
    cfg = ModelConfig.from_hf(hf)
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_non_llama_model_type_is_a_config_error():
    from transformers import GPT2Config

    with pytest.raises(ConfigError, match="Llama"):
        ModelConfig.from_hf(GPT2Config())


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_unsupported_rope_type_is_a_config_error(rope_type):
    hf = SimpleNamespace(**{**TINY, "num_key_value_heads": 4, "model_type": "llama", "bos_token_id": 1,
                            "eos_token_id": 2, "rope_theta": 1e4,
                            "rope_scaling": {"rope_type": rope_type, "factor": 2.0}})
    with pytest.raises(ConfigError, match=rope_type):
        ModelConfig.from_hf(hf)


def test_heads_not_a_multiple_of_kv_heads_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple"):
        ModelConfig(vocab_size=8, hidden_size=48, intermediate_size=8, num_layers=1, num_heads=6,
                    num_kv_heads=4, head_dim=8, max_position_embeddings=64)


def test_rope_parameters_default_and_linear():
    base = ModelConfig.from_hf(llama_config())
    inv, scale = rope_parameters(base)
    assert inv.shape == (base.head_dim // 2,) and scale == 1.0
    torch.testing.assert_close(inv, 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    linear = ModelConfig.from_hf(llama_config(rope_scaling={"rope_type": "linear", "factor": 4.0}))
    torch.testing.assert_close(rope_parameters(linear)[0], inv / 4)


def test_yarn_attention_scale_follows_the_paper():
    cfg = ModelConfig.from_hf(llama_config(
        max_position_embeddings=131072,
        rope_scaling={"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096}))
    inv, scale = rope_parameters(cfg)
    assert scale == pytest.approx(0.1 * math.log(32.0) + 1.0)
    default, _ = rope_parameters(ModelConfig.from_hf(llama_config()))
    # the highest frequency is kept (extrapolated), the lowest one is interpolated by the factor
    assert inv[0].item() == pytest.approx(default[0].item())
    assert inv[-1].item() == pytest.approx(default[-1].item() / 32.0)


def test_rotary_shift_composes_rotations():
    """shift(R(p) k, d) == R(p + d) k, and it ignores the YaRN magnitude scale."""
    cfg = ModelConfig.from_hf(llama_config(
        max_position_embeddings=131072,
        rope_scaling={"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096}))
    rot = RotaryEmbedding(cfg)
    assert rot.attention_scaling != 1.0
    k = torch.randn(1, 2, 5, cfg.head_dim, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(100, 105)
    cos, sin = rot.cos_sin(pos, torch.float32)
    cos2, sin2 = rot.cos_sin(pos + 37, torch.float32)
    shifted = rot.shift(apply_rotary(k, cos, sin), 37)
    torch.testing.assert_close(shifted, apply_rotary(k, cos2, sin2), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shifted, apply_rotary(k, cos, sin), atol=1e-2)


def test_cos_sin_shape_and_dtype():
    rot = RotaryEmbedding(ModelConfig.from_hf(llama_config()))
    cos, sin = rot.cos_sin(torch.arange(7), torch.bfloat16)
    assert cos.shape == sin.shape == (7, 16) and cos.dtype == torch.bfloat16
    cos, _ = rot.cos_sin(torch.arange(6).view(2, 3), torch.float32)
    assert cos.shape == (2, 3, 16)
    assert torch.all(cos[0, 0] == 1.0)  # position 0: no rotation
