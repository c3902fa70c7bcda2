"""The project's own Llama-family decoder (gpt-fast style: one compact module, explicit cache).

`forward(tokens, positions, cache)` runs T new tokens against whatever the cache holds and
returns their logits. Parameter names mirror the Hugging Face checkpoint layout (without the
`model.` prefix), except that q/k/v and gate/up are stored fused (`qkv_proj`, `gate_up_proj`):
one matrix product instead of three (two) per layer, which matters at batch 1 where a decode
step is a chain of small launches. `loading.match_checkpoint` maps checkpoint names.

The same forward serves the eager path (the cache slices with host lengths and builds masks) and
the captured GPU path (a `StaticView` of the cache reads lengths from device tensors and
attention runs the split-KV decode kernel). Every linear layer goes through kernels/linear.py:
on CUDA, for the few rows of a decode step, a Triton kernel that streams the weights, with the
residual add and RMSNorm before q/k/v, gate/up and the output head split across the products
around them (`NextNorm`: o_proj and down_proj do the add and the norm's elementwise half in
their epilogues) and SwiGLU as the gate/up product's epilogue; elsewhere (CPU, prefill) torch's
own ops.
"""

from __future__ import annotations

import torch
from torch import nn

from triforce.attention import AttentionFn, attend, sdpa_attention
from triforce.kernels.embedding import embed
from triforce.kernels.linear import PreNormed, folds_norm, linear, linear_add_norm, norm_linear, qkv_rope_store
from triforce.kernels.norm import rms_norm
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding
from triforce.parallel import SINGLE


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, h): h = x + residual (the new residual stream), normed = RMSNorm(h)."""
        return rms_norm(x, self.weight, self.eps, residual)

    def then(self, x: torch.Tensor, residual: torch.Tensor | None, proj: nn.Linear,
             gated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(proj(RMSNorm(h)), h) with h = x + residual: the norm fused into the product (gated: the
        product's SwiGLU, silu(gate) * up, in its epilogue)."""
        return norm_linear(x, residual, self.weight, self.eps, proj.weight, proj.bias, gated=gated)


class NextNorm:
    """The RMSNorm and product after a layer's o_proj or down_proj, and the residual it adds to:
    where the kernels allow (kernels.linear.folds_norm), the product before the norm does the
    residual add and the norm's elementwise half in its epilogue (a PreNormed), and the product
    after it the norm's row scale, so the norm takes no launch of its own."""

    def __init__(self, residual: torch.Tensor, norm: RMSNorm, proj: nn.Linear):
        self.residual, self.norm, self.proj = residual, norm, proj

    def folds(self, x: torch.Tensor, producer: nn.Linear) -> bool:
        return folds_norm(x, producer.weight, self.proj.weight)

    def fold(self, x: torch.Tensor, producer: nn.Linear) -> PreNormed:
        return linear_add_norm(x, producer.weight, producer.bias, self.residual, self.norm.weight)


class Attention(nn.Module):
    reduce = None  # tensor parallelism: the all-reduce summing the ranks' o_proj partial sums (parallel.py)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.qkv_proj = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=bias)
        self.scale = cfg.head_dim ** -0.5

    def project(self, x, residual, norm: RMSNorm, rope, cache, layer_idx: int):
        """q/k/v of RMSNorm(x + residual), rotated, k and v stored in the cache: (q, keys, values to
        attend over, x + residual). A cache that names its slots (the captured path's view) gets
        them written by the projection's own epilogue (kernels.linear.qkv_rope_store)."""
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        slots = cache.store_slots(layer_idx)
        if slots is not None:
            q, residual = qkv_rope_store(x, residual, norm.weight, norm.eps, self.qkv_proj.weight, self.qkv_proj.bias,
                                         rope, *slots, hq, hkv, d)
            return (*cache.stored(layer_idx, q), residual)
        qkv, residual = norm.then(x, residual, self.qkv_proj)
        b, t, _ = qkv.shape
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        q = q.view(b, t, hq, d).transpose(1, 2)
        k = k.view(b, t, hkv, d).transpose(1, 2)
        v = v.view(b, t, hkv, d).transpose(1, 2)
        return (*cache.store(layer_idx, q, k, v, rope), residual)  # rotary + cache write

    def forward(self, q, keys, values, mask, is_causal: bool, attention: AttentionFn, then: NextNorm | None = None):
        """o_proj of the attention of q (B, Hq, T, D) over the cached keys and values; with `then`
        (the norm after it) where the kernels allow, a PreNormed of o_proj + residual instead."""
        b, _, t, _ = q.shape
        out = attend(attention, q, keys, values, mask=mask, is_causal=is_causal, scale=self.scale)
        out = out.reshape(b, t, -1)  # out was (B, T, Hq, D)
        if then is not None and self.reduce is None and then.folds(out, self.o_proj):
            return then.fold(out, self.o_proj)
        out = linear(out, self.o_proj.weight, self.o_proj.bias)
        return out if self.reduce is None else self.reduce(out)


