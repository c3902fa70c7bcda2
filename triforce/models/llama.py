"""The project's own Llama-family decoder, as plain as the math (gpt-fast style: one compact module,
the cache an explicit argument). Mistral, Qwen2 and Qwen3 checkpoints are this decoder with the
few differences their configs name (models/config.py): q/k/v (and o) biases, an RMSNorm over each
head's queries and keys before rotary, an explicit head size, tied embeddings.

    h   = x + attention(rmsnorm(x))        DecoderLayer.forward
    out = h + mlp(rmsnorm(h))

`Transformer.forward(tokens, positions, cache)` runs T new tokens against whatever the cache
holds and returns their logits. This is the reference every other path is compared with (the CPU
path, the eager path, the prefill on every device, the tests' parity with transformers). The
captured GPU decode path does not change it: it runs a *decode plan* built from the loaded model
(triforce/decode_plan.py), a flat list of fused kernels over the same weights.

Parameter names mirror the Hugging Face checkpoint layout (without the `model.` prefix), except
that q/k/v and gate/up are stored fused (`qkv_proj`, `gate_up_proj`): one product instead of three
(two) per layer. `loading.match_checkpoint` maps checkpoint names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from triforce.attention import AttentionFn, attend, sdpa_attention
from triforce.inputs import Rope
from triforce.kernels.activation import silu_mul
from triforce.kernels.embedding import embed
from triforce.kernels.norm import rms_norm
from triforce.kernels.policy import KernelContext
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding


@dataclasses.dataclass(frozen=True)
class Context:
    """What every layer of one forward shares: the cache, the new tokens' rotary inputs, what their
    queries may see (attention.py) and the kernel policy's launch context (None: the torch
    reference; the eager executor and the prefill pass the engine's)."""
    cache: Any
    rope: Rope
    mask: Any
    is_causal: bool
    attention: AttentionFn
    kernels: KernelContext | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, kernels: KernelContext | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, ctx=kernels)[0]


class Attention(nn.Module):
    reduce = None  # tensor parallelism: the all-reduce summing the ranks' o_proj partial sums (parallel.py)

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.index = index  # the layer's slot in every cache
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim,
                                  bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        # Qwen3: each head's queries and keys normalised (one weight over the head's dimensions)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.scale = cfg.head_dim ** -0.5

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, _ = x.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        # F.linear over the modules' parameters: the same product without a module call per
        # projection (on a CPU a tiny model's forward is mostly such per-call overhead)
        q, k, v = F.linear(x, self.qkv_proj.weight, self.qkv_proj.bias).split([hq * d, hkv * d, hkv * d], dim=-1)
        q, k, v = (p.view(b, t, -1, d) for p in (q, k, v))
        if self.q_norm is not None:  # before rotary, over each head's dimensions
            q, k = self.q_norm(q, ctx.kernels), self.k_norm(k, ctx.kernels)
        q, k, v = (p.transpose(1, 2) for p in (q, k, v))
        q, keys, values = ctx.cache.store(self.index, q, k, v, ctx.rope)  # rotary + cache write
        out = attend(ctx.attention, q, keys, values, mask=ctx.mask, is_causal=ctx.is_causal, scale=self.scale,
                     kernels=ctx.kernels)
        out = F.linear(out.reshape(b, t, -1), self.o_proj.weight, self.o_proj.bias)  # out was (B, T, Hq, D)
        return out if self.reduce is None else self.reduce(out)


class MLP(nn.Module):
    reduce = None  # tensor parallelism: the all-reduce after down_proj

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor, kernels: KernelContext | None = None) -> torch.Tensor:
        gate_up = F.linear(x, self.gate_up_proj.weight, self.gate_up_proj.bias)
        out = F.linear(silu_mul(gate_up, ctx=kernels), self.down_proj.weight, self.down_proj.bias)  # SwiGLU
        return out if self.reduce is None else self.reduce(out)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.self_attn = Attention(cfg, index)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x, ctx.kernels), ctx)
        return h + self.mlp(self.post_attention_layernorm(h, ctx.kernels), ctx.kernels)


