"""Correctness on an accelerator, for the eager path and the CUDA-graph path.

    python scripts/gpu_check.py [--device cuda] [--pdl on] [--only tree_attention,chained_steps]

1. Each Triton kernel against its torch reference at realistic sizes (a 7B layer's attention
   at 32K keys, MHA and GQA, 1 to 32 new tokens; norm, SwiGLU, rotary + cache write; split-K
   and gated products, also replayed from a graph; an RMSNorm folded into the products around it; the sampling
   transform at the 32K, 49K and 128K vocabularies, peaked and flat rows, its split path run
   repeatedly to show it is deterministic), bf16 and fp32, fresh random inputs; the token-tree rule
   captured as a CUDA graph against the rule launched op by op (the same verdicts for a seed).
2. Every method greedy-identical to autoregressive decoding on a small random Llama (GQA), fp32,
   with both executors (eager, graphs); seeded sampling reproducible with graphs; sampled token
   trees (a deep one and a wide one) drawing the same tokens captured and uncaptured. Batches: the
   kernels with per-sequence lengths against their references, and each sequence of a batch of 3
   ragged prompts greedy-identical to its prompt run alone, with graphs. The other families' shapes
   (models/config.py: Qwen2's q/k/v biases with a draft of fewer embedding rows, Qwen3's per-head q/k
   norms, Mistral's explicit head_dim): spec, retrieval_spec and TriForce greedy-identical, eager and
   graphs, one sequence and a batch of 2.
3. The graph path synchronises with the host at most once per speculative round.
4. bf16 graphs: how long the greedy tokens of each method agree with autoregressive decoding
   (reported, not asserted: in bf16 a 7-token verify and a 1-token step round differently, so a
   near-tie may flip).

With --pdl both (the default on sm90+), 1-4 run twice: kernels launched plainly, then with
programmatic dependent launch (on by default for captured graphs), which the CPU tests cannot exercise:
each check's engines and kernel contexts get the kernel policy with PDL off, then on
(`hardware.kernels.pdl`).

5. Kernels off (`hardware.kernels.kernels=false`, skipped with --no-kernels-off): no Triton kernel of
   the project launches at all (torch.profiler counts them, eager and graphs, one sequence and a
   batch), and 2-3 pass on the torch reference path, eager and graphs, one sequence and a batch.

Uses random models built in memory: no weights, no network. Exit code 0 only if 1-3 and 5 pass
(in every mode checked).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import traceback
import warnings

import torch

from triforce.engine import Engine
from triforce.kernels.activation import silu_mul, silu_mul_reference
from triforce.kernels.decode_attention import decode_attention, decode_attention_reference
from triforce.kernels.norm import rms_norm, rms_norm_reference
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.kernels.rotary import rope_store, rope_store_reference
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer
from triforce.models.rope import RotaryEmbedding
from triforce.tree import Tree

GREEDY = {"temperature": 0}
METHODS = [
    ("spec", "draft", {}),
    ("spec", "target", {"draft_cache": "full"}),
    ("retrieval_spec", None, {"budget": 64, "chunk_size": 8}),
    ("triforce", "draft", {"budget": 64, "chunk_size": 8, "draft_window": 48, "rebuild": "every_n",
                           "rebuild_every": 16}),
    ("triforce", "target", {"budget": 128, "scorer": "bound", "rebuild": "on_low_acceptance"}),
    ("triforce", "draft", {"budget": 96, "middle_cache": "streaming", "gamma": 16}),
    # plans chosen each round (docs/DESIGN.md §12): every chain, two middle levels, gammas, plain decoding
    ("auto", "draft", {"budget": 64, "chunk_size": 8, "middle_caches": ["hybrid", "streaming"], "streaming_budget": 32,
                       "recent_min": 16, "gammas": [2, 4, 8], "draft_gammas": [1, 2], "probe_every": 2}),
    ("triforce", "draft", {"budget": 64, "chunk_size": 8, "adaptive": True, "gammas": [3, 6]}),
    # token trees at the top level (docs/DESIGN.md §13): a graph per block of the tree, the tree mask in the kernel
    ("spec", "draft", {"tree": [4, 2, 1, 1]}),
    ("retrieval_spec", None, {"budget": 64, "chunk_size": 8, "tree": [2, 2, 2, 2, 1]}),
]


def check_tree_rule(device) -> bool:
    """The tree rule captured as a CUDA graph (executor.TreeRule, its draws made before each replay)
    against tree.verify_tree_batch launched op by op: the same verdicts for the same seed, exactly —
    trees of one and of several children per node, one sequence and a batch, two vocabularies,
    three rounds each (each replay's draws its own)."""
    from triforce.executor import TreeRule
    from triforce.tree import verify_tree_batch

    ok = True
    cases = (((4, 2, 1, 1), 8, 128256), ((1, 1, 1, 1, 1, 1), 8, 128256), ((2, 2, 2, 2, 1), 1, 32000))
    for widths, batch, vocab in cases:
        tree = Tree.from_widths(widths)
        data = torch.Generator(device=device).manual_seed(sum(widths) + batch)
        eager_gen = torch.Generator(device=device).manual_seed(7)
        graph_gen = torch.Generator(device=device).manual_seed(7)
        rule = TreeRule(tree, batch, vocab, torch.device(device), graph_gen, residual=True, capture=True)
        same = True
        for _ in range(3):
            # peaked distributions (low temperature) so that children are accepted and rejected
            q = (torch.randn(batch, tree.size + 1, vocab, device=device, generator=data) * 4).softmax(-1)
            p = (torch.randn(batch, tree.size + 1, vocab, device=device, generator=data) * 4).softmax(-1)
            p = 0.5 * p + 0.5 * q  # near the draft's: long accepted paths too
            tokens = torch.multinomial(q[:, :tree.size].reshape(-1, vocab), 1, generator=data).view(batch, tree.size)
            want = verify_tree_batch(tree, tokens, q, p, eager_gen)
            rule.tokens.copy_(tokens)
            rule.q.copy_(q)
            got = rule.run(p)
            same &= torch.equal(want, got)
        verdict = "ok" if same else "DIFFERS from the eager rule"
        print(f"tree rule captured widths={widths} B={batch} V={vocab}: {verdict}")
        ok &= same
    return ok


def check_tree_attention(device, ctx: KernelContext, keys: int = 32768) -> bool:
    """The decode kernel with a token tree's mask against its reference at 32K keys: the root and
    the nodes of a tree over the last slots, query rows per KV head from one tile to several (47
    nodes under a group of 4, 21 under a group of 7: more than one 128-row tile), and a later depth
    of a tree over earlier nodes (a (T, W) mask, W > T)."""
    ok = True
    g = torch.Generator(device=device).manual_seed(3)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 1e-5)):
        for hq, hkv, widths, first in ((32, 8, [4, 2, 1], 0), (32, 8, [2, 2, 2, 2, 1], 0), (28, 4, [4, 2, 1], 0),
                                       (32, 8, [2, 2, 2, 2, 1], 7)):
            mask = Tree.from_widths([1, *widths]).ancestors(device)[first:]  # the root, then the tree
            t, w = mask.shape
            S, kv_len = keys + 64, keys + t
            q = torch.randn(1, t, hq, 128, device=device, dtype=dtype, generator=g).transpose(1, 2)
            k = torch.randn(1, hkv, S, 128, device=device, dtype=dtype, generator=g)
            v = torch.randn(1, hkv, S, 128, device=device, dtype=dtype, generator=g)
            length = torch.tensor([kv_len], device=device)
            out = decode_attention(q, k, v, length, 128 ** -0.5, ctx=ctx, tree=mask)
            ref = decode_attention_reference(q.float(), k.float(), v.float(), length, 128 ** -0.5, tree=mask)
            err = rel_err(out, ref)
            good = err < tol and torch.isfinite(out).all().item()
            ok &= good
            print(f"decode_attention tree {str(dtype)[6:]:8s} hq={hq} hkv={hkv} widths={widths} T={t} W={w} "
                  f"({hq // hkv * t} rows per KV head): rel err {err:.1e} {'ok' if good else 'FAILED'}")
    return ok


