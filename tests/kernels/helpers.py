"""What the kernel tests share: the device, a kernels-on context, the error measure and the
per-sequence inputs of the batched tests."""

from __future__ import annotations

import pytest
import torch

from triforce.inputs import DevicePositions
from triforce.kernels import triton_available
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding

requires_triton = pytest.mark.skipif(not triton_available(), reason="Triton is not installed (pip install triton)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Every decode kernel takes a batch with per-sequence device values (kernels/*.py): each is
# compared with its reference for B = 1 (a one-element start tensor) and B = 3 (different starts),
# and the batched reference with B one-sequence calls, row by row.
BATCHES = [1, 3]


def kernels_ctx(workspace=None, *, pdl: bool = False) -> KernelContext:
    """The Triton kernels on this device (through the interpreter on a CPU), launched plainly
    (or with programmatic dependent launch), sharing `workspace`'s counters where given."""
    return KernelContext(KernelPolicy.resolve(DEVICE, {"kernels": True}), pdl=pdl, workspace=workspace)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def starts(batch: int, *values: int) -> torch.Tensor:
    """The first `batch` of `values` as a device tensor: one start per sequence."""
    return torch.tensor(values[:batch], device=DEVICE)


def yarn_rotary(hq: int, hkv: int, D: int) -> RotaryEmbedding:
    """A YaRN-scaled rotary embedding of `hq` query and `hkv` KV heads of dimension D."""
    cfg = ModelConfig(vocab_size=8, hidden_size=hq * D, intermediate_size=8, num_layers=1, num_heads=hq,
                      num_kv_heads=hkv, head_dim=D, max_position_embeddings=4096,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})
    return RotaryEmbedding(cfg).to(DEVICE)


def batch_positions(kind: str, batch: int, T: int):
    """(positions as the kernels take them, the same as a (B, T) tensor)."""
    first = starts(batch, 2000, 7, 513)
    table = first[:, None] + torch.arange(T, device=DEVICE)
    if kind == "start":
        return DevicePositions(first, T), table
    if kind == "shared":  # one row of positions for every sequence
        return table[0], table[:1].expand(batch, T)
    return table, table


def untouched(cache: torch.Tensor, slots, T: int, fill: float = 7.0) -> None:
    """Row b's cache holds new values at slots[b] .. slots[b] + T and the fill everywhere else."""
    S = cache.shape[2]
    for b, slot in enumerate(slots):
        keep = torch.ones(S, dtype=torch.bool)
        keep[slot:slot + T] = False
        assert (cache[b][:, keep] == fill).all() and not (cache[b][:, ~keep] == fill).any()
