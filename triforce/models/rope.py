"""Rotary position embeddings with default, linear, YaRN and Llama-3 frequency scaling.

The inverse frequencies follow the published formulas (YaRN: arXiv 2309.00071; Llama 3.1's
wavelength bands); they are computed in float32 and applied on the fly for arbitrary position
ids, so caches may hand out absolute (full / retrieval cache) or cache-relative (StreamingLLM)
positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from triforce.inputs import DevicePositions, Rope, rotary_tables, rotate_keys
from triforce.models.config import ModelConfig


def _default_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(cfg: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    p = cfg.rope_scaling or {}
    factor = p.get("factor") or cfg.max_position_embeddings / p["original_max_position_embeddings"]
    original = p["original_max_position_embeddings"]
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1
    base = cfg.rope_theta

    def correction_dim(num_rotations: float) -> float:
        # the rotary dimension whose wavelength completes `num_rotations` turns over the original context
        return dim * math.log(original / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp  # high-frequency dims keep their original frequency
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq, float(attention_factor)


def _llama3(cfg: ModelConfig, dim: int) -> torch.Tensor:
    p = cfg.rope_scaling or {}
    inv_freq = _default_inv_freq(cfg.rope_theta, dim)
    factor, low_ff, high_ff = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_parameters(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the cos/sin scale for this config's rope type."""
    dim = cfg.head_dim
    rope_type = cfg.rope_type
    if rope_type == "default":
        return _default_inv_freq(cfg.rope_theta, dim), 1.0
    if rope_type == "linear":
        return _default_inv_freq(cfg.rope_theta, dim) / cfg.rope_scaling["factor"], 1.0
    if rope_type == "yarn":
        return _yarn(cfg, dim)
    if rope_type == "llama3":
        return _llama3(cfg, dim), 1.0
    raise AssertionError(rope_type)  # ModelConfig validated the type


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.attention_scaling = rope_parameters(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def at(self, positions: torch.Tensor | DevicePositions, dtype: torch.dtype) -> Rope:
        return Rope(positions, self.inv_freq, self.attention_scaling, dtype)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype,
                scaled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape positions.shape + (head_dim,), in float32 maths then cast to `dtype`."""
        return rotary_tables(positions, self.inv_freq, self.attention_scaling if scaled else 1.0, dtype)

    def shift(self, k: torch.Tensor, delta: int) -> torch.Tensor:
        """Re-rotate already-rotated keys (..., seq, head_dim) by `delta` positions (inputs.rotate_keys)."""
        return rotate_keys(k, self.inv_freq, delta)

