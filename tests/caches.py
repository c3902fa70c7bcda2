"""Caches for tests that drive a model directly (the engine builds its own from cache specs)."""

from __future__ import annotations

from triforce.cache.static import StaticKVCache


def full_cache(model, capacity: int, batch_size: int = 1) -> StaticKVCache:
    """A full KV cache of `capacity` slots per sequence for `model` (its shape, dtype and device)."""
    return StaticKVCache.for_model(model.config, capacity, model.dtype, model.device, batch_size=batch_size)
