"""Model shapes for latency benchmarks, built with random weights directly on the device.

Latency does not depend on the weights' values, only on their bytes, so a 7B model needs no
checkpoint: parameters are allocated on the device and filled with N(0, 0.02) (norms at 1), the
scale of a trained Llama's initialisation, so activations stay finite. Never zeros: they can run
faster than real data.
"""

from __future__ import annotations

import torch

from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer
from triforce.models.rope import RotaryEmbedding

YARN_128K = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}

SHAPES: dict[str, ModelConfig] = {
    # NousResearch/Yarn-Llama-2-7b-128k: MHA, 32 heads of 128
    "llama2-7b": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                             num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=131072,
                             rms_norm_eps=1e-5, rope_scaling=YARN_128K),
    # meta-llama/Llama-3.1-8B: GQA, 8 KV heads
    "llama3-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                             num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=131072,
                             rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE),
    # JackFram/llama-68m: the paper's draft
    "llama-68m": ModelConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_layers=2,
                             num_heads=12, num_kv_heads=12, head_dim=64, max_position_embeddings=2048,
                             rms_norm_eps=1e-6),
}

# the draft used with each target shape (same vocabulary)
DRAFT_OF = {"llama2-7b": "llama-68m", "llama3-8b": "llama3-draft"}
SHAPES["llama3-draft"] = ModelConfig(vocab_size=128256, hidden_size=768, intermediate_size=3072, num_layers=2,
                                     num_heads=12, num_kv_heads=12, head_dim=64, max_position_embeddings=2048,
                                     rms_norm_eps=1e-6)

# The long-context families people run now (models/config.py), with their natural drafts.
QWEN3_YARN_128K = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
SHAPES.update({
    # Qwen/Qwen2.5-7B-Instruct-1M: GQA 28 / 4, q/k/v biases, rope theta 1e7
    "qwen2.5-7b": ModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, max_position_embeddings=1010000,
                              rms_norm_eps=1e-6, rope_theta=10000000.0, qkv_bias=True, family="qwen2"),
    # Qwen/Qwen2.5-0.5B-Instruct: the family's draft (one tokenizer; its table padded to 151,936 rows)
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                                num_heads=14, num_kv_heads=2, head_dim=64, max_position_embeddings=32768,
                                rms_norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=True, tie_word_embeddings=True,
                                family="qwen2"),
    # Qwen/Qwen3-8B at 128K (YaRN x4 over 32K, as its card says): per-head q/k RMSNorm
    "qwen3-8b": ModelConfig(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
                            num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=131072,
                            rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=QWEN3_YARN_128K, qk_norm=True,
                            family="qwen3"),
    # Qwen/Qwen3-0.6B: the family's draft (head_dim 128 with hidden 1024)
    "qwen3-0.6b": ModelConfig(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_layers=28,
                              num_heads=16, num_kv_heads=8, head_dim=128, max_position_embeddings=40960,
                              rms_norm_eps=1e-6, rope_theta=1000000.0, qk_norm=True, tie_word_embeddings=True,
                              family="qwen3"),
    # mistralai/Mistral-Nemo-Instruct-2407: 12B, head_dim 128 with hidden 5120, 128K
    "mistral-nemo": ModelConfig(vocab_size=131072, hidden_size=5120, intermediate_size=14336, num_layers=40,
                                num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=1024000,
                                rms_norm_eps=1e-5, rope_theta=1000000.0, family="mistral"),
    # no small model shares Nemo's tokenizer: a llama-68m-sized draft of its vocabulary (latency only)
    "mistral-nemo-draft": ModelConfig(vocab_size=131072, hidden_size=768, intermediate_size=3072, num_layers=2,
                                      num_heads=12, num_kv_heads=12, head_dim=64, max_position_embeddings=2048,
                                      rms_norm_eps=1e-5, family="mistral"),
})
DRAFT_OF.update({"qwen2.5-7b": "qwen2.5-0.5b", "qwen3-8b": "qwen3-0.6b", "mistral-nemo": "mistral-nemo-draft"})


@torch.no_grad()
def random_model(cfg: ModelConfig, *, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    model = model.to(dtype)
    model.rotary = RotaryEmbedding(cfg).to(device)  # float32 buffer, computed on the device
    return model.eval().requires_grad_(False)
