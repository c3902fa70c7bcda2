"""Bandwidth of the decode kernels alone, over launch variants, on the GPU.

    python scripts/tune_kernels.py [--attention] [--tree-attention] [--linear] [--split-k] [--prologues] [--top-p]
        [--only qwen] [--write-tuning PATH]

Every time is per call, measured as a captured forward runs it: calls back to back in a CUDA
graph, each on its own buffers (triforce/bench/kernel_timing.py; do_bench's L2 flush would leave
dirty lines that inflate every bandwidth-bound kernel by ~17 us on an H100).

Attention: a 7B layer (MHA, 32 heads) and an 8B layer (GQA, 8 KV heads) at 32K, 64K and 128K keys
with 1, 3, 7 and 17 new tokens: the split-KV kernel's default launch (and the previous default,
power-of-two splits for about two programs per SM) against (splits, block, warps, stages)
variants, achieved bandwidth (KV bytes / time) as a share of the device-to-device copy bandwidth.
Linear: the 7B / 8B weight shapes at 1 to 17 rows: cuBLAS against the fused Triton kernel over
(design, block_n, block_k, warps, stages) variants, weight bytes / time as a share of copy bandwidth.
Split-K: the narrow products (o, down, q/k/v) and the gated gate/up product at 3-17 rows over
(split_k, block_n, block_k, stages). Prologues: RMSNorm inside the product and SwiGLU in the
gate/up product's epilogue, against running them as kernels of their own.
Top-p: the sampling transform at the 32K, 49K and 128K vocabularies, 1 / 7 / 17 rows, peaked and
flat rows: the one-program kernel (32K), the split path, torch's sort path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton

from triforce.bench.floors import copy_bandwidth
from triforce.bench.kernel_timing import copies_needed, graph_time
from triforce.kernels.policy import AttentionLaunch, KernelPolicy, LinearLaunch, Tile
from triforce.kernels.triton_decode import decode_attention
from triforce.kernels.triton_linear import fused_linear

POLICY = KernelPolicy.resolve("cuda")  # this device's rules and tuning file: the "default" of every sweep
FOUND: list[dict] = []  # tuning entries a sweep found (--write-tuning)


def rotating(tensors: list[torch.Tensor], fn) -> list:
    return [lambda t=t: fn(t) for t in tensors]


def kv_caches(hkv: int, keys: int) -> tuple[int, list[torch.Tensor], torch.Tensor]:
    """A layer's KV bytes at `keys` keys of `hkv` heads of 128, enough rotating (k, v) caches that
    replays do not read each other's lines from L2, and the length tensor."""
    kv_bytes = 2 * hkv * keys * 128 * 2
    n = copies_needed(kv_bytes, most=max(2, int(24e9 // kv_bytes)))
    caches = [torch.randn(2, 1, hkv, keys + 64, 128, device="cuda", dtype=torch.bfloat16) for _ in range(n)]
    return kv_bytes, caches, torch.tensor([keys], device="cuda")


def time_attention(variants: dict, caches: list, q, length, kv_bytes: int, bw: float, tree=None) -> tuple[str, str]:
    """Each launch variant of the decode attention over the rotating caches: (the policy's line,
    the five fastest), each `name[splits] us (share of copy bandwidth)`."""
    results = []
    for name, launch in variants.items():
        try:
            s = graph_time(rotating(caches, lambda c: decode_attention(q, c[0], c[1], length, 0.088, launch,
                                                                        tree=tree)))
        except Exception:  # noqa: BLE001 - a variant that does not fit the SM's resources
            continue
        results.append((s, f"{name}[{launch.splits}] {s * 1e6:.1f} us ({kv_bytes / s / bw:.3f})"))
    results.sort()
    chosen = next(r for _, r in results if r.startswith("default"))
    return chosen, "; ".join(r for _, r in results[:5])


ATTENTION_SHAPES = {"7b": (32, 32), "8b": (32, 8), "qwen2.5-7b": (28, 4)}  # (query heads, KV heads)


def tune_attention(bw: float, contexts: list[int], only: str = "") -> None:
    """The split kernel with its merge over tiles (the smallest power of two >= 16 rows, 64, 128;
    a group's rows past 64 also as two 64-row tiles, each a program over the same key slice),
    warps, stages and programs per SM (key slices = SMs x programs // (KV heads x row tiles)),
    against the policy's launch; the five fastest per case (docs/data/tune_attention_tiles_h100.txt).
    Kernel-alone timings choose tiles; slices are chosen over whole levels (scripts/tune_launch.py
    `slices ...`). only: the shapes whose name contains it (7b, 8b, qwen2.5-7b: its group of 7)."""
    sms = POLICY.device.sm_count
    for name, (hq, hkv) in ATTENTION_SHAPES.items():
        if only not in name:
            continue
        for keys in contexts:
            kv_bytes, caches, length = kv_caches(hkv, keys)
            for t in (1, 3, 7, 17):
                rows = hq // hkv * t
                q = torch.randn(1, t, hq, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                default = POLICY.attention_launch(batch=1, kv_heads=hkv, rows=rows, head_dim=128, capacity=keys + 64)
                variants = {"default": default}
                for block_m in sorted({max(16, triton.next_power_of_2(rows)), 64, 128}):
                    tiles = triton.cdiv(rows, block_m)
                    if tiles > 2 or (tiles > 1 and block_m < 64):
                        continue
                    for warps in (4, 8):
                        for stages in (3, 4, 5):
                            for per_sm in (1, 2, 3):
                                variants[f"{block_m}x{tiles} w{warps} s{stages} p{per_sm}"] = AttentionLaunch(
                                    block_m, default.block_n, warps, stages, max(1, sms * per_sm // (hkv * tiles)))
                chosen, fastest = time_attention(variants, caches, q, length, kv_bytes, bw)
                print(f"attention {name} hq={hq} hkv={hkv} keys={keys:6d} T={t:2d} rows={rows} (tile {default.block_m}): "
                      f"{chosen}; fastest: {fastest}", flush=True)
            del caches


def tune_tree_attention(bw: float, contexts: list[int]) -> None:
    """A token tree's verify: more query rows per KV head than one 128-row tile (47 nodes x Llama-3-8B's
    group of 4 = 188; 21 x Qwen2.5-7B's 7 = 147). The policy's launch (row tiles of 128, each a program
    over the same key slice: the KV read once per tile) against one 256-row tile whose program reads
    each key block once for all rows (16 or 8 warps; 32- or 64-key blocks to fit the registers), the
    tree mask over the new block as the engine passes it."""
    from triforce.tree import Tree
    from triforce.tree_round import rooted

    sms = POLICY.device.sm_count
    for hq, hkv, widths in ((32, 8, (2, 2, 2, 2, 1)), (28, 4, (4, 2, 1)), (32, 8, (4, 2, 1))):
        full = rooted(Tree.from_widths(widths))
        t = full.size
        tree = full.ancestors("cuda").to(torch.int8).contiguous()
        rows = hq // hkv * t
        for keys in contexts:
            kv_bytes, caches, length = kv_caches(hkv, keys)
            q = torch.randn(1, t, hq, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            default = POLICY.attention_launch(batch=1, kv_heads=hkv, rows=rows, head_dim=128, capacity=keys + 64)
            variants = {"default": default}
            for warps in (8, 16):
                for block_n in (32, 64):
                    for stages in (2, 3):
                        for per_sm in (1, 2):
                            variants[f"256 n{block_n} w{warps} s{stages} p{per_sm}"] = AttentionLaunch(
                                256, block_n, warps, stages, max(1, sms * per_sm // hkv))
            chosen, fastest = time_attention(variants, caches, q, length, kv_bytes, bw, tree)
            print(f"tree attention hq={hq} hkv={hkv} keys={keys:6d} tree={'-'.join(map(str, widths))} T={t} "
                  f"rows={rows} (tiles of {default.block_m}): {chosen}; fastest: {fastest}", flush=True)
            del caches


def launch_of(x, w, *, gated=False, design=None, block_n=None, block_k=None, num_warps=None, num_stages=None,
              split_k=None) -> LinearLaunch:
    """The policy's launch for this product with the given fields changed."""
    base = POLICY.linear_launch(x.numel() // x.shape[-1], w.shape[0], w.shape[1], gated=gated)
    t = base.tile
    tile = Tile(t.design if design is None else design, block_n or t.block_n, block_k or t.block_k,
                num_warps or t.warps, num_stages or t.stages)
    return LinearLaunch(tile, base.split_k if split_k is None else split_k, num_stages or base.stages)


def variant_time(ws: list[torch.Tensor], x: torch.Tensor, gated: bool = False, block_m=None, **launch) -> float | None:
    """Seconds per fused_linear(x, w) with a launch variant over the rotating weights; None for a
    variant that does not fit the SM's resources."""
    try:
        chosen = launch_of(x, ws[0], gated=gated, **launch)
        return graph_time(rotating(ws, lambda w: fused_linear(x, w, gated=gated, launch=chosen, block_m=block_m)))
    except Exception:  # noqa: BLE001 - e.g. out of shared memory
        return None


def found(name: str, n: int, k: int, gated: bool, rows: int, default_s: float, best_s: float, best: dict,
          why: str) -> None:
    """A launch measured faster than the policy's by more than 2%: a candidate tuning entry (from
    `rows` rows up; for one row, that row only: the one-row rule's design differs from the rest)."""
    if best_s < 0.98 * default_s:
        match = {"n": n, "k": k, "gated": gated, "min_rows": rows, **({"max_rows": 1} if rows == 1 else {})}
        FOUND.append({"name": f"linear: {name} " + ("at one row" if rows == 1 else f"from {rows} rows"),
                      "kind": "linear", "match": match,
                      "launch": best, "measured": f"{why}: {default_s * 1e6:.1f} -> {best_s * 1e6:.1f} us alone"})


# the model families' products beyond Llama's (n, k): Qwen2.5-7B (hidden 3584, 4 KV heads of 128,
# intermediate 18944, vocabulary 152,064) and Qwen3-8B (hidden 4096, intermediate 12288, 151,936)
FAMILY_LINEAR = {"qkv-qwen2.5-7b": (4608, 3584), "o-qwen2.5-7b": (3584, 3584), "gate_up-qwen2.5-7b": (37888, 3584),
                 "down-qwen2.5-7b": (3584, 18944), "lm_head-qwen2.5-7b": (152064, 3584),
                 "gate_up-qwen3-8b": (24576, 4096), "down-qwen3-8b": (4096, 12288), "lm_head-qwen3-8b": (151936, 4096)}


def tune_linear(bw: float, only: str = "") -> None:
    shapes = {"qkv-7b": (12288, 4096), "o": (4096, 4096), "gate_up-7b": (22016, 4096), "down-7b": (4096, 11008),
              "lm_head-7b": (32000, 4096), "qkv-8b": (6144, 4096), "gate_up-8b": (28672, 4096),
              "down-8b": (4096, 14336), "lm_head-8b": (128256, 4096), "qkv-68m": (2304, 768),
              "gate_up-68m": (6144, 768), "lm_head-68m": (32000, 768), **FAMILY_LINEAR}
    for name, (n, kdim) in shapes.items():
        if only not in name:
            continue
        wb = n * kdim * 2
        ws = [torch.randn(n, kdim, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies_needed(wb))]
        for t in (1, 3, 7, 17):
            x = torch.randn(1, t, kdim, device="cuda", dtype=torch.bfloat16)
            cublas = graph_time(rotating(ws, lambda w: torch.nn.functional.linear(x, w)))
            results = []
            designs = [(0, None), (1, None)] + ([(2, 1 if t == 1 else 4)] if t <= 3 else [])
            for design, block_m in designs:
                for block_n in (16, 32, 64, 128):
                    if triton.cdiv(n, block_n) < 64 or (design == 2 and block_n > 32):
                        continue
                    for block_k, warps, stages in ((128, 4, 4), (256, 4, 4), (256, 8, 3), (512, 4, 2), (1024, 8, 2)):
                        s = variant_time(ws, x, block_n=block_n, block_k=block_k, num_warps=warps,
                                         num_stages=stages, design=design, block_m=block_m)
                        if s is not None:
                            results.append((s, design, block_n, block_k, warps, stages))
            default = graph_time(rotating(ws, lambda w: fused_linear(x, w, launch=launch_of(x, w))))
            best = min(results)
            why = f"tune_kernels --linear on {torch.cuda.get_device_name()}"
            if t > 1 and best[1] == 1:
                found(name, n, kdim, False, t, default, best[0], {"block_n": best[2], "block_k": best[3],
                                                                  "warps": best[4], "stages": best[5]}, why)
            elif t == 1 and best[1] != 2:  # one row: the few-row tile measured faster than the one-row rule
                found(name, n, kdim, False, t, default, best[0], {"design": best[1], "block_n": best[2],
                                                                  "block_k": best[3], "warps": best[4],
                                                                  "stages": best[5]}, why)
            print(f"linear {name:11s} T={t:2d}: cublas {wb / cublas / bw:5.3f} ({cublas * 1e6:6.1f} us), "
                  f"triton default {wb / default / bw:5.3f} ({default * 1e6:6.1f} us), "
                  f"best {wb / best[0] / bw:5.3f} ({best[0] * 1e6:6.1f} us) design={best[1]} block_n={best[2]} "
                  f"block_k={best[3]} warps={best[4]} stages={best[5]}", flush=True)


def tune_split_k(bw: float, only: str = "") -> None:
    """Split-K for the products of several rows whose column tiles do not fill the GPU, and the
    gate/up product with SwiGLU in its epilogue: (split_k, block_n, block_k, warps, stages)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = {"o": (4096, 4096, False), "down-7b": (4096, 11008, False), "down-8b": (4096, 14336, False),
              "qkv-8b": (6144, 4096, False), "qkv-7b": (12288, 4096, False), "gate_up-8b": (28672, 4096, True),
              "o-qwen2.5-7b": (3584, 3584, False), "down-qwen2.5-7b": (3584, 18944, False),
              "qkv-qwen2.5-7b": (4608, 3584, False), "gate_up-qwen2.5-7b": (37888, 3584, True),
              "down-qwen3-8b": (4096, 12288, False), "gate_up-qwen3-8b": (24576, 4096, True)}
    for name, (n, kdim, gated) in shapes.items():
        if only not in name:
            continue
        wb = n * kdim * 2
        ws = [torch.randn(n, kdim, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies_needed(wb))]
        for t in (3, 7, 17):
            x = torch.randn(1, t, kdim, device="cuda", dtype=torch.bfloat16)
            default = graph_time(rotating(ws, lambda w: fused_linear(x, w, gated=gated,
                                                                     launch=launch_of(x, w, gated=gated))))
            results = []
            for split_k in (1, 2, 3, 4):
                for block_n in (32, 64):
                    for block_k, warps, stages in ((256, 4, 4), (256, 4, 3), (128, 4, 4)):
                        if kdim % (split_k * 8):
                            continue
                        s = variant_time(ws, x, gated=gated, block_n=block_n, block_k=block_k, num_warps=warps,
                                         num_stages=stages, split_k=split_k)
                        if s is not None:
                            results.append((s, split_k, block_n, block_k, warps, stages))
            results.sort()
            tiles = triton.cdiv(n, 64)
            print(f"split-k {name:10s} T={t:2d} ({tiles} tiles of 64 on {sms} SMs): default {wb / default / bw:5.3f} "
                  f"({default * 1e6:6.1f} us); best: " + "; ".join(
                      f"{wb / r[0] / bw:5.3f} split={r[1]} bn={r[2]} bk={r[3]} w={r[4]} st={r[5]}" for r in results[:4]),
                  flush=True)
            by_split = {}
            for r in results:
                by_split.setdefault(r[1], r)
            print("    best per split: " + "; ".join(f"{k}: {wb / r[0] / bw:5.3f} (bn={r[2]} bk={r[3]} st={r[5]})"
                                                    for k, r in sorted(by_split.items())), flush=True)


def tune_prologues(bw: float) -> None:
    """The fused steps around a product against running them apart: RMSNorm (+ residual) inside
    the product, and SwiGLU as the gate/up product's epilogue (`gated`)."""
    from triforce.kernels.activation import silu_mul
    from triforce.kernels.linear import linear, norm_linear
    from triforce.kernels.norm import rms_norm
    from triforce.kernels.policy import KernelContext

    ctx = KernelContext(POLICY)

    for name, (n, kdim, kind) in {"qkv-7b": (12288, 4096, "norm"), "gate_up-7b": (22016, 4096, "norm"),
                                  "gate_up-7b ": (22016, 4096, "gated"), "lm_head-7b": (32000, 4096, "norm"),
                                  "qkv-8b": (6144, 4096, "norm"), "gate_up-8b": (28672, 4096, "norm"),
                                  "gate_up-8b ": (28672, 4096, "gated")}.items():
        wb = n * kdim * 2
        ws = [torch.randn(n, kdim, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies_needed(wb))]
        nw = torch.ones(kdim, device="cuda", dtype=torch.bfloat16)
        for t in (1, 7, 17):
            x = torch.randn(1, t, kdim, device="cuda", dtype=torch.bfloat16)
            r = torch.randn(1, t, kdim, device="cuda", dtype=torch.bfloat16)
            if kind == "norm":
                fused = graph_time(rotating(ws, lambda w: norm_linear(x, r, nw, 1e-5, w, ctx=ctx)))
                apart = graph_time(rotating(ws, lambda w: linear(rms_norm(x, nw, 1e-5, r)[0], w, ctx=ctx)))
                cublas = graph_time(rotating(ws, lambda w: torch.nn.functional.linear(rms_norm(x, nw, 1e-5, r)[0], w)))
            else:
                fused = graph_time(rotating(ws, lambda w: linear(x, w, gated=True, ctx=ctx)))
                apart = graph_time(rotating(ws, lambda w: silu_mul(linear(x, w, ctx=ctx))))
                cublas = graph_time(rotating(ws, lambda w: silu_mul(torch.nn.functional.linear(x, w))))
            print(f"prologue {kind:5s} {name:11s} T={t:2d}: fused {wb / fused / bw:5.3f} ({fused * 1e6:6.1f} us), "
                  f"triton apart {wb / apart / bw:5.3f} ({apart * 1e6:6.1f} us), cublas apart {wb / cublas / bw:5.3f} "
                  f"({cublas * 1e6:6.1f} us)", flush=True)


def tune_top_p() -> None:
    """The sampling transform: the one-program kernel, the split path (default and variants) and
    torch's sort, on peaked rows (logits ~ N(0, 3)), flat ones (N(0, 0.55), a random-weight 68M
    draft's) and near-uniform ones (N(0, 0.05): heads scaled down for controlled acceptance, most
    of the vocabulary in the nucleus), at 1 / 7 / 17 rows and a batch's 8 and 72 (8 x 9): time per
    call, the split path's candidates per row and how often it fell back to the whole-row
    bisection."""
    from triforce.kernels import triton_top_p
    from triforce.sampling import SamplingParams, nucleus

    params = SamplingParams(0.6, 0.9)

    def sort_path(logits):
        return nucleus(torch.softmax(logits.float() / params.temperature, -1), params.top_p)

    for vocab in (32000, 49152, 128256):
        for rows in (1, 7, 17) + ((8, 72) if vocab == 128256 else ()):
            for kind, scale in (("peaked", 3.0), ("flat", 0.55), ("near-uniform", 0.05)):
                logits = (torch.randn(rows, vocab, device="cuda") * scale).to(torch.bfloat16)
                times = {"sort": graph_time([lambda: sort_path(logits)] * 4)}
                if vocab <= 32768:
                    times["one-program"] = graph_time([lambda: triton_top_p.top_p_probabilities(logits, 0.6, 0.9)] * 4)
                for block, warps in ((4096, 4), (2048, 4), (4096, 8), (8192, 8)):
                    times[f"split {block}/{warps}w"] = graph_time(
                        [lambda: triton_top_p.top_p_split(logits, 0.6, 0.9, block=block, num_warps=warps)] * 4)
                diagnostics = {}
                out = triton_top_p.top_p_split(logits, 0.6, 0.9, diagnostics=diagnostics)
                ref = sort_path(logits)
                same = bool(torch.equal(out > 0, ref > 0))
                cands = diagnostics["candidates"].tolist()
                fell_back = int(diagnostics["full_row"].sum())
                print(f"top_p V={vocab:6d} rows={rows:2d} {kind:12s}: "
                      + ", ".join(f"{k} {v * 1e6:6.1f} us" for k, v in times.items())
                      + f"; candidates/row max {max(cands)} (kept {int((out > 0).sum(-1).max())}), "
                        f"whole-row fallbacks {fell_back}/{rows}, same nucleus as sort: {same}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--tree-attention", action="store_true", help="token-tree verifies past one 128-row tile")
    ap.add_argument("--contexts", default="32768,65536,131072", help="attention key counts")
    ap.add_argument("--linear", action="store_true")
    ap.add_argument("--prologues", action="store_true")
    ap.add_argument("--split-k", action="store_true")
    ap.add_argument("--top-p", action="store_true")
    ap.add_argument("--only", default="", help="linear / split-k / attention: the shapes whose name contains this "
                                               "(e.g. qwen)")
    ap.add_argument("--write-tuning", default=None, metavar="PATH",
                    help="write the launches measured >2%% faster than the policy's as a tuning file "
                         "(review it, then copy it to triforce/kernels/tuning/<device>.json)")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    everything = not (args.attention or args.linear or args.prologues or args.top_p or args.split_k
                      or args.tree_attention)
    if args.top_p or everything:
        tune_top_p()
    if args.attention or everything:
        tune_attention(bw, [int(c) for c in args.contexts.split(",")], args.only)
    if args.tree_attention:
        tune_tree_attention(bw, [int(c) for c in args.contexts.split(",")])
    if args.prologues or everything:
        tune_prologues(bw)
    if args.linear or everything:
        tune_linear(bw, args.only)
    if args.split_k or everything:
        tune_split_k(bw, args.only)
    if args.write_tuning:
        import json

        Path(args.write_tuning).write_text(json.dumps({"device": POLICY.device.name, "entries": FOUND}, indent=2))
        print(f"{len(FOUND)} candidate tuning entries -> {args.write_tuning}")


if __name__ == "__main__":
    main()