def rel_err(out, ref) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def check_kernels(device, policy: KernelPolicy) -> bool:
    """Every kernel against its reference, launched eagerly (plainly) and, where a check captures a
    graph, as the decode plan launches it (with PDL where the policy says)."""
    ctx = KernelContext(policy, pdl=False)
    ok = True
    g = torch.Generator(device=device).manual_seed(0)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 1e-5)):
        for hq, hkv in ((32, 32), (32, 8)):
            for t in (1, 3, 7, 17, 32 if hkv == hq else 16):
                S, kv_len = 32768 + 64, 32768 + t
                q = torch.randn(1, t, hq, 128, device=device, dtype=dtype, generator=g).transpose(1, 2)
                k = torch.randn(1, hkv, S, 128, device=device, dtype=dtype, generator=g)
                v = torch.randn(1, hkv, S, 128, device=device, dtype=dtype, generator=g)
                length = torch.tensor([kv_len], device=device)
                out = decode_attention(q, k, v, length, 128 ** -0.5, ctx=ctx)
                ref = decode_attention_reference(q.float(), k.float(), v.float(), length, 128 ** -0.5)
                err = rel_err(out, ref)
                # the captured path's form: the block's first slot + T, added in the kernel
                same = torch.equal(decode_attention(q, k, v, length - t, 128 ** -0.5, kv_offset=t, ctx=ctx), out)
                good = err < tol and torch.isfinite(out).all().item() and same
                ok &= good
                print(f"decode_attention {str(dtype)[6:]:8s} hq={hq} hkv={hkv} T={t:2d}: rel err {err:.1e} "
                      f"{'ok' if good else 'FAILED'}")
        x = torch.randn(7, 4096, device=device, dtype=dtype, generator=g)
        r = torch.randn(7, 4096, device=device, dtype=dtype, generator=g)
        w = 1 + 0.1 * torch.randn(4096, device=device, dtype=dtype, generator=g)
        errs = {"rms_norm": max(rel_err(a, b) for a, b in zip(rms_norm(x, w, 1e-5, r, ctx=ctx),
                                                               rms_norm_reference(x, w, 1e-5, r)))}
        gu = torch.randn(7, 2 * 11008, device=device, dtype=dtype, generator=g)
        errs["silu_mul"] = rel_err(silu_mul(gu, ctx=ctx), silu_mul_reference(gu))
        cfg = ModelConfig(vocab_size=8, hidden_size=4096, intermediate_size=8, num_layers=1, num_heads=32,
                          num_kv_heads=8, head_dim=128, max_position_embeddings=131072)
        rope = RotaryEmbedding(cfg).to(device).at(torch.arange(90000, 90007, device=device), dtype)
        qkv = torch.randn(1, 7, 48 * 128, device=device, dtype=dtype, generator=g)
        outs = []
        for fn in (lambda *a: rope_store(*a, ctx=ctx), rope_store_reference):
            buf = qkv.clone()
            q, k, v = (p.view(1, 7, -1, 128).transpose(1, 2) for p in buf.split([4096, 1024, 1024], dim=-1))
            kc, vc = torch.zeros(1, 8, 100, 128, device=device, dtype=dtype), torch.zeros(1, 8, 100, 128, device=device,
                                                                                         dtype=dtype)
            fn(q, k, v, rope, kc, vc, torch.tensor(50, device=device))
            outs.append(torch.cat([q.flatten(), kc.flatten(), vc.flatten()]))
        errs["rope_store"] = rel_err(*outs)
        errs.update(check_qkv_projection(device, dtype, g, ctx))
        errs.update(check_split_k_and_gated(device, dtype, g, KernelContext(policy, pdl=policy.pdl)))
        from triforce.inputs import TokenSlice
        from triforce.kernels.embedding import embed

        table = torch.randn(32000, 4096, device=device, dtype=dtype, generator=g)
        ids = torch.randint(0, 32000, (100,), device=device, generator=g)
        errs["embedding slice"] = rel_err(embed(table, TokenSlice(ids, torch.tensor(40, device=device), 7), ctx=ctx),
                                          table[ids[40:47]][None])
        from triforce.kernels.streaming import shift_window, shift_window_reference

        draft_cfg = ModelConfig(vocab_size=8, hidden_size=768, intermediate_size=8, num_layers=2, num_heads=12,
                                num_kv_heads=12, head_dim=64, max_position_embeddings=2048)
        draft_rope = RotaryEmbedding(draft_cfg).to(device)
        window = torch.randn(2, 2, 1, 12, 256, 64, device=device, dtype=dtype, generator=g)
        shifted = window.clone()
        shift_window(shifted[0], shifted[1], 16, 256, 3, draft_rope.inv_freq, ctx=ctx)
        shift_window_reference(window[0], window[1], 16, 256, 3, draft_rope.inv_freq)
        errs["streaming evict"] = rel_err(shifted, window)
        for name, err in errs.items():
            good = err < tol
            ok &= good
            print(f"{name:16s} {str(dtype)[6:]:8s}: rel err {err:.1e} {'ok' if good else 'FAILED'}")
    ok &= check_top_p(device, ctx)
    ok &= check_race(device, ctx)
    return ok


