"""kernels.decode_attention: the split-KV Triton attention against its torch reference, one
sequence and a batch at per-sequence lengths; the policy's query-row tiles; causality in the block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.kernels.helpers import DEVICE, kernels_ctx, rel_err, requires_triton
from triforce.kernels.decode_attention import decode_attention, decode_attention_reference
from triforce.kernels.policy import H100, AttentionLaunch, KernelPolicy

pytestmark = requires_triton


def splits_launch(q, k, splits: int) -> AttentionLaunch:
    """The policy's attention launch for these shapes, with `splits` key slices per KV head."""
    B, Hq, T, D = q.shape
    launch = kernels_ctx().policy.attention_launch(batch=B, kv_heads=k.shape[1], rows=Hq // k.shape[1] * T,
                                                   head_dim=D, capacity=k.shape[2], element_size=q.element_size())
    return dataclasses.replace(launch, splits=splits)


def attention(q, k, v, length, scale, splits, **kw):
    return decode_attention(q, k, v, length, scale, ctx=kernels_ctx(), launch=splits_launch(q, k, splits), **kw)


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
    (1, 8, 1, 20, 32, 300, 250, 3),    # group 8 x 20 tokens = 160 rows: two row tiles over each slice
    (2, 7, 1, 21, 32, 200, 130, 1),    # 147 rows (Qwen2.5-7B's group of 7): two tiles, written directly
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


def test_query_rows_take_one_warpgroup_tile_per_64_and_tiles_of_128_beyond():
    tile = KernelPolicy(H100).attention_tile
    for rows, block_m, warps in ((1, 64, 4), (28, 64, 4), (64, 64, 4), (65, 128, 8), (68, 128, 8), (128, 128, 8),
                                 (129, 128, 8), (188, 128, 8), (1000, 128, 8)):
        assert tile(rows, 128)[:2] == (block_m, warps)
    assert tile(68, 128)[2] == 4 and tile(4, 128)[2] == 3
    # fewer stages where the buffers would not fit shared memory (float32, head_dim 256)
    assert tile(68, 128, element_size=4)[2] == 2
    assert tile(68, 256)[2] == 2 and tile(4, 256)[2] == 2


def test_the_wave_counts_row_tiles():
    """Rows beyond one tile multiply the programs of a key slice: the slices shrink so that the
    programs still make one wave (an H100's 132 SMs, 8 KV heads)."""
    launch = KernelPolicy(H100).attention_launch
    one = launch(batch=1, kv_heads=8, rows=128, head_dim=128, capacity=131072)
    two = launch(batch=1, kv_heads=8, rows=188, head_dim=128, capacity=131072)
    three = launch(batch=1, kv_heads=8, rows=300, head_dim=128, capacity=131072)
    assert (one.block_m, two.block_m, three.block_m) == (128, 128, 128)
    assert one.splits == 132 // 8 and two.splits == 132 // 16 and three.splits == 132 // 24


def test_several_row_tiles_equal_one_tile():
    """A KV head's rows split over tiles (here 64-row tiles for 68 rows: two programs per key slice)
    give the one-tile launch's output."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 32, 17, 64, generator=g).to(DEVICE)
    k, v = (torch.randn(1, 8, 300, 64, generator=g).to(DEVICE) for _ in range(2))
    length = torch.tensor([280], device=DEVICE)
    for splits in (1, 3):
        two = decode_attention(q, k, v, length, 0.125, ctx=kernels_ctx(), launch=AttentionLaunch(64, 64, 4, 3, splits))
        one = decode_attention(q, k, v, length, 0.125, ctx=kernels_ctx(), launch=AttentionLaunch(128, 64, 8, 3, splits))
        torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)


def test_one_tile_of_256_rows_equals_the_128_row_tiles_under_a_tree_mask():
    """A wide tree's verify (group 8 x 21 nodes = 168 rows per KV head) as one 256-row tile, each key
    block read once for every row (the launch scripts/tune_kernels.py --tree-attention measures), with
    32- and 64-key blocks: the output of the policy's two 128-row tiles."""
    parents = (-1, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    tree = tree_mask(parents).to(DEVICE).to(torch.int8)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 8, len(parents), 32, generator=g).to(DEVICE)
    k, v = (torch.randn(1, 1, 700, 32, generator=g).to(DEVICE) for _ in range(2))
    length = torch.tensor([650], device=DEVICE)
    for splits in (1, 2):
        tiles = decode_attention(q, k, v, length, 0.125, ctx=kernels_ctx(), tree=tree,
                                 launch=AttentionLaunch(128, 64, 8, 3, splits))
        for block_n in (32, 64):
            wide = decode_attention(q, k, v, length, 0.125, ctx=kernels_ctx(), tree=tree,
                                    launch=AttentionLaunch(256, block_n, 16, 2, splits))
            torch.testing.assert_close(wide, tiles, atol=1e-5, rtol=1e-5)


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


def tree_mask(parents: tuple[int, ...]) -> torch.Tensor:
    """(T, T) bool: row t the nodes on t's path from the block's first node (its ancestors and itself)."""
    T = len(parents)
    mask = torch.zeros(T, T, dtype=torch.bool)
    for t, parent in enumerate(parents):
        mask[t, t] = True
        if parent >= 0:
            mask[t] |= mask[parent]
    return mask


