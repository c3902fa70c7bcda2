"""A tiny, seeded random Llama for tests and smoke runs: no download, no weights on disk.

`model.name: tiny-random` selects it; the other keys of the model config (vocab_size,
hidden_size, num_layers, ...) size it. Weights are drawn from an explicit `torch.Generator`,
so the same seed gives the same model on every machine.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from triforce.config import TINY_MODEL
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer

NAME = TINY_MODEL  # model.name of the seeded tiny model (config.py)

DEFAULTS: dict[str, Any] = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_layers=2,
                                num_heads=4, num_kv_heads=2, max_position_embeddings=8192,
                                rope_theta=10000.0, eos_token_id=(257,), bos_token_id=256)


def tiny_config(overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """ModelConfig of the tiny model: DEFAULTS updated with `overrides` (ModelConfig field names)."""
    values = {**DEFAULTS, **dict(overrides or {})}
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(values) - names - {"seed"}
    if unknown:
        raise ConfigError(f"unknown tiny-random option(s) {sorted(unknown)}; known: {sorted(names)}")
    values.pop("seed", None)
    values.setdefault("head_dim", values["hidden_size"] // values["num_heads"])
    eos = values["eos_token_id"]
    values["eos_token_id"] = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    return ModelConfig(**values)


def random_state(cfg: ModelConfig, seed: int, std: float = 0.5) -> dict[str, torch.Tensor]:
    """Seeded weights for every parameter: norms near 1, matrices N(0, std / sqrt(fan_in))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Transformer(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    state = {}
    for name, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=gen)
        if name.endswith("norm.weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name == "embed_tokens.weight":
            state[name] = noise
        else:
            state[name] = noise * (std / shape[-1] ** 0.5)
    return state


def build_tiny(overrides: Mapping[str, Any] | None = None, *, seed: int = 0, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", rope_scaling: Mapping[str, Any] | None = None,
               **build_kw) -> Transformer:
    """The tiny model; `build_kw` goes to loading.build_model (e.g. attention=...)."""
    from triforce.models.loading import build_model, with_rope_scaling

    cfg = tiny_config(overrides)
    state = random_state(cfg, seed)  # drawn before rope scaling: it does not change the weights
    cfg = with_rope_scaling(cfg, dict(rope_scaling) if rope_scaling else None)
    return build_model(cfg, state, dtype=dtype, device=device, **build_kw)
