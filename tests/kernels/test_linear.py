"""kernels.linear: the fused linear kernel (norm / residual / gated prologues), split-K, the RMSNorm
folded into the products around it, and the q/k/v product with its rotary + cache-write epilogue,
one sequence and a batch, against the torch reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import (DEVICE, batch_positions, kernels_ctx, rel_err, requires_triton, starts, untouched,
                                   yarn_rotary)
from triforce.kernels.policy import H100, KernelPolicy
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding

pytestmark = requires_triton


LINEAR_CASES = [  # (rows, in features, out features, bias)
    (1, 96, 200, False),
    (7, 256, 48, True),
    (17, 80, 130, False),  # in features not a multiple of the block, out features not of the slice
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: "m{}-k{}-n{}-bias{}".format(*c))
@pytest.mark.parametrize("prologue", ["none", "norm", "norm+residual", "gated", "norm+gated"])
def test_fused_linear_matches_reference(prologue, case, dtype):
    from triforce.kernels.linear import linear, norm_linear

    M, K, N, with_bias = case
    g = torch.Generator().manual_seed(M * 1000 + K)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if with_bias else None
    x = torch.randn(1, M, K, generator=g).to(DEVICE, dtype)
    r = torch.randn(1, M, K, generator=g).to(DEVICE, dtype)
    nw = (1 + 0.1 * torch.randn(K, generator=g)).to(DEVICE, dtype)
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    gated = prologue.endswith("gated")
    outs = {}
    for use_triton in (True, False):
        ctx = kernels_ctx() if use_triton else None
        if prologue in ("none", "gated"):
            outs[use_triton] = (linear(x, w, b, gated=gated, ctx=ctx),)
        else:
            residual = r if prologue == "norm+residual" else None
            outs[use_triton] = norm_linear(x, residual, nw, 1e-5, w, b, gated=gated, ctx=ctx)
    assert outs[True][0].shape == (1, M, N // 2 if gated else N)
    for out, ref in zip(outs[True], outs[False]):
        assert out.shape == ref.shape
        assert rel_err(out, ref) < tol
    if prologue == "norm+residual":
        torch.testing.assert_close(outs[True][1], outs[False][1], atol=0, rtol=0)  # h = x + r, rounded as torch


def split(x, w, split_k: int, gated: bool = False):
    """The policy's launch for this product with `split_k` input parts."""
    import dataclasses

    launch = KernelPolicy(H100).linear_launch(x.numel() // x.shape[-1], w.shape[0], w.shape[1], gated=gated,
                                              element_size=x.element_size())
    return dataclasses.replace(launch, split_k=split_k)


@pytest.mark.parametrize("split_k", [2, 3, 4])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("case", [(17, 300, 96, True), (3, 1024, 64, False)], ids=lambda c: "m{}-k{}-n{}".format(*c))
def test_split_k_linear_matches_one_pass(case, gated, split_k):
    """Split-K: each tile's inputs in split_k parts, reduced by the tile's last program, equals the
    one-pass product, again on a second call (the arrival counters are back at zero)."""
    from triforce.kernels.triton_linear import fused_linear
    from triforce.kernels.workspace import Workspace

    workspace = Workspace(DEVICE)
    M, K, N, with_bias = case
    g = torch.Generator().manual_seed(K + split_k)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE)
    b = torch.randn(N, generator=g).to(DEVICE) if with_bias else None
    x = torch.randn(1, M, K, generator=g).to(DEVICE)
    one_pass = fused_linear(x, w, b, gated=gated, launch=split(x, w, 1, gated))[0]
    for _ in range(2):
        out = fused_linear(x, w, b, gated=gated, launch=split(x, w, split_k, gated), workspace=workspace)[0]
        assert rel_err(out, one_pass) < 1e-5
        assert not workspace.counters("split_k", 1).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows,split_k,gated", [(1, 1, False), (7, 2, True), (17, 1, False), (3, 3, True)])
