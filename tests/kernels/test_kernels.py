"""Each Triton kernel against its torch reference, on fresh random inputs (on a CPU through
Triton's interpreter; scripts/gpu_check.py repeats this on a GPU, compiled)."""

from __future__ import annotations

import pytest
import torch

from triforce.kernels import triton_available
from triforce.kernels.activation import silu_mul, silu_mul_reference
from triforce.kernels.decode_attention import decode_attention, decode_attention_reference
from triforce.kernels.norm import rms_norm, rms_norm_reference
from triforce.kernels.policy import H100, H200, AttentionLaunch, KernelContext, KernelPolicy
from triforce.kernels.rotary import rope_store, rope_store_reference
from triforce.models.config import ModelConfig
from triforce.models.rope import RotaryEmbedding

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed (pip install triton)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernels_ctx() -> KernelContext:
    """The Triton kernels on this device (through the interpreter on a CPU), launched plainly."""
    return KernelContext(KernelPolicy.resolve(DEVICE, {"kernels": True}))


def splits_launch(q, k, splits: int) -> AttentionLaunch:
    """The policy's attention launch for these shapes, with `splits` key slices per KV head."""
    import dataclasses

    B, Hq, T, D = q.shape
    launch = kernels_ctx().policy.attention_launch(batch=B, kv_heads=k.shape[1], rows=Hq // k.shape[1] * T,
                                                   head_dim=D, capacity=k.shape[2], element_size=q.element_size())
    return dataclasses.replace(launch, splits=splits)


def attention(q, k, v, length, scale, splits, **kw):
    return decode_attention(q, k, v, length, scale, ctx=kernels_ctx(), launch=splits_launch(q, k, splits), **kw)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


# (batch, q heads, kv heads, new tokens, head dim, capacity, kv_len, splits)
ATTENTION_CASES = [
    (1, 4, 4, 1, 64, 300, 200, 4),     # MHA, one token, kv_len not a multiple of the block
    (1, 8, 2, 7, 64, 500, 333, 8),     # GQA group 4, a 7-token verify
    (1, 6, 3, 17, 32, 257, 257, 2),    # a 17-token verify, cache full
    (1, 4, 1, 3, 128, 130, 70, 1),     # MQA, one split
    (2, 4, 2, 2, 64, 96, 2, 4),        # batch 2; kv_len == T: only the new block exists, most splits empty
    (1, 32, 8, 4, 32, 1024, 900, 16),  # group 4 x 4 tokens, many splits
    (1, 8, 2, 17, 64, 700, 650, 5),    # group 4 x 17 tokens = 68 rows: a 64-row tile + a 16-row tail; 5 splits
    (1, 6, 2, 12, 32, 300, 280, 3),    # 36 rows: 32 + 16
    (1, 12, 12, 1, 64, 256, 201, 1),   # the 68M draft: one split, the output written directly
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: "b{}-hq{}-hkv{}-t{}-d{}-s{}-len{}-sp{}".format(*c))
def test_decode_attention_matches_reference(case, dtype):
    B, Hq, Hkv, T, D, S, kv_len, splits = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    q = torch.randn(B, T, Hq, D, generator=g).to(DEVICE, dtype).transpose(1, 2)  # a strided view, as in the model
    k = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    k[:, :, kv_len:] = float("nan")  # slots past the length must never be read into the result
    v[:, :, kv_len:] = float("nan")
    length = torch.tensor([kv_len], device=DEVICE)
    out = attention(q, k, v, length, D ** -0.5, splits)
    ref = decode_attention_reference(q.double(), k.double().nan_to_num(), v.double().nan_to_num(), length, D ** -0.5)
    assert out.shape == (B, T, Hq, D) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3)
    # the captured path's form of the same length: the block's first slot (a device scalar) + T
    offset = attention(q, k, v, length - T, D ** -0.5, splits, kv_offset=T)
    torch.testing.assert_close(offset, out, atol=0, rtol=0)