def check_race(device, ctx: KernelContext) -> bool:
    """The verification / sampling kernel (kernels/verify.py) against the same rule in torch ops,
    on the generator's draws, at the 32K and 128K vocabularies: the same acceptance count, and a
    token whose race ratio is the maximum (up to the kernel's division rounding)."""
    from triforce.kernels.verify import race_sample, race_sample_reference, race_verify, race_verify_reference

    ok = True
    g = torch.Generator(device=device).manual_seed(2)
    for vocab in (32000, 128256):
        for k in (2, 6, 16):
            bad = 0
            for trial in range(200):
                q = torch.softmax(torch.randn(k, vocab, device=device, generator=g) * 3, -1)
                p = torch.softmax(torch.randn(k + 1, vocab, device=device, generator=g) * 3, -1)
                if trial % 4 == 0:
                    p[:k] = q  # mostly accepted
                tokens = torch.multinomial(q, 1, generator=g)[:, 0]
                u = torch.rand(k, device=device, generator=g)
                race = torch.empty(vocab, device=device).exponential_(generator=g)
                buffer = torch.zeros(k + 8, dtype=torch.int64, device=device)
                out = race_verify(tokens, q, p, u, race, out_tokens=buffer, base=2, ctx=ctx).tolist()
                ref = race_verify_reference(tokens, q, p, u, race).tolist()
                n = ref[0]
                w = torch.clamp(p[n] - (q[n] if n < k else 0), min=0)
                ratio = w / race.clamp_min(torch.finfo(torch.float32).tiny)
                same = out[0] == n and ratio[out[1]] >= ratio.max() * (1 - 1e-6) and int(buffer[2 + n]) == out[1]
                bad += not same
            probs = torch.softmax(torch.randn(vocab, device=device, generator=g) * 3, -1)
            race = torch.empty(vocab, device=device).exponential_(generator=g)
            sampled = int(race_sample(probs, race, ctx=ctx)) == int(race_sample_reference(probs, race))
            good = bad == 0 and sampled
            ok &= good
            print(f"race verify V={vocab:6d} k={k:2d}: {bad}/200 disagree with the torch rule, sample agrees="
                  f"{sampled} {'ok' if good else 'FAILED'}")
    return ok


