"""Decode-class attention: a few new queries (a chain's 1..32, a token tree's hundreds) against a
long KV cache (flash-decoding).

The new block's keys are already written at the end of the valid cache prefix, so the queries
attend to keys [0, kv_len): query t (of T) sees keys up to kv_len - T + t (causal inside the
block). kv_len = a device value + a constant offset (the captured path passes the slot where the
block starts and T, so no kernel adds them), so the same launch serves every step of a graph.
A batch of B sequences has one length per sequence, kv_len (B,) (or one element for every row):
sequence b's queries see keys [0, kv_len[b] + kv_offset) of its own cache row.

Why a kernel of our own: with batch 1, a prefill-class kernel parallelises over query blocks and
heads only (32 programs for a 7B model) and cannot fill the GPU, and the masked path of SDPA is
prefill-class (docs/DESIGN.md §7). Here every program owns one KV head and one slice of the keys
(split-KV): it loads each key block ONCE for all the query rows that share that KV head (the
group of query heads under grouped-query attention times the T new tokens), so a verify of 7 or
17 tokens reads the same bytes as a single-token step. A second small kernel merges the slices
by their log-sum-exp (with one slice, e.g. a 256-token draft cache, the first kernel writes the
output itself). The slice length is derived from kv_len inside the kernel, so the work stays
balanced as the cache grows; the number of slices fills the GPU with one wave of programs.

Layouts: q (B, Hq, T, D) with any strides (last dim contiguous); k, v (B, Hkv, S, D) with the
last dim contiguous; output (B, T, Hq, D) contiguous, i.e. already in o_proj's input layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triforce.kernels.policy import AttentionLaunch, KernelContext

# group size x new tokens per KV head the kernel takes, in row tiles of at most 128 (a token tree
# of 2048 nodes under a group of 4); beyond, the reference
MAX_QUERY_ROWS = 8192


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor,
                               scale: float, *, kv_offset: int = 0, tree: torch.Tensor | None = None) -> torch.Tensor:
    """The same function with SDPA and a mask built from the device lengths (static shapes, so it
    is also graph-capturable): the CPU path of the static executor and the kernel's reference.
    kv_len: one element (every sequence) or (B,), one per sequence. tree: (T, W) bool over the last
    W >= T slots (the new block and the W - T a tree's earlier forwards wrote), row t the slots query
    t sees (a token tree's ancestors and itself); None: causal."""
    T, S = q.shape[2], k.shape[2]
    key_pos = torch.arange(S, device=q.device)
    if kv_len.numel() == 1:
        query_pos = kv_len.reshape(()).to(torch.int64) + (kv_offset - T) + torch.arange(T, device=q.device)
        mask = key_pos[None, :] <= query_pos[:, None]  # also excludes every slot >= kv_len
    else:  # each sequence's own mask: (B, 1, T, S), broadcast over the heads
        query_pos = kv_len.reshape(-1, 1).to(torch.int64) + (kv_offset - T) + torch.arange(T, device=q.device)
        mask = (key_pos[None, None, :] <= query_pos[:, :, None])[:, None]
    if tree is not None:  # a key of the last W slots (its column j = slot - their first) seen where tree[t, j]
        W = tree.shape[-1]
        node = (key_pos - query_pos[..., :1] + (W - T))[..., None, :]  # (1, S) or (B, 1, S)
        in_block = (node >= 0) & (node < W)
        seen = tree.to(torch.bool)[torch.arange(T, device=q.device)[:, None], node.clamp(0, W - 1)]  # (.., T, S)
        block = ~in_block | seen
        mask = mask & (block if kv_len.numel() == 1 else block[:, None])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2).contiguous()


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor, scale: float,
                     *, kv_offset: int = 0, ctx: KernelContext | None = None,
                     launch: AttentionLaunch | None = None, tree: torch.Tensor | None = None) -> torch.Tensor:
    """Triton split-KV attention where the context's policy runs kernels, else the reference.
    Returns (B, T, Hq, D). Sequence b's keys [0, kv_len[b] + kv_offset) are valid (kv_len (B,), or
    one element for every sequence). launch: the policy's when None. tree: a (T, W) mask over the last
    W >= T slots (a token tree's: tree[t, j] where slot j of them holds query t's ancestor or itself),
    None: causal."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    if (ctx is None or not ctx.on(q) or group * T > MAX_QUERY_ROWS or D not in (32, 64, 128, 256)
            or kv_len.numel() not in (1, B) or kv_len.dim() > 1):
        return decode_attention_reference(q, k, v, kv_len, scale, kv_offset=kv_offset, tree=tree)
    from triforce.kernels import triton_decode

    policy = ctx.policy
    launch = launch or policy.attention_launch(batch=B, kv_heads=Hkv, rows=group * T, head_dim=D,
                                               capacity=k.shape[2], element_size=q.element_size())
    return triton_decode.decode_attention(q, k, v, kv_len, scale, launch, kv_offset=kv_offset, pdl=ctx.pdl,
                                          prefetch=policy.attention_prefetch if ctx.pdl else 0,
                                          interpreter=policy.interpreter,
                                          tree=None if tree is None else tree.to(torch.int8).contiguous())