def test_norm_folded_into_the_products_around_it(rows, split_k, gated, dtype):
    """PreNormed: the producer adds the residual and writes h, h * norm weight and its tiles' sums of
    squares; the consumer scales its rows in the epilogue. Equals the norm as its own step: h exactly,
    the consumer's output to rounding (torch rounds h * rstd before the weight, the fold h * weight)."""
    from triforce.kernels.linear import linear, linear_add_norm, norm_linear
    from triforce.kernels.prenormed import PreNormed
    from triforce.kernels.triton_linear import fused_linear

    K, N, P = 192, 96, 130  # producer 192 -> 96, consumer 96 -> 130 (260 gated)
    g = torch.Generator().manual_seed(rows + split_k)
    wp = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
    bp = torch.randn(N, generator=g).to(DEVICE, dtype)
    wc = (torch.randn(2 * P if gated else P, N, generator=g) / N ** 0.5).to(DEVICE, dtype)
    x = torch.randn(1, rows, K, generator=g).to(DEVICE, dtype)
    r = torch.randn(1, rows, N, generator=g).to(DEVICE, dtype)
    nw = (1 + 0.1 * torch.randn(N, generator=g)).to(DEVICE, dtype)
    pre = fused_linear(x, wp, bp, residual=r, norm_out=nw, launch=split(x, wp, split_k))[0]
    assert isinstance(pre, PreNormed) and pre.sq.dtype == torch.float32
    out, h = norm_linear(pre, None, nw, 1e-5, wc, gated=gated, ctx=kernels_ctx())
    ref, h_ref = norm_linear(linear(x, wp, bp), r, nw, 1e-5, wc, gated=gated)
    product = fused_linear(x, wp, bp, launch=split(x, wp, split_k))[0]
    torch.testing.assert_close(h, product + r, atol=0, rtol=0)  # h = product + residual, rounded as torch
    assert rel_err(h, h_ref) < (1e-6 if dtype == torch.float32 else 1e-3)
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 5e-3)
    # the model's entry point (its own split) gives the same to rounding
    again = linear_add_norm(x, wp, bp, r, nw, kernels_ctx())
    assert rel_err(again.h, h) < (1e-6 if dtype == torch.float32 else 1e-3)


def test_default_split_k_fills_the_gpu_once():
    split_k = KernelPolicy(H100).split_k  # 132 SMs
    assert split_k(64, 17, 4096, 256) == 2  # o_proj / down_proj: 64 tiles -> 128 programs
    assert split_k(64, 1, 4096, 256) == 1  # one row: 16-wide tiles fill the GPU already
    assert split_k(448, 17, 4096, 256) == 1  # gate/up fills it
    assert split_k(30, 7, 4096, 256) == 4
    assert split_k(64, 17, 768, 256) == 1  # too short to split: parts of fewer than two blocks