def test_query_rows_take_one_warpgroup_tile_per_64():
    tile = KernelPolicy(H100).attention_tile
    for rows, block_m, warps in ((1, 64, 4), (28, 64, 4), (64, 64, 4), (65, 128, 8), (68, 128, 8), (128, 128, 8)):
        assert tile(rows, 128)[:2] == (block_m, warps)
    assert tile(68, 128)[2] == 4 and tile(4, 128)[2] == 3
    # fewer stages where the buffers would not fit shared memory (float32, head_dim 256)
    assert tile(68, 128, element_size=4)[2] == 2
    assert tile(68, 256)[2] == 2 and tile(4, 256)[2] == 2
    from triforce.kernels.triton_decode import decode_attention as split_kv_attention
    with pytest.raises(ValueError, match="a tile of 64 query rows for 68"):  # a tuning sweep's bad choice
        split_kv_attention(torch.empty(1, 32, 17, 128), torch.empty(1, 8, 64, 128), torch.empty(1, 8, 64, 128),
                           torch.tensor([64]), 0.1, AttentionLaunch(64, 64, 4, 3, 1))


def test_decode_attention_is_causal_inside_the_new_block():
    """Query t must not see the block's later keys: moving the length by one changes the output,
    and the first query of a block equals a single-token step at its own length."""
    B, Hq, Hkv, T, D, S = 1, 4, 2, 5, 64, 200
    g = torch.Generator().manual_seed(7)
    q = torch.randn(B, Hq, T, D, generator=g)
    k, v = torch.randn(B, Hkv, S, D, generator=g), torch.randn(B, Hkv, S, D, generator=g)
    block = attention(q, k, v, torch.tensor([150]), D ** -0.5, 4)
    first = attention(q[:, :, :1], k, v, torch.tensor([146]), D ** -0.5, 4)
    torch.testing.assert_close(block[:, :1], first, atol=1e-5, rtol=1e-5)
    shifted = attention(q, k, v, torch.tensor([151]), D ** -0.5, 4)
    assert (shifted - block).abs().max() > 1e-3


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rms_norm_matches_reference(residual, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 96, generator=g).to(DEVICE, dtype)
    r = torch.randn(3, 5, 96, generator=g).to(DEVICE, dtype) if residual else None
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(DEVICE, dtype)
    y, h = rms_norm(x, w, 1e-6, r, use_triton=True)
    y_ref, h_ref = rms_norm_reference(x, w, 1e-6, r)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)  # the residual add rounds exactly as torch
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_mul_matches_reference(dtype):
    gate_up = torch.randn(2, 3, 2 * 1500, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(silu_mul(gate_up, use_triton=True), silu_mul_reference(gate_up), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
def test_rope_store_matches_reference(heads, dtype):
    hq, hkv = heads
    T, D, S, slot = 3, 64, 40, 17
    cfg = ModelConfig(vocab_size=8, hidden_size=hq * D, intermediate_size=8, num_layers=1, num_heads=hq,
                      num_kv_heads=hkv, head_dim=D, max_position_embeddings=4096,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})
    rope = RotaryEmbedding(cfg).to(DEVICE).at(torch.arange(2000, 2000 + T, device=DEVICE), dtype)
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(1, T, (hq + 2 * hkv) * D, generator=g).to(DEVICE, dtype)
    outs = []
    for fn in (rope_store, rope_store_reference):
        buf = qkv.clone()
        q, k, v = buf.split([hq * D, hkv * D, hkv * D], dim=-1)  # the model's views of its fused projection
        q, k, v = (t.view(1, T, -1, D).transpose(1, 2) for t in (q, k, v))
        k_cache = torch.full((1, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        v_cache = torch.full((1, hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        kw = dict(use_triton=True) if fn is rope_store else {}
        fn(q, k, v, rope, k_cache, v_cache, torch.tensor(slot, device=DEVICE), **kw)
        outs.append((q, k_cache, v_cache))
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    for out, ref in zip(outs[0], outs[1]):
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    k_cache = outs[0][1]
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[slot:slot + T] = False
    assert (k_cache[:, :, untouched] == 7.0).all()  # nothing outside the block's slots is written
    assert not (k_cache[:, :, slot:slot + T] == 7.0).any()


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
    from triforce.kernels.linear import PreNormed, linear, linear_add_norm, norm_linear
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


@pytest.mark.parametrize("top_p", [0.9, 0.5, 1.0])
@pytest.mark.parametrize("vocab", [64, 1000])
def test_top_p_kernel_matches_the_torch_definition(vocab, top_p):
    from triforce.kernels.top_p import top_p_probabilities
    from triforce.sampling import nucleus

    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(5, vocab, generator=g) * 3).to(DEVICE)
    logits[4, : vocab // 2] = logits[4, 0]  # a row of ties: tied tokens are kept or dropped together
    out = top_p_probabilities(logits, 0.6, top_p)
    ref = torch.softmax(logits.float() / 0.6, -1)
    ref = nucleus(ref, top_p) if top_p < 1 else ref
    assert torch.equal(out > 0, ref > 0)  # the same nucleus
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert (out[4, : vocab // 2] > 0).all() or (out[4, : vocab // 2] == 0).all()


def test_nucleus_keeps_ties_together_and_the_top_token():
    from triforce.sampling import nucleus

    probs = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1]])
    # mass strictly above 0.2 is 0.4 < 0.5: both 0.2s stay; above 0.1 is 0.8 >= 0.5: both go
    assert nucleus(probs, 0.5).nonzero()[:, 1].tolist() == [0, 1, 2]
    assert nucleus(probs, 0.3).nonzero()[:, 1].tolist() == [0]
    assert nucleus(torch.tensor([[0.9, 0.1]]), 0.05).nonzero()[:, 1].tolist() == [0]


def _nucleus_reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    from triforce.sampling import nucleus

    probs = torch.softmax(logits.float() / temperature, -1)
    return nucleus(probs, top_p) if top_p < 1 else probs


def _split_rows(vocab: int) -> torch.Tensor:
    """Rows that exercise the split top-p path: peaked, flat (the nucleus is most of the vocabulary),
    all tied, a tie run at the boundary, -inf logits (a whole chunk of them)."""
    g = torch.Generator().manual_seed(vocab)
    rows = [torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 0.55,
            torch.zeros(vocab), torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 2]
    rows[3][: vocab // 3] = rows[3][7]  # a third of the row tied at one value
    rows[4][: min(vocab // 2, 4096)] = float("-inf")  # a chunk that is all -inf
    return torch.stack(rows)


@pytest.mark.parametrize("top_p", [0.9, 0.5, 0.02, 1.0])
@pytest.mark.parametrize("vocab", [5000, 40000])
def test_top_p_split_path_matches_the_torch_definition(vocab, top_p):
    from triforce.kernels.triton_top_p import top_p_split

    logits = _split_rows(vocab).to(DEVICE)
    diagnostics = {}
    out = top_p_split(logits, 0.6, top_p, diagnostics=diagnostics)
    ref = _nucleus_reference(logits, 0.6, top_p)
    assert torch.equal(out > 0, ref > 0)  # the same nucleus, ties kept together
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    if top_p < 1:
        # the bracket (not the whole-row fallback) found the threshold: that path is what is tested
        assert not diagnostics["full_row"].any()
        assert (diagnostics["candidates"][[0, 1, 3, 4]] < vocab // 10).all()  # row 2: all tied, all candidates


def test_top_p_split_fallback_and_bf16_logits():
    """The whole-row bisection (taken when the bracket misses) gives the same result; bf16 logits
    as the model emits them; several leading dimensions."""
    from triforce.kernels.triton_top_p import top_p_split

    logits = _split_rows(9000).to(DEVICE, torch.bfloat16)
    ref = _nucleus_reference(logits, 0.7, 0.9)
    diagnostics = {}
    full = top_p_split(logits, 0.7, 0.9, force_full=True, diagnostics=diagnostics)
    assert diagnostics["full_row"].all()
    assert torch.equal(full > 0, ref > 0)
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=1e-5)
    shaped = top_p_split(logits.reshape(5, 1, 9000), 0.7, 0.9)
    assert shaped.shape == (5, 1, 9000) and torch.equal(shaped.reshape(5, 9000) > 0, full > 0)
    torch.testing.assert_close(shaped.reshape(5, 9000), full, atol=1e-7, rtol=1e-6)


def test_top_p_split_llama3_vocabulary():
    from triforce.kernels.top_p import top_p_probabilities

    g = torch.Generator().manual_seed(128256)
    logits = torch.stack([torch.randn(128256, generator=g) * s for s in (3.0, 1.3)]).to(DEVICE, torch.bfloat16)
    out = top_p_probabilities(logits, 0.6, 0.9)
    ref = _nucleus_reference(logits, 0.6, 0.9)
    assert torch.equal(out > 0, ref > 0)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


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
    from triforce.models.rope import DevicePositions

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


def test_embedding_gathered_from_the_token_buffer():
    from triforce.kernels.embedding import TokenSlice, embed

    g = torch.Generator().manual_seed(5)
    weight = torch.randn(50, 80, generator=g).to(DEVICE)
    buffer = torch.randint(0, 50, (30,), generator=g).to(DEVICE)
    tokens = TokenSlice(buffer, torch.tensor(11, device=DEVICE), 3)
    out = embed(weight, tokens, use_triton=True)
    assert out.shape == (1, 3, 80)
    torch.testing.assert_close(out, weight[buffer[11:14]][None], atol=0, rtol=0)


def test_rope_store_reads_positions_from_a_start_scalar():
    from triforce.models.rope import DevicePositions

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
        rope_store(q, k, v, rotary.at(positions, torch.float32), kc, vc, torch.tensor(4, device=DEVICE), use_triton=True)
        outs.append(torch.cat([q.flatten(), kc.flatten(), vc.flatten()]))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def _verify_case(k: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(k, vocab, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(k + 1, vocab, generator=g) * 2, -1)
    tokens = torch.multinomial(q, 1, generator=g)[:, 0]
    u = torch.rand(k, generator=g)
    race = torch.empty(vocab).exponential_(generator=g)
    return tokens, q, p, u, race


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("k,vocab", [(1, 7), (3, 50), (6, 10000), (17, 9000)])
def test_race_verify_kernel_matches_reference(k, vocab, residual):
    """kernels.verify: the acceptance prefix, the residual and the race over several chunks of the
    vocabulary, against the same function in torch ops on the same draws; the emitted token is
    written into the token buffer at base + n."""
    from triforce.kernels.verify import race_verify, race_verify_reference

    for seed in range(24):
        tokens, q, p, u, race = _verify_case(k, vocab, seed % 6)
        race = torch.empty(vocab).exponential_(generator=torch.Generator().manual_seed(100 + seed))
        if seed % 6 == 1:
            u = torch.zeros(k)  # every proposal accepted: the bonus row
        if seed % 6 == 2:
            p[: k] = q  # p = q, u = 1: rejected with an empty residual, drawn from p_n itself
            u = torch.ones(k)
        if seed % 6 == 3:  # the first proposal impossible under p, its mass moved to token 0:
            p[0] = q[0]  # the residual is one-hot at token 0
            p[0, 0] += p[0, tokens[0]] if tokens[0] != 0 else 0.0
            p[0, tokens[0]] = 0.0
        buffer = torch.full((k + 10,), -1, dtype=torch.int64)
        buffer[3:3 + k] = tokens
        out = race_verify(buffer[3:3 + k], q, p, u, race, residual=residual, out_tokens=buffer, base=3,
                          use_triton=True)
        ref = race_verify_reference(tokens, q, p, u, race, residual=residual)
        n, token = int(ref[0]), int(ref[1])
        assert out[:2].tolist() == [n, token] and out[2:2 + n].tolist() == tokens[:n].tolist()
        assert buffer[3 + n] == token
        if seed % 6 == 1:
            assert n == k
        if seed % 6 == 2:
            assert n == 0
        if seed % 6 == 3 and residual and tokens[0] != 0:
            assert (n, token) == (0, 0)


def test_race_sample_kernel_matches_reference_and_breaks_ties_low():
    from triforce.kernels.verify import race_sample, race_sample_reference

    g = torch.Generator().manual_seed(9)
    for vocab in (5, 5000, 12289):
        probs = torch.softmax(torch.randn(vocab, generator=g), -1)
        race = torch.empty(vocab).exponential_(generator=g)
        buffer = torch.zeros(5, dtype=torch.int64)
        token = race_sample(probs, race, out_tokens=buffer, index=4, use_triton=True)
        assert int(token) == int(race_sample_reference(probs, race)) == int(buffer[4])
    probs = torch.zeros(9000)
    probs[[100, 4500, 8000]] = 1 / 3  # three equal ratios in three chunks: the smallest index wins
    assert int(race_sample(probs, torch.ones(9000), use_triton=True)) == 100


@pytest.mark.parametrize("use_triton", [True, False])
def test_race_sample_writes_at_a_slot_read_from_the_device(use_triton):
    # a captured draft step writes its token at (the forward's start, a device value) + its length
    from triforce.kernels.verify import race_sample, race_sample_reference

    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(5000, generator=g), -1)
    race = torch.empty(5000).exponential_(generator=g)
    buffer = torch.full((12,), -1, dtype=torch.int64)
    race_sample(probs, race, out_tokens=buffer, index=2, index_from=torch.tensor([7]), use_triton=use_triton)
    expected = torch.full((12,), -1, dtype=torch.int64)
    expected[9] = race_sample_reference(probs, race)
    assert torch.equal(buffer, expected)


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
            shift_window(kk, vv, start, end, n, rope, use_triton=True)
        else:
            shift_window_reference(kk, vv, start, end, n, rope)
        outs.append((kk, vv))
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=tol, rtol=tol)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=0, rtol=0)
    assert torch.equal(outs[0][0][:, :, :, end - n:], k[:, :, :, end - n:])  # slots past the new end untouched
    assert torch.equal(outs[0][0][:, :, :, :start], k[:, :, :, :start])  # the sink too


# -- batches: B sequences at once, each with its own starts and lengths ----------------------------
# Every decode kernel takes a batch with per-sequence device values (kernels/*.py): each is
# compared with its reference for B = 1 (a one-element start tensor) and B = 3 (different starts),
# and the batched reference with B one-sequence calls, row by row.

BATCHES = [1, 3]


def _starts(batch: int, *values: int) -> torch.Tensor:
    return torch.tensor(values[:batch], device=DEVICE)


@pytest.mark.parametrize("batch", BATCHES)
def test_embedding_of_a_batch_reads_each_sequence_at_its_start(batch):
    from triforce.kernels.embedding import TokenSlice, embed, embed_reference

    g = torch.Generator().manual_seed(15)
    weight = torch.randn(50, 80, generator=g).to(DEVICE)
    buffer = torch.randint(0, 50, (batch, 30), generator=g).to(DEVICE)
    tokens = TokenSlice(buffer, _starts(batch, 11, 0, 26), 4)
    assert tokens.shape == (batch, 4) and tokens.ids().shape == (batch, 4)
    out = embed(weight, tokens, use_triton=True)
    expected = torch.stack([weight[buffer[b, s:s + 4]] for b, s in enumerate((11, 0, 26)[:batch])])
    assert out.shape == (batch, 4, 80)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(embed_reference(weight, tokens), expected, atol=0, rtol=0)


def _rope(hq: int, hkv: int, D: int):
    cfg = ModelConfig(vocab_size=8, hidden_size=hq * D, intermediate_size=8, num_layers=1, num_heads=hq,
                      num_kv_heads=hkv, head_dim=D, max_position_embeddings=4096,
                      rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})
    return RotaryEmbedding(cfg).to(DEVICE)


def _batch_positions(kind: str, batch: int, T: int):
    """(positions as the kernels take them, the same as a (B, T) tensor)."""
    from triforce.models.rope import DevicePositions

    starts = _starts(batch, 2000, 7, 513)
    table = starts[:, None] + torch.arange(T, device=DEVICE)
    if kind == "start":
        return DevicePositions(starts, T), table
    if kind == "shared":  # one row of positions for every sequence
        return table[0], table[:1].expand(batch, T)
    return table, table


def _untouched(cache: torch.Tensor, slots, T: int, fill: float = 7.0) -> None:
    """Row b's cache holds new values at slots[b] .. slots[b] + T and the fill everywhere else."""
    S = cache.shape[2]
    for b, slot in enumerate(slots):
        keep = torch.ones(S, dtype=torch.bool)
        keep[slot:slot + T] = False
        assert (cache[b][:, keep] == fill).all() and not (cache[b][:, ~keep] == fill).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("positions", ["start", "table", "shared"])
@pytest.mark.parametrize("batch", BATCHES)
def test_rope_store_of_a_batch_matches_reference(batch, positions, dtype):
    hq, hkv, T, D, S = 4, 2, 3, 64, 40
    slots = (17, 0, 30)[:batch]
    rotary = _rope(hq, hkv, D)
    pos, table = _batch_positions(positions, batch, T)
    qkv = torch.randn(batch, T, (hq + 2 * hkv) * D, generator=torch.Generator().manual_seed(16)).to(DEVICE, dtype)

    def run(fn, rope, rows=slice(None), slot=None, **kw):
        buf = qkv[rows].clone()
        q, k, v = (t.view(buf.shape[0], T, -1, D).transpose(1, 2) for t in buf.split([hq * D, hkv * D, hkv * D], -1))
        kc = torch.full((buf.shape[0], hkv, S, D), 7.0, dtype=dtype, device=DEVICE)
        vc = kc.clone()
        fn(q, k, v, rope, kc, vc, _starts(batch, *slots) if slot is None else slot, **kw)
        return q, kc, vc

    out = run(rope_store, rotary.at(pos, dtype), use_triton=True)
    ref = run(rope_store_reference, rotary.at(pos, dtype))
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=tol, rtol=tol)
    _untouched(out[1], slots, T)
    _untouched(out[2], slots, T)
    for b in range(batch):  # the batched reference is B one-sequence calls
        one = run(rope_store_reference, rotary.at(table[b], dtype), slice(b, b + 1), torch.tensor(slots[b]))
        for o, r in zip(ref, one):
            torch.testing.assert_close(o[b:b + 1], r, atol=0, rtol=0)


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
    rotary = _rope(hq, hkv, D)
    pos, _ = _batch_positions(positions, batch, T)
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
        q, h = qkv_rope_store(x, r, nw, 1e-5, w, b, rotary.at(pos, dtype), kc, vc, _starts(batch, *slots), hq, hkv,
                              D, ctx=kernels_ctx() if use_triton else None)
        assert q.shape == (batch, hq, T, D)
        outs.append((q, kc, vc, h))
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    for out, ref in zip(outs[0][:3], outs[1][:3]):
        assert rel_err(out, ref) < tol
    torch.testing.assert_close(outs[0][3], outs[1][3], atol=0, rtol=0)  # h = x + r, rounded as torch
    _untouched(outs[0][1], slots, T)
    _untouched(outs[0][2], slots, T)


# (batch, q heads, kv heads, new tokens, head dim, capacity, per-sequence kv_len, splits)
ATTENTION_BATCH_CASES = [
    (3, 8, 2, 3, 32, 200, (37, 200, 3), 4),  # one sequence only its new block, one full
    (3, 4, 4, 1, 64, 130, (130, 1, 64), 1),  # one slice: the output written directly
    (1, 8, 2, 2, 32, 150, (99,), 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", ATTENTION_BATCH_CASES,
                         ids=lambda c: "b{}-hq{}-hkv{}-t{}-d{}-s{}-len{}-sp{}".format(*c))
def test_decode_attention_of_a_batch_sees_each_sequence_to_its_length(case, dtype):
    B, Hq, Hkv, T, D, S, lengths, splits = case
    g = torch.Generator().manual_seed(sum(lengths))
    q = torch.randn(B, T, Hq, D, generator=g).to(DEVICE, dtype).transpose(1, 2)
    k = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    for b, n in enumerate(lengths):  # slots past a sequence's own length are never read
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("nan")
    length = torch.tensor(lengths, device=DEVICE)
    out = attention(q, k, v, length, D ** -0.5, splits)
    ref = decode_attention_reference(q.double(), k.double().nan_to_num(), v.double().nan_to_num(), length, D ** -0.5)
    assert out.shape == (B, T, Hq, D) and torch.isfinite(out).all()
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3)
    offset = attention(q, k, v, length - T, D ** -0.5, splits, kv_offset=T)  # the captured path's form
    torch.testing.assert_close(offset, out, atol=0, rtol=0)
    for b, n in enumerate(lengths):  # the batched reference is B one-sequence calls
        one = decode_attention_reference(q[b:b + 1].double(), k[b:b + 1].double().nan_to_num(),
                                         v[b:b + 1].double().nan_to_num(), torch.tensor([n]), D ** -0.5)
        torch.testing.assert_close(ref[b:b + 1], one, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("use_triton", [True, False])
@pytest.mark.parametrize("batch", BATCHES)
def test_race_sample_of_a_batch_writes_each_row_at_its_slot(batch, use_triton):
    from triforce.kernels.verify import race_sample, race_sample_reference
    from triforce.kernels.workspace import Workspace

    g = torch.Generator().manual_seed(17)
    workspace = Workspace(DEVICE)
    for vocab in (5, 9000):
        probs = torch.softmax(torch.randn(batch, vocab, generator=g) * 2, -1).to(DEVICE)
        race = torch.empty(batch, vocab).exponential_(generator=g).to(DEVICE)
        expected = race_sample_reference(probs, race)
        assert expected.shape == (batch,)
        for index_from in (None, _starts(batch, 4, 0, 7)):
            buffer = torch.full((batch, 12), -1, dtype=torch.int64, device=DEVICE)
            tokens = race_sample(probs, race, out_tokens=buffer, index=2, index_from=index_from,
                                 use_triton=use_triton, workspace=workspace)
            assert tokens.tolist() == expected.tolist()
            want = torch.full((batch, 12), -1, dtype=torch.int64, device=DEVICE)
            for b in range(batch):
                want[b, 2 + (0 if index_from is None else int(index_from[b]))] = expected[b]
            assert torch.equal(buffer, want)
            assert not workspace.counters("race", 1).any()  # every row's counter is back at zero
    ties = torch.zeros(batch, 9000, device=DEVICE)
    for b in range(batch):  # three equal ratios in three chunks, a different set per row: the smallest wins
        ties[b, [100 + b, 4500, 8000 - b]] = 1 / 3
    assert race_sample(ties, torch.ones(batch, 9000, device=DEVICE), use_triton=use_triton).tolist() == [
        100 + b for b in range(batch)]


def _verify_batch_case(batch: int, k: int, vocab: int, seed: int):
    """Rows of different kinds in one batch: random; every proposal accepted (the bonus row); p = q
    with u = 1 (rejected, an empty residual: drawn from p_n itself)."""
    rows = [_verify_case(k, vocab, seed + b) for b in range(batch)]
    tokens, q, p, u, race = (torch.stack(x) for x in zip(*rows))
    if batch > 1:
        u[1] = 0.0
    if batch > 2:
        p[2, :k] = q[2]
        u[2] = 1.0
    return tokens, q, p, u, race


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("k,vocab", [(3, 50), (6, 10000)])
@pytest.mark.parametrize("batch", BATCHES)
def test_race_verify_of_a_batch_matches_reference(batch, k, vocab, residual):
    from triforce.kernels.verify import race_verify, race_verify_reference
    from triforce.kernels.workspace import Workspace

    workspace = Workspace(DEVICE)
    for seed in (0, 10):
        tokens, q, p, u, race = (t.to(DEVICE) for t in _verify_batch_case(batch, k, vocab, seed))
        ref = race_verify_reference(tokens, q, p, u, race, residual=residual)
        assert ref.shape == (batch, 2 + k)
        for b in range(batch):  # the batched reference is B one-sequence calls
            assert ref[b].tolist() == race_verify_reference(tokens[b], q[b], p[b], u[b], race[b],
                                                            residual=residual).tolist()
        if batch > 2:
            assert ref[1, 0] == k and ref[2, 0] == 0
        # the proposals as the engine keeps them: a view of each sequence's row of the token buffer
        buffer = torch.full((batch, k + 10), -1, dtype=torch.int64, device=DEVICE)
        buffer[:, 2:2 + k] = tokens
        out = race_verify(buffer[:, 2:2 + k], q, p, u, race, residual=residual, out_tokens=buffer, base=2,
                          use_triton=True, workspace=workspace)
        assert out.tolist() == ref.tolist()
        for b in range(batch):
            n = int(ref[b, 0])
            assert buffer[b, 2 + n] == ref[b, 1] and buffer[b, 2:2 + n].tolist() == tokens[b, :n].tolist()
        # each sequence at its own base: a device tensor (+ a constant)
        base_from = _starts(batch, 0, 5, 2)
        for use_triton in (True, False):
            buffer = torch.full((batch, k + 10), -1, dtype=torch.int64, device=DEVICE)
            out = race_verify(tokens, q, p, u, race, residual=residual, out_tokens=buffer, base=1, base_from=base_from,
                              use_triton=use_triton, workspace=workspace)
            assert out.tolist() == ref.tolist()
            want = torch.full((batch, k + 10), -1, dtype=torch.int64, device=DEVICE)
            for b in range(batch):
                want[b, 1 + int(base_from[b]) + int(ref[b, 0])] = ref[b, 1]
            assert torch.equal(buffer, want)
        assert not workspace.counters("race", 1).any()


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
    rope = _rope(4, 2, 64)
    g = torch.Generator().manual_seed(18)
    k = torch.randn(2, 3, 2, S, 64, generator=g).to(DEVICE, dtype)
    v = torch.randn(2, 3, 2, S, 64, generator=g).to(DEVICE, dtype)
    kk, vv = k.clone(), v.clone()
    shift_window(kk, vv, start, ends, ns, rope, use_triton=True)
    rk, rv = k.clone(), v.clone()
    shift_window_reference(rk, rv, start, ends, ns, rope)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(kk, rk, atol=tol, rtol=tol)
    torch.testing.assert_close(vv, rv, atol=0, rtol=0)
    host_ends = ends.tolist() if isinstance(ends, torch.Tensor) else [ends] * 3 if isinstance(ends, int) else ends
    host_ns = ns.tolist() if isinstance(ns, torch.Tensor) else ns
    for b, (end, n) in enumerate(zip(host_ends, host_ns)):
        one_k, one_v = k[:, b:b + 1].clone(), v[:, b:b + 1].clone()
        if n:
            shift_window_reference(one_k, one_v, start, end, n, rope)
        torch.testing.assert_close(rk[:, b:b + 1], one_k, atol=0, rtol=0)
        torch.testing.assert_close(rv[:, b:b + 1], one_v, atol=0, rtol=0)
        assert torch.equal(kk[:, b, :, end - n:], k[:, b, :, end - n:])  # past the new end: untouched
        assert torch.equal(kk[:, b, :, :start], k[:, b, :, :start])  # the sink too
    assert torch.equal(kk[:, 1], k[:, 1]) and torch.equal(vv[:, 1], v[:, 1])  # n = 0: bit for bit as it was
