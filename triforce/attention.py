"""Attention backends: one function signature, chosen by name in the config.

q: (B, Hq, T, D); k, v: (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query attention).
`mask` is a boolean (T, S) tensor (True = may attend) or None; `is_causal` is only used when
T == S (a fresh prefill), where backends can take their causal fast path.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from triforce.errors import ConfigError


class AttentionFn(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 mask: torch.Tensor | None, is_causal: bool, scale: float) -> torch.Tensor: ...


def sdpa_attention(q, k, v, *, mask, is_causal, scale):
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


def flash_attention(q, k, v, *, mask, is_causal, scale):
    """flash-attn 2 (optional extra `flash`). Its causal mode aligns the queries to the end of the
    keys, which is exactly the cached-prefix + new-block layout every cache here produces."""
    from flash_attn import flash_attn_func  # imported lazily: optional dependency

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          softmax_scale=scale, causal=mask is not None or is_causal)
    return out.transpose(1, 2)


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
