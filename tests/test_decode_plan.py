"""decode_plan: the plan build_plan writes out (the model's own forward without kernels, the fused
steps with them, their printed launches) and its logits against the model's eager forward over a
full cache, for one sequence and a batch at different lengths (kernels through Triton's interpreter)."""

from __future__ import annotations

import os

import pytest
import torch

from triforce.cache.static import StaticKVCache
from triforce.cache.static_view import StaticView
from triforce.decode_plan import build_plan
from triforce.kernels import triton_available
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.kernels.workspace import Workspace
from triforce.models.tiny import build_tiny

interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not triton_available(),
    reason="the kernels run on a CPU through Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py "
           "without CUDA)")
T, CAPACITY = 3, 32  # new tokens per forward, cache slots per sequence


@pytest.fixture(scope="module")
def model():
    return build_tiny(None, seed=0)  # a random tiny Llama, float32, on the CPU


def context(kernels: bool) -> KernelContext:
    return KernelContext(KernelPolicy.resolve("cpu", {"kernels": kernels}), pdl=False, workspace=Workspace("cpu"))


def full_cache(model, batch: int = 1) -> StaticKVCache:
    cfg = model.config
    return StaticKVCache(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                         num_heads=cfg.num_heads, capacity=CAPACITY, dtype=model.dtype, device="cpu",
                         batch_size=batch)


def reference(model, tokens: torch.Tensor, lengths: list[int], num_logits: int):
    """The model's eager forward over each row's T tokens after its first lengths[b] (prefilled
    into a full cache of its own): (logits (B, num_logits, V), the caches)."""
    logits, caches = [], []
    for b, n in enumerate(lengths):
        cache = full_cache(model)
        model(tokens[b:b + 1, :n], None, cache)
        logits.append(model(tokens[b:b + 1, n:n + T], None, cache, num_logits=num_logits))
        caches.append(cache)
    return torch.cat(logits), caches


def run_plan(model, tokens: torch.Tensor, lengths: list[int], num_logits: int, ctx: KernelContext):
    """The plan's forward over the same tokens, through a StaticView of a batch cache whose row b
    was prefilled with row b's first lengths[b] tokens: (logits, the cache)."""
    batch = len(lengths)
    cache = full_cache(model, batch)
    for b, n in enumerate(lengths):
        model(tokens[b:b + 1, :n], None, cache.row(b))
    plan = build_plan(model, T, num_logits, ctx, batch=batch, kv_slots=cache.k.shape[3])
    view = StaticView(cache, T)
    positions = cache.reserve_rows(T) if batch > 1 else [cache.reserve(T)]
    view.set(lengths, positions, cache.rows_of("length"))  # [token, position, slot] starts per sequence
    logits = plan.run(view, tokens)
    cache.advance(T)
    return logits, cache


