"""kernels.rotary: the rotary + cache-write kernel against its torch reference, one sequence (positions
as a tensor or a device start) and a batch at per-sequence positions and slots."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import (
    BATCHES,
    DEVICE,
    batch_positions,
    kernels_ctx,
    requires_triton,
    starts,
    untouched,
    yarn_rotary,
)
from triforce.kernels.rotary import rope_store, rope_store_reference
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding

pytestmark = requires_triton


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "qk-norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
def test_rope_store_matches_reference(heads, dtype, norm):
    """With `norms` (Qwen3's per-head q/k RMSNorm before rotary) the kernel normalises each head first."""
    hq, hkv = heads
    T, D, S, slot = 3, 64, 40, 17
    cfg = ModelConfig(vocab_size=8, hidden_size=hq * D, intermediate_size=8, num_layers=1, num_heads=hq,
                      num_kv_heads=hkv, head_dim=D, max_position_embeddings=4096,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})
    rope = RotaryEmbedding(cfg).to(DEVICE).at(torch.arange(2000, 2000 + T, device=DEVICE), dtype)
    g = torch.Generator().manual_seed(3)
    qkv = (3 * torch.randn(1, T, (hq + 2 * hkv) * D, generator=g)).to(DEVICE, dtype)
    norms = None
    if norm:  # weights near 1, not 1: a kernel that skipped them would differ
        weights = (1 + 0.3 * torch.randn(2, D, generator=g)).to(DEVICE, dtype)
        norms = (weights[0], weights[1], 1e-6)
    outs = []
    for fn in (rope_store, rope_store_reference):
        buf = qkv.clone()
        q, k, v = buf.split([hq * D, hkv * D, hkv * D], dim=-1)  # the model's views of its fused projection
        q, k, v = (t.view(1, T, -1, D).transpose(1, 2) for t in (q, k, v))
        k_cache = torch.full((1, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        v_cache = torch.full((1, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        kw = {"ctx": kernels_ctx(), "norms": norms} if fn is rope_store else {"norms": norms}
        fn(q, k, v, rope, k_cache, v_cache, torch.tensor(slot, device=DEVICE), **kw)
        outs.append((q, k_cache, v_cache))
    if norm:  # the reference with norms is the model's RMSNorm of each head, then the plain rotary
        head = qkv[..., :hq * D].view(1, T, hq, D).transpose(1, 2).float()
        expect = (head * torch.rsqrt(head.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * norms[0]
        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype, device=DEVICE)
        rope_store_reference(expect, zeros(1, hkv, T, D), zeros(1, hkv, T, D), rope, zeros(1, hkv, S, D),
                             zeros(1, hkv, S, D), torch.tensor(slot, device=DEVICE))
        torch.testing.assert_close(outs[1][0], expect, atol=0, rtol=0)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    for out, ref in zip(outs[0], outs[1]):
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    k_cache = outs[0][1]
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[slot:slot + T] = False
    assert (k_cache[:, :, untouched] == 7.0).all()  # nothing outside the block's slots is written
    assert not (k_cache[:, :, slot:slot + T] == 7.0).any()


def test_rope_store_reads_positions_from_a_start_scalar():
    from triforce.inputs import DevicePositions

    cfg = ModelConfig(vocab_size=8, hidden_size=4 * 64, intermediate_size=8, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=64, max_position_embeddings=4096)
    rotary = RotaryEmbedding(cfg).to(DEVICE)
    T = 3
    qkv = torch.randn(1, T, 8 * 64, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    outs = []
    for positions in (DevicePositions(torch.tensor(900, device=DEVICE), T), torch.arange(900, 900 + T, device=DEVICE)):
        buf = qkv.clone()
        q, k, v = (t.view(1, T, -1, 64).transpose(1, 2) for t in buf.split([256, 128, 128], dim=-1))
        kc, vc = torch.zeros(1, 2, 10, 64, device=DEVICE), torch.zeros(1, 2, 10, 64, device=DEVICE)
        rope_store(q, k, v, rotary.at(positions, torch.float32), kc, vc, torch.tensor(4, device=DEVICE),
                   ctx=kernels_ctx())
        outs.append(torch.cat([q.flatten(), kc.flatten(), vc.flatten()]))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("positions", ["start", "table", "shared"])
@pytest.mark.parametrize("batch", BATCHES)
def test_rope_store_of_a_batch_matches_reference(batch, positions, dtype):
    hq, hkv, T, D, S = 4, 2, 3, 64, 40
    slots = (17, 0, 30)[:batch]
    rotary = yarn_rotary(hq, hkv, D)
    pos, table = batch_positions(positions, batch, T)
    qkv = torch.randn(batch, T, (hq + 2 * hkv) * D, generator=torch.Generator().manual_seed(16)).to(DEVICE, dtype)

    def run(fn, rope, rows=slice(None), slot=None, **kw):
        buf = qkv[rows].clone()
        q, k, v = (t.view(buf.shape[0], T, -1, D).transpose(1, 2) for t in buf.split([hq * D, hkv * D, hkv * D], -1))
        kc = torch.full((buf.shape[0], hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        vc = kc.clone()
        fn(q, k, v, rope, kc, vc, starts(batch, *slots) if slot is None else slot, **kw)
        return q, kc, vc

    out = run(rope_store, rotary.at(pos, dtype), ctx=kernels_ctx())
    ref = run(rope_store_reference, rotary.at(pos, dtype))
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=tol, rtol=tol)
    untouched(out[1], slots, T)
    untouched(out[2], slots, T)
    for b in range(batch):  # the batched reference is B one-sequence calls
        one = run(rope_store_reference, rotary.at(table[b], dtype), slice(b, b + 1), torch.tensor(slots[b]))
        for o, r in zip(ref, one):
            torch.testing.assert_close(o[b:b + 1], r, atol=0, rtol=0)
