"""kernels.streaming: the StreamingLLM window shift (evict, shift down, re-rotate) against its torch
reference, every sequence alike and each sequence of a batch at its own end and count."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import DEVICE, kernels_ctx, requires_triton, yarn_rotary
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding

pytestmark = requires_triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("start,end,n", [(16, 256, 1), (4, 100, 3), (2, 40, 38), (0, 70, 5)])
def test_streaming_window_shift_matches_reference(start, end, n, dtype):
    """kernels.streaming: evicting n window tokens (slots start.. start+n) shifts the kept keys down
    n slots, re-rotated by -n positions, and the values with them; nothing else changes."""
    from triforce.kernels.streaming import shift_window, shift_window_reference

    cfg = ModelConfig(vocab_size=8, hidden_size=4 * 64, intermediate_size=8, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=64, max_position_embeddings=4096)
    rope = RotaryEmbedding(cfg).to(DEVICE)
    g = torch.Generator().manual_seed(end)
    k = torch.randn(2, 1, 2, 260, 64, generator=g).to(DEVICE, dtype)
    v = torch.randn(2, 1, 2, 260, 64, generator=g).to(DEVICE, dtype)
    outs = []
    for use_triton in (True, False):
        kk, vv = k.clone(), v.clone()
        if use_triton:
            shift_window(kk, vv, start, end, n, rope.inv_freq, ctx=kernels_ctx())
        else:
            shift_window_reference(kk, vv, start, end, n, rope.inv_freq)
        outs.append((kk, vv))
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=tol, rtol=tol)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=0, rtol=0)
    assert torch.equal(outs[0][0][:, :, :, end - n:], k[:, :, :, end - n:])  # slots past the new end untouched
    assert torch.equal(outs[0][0][:, :, :, :start], k[:, :, :, :start])  # the sink too


@pytest.mark.parametrize("per_sequence", ["lists", "tensors", "int end"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_streaming_window_shift_per_sequence_matches_reference(dtype, per_sequence):
    """Each sequence of a batch evicts its own count from its own end (n_b = 0: it keeps its slots),
    in one launch; the batched reference is one call per sequence."""
    from triforce.kernels.streaming import shift_window, shift_window_reference

    start, S = 4, 120
    ends, ns = [120, 100, 40], [1, 0, 33]
    if per_sequence == "int end":
        ends = 100
    elif per_sequence == "tensors":
        ends, ns = torch.tensor(ends, device=DEVICE), torch.tensor(ns, device=DEVICE)
    rope = yarn_rotary(4, 2, 64)
    g = torch.Generator().manual_seed(18)
    k = torch.randn(2, 3, 2, S, 64, generator=g).to(DEVICE, dtype)
    v = torch.randn(2, 3, 2, S, 64, generator=g).to(DEVICE, dtype)
    kk, vv = k.clone(), v.clone()
    shift_window(kk, vv, start, ends, ns, rope.inv_freq, ctx=kernels_ctx())
    rk, rv = k.clone(), v.clone()
    shift_window_reference(rk, rv, start, ends, ns, rope.inv_freq)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(kk, rk, atol=tol, rtol=tol)
    torch.testing.assert_close(vv, rv, atol=0, rtol=0)
    host_ends = ends.tolist() if isinstance(ends, torch.Tensor) else [ends] * 3 if isinstance(ends, int) else ends
    host_ns = ns.tolist() if isinstance(ns, torch.Tensor) else ns
    for b, (end, n) in enumerate(zip(host_ends, host_ns)):
        one_k, one_v = k[:, b:b + 1].clone(), v[:, b:b + 1].clone()
        if n:
            shift_window_reference(one_k, one_v, start, end, n, rope.inv_freq)
        torch.testing.assert_close(rk[:, b:b + 1], one_k, atol=0, rtol=0)
        torch.testing.assert_close(rv[:, b:b + 1], one_v, atol=0, rtol=0)
        assert torch.equal(kk[:, b, :, end - n:], k[:, b, :, end - n:])  # past the new end: untouched
        assert torch.equal(kk[:, b, :, :start], k[:, b, :, :start])  # the sink too
    assert torch.equal(kk[:, 1], k[:, 1]) and torch.equal(vv[:, 1], v[:, 1])  # n = 0: bit for bit as it was