def token_buffer(batch: int, seed: int, vocab: int) -> torch.Tensor:
    """The engine's token buffer: (B, N) int64, one row per sequence."""
    return torch.randint(0, vocab, (batch, 20), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
@pytest.mark.parametrize("num_logits", [1, T])
def test_without_kernels_the_plan_is_the_models_own_forward(model, num_logits):
    ctx = context(kernels=False)
    plan = build_plan(model, T, num_logits, ctx, kv_slots=CAPACITY)
    assert [step.name for step in plan.steps] == ["Forward"]
    assert plan.tuning_used == ()
    tokens = token_buffer(1, 1, model.config.vocab_size)
    logits, _ = run_plan(model, tokens, [9], num_logits, ctx)
    ref, _ = reference(model, tokens, [9], num_logits)
    assert logits.shape == ref.shape == (1, num_logits, model.config.vocab_size)
    # the same arithmetic; attention over the view's masked capacity rather than the eager cache's
    # sliced prefix sums in another order: equal to float32 rounding
    torch.testing.assert_close(logits, ref)


@interpreted
@pytest.mark.parametrize("batch", [1, 2])
def test_with_kernels_the_plan_lists_the_fused_steps_and_their_launches(model, batch):
    plan = build_plan(model, T, T, context(kernels=True), batch=batch, kv_slots=CAPACITY)
    layers = model.config.num_layers
    names = ["Embed"] + [f"{step} {i}" for i in range(layers) for step in ("QKV", "Attend", "OProj", "GateUp", "Down")]
    assert [step.name for step in plan.steps] == names + ["Head"]
    assert len(plan.steps) == 2 + 5 * layers
    shown = repr(plan).splitlines()
    assert shown[0] == f"DecodePlan(B={batch}, T={T}, logits={T}, {2 + 5 * layers} steps)"
    for i, step in enumerate(plan.steps):
        assert shown[1 + i].split(maxsplit=1) == [str(i), repr(step)]
        if step.name != "Embed":  # every product and attention prints the launch it resolved
            assert "tile " in step.detail, repr(step)
    assert plan.tuning_used == ()  # a CPU plans by the rules alone: no tuning-file entry
    assert len(shown) == 1 + len(plan.steps)


@interpreted
@torch.inference_mode()
@pytest.mark.parametrize("num_logits", [1, T])  # T: the final norm folded into the last product
@pytest.mark.parametrize("lengths", [[9], [5, 11]], ids=["one", "batch2"])
def test_the_plans_logits_equal_the_reference_forward(model, lengths, num_logits):
    tokens = token_buffer(len(lengths), 2, model.config.vocab_size)
    logits, cache = run_plan(model, tokens, lengths, num_logits, context(kernels=True))
    ref, ref_caches = reference(model, tokens, lengths, num_logits)
    assert logits.shape == ref.shape == (len(lengths), num_logits, model.config.vocab_size)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    for b, (n, ref_cache) in enumerate(zip(lengths, ref_caches)):  # the q/k/v epilogue wrote each row's keys
        assert cache.rows_of("length")[b] == n + T
        torch.testing.assert_close(cache.k[:, b, :, :n + T], ref_cache.k[:, 0, :, :n + T], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.v[:, b, :, :n + T], ref_cache.v[:, 0, :, :n + T], atol=1e-5, rtol=1e-5)


@interpreted
@pytest.mark.parametrize("head_dim", [32, 24], ids=["kernel", "reference"])
@torch.inference_mode()
def test_a_biased_q_k_normed_models_plan_equals_its_reference_forward(head_dim):
    """The other families' QKV (models/config.py): q/k/v biases (Qwen2) in the product, each head's
    q/k norm between product and rotary (Qwen3, head_dim != hidden / heads) — the plan's own QKV
    step for them (the fused norm + rotary kernel where half a head is a power of two, its
    reference otherwise), and a draft's widened logits (-inf beyond its rows)."""
    model = build_tiny({"qkv_bias": True, "qk_norm": True, "head_dim": head_dim, "family": "qwen3"}, seed=4)
    plan = build_plan(model, T, T, context(kernels=True), batch=2, kv_slots=CAPACITY)
    assert "q/k head norms" in plan.steps[1].detail
    tokens = token_buffer(2, 3, model.config.vocab_size)
    logits, cache = run_plan(model, tokens, [5, 11], T, context(kernels=True))
    ref, ref_caches = reference(model, tokens, [5, 11], T)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    for b, (n, ref_cache) in enumerate(zip([5, 11], ref_caches)):
        torch.testing.assert_close(cache.k[:, b, :, :n + T], ref_cache.k[:, 0, :, :n + T], atol=1e-5, rtol=1e-5)
    model.widen_vocabulary(model.config.vocab_size + 7)
    widened, _ = run_plan(model, tokens, [5, 11], 1, context(kernels=True))
    assert widened.shape[-1] == model.config.vocab_size + 7 and torch.isneginf(widened[..., -7:]).all()
    torch.testing.assert_close(widened[..., :-7], ref[:, -1:], atol=1e-5, rtol=1e-5)


@interpreted
@torch.inference_mode()
def test_a_one_row_tuning_entry_runs_the_step_exactly(tmp_path):
    """A tuning entry for one input row (kernels/policy.py: the few-row design at one row, stages as
    measured) takes every one-row product of an autoregressive step here, the biased q/k/v with its
    rotary and cache-write epilogue included: the step's logits and keys are the reference's."""
    import json

    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"device": "cpu", "entries": [
        {"name": "one row as few rows", "kind": "linear", "match": {"min_rows": 1, "max_rows": 1},
         "launch": {"design": 1, "block_n": 64, "block_k": 256, "warps": 4, "stages": 4}}]}))
    ctx = KernelContext(KernelPolicy.resolve("cpu", {"kernels": True, "tuning_file": str(path)}), pdl=False,
                        workspace=Workspace("cpu"))
    model = build_tiny({"qkv_bias": True, "family": "qwen2"}, seed=5)
    plan = build_plan(model, 1, 1, ctx, kv_slots=CAPACITY)
    assert "one row as few rows" in repr(plan)
    tokens = token_buffer(1, 4, model.config.vocab_size)
    cache, ref_cache = full_cache(model), full_cache(model)
    model(tokens[:, :9], None, cache)
    model(tokens[:, :9], None, ref_cache)
    view = StaticView(cache, 1)
    view.set([9], [cache.reserve(1)], cache.rows_of("length"))
    logits = plan.run(view, tokens)
    ref = model(tokens[:, 9:10], None, ref_cache, num_logits=1)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.k[:, 0, :, :10], ref_cache.k[:, 0, :, :10], atol=1e-5, rtol=1e-5)