def check_split_k_and_gated(device, dtype, g, ctx: KernelContext) -> dict[str, float]:
    """The products of several rows: split-K (each tile's last program adds the partials; o_proj
    and down_proj shapes) and the gate/up product with SwiGLU in its epilogue, eagerly and replayed
    three times from a CUDA graph (the arrival counters must be back at zero after every launch).
    An error of inf marks a replay that differs from the eager result in any bit."""
    from triforce.kernels.activation import silu_mul_reference
    from triforce.kernels.triton_linear import fused_linear
    from triforce.kernels.workspace import Workspace

    errs = {}
    workspace = Workspace(device)
    for name, n, k, t, split_k, gated in (("o split 2", 4096, 4096, 17, 2, False), ("o split 4", 4096, 4096, 7, 4, False),
                                          ("down split 2", 4096, 14336, 17, 2, False),
                                          ("gate_up gated", 28672, 4096, 17, 1, True),
                                          ("gate_up gated split", 2048, 4096, 3, 2, True)):
        w = torch.randn(n, k, device=device, dtype=dtype, generator=g) / k ** 0.5
        x = torch.randn(1, t, k, device=device, dtype=dtype, generator=g)
        ref = torch.nn.functional.linear(x.float(), w.float())
        ref = silu_mul_reference(ref.to(dtype)) if gated else ref
        launch = dataclasses.replace(ctx.policy.linear_launch(t, n, k, gated=gated, element_size=x.element_size()),
                                     split_k=split_k)
        out = fused_linear(x, w, gated=gated, launch=launch, workspace=workspace)[0]
        err = rel_err(out, ref)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # captured as the decode plan launches (PDL where the context says)
            captured = fused_linear(x, w, gated=gated, launch=launch, workspace=workspace, pdl=ctx.pdl,
                                    prefetch=ctx.policy.linear_prefetch)[0]
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            if not torch.equal(captured, out):
                err = float("inf")
        errs[f"linear {name}"] = err
    from triforce.kernels.linear import linear, linear_add_norm, norm_linear

    for t in (1, 17):  # an RMSNorm folded into o_proj's and gate/up's epilogues, against the norm as a step
        x = torch.randn(1, t, 4096, device=device, dtype=dtype, generator=g)
        r = torch.randn(1, t, 4096, device=device, dtype=dtype, generator=g)
        wo = torch.randn(4096, 4096, device=device, dtype=dtype, generator=g) / 64
        wg = torch.randn(2 * 14336, 4096, device=device, dtype=dtype, generator=g) / 64
        nw = 1 + 0.1 * torch.randn(4096, device=device, dtype=dtype, generator=g)
        eager = dataclasses.replace(ctx, pdl=False)
        out, h = norm_linear(linear_add_norm(x, wo, None, r, nw, eager), None, nw, 1e-5, wg, gated=True, ctx=eager)
        ref, h_ref = norm_linear(linear(x, wo), r, nw, 1e-5, wg, gated=True)
        errs[f"norm fold T={t}"] = max(rel_err(out, ref), rel_err(h, h_ref))
    return errs


def check_qkv_projection(device, dtype, g, ctx: KernelContext) -> dict[str, float]:
    """The q/k/v projection with the rotary + cache write in its epilogue (7B and 8B layers, 1 to
    17 tokens, positions from a start scalar as the captured path passes them) against the
    projection followed by the reference rotary and store."""
    from triforce.inputs import DevicePositions
    from triforce.kernels.linear import qkv_rope_store

    errs = {}
    for hq, hkv in ((32, 32), (32, 8)):
        cfg = ModelConfig(vocab_size=8, hidden_size=4096, intermediate_size=8, num_layers=1, num_heads=hq,
                          num_kv_heads=hkv, head_dim=128, max_position_embeddings=131072)
        rotary = RotaryEmbedding(cfg).to(device)
        w = torch.randn((hq + 2 * hkv) * 128, 4096, device=device, dtype=dtype, generator=g) * 0.02
        nw = 1 + 0.1 * torch.randn(4096, device=device, dtype=dtype, generator=g)
        for t in (1, 3, 7, 17):
            x = torch.randn(1, t, 4096, device=device, dtype=dtype, generator=g)
            r = torch.randn(1, t, 4096, device=device, dtype=dtype, generator=g)
            start = torch.tensor(90000, device=device)
            outs = []
            for use_triton, positions in ((True, DevicePositions(start, t)),
                                          (False, torch.arange(90000, 90000 + t, device=device))):
                kc = torch.zeros(1, hkv, 200, 128, device=device, dtype=dtype)
                vc = torch.zeros_like(kc)
                q, h = qkv_rope_store(x, r, nw, 1e-5, w, None, rotary.at(positions, dtype), kc, vc,
                                      torch.tensor(50, device=device), hq, hkv, 128,
                                      ctx=ctx if use_triton else None)
                outs.append(torch.cat([q.flatten(), kc.flatten(), vc.flatten(), h.flatten()]))
            errs[f"qkv+rope hkv={hkv} T={t}"] = rel_err(*outs)
    return errs


def boundary_ties_only(probs: torch.Tensor, kept: torch.Tensor, kept_ref: torch.Tensor, top_p: float,
                       tol: float = 2e-5) -> bool:
    """True if, in every row, the tokens kept by one side only are one group of tied probabilities
    whose strictly-more-likely mass (float64) lies within `tol` of top_p: a boundary that float
    rounding of a 100K-term sum decides either way, not a wrong nucleus."""
    for row in range(probs.shape[0]):
        diff = kept[row] != kept_ref[row]
        if not diff.any():
            continue
        values = probs[row][diff].unique()
        if values.numel() != 1:
            return False
        ahead = float(probs[row][probs[row] > values[0]].sum())
        if abs(ahead - top_p) > tol:
            return False
    return True


def check_top_p(device, ctx: KernelContext) -> bool:
    """The sampling transform's kernels against sampling.nucleus at real vocabularies: the same
    nucleus and values; the split path (which hands work between programs through an atomic
    counter) gives bit-identical results over repeated runs."""
    from triforce.kernels.top_p import top_p_probabilities
    from triforce.kernels.triton_top_p import top_p_split
    from triforce.sampling import nucleus

    ok = True
    g = torch.Generator(device=device).manual_seed(1)
    for vocab in (32000, 49152, 128256):
        for rows in (1, 7, 17):
            for kind, scale in (("peaked", 3.0), ("flat", 0.55), ("near-uniform", 0.05), ("tied", 0.0)):
                logits = (torch.randn(rows, vocab, device=device, generator=g) * scale).to(torch.bfloat16)
                ref = nucleus(torch.softmax(logits.float() / 0.6, -1), 0.9)
                out = top_p_probabilities(logits, 0.6, 0.9, ctx=ctx)
                mismatched = int(((out > 0) != (ref > 0)).sum())
                err = float((out - ref).abs().max())
                diagnostics = {}
                runs = [top_p_split(logits, 0.6, 0.9, diagnostics=diagnostics) for _ in range(20)]
                stable = all(torch.equal(r, runs[0]) for r in runs)
                full = top_p_split(logits, 0.6, 0.9, force_full=True)
                fallback_same = torch.equal(full > 0, runs[0] > 0)
                # a token whose strictly-more-likely mass lies within float rounding of top_p may
                # fall either way (sorted cumsum vs tree sums), and with it every token tied with it
                # (bf16 logits tie by the dozen on flat rows): mismatches are allowed only as whole
                # tie groups at such a boundary
                nucleus_ok = mismatched == 0 or (kind != "peaked" and boundary_ties_only(
                    torch.softmax(logits.double() / 0.6, -1), out > 0, ref > 0, 0.9))
                good = nucleus_ok and err < 1e-5 and stable and fallback_same
                ok &= good
                print(f"top_p V={vocab:6d} rows={rows:2d} {kind:12s}: nucleus mismatches {mismatched}, max err "
                      f"{err:.1e}, deterministic={stable}, whole-row bisection agrees={fallback_same}, candidates/row "
                      f"<= {int(diagnostics['candidates'].max())}, fallbacks {int(diagnostics['full_row'].sum())} "
                      f"{'ok' if good else 'FAILED'}")
    return ok