class Transformer(nn.Module):
    parallel = None  # this rank's share of a tensor-parallel model (parallel.shard_model); None: one process
    # a draft whose embedding table has fewer rows than its target's (one tokenizer, padded
    # differently: Qwen2.5-0.5B for Qwen2.5-7B): its logits are widened to the target's rows with
    # -inf (probability 0: it proposes none of them); None: its own vocabulary (widen_vocabulary)
    output_rows: int | None = None

    def __init__(self, cfg: ModelConfig, attention: AttentionFn = sdpa_attention):
        super().__init__()
        self.config = cfg
        self.attention = attention
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(cfg)

    def context(self, cache, positions: torch.Tensor | None, num_tokens: int, dtype: torch.dtype,
                kernels: KernelContext | None = None, tree: torch.Tensor | None = None) -> Context:
        """The shared inputs of a forward over `num_tokens` new tokens. positions: (T,) or (B, T)
        rotary positions; None asks the cache for the next ones (a StreamingLLM cache may evict to
        make room when asked). tree: the new tokens' (T, T) mask where they are a token tree
        (triforce.tree; positions then given: each node's is the prefix length + its depth - 1)."""
        if positions is None:
            positions = cache.next_positions(num_tokens)
        mask, is_causal = cache.attention_mask(num_tokens, tree)
        return Context(cache, self.rotary.at(positions, dtype), mask, is_causal, self.attention, kernels)

    def forward(self, tokens, positions: torch.Tensor | None, cache, num_logits: int | None = None, *,
                kernels: KernelContext | None = None, tree: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or of the last `num_logits` tokens only (the output
        head is a large share of a small model's work: prefill and verification skip the rest).
        tokens may also be an inputs.TokenSlice (T ids read from a device buffer). kernels: the
        kernel policy's launch context (None: every op is the torch reference)."""
        num_tokens = tokens.shape[1]
        x = self.embed(tokens, kernels)
        ctx = self.context(cache, positions, num_tokens, x.dtype, kernels, tree)
        for layer in self.layers:
            x = layer(x, ctx)
        cache.advance(num_tokens)
        return self.head(x, num_logits, kernels)

    def embed(self, tokens, kernels: KernelContext | None = None) -> torch.Tensor:
        """(B, T, hidden) input rows of tokens (B, T) or an inputs.TokenSlice."""
        return embed(self.embed_tokens.weight, tokens, ctx=kernels)

    def head(self, x: torch.Tensor, num_logits: int | None = None,
             kernels: KernelContext | None = None) -> torch.Tensor:
        """Logits of the last `num_logits` rows of the final hidden state (all when None)."""
        if num_logits is not None and num_logits < x.shape[1]:
            x = x[:, x.shape[1] - num_logits:]
        return self.widen(F.linear(self.norm(x, kernels), self.lm_head.weight))

    @torch.no_grad()
    def widen_vocabulary(self, rows: int) -> None:
        """Take and give token ids up to `rows` (a target's vocabulary that pads the same tokenizer
        to more rows): ids beyond its own embed to zeros (the target may emit one; the draft's next
        proposals then come from a token it never saw, which costs acceptance, not exactness), and
        its logits of them are -inf (it never proposes one)."""
        own = self.config.vocab_size
        if rows <= own or self.output_rows == rows:
            return
        old = self.embed_tokens.weight
        table = torch.zeros(rows, old.shape[1], dtype=old.dtype, device=old.device)
        table[:own] = old
        self.embed_tokens.weight = nn.Parameter(table, requires_grad=False)
        if self.config.tie_word_embeddings:  # the head keeps its own rows, the same memory
            self.lm_head.weight = nn.Parameter(table[:own], requires_grad=False)
        self.output_rows = rows

    @property
    def output_vocab(self) -> int:
        """The width of the logits a forward returns (output_rows where set)."""
        return self.output_rows or self.config.vocab_size

    def widen(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits over `output_rows` tokens where they are set (the rows beyond its own at -inf)."""
        extra = 0 if self.output_rows is None else self.output_rows - logits.shape[-1]
        return logits if extra <= 0 else F.pad(logits, (0, extra), value=float("-inf"))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