@interpreted
@torch.inference_mode()
@pytest.mark.parametrize("stored", [torch.bool, torch.int8], ids=["bool", "int8"])
@pytest.mark.parametrize("lengths", [[9], [5, 11]], ids=["one", "batch2"])
def test_a_tree_views_plan_equals_the_models_tree_forward(model, lengths, stored):
    """A token tree's block through the captured path's view (its positions = the first's + each
    node's depth, the tree mask in the decode kernel, fixed with the view): the fused plan's logits
    and keys equal the model's eager forward with the same positions and mask, whether the view
    holds the mask as booleans or as the kernel's int8 (the executor's graphs: converted once)."""
    parents = (-1, 0, 0, 1, 2, 2)[:T]  # the root, two children, a grandchild under the first, two under the second
    mask = torch.zeros(T, T, dtype=torch.bool)
    depth = []
    for t, p in enumerate(parents):
        mask[t, t] = True
        if p >= 0:
            mask[t] |= mask[p]
        depth.append(0 if p < 0 else depth[p] + 1)
    offsets = torch.tensor(depth)
    tokens = token_buffer(len(lengths), 3, model.config.vocab_size)
    batch = len(lengths)
    cache = full_cache(model, batch)
    for b, n in enumerate(lengths):
        model(tokens[b:b + 1, :n], None, cache.row(b))
    plan = build_plan(model, T, T, context(kernels=True), batch=batch, kv_slots=cache.k.shape[3])
    view = StaticView(cache, T, (mask.to(stored), offsets))
    positions = cache.reserve_rows(T) if batch > 1 else [cache.reserve(T)]
    view.set(lengths, positions, cache.rows_of("length"))
    logits = plan.run(view, tokens)
    cache.advance(T)
    for b, n in enumerate(lengths):
        ref_cache = full_cache(model)
        model(tokens[b:b + 1, :n], None, ref_cache)
        ref = model(tokens[b:b + 1, n:n + T], n + offsets, ref_cache, num_logits=T, tree=mask)
        torch.testing.assert_close(logits[b:b + 1], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.k[:, b, :, :n + T], ref_cache.k[:, 0, :, :n + T], atol=1e-5, rtol=1e-5)


def test_a_tree_views_positions_are_written_by_set_and_read_as_they_are(model):
    """A tree's static forward reads each node's position (its row's start + the node's depth) from
    what `set` wrote beside the forward's start, slot and lengths — every layer's rotary reads that
    tensor itself, no kernel builds it per layer (inside a graph it would be a launch a layer)."""
    for batch in (1, 3):
        cache = full_cache(model, batch)
        offsets = torch.tensor([0, 1, 1, 2])
        view = StaticView(cache, 4, (torch.ones(4, 4, dtype=torch.int8).tril(), offsets))
        starts = [5, 9, 2][:batch]
        view.set([0] * batch, starts, starts)
        first, again = view.next_positions(4), view.next_positions(4)
        assert first.data_ptr() == again.data_ptr()  # the same tensor for every layer
        expect = torch.tensor(starts)[:, None] + offsets
        assert torch.equal(first, expect[0] if batch == 1 else expect)
        view.set([0] * batch, [s + 7 for s in starts], starts)  # the next replay's: the same storage, new values
        assert view.next_positions(4).data_ptr() == first.data_ptr()
        assert torch.equal(view.next_positions(4), (expect + 7)[0] if batch == 1 else expect + 7)