def random_model(seed: int, device, dtype, **family) -> Transformer:
    """A small random model; `family`: ModelConfig fields of another family's shape (FAMILIES)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=32, max_position_embeddings=4096, eos_token_id=()),
                         **family})
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.to(device=device, dtype=dtype).eval()


def check_engine(device, kernels: dict) -> bool:
    ok = True
    target, draft = random_model(0, device, torch.float32), random_model(1, device, torch.float32)
    models = {"target": target, "draft": draft, None: None}
    prompt = torch.randint(0, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    for executor in ("eager", "graphs"):
        hardware = {"executor": executor, "kernels": kernels}
        reference = Engine(target, None, {"name": "autoregressive"}, GREEDY, hardware).generate(prompt, 48).tokens
        for name, d, extra in METHODS:
            res = Engine(target, models[d], {"name": name, **extra}, GREEDY, hardware).generate(prompt, 48)
            same = res.tokens == reference
            ok &= same
            print(f"{executor:6s} {name:15s} {extra} greedy-identical={same} "
                  f"mean_accepted_len={res.metrics['mean_accepted_len']:.2f}"
                  + (f" plans={ {k[12:]: int(v) for k, v in res.metrics.items() if k.startswith('plan_rounds/')} }"
                     if name == "auto" or extra.get("adaptive") else ""))
        if executor == "graphs":
            eager_ref = Engine(target, None, {"name": "autoregressive"}, GREEDY,
                               {"executor": "eager"}).generate(prompt, 48)
            ok &= eager_ref.tokens == reference
            print(f"graphs autoregressive == eager autoregressive: {eager_ref.tokens == reference}")
    sampled = Engine(target, draft, {"name": "triforce", "budget": 64}, {"temperature": 0.6, "top_p": 0.9},
                     {"executor": "graphs", "kernels": kernels})
    a, b = sampled.generate(prompt, 32, seed=3).tokens, sampled.generate(prompt, 32, seed=3).tokens
    print(f"graphs: seeded sampling reproducible={a == b}")
    return ok and a == b


def check_chained_steps(device, kernels: dict) -> bool:
    """A proposer's steps chained into one captured graph (StaticExecutor.steps) draw the tokens of
    one captured forward a step: sampled, one sequence and a ragged batch, spec and triforce."""
    from triforce.executor import StaticExecutor

    ok = True
    steps = StaticExecutor.steps
    chained = []  # the steps each chained replay ran

    def counted(self, level, starts, k, *a, **kw):
        chained.append(k)
        return steps(self, level, starts, k, *a, **kw)

    StaticExecutor.steps = counted
    target, draft = random_model(0, device, torch.float32), random_model(1, device, torch.float32)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (700, 333, 901)]
    for name, extra in (("spec", {"gamma": 6}), ("triforce", {"budget": 64, "draft_gamma": 4})):
        for batch in (prompts[0], prompts):
            tokens = {}
            for chain in (False, True):
                res = Engine(target, draft, {"name": name, **extra}, {"temperature": 0.8, "top_p": 0.95},
                             {"executor": "graphs", "kernels": {**kernels, "chain_steps": chain}}).generate(
                    batch, 40, seed=5, stop_at_eos=False)
                tokens[chain] = [r.tokens for r in res] if isinstance(batch[0], list) else [res.tokens]
            same = tokens[False] == tokens[True] and bool(chained)
            ok &= same
            print(f"graphs {name:9s} {len(tokens[True])} sequence(s): chained draft steps ({len(chained)} replays of "
                  f"{sum(chained)} steps) draw the single steps' tokens={same}")
            chained.clear()
    StaticExecutor.steps = steps
    return ok


def check_tree_sampling(device, kernels: dict) -> bool:
    """Sampled token trees at the top level, captured (each block's forward a graph with its sampling
    transform inside, the rule a graph) against the same static forwards uncaptured: the same tokens
    for a seed, one sequence and a ragged batch of 2, a deep tree and a wide one."""
    ok = True
    target, draft = random_model(0, device, torch.float32), random_model(1, device, torch.float32)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (700, 333)]
    for tree in ([4, 2, 1, 1], [8]):
        for batch in (prompts[0], prompts):
            tokens = {}
            for executor in ("static", "graphs"):
                res = Engine(target, draft, {"name": "spec", "tree": tree}, {"temperature": 0.8, "top_p": 0.95},
                             {"executor": executor, "kernels": kernels}).generate(batch, 32, seed=7, stop_at_eos=False)
                tokens[executor] = [r.tokens for r in res] if isinstance(batch[0], list) else [res.tokens]
            same = tokens["static"] == tokens["graphs"]
            ok &= same
            print(f"graphs spec tree {'-'.join(map(str, tree)):8s} {len(tokens['graphs'])} sequence(s): the captured "
                  f"round draws the uncaptured round's tokens={same}")
    return ok


def check_batched_kernels(device, policy: KernelPolicy) -> bool:
    """The kernels of a batch (docs/DESIGN.md §5): 4 sequences at different lengths, each row's
    result against the reference run on that row alone, at realistic sizes: decode attention (8B
    layer, 1 and 7 new tokens per sequence), the q/k/v projection's rotary + cache write, the
    embedding gather, the sampling and verification races at a 128K vocabulary, the StreamingLLM
    eviction of different amounts per sequence."""
    from triforce.inputs import DevicePositions, TokenSlice
    from triforce.kernels.embedding import embed
    from triforce.kernels.linear import qkv_rope_store
    from triforce.kernels.streaming import shift_window, shift_window_reference
    from triforce.kernels.verify import race_sample, race_verify, race_verify_reference

    ctx = KernelContext(policy, pdl=False)
    g = torch.Generator(device=device).manual_seed(7)
    ok = True
    B, bf16 = 4, torch.bfloat16
    lengths = [32768, 1000, 20000, 7]
    for t in (1, 7):
        q = torch.randn(B, t, 32, 128, device=device, dtype=bf16, generator=g).transpose(1, 2)
        k = torch.randn(B, 8, 32768 + 64, 128, device=device, dtype=bf16, generator=g)
        v = torch.randn(B, 8, 32768 + 64, 128, device=device, dtype=bf16, generator=g)
        starts = torch.tensor([n - t if n > t else 0 for n in lengths], device=device)
        out = decode_attention(q, k, v, starts, 128 ** -0.5, kv_offset=t, ctx=ctx)
        err = max(rel_err(out[b:b + 1], decode_attention_reference(q[b:b + 1].float(), k[b:b + 1].float(),
                                                                   v[b:b + 1].float(), starts[b:b + 1],
                                                                   128 ** -0.5, kv_offset=t)) for b in range(B))
        good = err < 2e-2
        ok &= good
        print(f"batched decode_attention B={B} T={t} lengths {lengths}: worst row rel err {err:.1e} "
              f"{'ok' if good else 'FAILED'}")
    cfg = ModelConfig(vocab_size=8, hidden_size=4096, intermediate_size=8, num_layers=1, num_heads=32,
                      num_kv_heads=8, head_dim=128, max_position_embeddings=131072)
    rotary = RotaryEmbedding(cfg).to(device)
    w = torch.randn(48 * 128, 4096, device=device, dtype=bf16, generator=g) * 0.02
    nw = 1 + 0.1 * torch.randn(4096, device=device, dtype=bf16, generator=g)
    x = torch.randn(B, 7, 4096, device=device, dtype=bf16, generator=g)
    r = torch.randn(B, 7, 4096, device=device, dtype=bf16, generator=g)
    pos = torch.tensor([90000, 5, 1234, 60000], device=device)
    slots = torch.tensor([10, 150, 0, 77], device=device)
    outs = []
    for c in (ctx, None):
        kc, vc = torch.zeros(B, 8, 300, 128, device=device, dtype=bf16), torch.zeros(B, 8, 300, 128, device=device,
                                                                                     dtype=bf16)
        qq, h = qkv_rope_store(x, r, nw, 1e-5, w, None, rotary.at(DevicePositions(pos, 7), bf16), kc, vc, slots,
                               32, 8, 128, ctx=c)
        outs.append(torch.cat([qq.flatten(), kc.flatten(), vc.flatten(), h.flatten()]))
    err = rel_err(*outs)
    table = torch.randn(128256, 4096, device=device, dtype=bf16, generator=g)
    ids = torch.randint(0, 128256, (B, 100), device=device, generator=g)
    tok_starts = torch.tensor([3, 40, 0, 90], device=device)
    emb = embed(table, TokenSlice(ids, tok_starts, 7), ctx=ctx)
    want = torch.stack([table[ids[b, int(s):int(s) + 7]] for b, s in enumerate(tok_starts.tolist())])
    err = max(err, rel_err(emb, want))
    vocab, kk = 128256, 6
    qd = torch.softmax(torch.randn(B, kk, vocab, device=device, generator=g) * 3, -1)
    pd_ = torch.softmax(torch.randn(B, kk + 1, vocab, device=device, generator=g) * 3, -1)
    pd_[1, :kk] = qd[1]  # a row that accepts everything
    props = torch.stack([torch.multinomial(qd[b], 1, generator=g)[:, 0] for b in range(B)])
    u = torch.rand(B, kk, device=device, generator=g)
    race = torch.empty(B, vocab, device=device).exponential_(generator=g)
    verdict = race_verify(props, qd, pd_, u, race, ctx=ctx)
    ref = race_verify_reference(props, qd, pd_, u, race)
    sample = race_sample(pd_[:, 0], race, ctx=ctx)
    ratio = pd_[:, 0] / race.clamp_min(torch.finfo(torch.float32).tiny)
    # the same acceptance counts; each row's winner a maximum of its race (up to the division's rounding)
    same = torch.equal(verdict[:, 0], ref[:, 0]) and bool(
        (ratio.gather(1, sample[:, None])[:, 0] >= ratio.max(1).values * (1 - 1e-6)).all())
    window = torch.randn(2, 2, B, 12, 256, 64, device=device, dtype=bf16, generator=g)
    draft_rope = RotaryEmbedding(ModelConfig(vocab_size=8, hidden_size=768, intermediate_size=8, num_layers=2,
                                             num_heads=12, num_kv_heads=12, head_dim=64,
                                             max_position_embeddings=2048)).to(device)
    shifted, ends, drops = window.clone(), [256, 250, 256, 100], [3, 0, 1, 2]
    shift_window(shifted[0], shifted[1], 16, ends, drops, draft_rope.inv_freq, ctx=ctx)
    shift_window_reference(window[0], window[1], 16, ends, drops, draft_rope.inv_freq)
    err = max(err, rel_err(shifted, window))
    good = err < 2e-2 and same
    ok &= good
    print(f"batched qkv+rope, embedding, eviction B={B}: rel err {err:.1e}; races equal to the torch rule: {same} "
          f"{'ok' if good else 'FAILED'}")
    return ok


# the other families' shapes (models/config.py): q/k/v biases and a draft whose table has fewer rows
# (Qwen2.5), per-head q/k norms with head_dim != hidden / heads (Qwen3), an explicit head_dim (Mistral)
FAMILIES = {
    "qwen2": (dict(qkv_bias=True, tie_word_embeddings=True, family="qwen2"), dict(vocab_size=480)),
    "qwen3": (dict(qk_norm=True, head_dim=64, family="qwen3"), {}),
    "mistral": (dict(head_dim=64, family="mistral"), {}),
}


def check_families(device, kernels: dict) -> bool:
    """Greedy identity (fp32) of the speculative methods on each family's shape, both executors, one
    sequence and a batch of 2: the decode plan's biased and q/k-normed QKV steps and the widened
    draft against the model's own forward."""
    ok = True
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 480, (n,), generator=g).tolist() for n in (600, 321)]
    for family, (shape, draft_shape) in FAMILIES.items():
        target = random_model(0, device, torch.float32, **shape)
        draft = random_model(1, device, torch.float32, **{**shape, **draft_shape})
        alone = [Engine(target, None, {"name": "autoregressive"}, GREEDY, {"executor": "eager"}).generate(p, 24).tokens
                 for p in prompts]
        for executor in ("eager", "graphs"):
            for name, extra in (("spec", {}), ("triforce", {"budget": 64, "chunk_size": 8, "draft_window": 48}),
                                ("retrieval_spec", {"budget": 64, "chunk_size": 8})):
                hw = {"executor": executor, "kernels": kernels}
                engine = Engine(target, draft if name != "retrieval_spec" else None, {"name": name, **extra}, GREEDY, hw)
                one = engine.generate(prompts[0], 24).tokens == alone[0]
                batch = [r.tokens for r in engine.generate(prompts, 24)] == alone
                ok &= one and batch
                print(f"{family:7s} {executor:6s} {name:15s} greedy-identical: one sequence={one}, batch of 2={batch}")
    return ok