QKV_CASES = [  # (tokens, q heads, kv heads, head dim, residual, bias, positions given as a start scalar)
    (1, 4, 4, 64, True, False, True),
    (1, 8, 2, 32, False, True, False),  # the first layer: no residual yet
    (3, 4, 2, 64, True, False, True),  # a middle-level step: norm apart, the projection on the matrix unit
    (7, 8, 2, 32, True, True, False),
    (3, 2, 1, 128, True, False, True),  # 7B/8B head dim: two programs per head on the matrix-unit path
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", QKV_CASES, ids=lambda c: "t{}-hq{}-hkv{}-d{}-res{}-bias{}-start{}".format(*c))
def test_qkv_projection_with_rotary_and_cache_write_matches_reference(case, dtype):
    """kernels.linear.qkv_rope_store: the product's epilogue rotates q and k and writes k and v to
    the cache slots, exactly as the projection followed by kernels.rotary's reference."""
    from triforce.kernels.linear import qkv_rope_store
    from triforce.inputs import DevicePositions

    T, hq, hkv, D, with_residual, with_bias, from_start = case
    hidden, S, slot = 96, 40, 17
    cfg = ModelConfig(vocab_size=8, hidden_size=hq * D, intermediate_size=8, num_layers=1, num_heads=hq,
                      num_kv_heads=hkv, head_dim=D, max_position_embeddings=4096,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})
    rotary = RotaryEmbedding(cfg).to(DEVICE)
    start = torch.tensor(2000, device=DEVICE)
    positions = DevicePositions(start, T) if from_start else torch.arange(2000, 2000 + T, device=DEVICE)
    g = torch.Generator().manual_seed(T * 100 + D)
    n = (hq + 2 * hkv) * D
    x = torch.randn(1, T, hidden, generator=g).to(DEVICE, dtype)
    r = torch.randn(1, T, hidden, generator=g).to(DEVICE, dtype) if with_residual else None
    nw = (1 + 0.1 * torch.randn(hidden, generator=g)).to(DEVICE, dtype)
    w = (torch.randn(n, hidden, generator=g) / hidden ** 0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if with_bias else None
    outs = []
    for use_triton in (True, False):
        kc = torch.full((1, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        vc = torch.full((1, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        q, h = qkv_rope_store(x, r, nw, 1e-5, w, b, rotary.at(positions, dtype), kc, vc,
                              torch.tensor(slot, device=DEVICE), hq, hkv, D, ctx=kernels_ctx() if use_triton else None)
        assert q.shape == (1, hq, T, D)
        outs.append((q, kc, vc, h))
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    for out, ref in zip(outs[0][:3], outs[1][:3]):
        assert rel_err(out, ref) < tol
    torch.testing.assert_close(outs[0][3], outs[1][3], atol=0, rtol=0)  # h = x + r, rounded as torch
    kc = outs[0][1]
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[slot:slot + T] = False
    assert (kc[:, :, untouched] == 7.0).all() and (outs[0][2][:, :, untouched] == 7.0).all()
    assert not (kc[:, :, slot:slot + T] == 7.0).any()


QKV_BATCH_CASES = [  # (batch, tokens, q heads, kv heads, head dim, positions, bias, input)
    (1, 3, 4, 2, 64, "start", False, "x"),  # one sequence with a one-element start tensor
    (3, 1, 4, 2, 64, "start", False, "x"),  # three one-token steps: 3 rows of the product
    (3, 3, 8, 2, 32, "table", True, "x"),
    (3, 2, 2, 1, 128, "start", False, "prenormed"),  # two programs per head; the norm's row scale in the epilogue
    (3, 7, 4, 4, 32, "shared", False, "x"),  # 21 rows
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", QKV_BATCH_CASES, ids=lambda c: "b{}-t{}-hq{}-hkv{}-d{}-{}-bias{}-{}".format(*c))
def test_qkv_projection_of_a_batch_matches_reference(case, dtype):
    """The q/k/v product's rotary + cache-write epilogue over B sequences: row r of the product is
    token r % T of sequence r // T, at its sequence's positions and slots, in its cache row."""
    from triforce.kernels.linear import linear_add_norm, qkv_rope_store

    batch, T, hq, hkv, D, positions, with_bias, given = case
    hidden, S = 96, 40
    slots = (17, 0, 30)[:batch]
    rotary = yarn_rotary(hq, hkv, D)
    pos, _ = batch_positions(positions, batch, T)
    g = torch.Generator().manual_seed(batch * 100 + T)
    n = (hq + 2 * hkv) * D
    x = torch.randn(batch, T, hidden, generator=g).to(DEVICE, dtype)
    r = torch.randn(batch, T, hidden, generator=g).to(DEVICE, dtype)
    nw = (1 + 0.1 * torch.randn(hidden, generator=g)).to(DEVICE, dtype)
    w = (torch.randn(n, hidden, generator=g) / hidden ** 0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=g).to(DEVICE, dtype) if with_bias else None
    if given == "prenormed":  # as the decode plan hands it from the previous layer's down_proj
        wp = (torch.randn(hidden, 64, generator=g) / 8).to(DEVICE, dtype)
        x = linear_add_norm(torch.randn(batch, T, 64, generator=g).to(DEVICE, dtype), wp, None, r, nw, kernels_ctx())
        r = None
    outs = []
    for use_triton in (True, False):
        kc = torch.full((batch, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        vc = torch.full((batch, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        q, h = qkv_rope_store(x, r, nw, 1e-5, w, b, rotary.at(pos, dtype), kc, vc, starts(batch, *slots), hq, hkv,
                              D, ctx=kernels_ctx() if use_triton else None)
        assert q.shape == (batch, hq, T, D)
        outs.append((q, kc, vc, h))
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    for out, ref in zip(outs[0][:3], outs[1][:3]):
        assert rel_err(out, ref) < tol
    torch.testing.assert_close(outs[0][3], outs[1][3], atol=0, rtol=0)  # h = x + r, rounded as torch
    untouched(outs[0][1], slots, T)
    untouched(outs[0][2], slots, T)