class MLP(nn.Module):
    reduce = None  # tensor parallelism: the all-reduce after down_proj

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, act, then: NextNorm | None = None):
        """act: silu(gate) * up of the normed input, from the gate/up projection's epilogue (see
        DecoderLayer); `then` as in Attention.forward."""
        if then is not None and self.reduce is None and then.folds(act, self.down_proj):
            return then.fold(act, self.down_proj)
        out = linear(act, self.down_proj.weight, self.down_proj.bias)
        return out if self.reduce is None else self.reduce(out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, residual, rope, cache, layer_idx, mask, is_causal, attention,
                then: tuple[RMSNorm, nn.Linear] | None = None):
        """x: the previous layer's output, not yet added to the residual stream (None for the
        first layer, whose x is the embedding): the add is fused into this layer's first norm; or
        a PreNormed (the add and half the norm done by the previous layer's down_proj).
        then: the norm and product after this layer (the next layer's, or the output head's)."""
        q, keys, values, residual = self.self_attn.project(x, residual, self.input_layernorm, rope, cache, layer_idx)
        h = self.self_attn(q, keys, values, mask, is_causal, attention,
                           NextNorm(residual, self.post_attention_layernorm, self.mlp.gate_up_proj))
        act, residual = self.post_attention_layernorm.then(h, residual, self.mlp.gate_up_proj, gated=True)
        out = self.mlp(act, None if then is None else NextNorm(residual, *then))
        return out, out.h if isinstance(out, PreNormed) else residual


class Transformer(nn.Module):
    parallel = SINGLE  # this rank's share of a tensor-parallel model (parallel.shard_model)

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

    def forward(self, tokens, positions: torch.Tensor | None, cache,
                num_logits: int | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or of the last `num_logits` tokens only (the output
        head is a large share of a small model's work: prefill and verification skip the rest).
        tokens may also be a kernels.embedding.TokenSlice (T ids read from a device buffer).

        positions: (T,) or (B, T) rotary positions; None asks the cache for the next ones
        (the StreamingLLM cache may evict to make room when asked).
        """
        num_tokens = tokens.shape[1]
        if positions is None:
            positions = cache.next_positions(num_tokens)
        x = embed(self.embed_tokens.weight, tokens)
        rope = self.rotary.at(positions, x.dtype)
        mask, is_causal = cache.attention_mask(num_tokens)
        residual = None
        all_logits = num_logits is None or num_logits == num_tokens
        for i, layer in enumerate(self.layers):
            if i + 1 < len(self.layers):
                then = (self.layers[i + 1].input_layernorm, self.layers[i + 1].self_attn.qkv_proj)
            else:  # the output head's norm: folded only when every token's logits are wanted
                then = (self.norm, self.lm_head) if all_logits else None
            x, residual = layer(x, residual, rope, cache, i, mask, is_causal, self.attention, then)
        cache.advance(num_tokens)
        if isinstance(x, PreNormed):
            return self.norm.then(x, None, self.lm_head)[0]
        if not all_logits:
            x, residual = x[:, x.shape[1] - num_logits:], residual[:, residual.shape[1] - num_logits:]
        return self.norm.then(x.contiguous(), residual.contiguous(), self.lm_head)[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self, capacity: int, batch_size: int = 1):
        from triforce.cache.static import StaticKVCache

        return StaticKVCache.for_model(self.config, capacity, self.dtype, self.device, batch_size=batch_size)