def check_batched_engine(device, kernels: dict, executors: tuple[str, ...] = ("graphs",)) -> bool:
    """Greedy identity per sequence of a batch (fp32): 3 ragged prompts, every method; each
    sequence's tokens equal its prompt's run alone (eager autoregressive)."""
    ok = True
    target, draft = random_model(0, device, torch.float32), random_model(1, device, torch.float32)
    models = {"target": target, "draft": draft, None: None}
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (700, 333, 901)]
    alone = [Engine(target, None, {"name": "autoregressive"}, GREEDY, {"executor": "eager"}).generate(p, 32).tokens
             for p in prompts]
    for executor in executors:
        for name, d, extra in METHODS:
            res = Engine(target, models[d], {"name": name, **extra}, GREEDY,
                         {"executor": executor, "kernels": kernels}).generate(prompts, 32)
            same = [r.tokens for r in res] == alone
            ok &= same
            print(f"{executor} batch of 3 {name:15s} {extra} greedy-identical per sequence={same} "
                  f"throughput={res.metrics['throughput']:.0f} tokens/s")
    return ok


def check_synchronisations(device, kernels: dict) -> bool:
    """Count the implicit host synchronisations (torch's sync debug mode) of a graph-path run: TriForce
    on one sequence, and a token tree at the top of a batch of 2 (its round reads back once too)."""
    target, draft = random_model(0, device, torch.bfloat16), random_model(1, device, torch.bfloat16)
    prompt = torch.randint(0, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    ok = True
    for method, prompts in (({"name": "triforce", "budget": 64}, prompt),
                            ({"name": "spec", "tree": [4, 2, 1, 1]}, [prompt, prompt[:650]])):
        engine = Engine(target, draft, method, {"temperature": 0.6, "top_p": 0.9},
                        {"executor": "graphs", "kernels": kernels})
        engine.generate(prompts, 32, seed=0)  # capture first: capture itself synchronises
        sites = collections.Counter()  # where each synchronisation came from (the engine's innermost frame)

        def note(message, *args, **kwargs):
            if "synchroniz" in str(message):
                frames = [f for f in traceback.extract_stack()[:-1] if "/triforce/" in f.filename]
                sites[f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = note
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = engine.generate(prompts, 32, seed=0)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = sum(sites.values())
        m = result.metrics
        rounds = m["forwards/top"] + m.get("forwards/middle", 0)  # speculative rounds at every level
        # the prefill's, the capture's and the final read-back's synchronisations come on top of the rounds
        good = syncs <= rounds + 64
        print(f"graphs {method}: {syncs} implicit host synchronisations for {rounds} speculative rounds "
              f"({m['forwards/draft']} draft forwards, {m['new_tokens']} tokens) {'ok' if good else 'FAILED'}; "
              f"most from {sites.most_common(4)}")
        ok &= good
    return ok


def triton_kernel_names() -> set[str]:
    """Every Triton kernel the project defines (kernels/triton_*.py)."""
    import importlib
    import pkgutil

    import triton

    import triforce.kernels as package

    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("triton_"):
            module = importlib.import_module(f"triforce.kernels.{info.name}")
            names |= {name for name, obj in vars(module).items() if isinstance(obj, triton.runtime.JITFunction)}
    return names


def count_triton_launches(device, kernels: dict) -> dict[str, int]:
    """Launches of the project's Triton kernels (torch.profiler) while every method generates,
    eagerly and with graphs (each graph captured inside the profile), one sequence and a batch."""
    from torch.profiler import ProfilerActivity, profile

    names = triton_kernel_names()
    target, draft = random_model(0, device, torch.bfloat16), random_model(1, device, torch.bfloat16)
    models = {"target": target, "draft": draft, None: None}
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (400, 250)]
    counts = {}
    for executor in ("eager", "graphs"):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for name, d, extra in METHODS[:4]:
                engine = Engine(target, models[d], {"name": name, **extra}, {"temperature": 0.6, "top_p": 0.9},
                                {"executor": executor, "kernels": kernels})
                engine.generate(prompts[0], 8, seed=0)
                engine.generate(prompts, 8, seed=0)
            torch.cuda.synchronize()
        counts[executor] = sum(e.count for e in prof.key_averages() if e.key in names)
    return counts


def check_kernels_off(device) -> bool:
    """hardware.kernels.kernels=false: no Triton kernel of the project runs at all (counted with
    torch.profiler), eager and graphs, one sequence and a batch; with them on the same count is
    not zero (the counter sees them)."""
    off = count_triton_launches(device, {"kernels": False})
    on = count_triton_launches(device, {"kernels": True})
    ok = all(n == 0 for n in off.values()) and all(n > 0 for n in on.values())
    print(f"Triton launches with kernels off: {off}; with kernels on: {on} {'ok' if ok else 'FAILED'}")
    return ok


def report_bf16(device, kernels: dict) -> None:
    target, draft = random_model(0, device, torch.bfloat16), random_model(1, device, torch.bfloat16)
    models = {"target": target, "draft": draft, None: None}
    prompt = torch.randint(0, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    hardware = {"executor": "graphs", "kernels": kernels}
    ref = Engine(target, None, {"name": "autoregressive"}, GREEDY, hardware).generate(prompt, 48).tokens
    for name, d, extra in METHODS:
        out = Engine(target, models[d], {"name": name, **extra}, GREEDY, hardware).generate(prompt, 48).tokens
        agree = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), len(ref))
        print(f"bf16 graphs {name:15s} {extra}: agrees with autoregressive for {agree}/{len(ref)} tokens")