def assert_reference_is_the_explicit_mask(q, k, v, ref, lengths, tree) -> None:
    """The reference against SDPA over an explicit mask: sequence b's query t sees every key before
    the last W slots, and among those the slots tree[t] (T, W) names (its ancestors and itself)."""
    T, W = tree.shape
    S, D = k.shape[2], q.shape[-1]
    for b, n in enumerate(lengths):
        mask = torch.zeros(T, S, dtype=torch.bool, device=DEVICE)
        mask[:, :n - W] = True
        mask[:, n - W:n] = tree
        explicit = torch.nn.functional.scaled_dot_product_attention(
            q[b:b + 1].double(), k[b:b + 1].double(), v[b:b + 1].double(), attn_mask=mask, scale=D ** -0.5,
            enable_gqa=q.shape[1] != k.shape[1]).transpose(1, 2)
        torch.testing.assert_close(ref[b:b + 1], explicit, atol=1e-10, rtol=1e-10)


# (batch, q heads, kv heads, head dim, capacity, kv_len of each sequence, splits, the tree's parents)
TREE_CASES = [
    (1, 8, 2, 64, 300, (230,), 4, (-1, 0, 0, 1, 1, 2, 2)),        # the root and a binary tree of depth 2
    (1, 4, 4, 32, 200, (150,), 1, (-1, 0, 0, 0, 1, 2, 3, 4, 5)),  # MHA, widths 3-1-1, one slice
    (2, 8, 2, 64, 400, (333, 120), 5, (-1, 0, 0, 1, 2)),          # a batch at its own lengths, many slices
    (1, 8, 2, 64, 300, (64,), 4, (-1, 0, 1, 2, 3, 4, 5)),         # a chain: the causal mask itself
    # group 8 x 21 nodes = 168 rows (two row tiles), widths 4-2-1-...; a long prefix in two slices:
    # the first never reaches the tree's window, the second reaches it from a block in its middle
    (1, 8, 1, 32, 700, (650,), 2, (-1, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", TREE_CASES, ids=lambda c: "b{}-hq{}-hkv{}-d{}-s{}-len{}-sp{}-t{}".format(
    *c[:5], "-".join(map(str, c[5])), c[6], len(c[7])))
def test_a_tree_mask_over_the_new_block_matches_the_reference(case, dtype):
    """A token tree's verify: the block's keys are seen by the tree mask (ancestors and self), every
    key before it by every query; the kernel against the reference, and the reference against SDPA
    over an explicit mask. A chain's tree is the causal block: the same output as without a tree."""
    B, Hq, Hkv, D, S, lengths, splits, parents = case
    T = len(parents)
    tree = tree_mask(parents).to(DEVICE)
    g = torch.Generator().manual_seed(sum(lengths) + T)
    q = torch.randn(B, T, Hq, D, generator=g).to(DEVICE, dtype).transpose(1, 2)
    k = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    length = torch.tensor(lengths, device=DEVICE)
    out = attention(q, k, v, length, D ** -0.5, splits, tree=tree)
    ref = decode_attention_reference(q.double(), k.double(), v.double(), length, D ** -0.5, tree=tree)
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3)
    assert_reference_is_the_explicit_mask(q, k, v, ref, lengths, tree)
    if parents == tuple(range(-1, T - 1)):
        causal = attention(q, k, v, length, D ** -0.5, splits)
        torch.testing.assert_close(out, causal, atol=0, rtol=0)


# (batch, q heads, kv heads, head dim, capacity, kv_len of each sequence, splits, the tree's parents, the block's first node)
WINDOW_CASES = [
    (1, 8, 2, 64, 300, (230,), 4, (-1, 0, 0, 1, 1, 2, 2), 3),     # depth 2 of a binary tree after the root and depth 1
    (2, 4, 4, 32, 400, (333, 150), 3, (-1, 0, 0, 0, 1, 2, 3, 4, 5), 4),  # a batch; widths 3-1-1's last depths
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", WINDOW_CASES, ids=["binary-depth2", "batch-3-1-1"])
def test_a_tree_mask_over_earlier_nodes_of_the_tree_matches_the_reference(case, dtype):
    """A later depth of a tree, proposed by the level below: its T new nodes see the prefix, and among
    the last W slots (the tree's nodes written by earlier forwards, then the new block) only their
    ancestors and themselves: a (T, W) mask; the kernel against the reference, the reference against
    SDPA over the explicit mask."""
    B, Hq, Hkv, D, S, lengths, splits, parents, first = case
    W = len(parents)
    T = W - first
    tree = tree_mask(parents)[first:].to(DEVICE)  # rows of the new nodes over every node so far
    g = torch.Generator().manual_seed(sum(lengths) + W)
    q = torch.randn(B, T, Hq, D, generator=g).to(DEVICE, dtype).transpose(1, 2)
    k = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(DEVICE, dtype)
    length = torch.tensor(lengths, device=DEVICE)
    out = attention(q, k, v, length, D ** -0.5, splits, tree=tree)
    ref = decode_attention_reference(q.double(), k.double(), v.double(), length, D ** -0.5, tree=tree)
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3)
    assert_reference_is_the_explicit_mask(q, k, v, ref, lengths, tree)
