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