# every check of a PDL pass, in the order they run (`--only` picks some)
CHECKS = ("kernels", "tree_attention", "tree_rule", "tree_sampling", "batched_kernels", "engine", "batched_engine",
          "chained_steps", "families", "synchronisations", "bf16")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--pdl", choices=("off", "on", "both"), default="both",
                    help="programmatic dependent launch of the decode kernels (sm90+): check without, with, or both")
    ap.add_argument("--no-kernels-off", dest="kernels_off", action="store_false",
                    help="skip the run with the policy's kernels off (hardware.kernels.kernels=false)")
    ap.add_argument("--only", default="",
                    help="run only these checks, comma-separated (e.g. tree_attention,chained_steps; "
                         "the kernels-off pass is then skipped)")
    args = ap.parse_args()
    only = {name for name in args.only.split(",") if name}
    if only - set(CHECKS):
        print(f"error: --only names no check {sorted(only - set(CHECKS))}; choose from {list(CHECKS)}")
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device: this check is for GPUs (the CPU path is covered by the test suite)")
        return 1
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.pdl]
    if torch.cuda.get_device_capability()[0] < 9:
        modes = [False]  # PDL needs sm90+
    verdicts = {}
    for pdl in modes:
        kernels = {"pdl": pdl}
        policy = KernelPolicy.resolve(args.device, kernels)
        print(f"\n=== programmatic dependent launch {'on' if pdl else 'off'} ===")
        checks = {
            "kernels": lambda: check_kernels(args.device, policy),
            "tree_attention": lambda: check_tree_attention(args.device, KernelContext(policy, pdl=False)),
            "tree_rule": lambda: check_tree_rule(args.device),
            "tree_sampling": lambda: check_tree_sampling(args.device, kernels),
            "batched_kernels": lambda: check_batched_kernels(args.device, policy),
            "engine": lambda: check_engine(args.device, kernels),
            "batched_engine": lambda: check_batched_engine(args.device, kernels),
            "chained_steps": lambda: check_chained_steps(args.device, kernels),
            "families": lambda: check_families(args.device, kernels),
            "synchronisations": lambda: check_synchronisations(args.device, kernels),
            "bf16": lambda: report_bf16(args.device, kernels) or True,
        }
        assert tuple(checks) == CHECKS
        ok = True
        for name, check in checks.items():
            if not only or name in only:
                ok &= check()
        verdicts[f"PDL {'on' if pdl else 'off'}"] = ok
    if args.kernels_off and not only:
        # the torch reference everywhere (hardware.kernels.kernels=false): to rule a kernel out
        print("\n=== kernels off ===")
        kernels = {"kernels": False}
        ok = check_kernels_off(args.device)
        ok &= check_engine(args.device, kernels)
        ok &= check_batched_engine(args.device, kernels, executors=("eager", "graphs"))
        ok &= check_families(args.device, kernels)
        ok &= check_synchronisations(args.device, kernels)
        verdicts["kernels off"] = ok
    ok = all(verdicts.values())
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: "
          + ", ".join(f"{k} {'OK' if v else 'FAILED'}" for k, v in verdicts.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
