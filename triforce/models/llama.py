"""The project's own Llama-family decoder (gpt-fast style: one compact module, explicit cache).

`forward(tokens, positions, cache)` runs T new tokens against whatever the cache holds and
returns their logits. Parameter names mirror the Hugging Face checkpoint layout (without the
`model.` prefix) so checkpoints load by name with no mapping table beyond that prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triforce.attention import AttentionFn, sdpa_attention
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding, apply_rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=bias)
        self.scale = cfg.head_dim ** -0.5

    def forward(self, x, cos, sin, cache, layer_idx: int, mask, is_causal: bool, attention: AttentionFn):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = cache.write(layer_idx, q, k, v)
        out = attention(q, keys, values, mask=mask, is_causal=is_causal, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache, layer_idx, mask, is_causal, attention):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer_idx, mask, is_causal, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: AttentionFn = sdpa_attention):
        super().__init__()
        self.config = cfg
        self.attention = attention
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(cfg)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None, cache,
                num_logits: int | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or of the last `num_logits` tokens only (the output
        head is a large share of a small model's work: prefill and verification skip the rest).

        positions: (T,) or (B, T) rotary positions; None asks the cache for the next ones
        (the StreamingLLM cache may evict to make room when asked).
        """
        num_tokens = tokens.shape[1]
        if positions is None:
            positions = cache.next_positions(num_tokens)
        x = self.embed_tokens(tokens)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        mask, is_causal = cache.attention_mask(num_tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, mask, is_causal, self.attention)
        cache.advance(num_tokens)
        if num_logits is not None:
            x = x[:, x.shape[1] - num_logits:]
        return self.lm_head(self.norm(x))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self, capacity: int, batch_size: int = 1):
        from triforce.cache.static import StaticKVCache

        return StaticKVCache.for_model(self.config, capacity, self.dtype, self.device, batch_size=batch_size)
