"""Attention backends: one function signature, chosen by name in the config.

q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query attention).
Every backend returns (B, T, Hq, D), the layout o_proj reads.

`mask` says what the T queries may see:
- None with is_causal=False: every key (a single new token after the cache);
- None with is_causal=True: a fresh prefill (T == S), causal;
- a boolean (T, S) tensor (True = may attend), or a torch `CausalBias` (causal, aligned to the
  end of the keys: a chunk of prefill after a cached prefix) — the eager path;
- a `DeviceLength`: keys [0, kv_len + offset) with kv_len in a device tensor and the T queries the
  last T of them, causal among themselves (or, with its `tree`, as a token tree's mask says) — the
  static (CUDA-graph) path, served by the split-KV decode kernel whatever the backend
  (`triforce.kernels.decode_attention`).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from triforce.errors import ConfigError
from triforce.inputs import DeviceLength


class AttentionFn(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 mask, is_causal: bool, scale: float) -> torch.Tensor: ...


def sdpa_attention(q, k, v, *, mask, is_causal, scale):
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.transpose(1, 2)


def flash_attention(q, k, v, *, mask, is_causal, scale):
    """flash-attn 2 (optional extra `flash`). Its causal mode aligns the queries to the end of the
    keys, which is exactly the cached-prefix + new-block layout every cache here produces."""
    from flash_attn import flash_attn_func  # imported lazily: optional dependency

    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                           softmax_scale=scale, causal=mask is not None or is_causal)


def attend(backend: AttentionFn, q, k, v, *, mask, is_causal: bool, scale: float, kernels=None) -> torch.Tensor:
    """Dispatch: the decode kernel (or its reference, as the policy in `kernels` says) for
    device-resident lengths, else the configured backend."""
    if isinstance(mask, DeviceLength):
        from triforce.kernels.decode_attention import decode_attention

        return decode_attention(q, k, v, mask.kv_len, scale, kv_offset=mask.offset, ctx=kernels, tree=mask.tree)
    return backend(q, k, v, mask=mask, is_causal=is_causal, scale=scale)


_BACKENDS: dict[str, Callable] = {"sdpa": sdpa_attention, "flash": flash_attention}


def get_attention(name: str) -> AttentionFn:
    if name not in _BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {sorted(_BACKENDS)}")
    if name == "flash":
        try:
            import flash_attn  # noqa: F401
        except ImportError as e:
            raise ConfigError("attention=flash needs flash-attn: pip install 'triforce[flash]' "
                              "(compiles CUDA code), or use attention=sdpa") from e
    return _BACKENDS[name]
