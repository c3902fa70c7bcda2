"""Chunk statistics: what a selection (cache/retrieval.py) scores of a full cache's keys, computed
by whichever cache holds the keys (a device cache from its keys when asked, an offloaded one as
each chunk fills: cache/offload.py)."""

from __future__ import annotations

import torch


def chunk_stats(keys: torch.Tensor, chunk_size: int, scorer: str) -> torch.Tensor:
    """Per-chunk statistics a scorer reads, (B, H, n // chunk_size, S, D) for keys (B, H, n, D)
    with n a multiple of chunk_size: the float32 mean (S = 1) or the max and min (S = 2, exact in
    the keys' dtype)."""
    B, H, n, D = keys.shape
    chunked = keys.reshape(B, H, n // chunk_size, chunk_size, D)
    if scorer == "mean":
        return (chunked.sum(-2, dtype=torch.float32) / chunk_size)[:, :, :, None]
    return torch.stack([chunked.amax(-2), chunked.amin(-2)], dim=3)
