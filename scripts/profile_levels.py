"""Where a captured forward spends its time: torch.profiler over graph replays, kernels grouped.

    python scripts/profile_levels.py [--shape llama2-7b] [--context 32768] [--levels top:1,top:7,middle:3,draft:1] [--no-pdl]
        [--sequence]   # + one middle layer's kernels in order: each one's time and the idle gap before it
    python scripts/profile_levels.py --shape llama3-8b --levels top:21,tree:4-2-1 --sequence   # a tree's verify

Builds the engine's levels at the context over random weights and caches (triforce.bench), replays
each level's captured forward under torch.profiler and prints, per level, the kernels by total
GPU time, with the bytes each class of kernel must move and its achieved bandwidth.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from triforce.bench.latency import LevelBench
from triforce.bench.shapes import DRAFT_OF, SHAPES, random_model
from triforce.config import MethodConfig
from triforce.tree import widths_of

PAPER = MethodConfig(name="triforce", budget=4096, chunk_size=8, gamma=6, draft_gamma=2)


def kernel_class(name: str) -> str:
    n = name.lower()
    for key, cls in (("_split_kernel", "attention split"), ("_merge_kernel", "attention merge"),
                     ("_top_p_kernel", "sampling transform"), ("_stats_kernel", "sampling transform"),
                     ("_probs_kernel", "sampling transform"), ("_compact_kernel", "sampling transform"),
                     ("_finish_kernel", "sampling transform"), ("_embed_kernel", "index/embedding"),
                     ("rms_norm", "rmsnorm"), ("rope_store", "rope+store"), ("silu_mul", "silu*up"), ("_linear_kernel", "gemm/gemv"),
                     ("gemv", "gemm/gemv"), ("gemm", "gemm/gemv"), ("nvjet", "gemm/gemv"), ("cutlass", "gemm/gemv"),
                     ("sort", "sampling transform"), ("softmax", "sampling transform"), ("scan", "sampling transform"),
                     ("index", "index/embedding")):
        if key in n:
            return cls
    return "other elementwise"


def layer_sequence(prof, per_replay: int, num_layers: int) -> list[tuple[str, float, float]]:
    """(kernel, us, idle us before it) for the kernels of one layer in the middle of the last
    replay: the replay's kernels in start order, cut into layers by their repeating pattern."""
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)[-per_replay:]
    per_layer = (per_replay - per_replay % num_layers) // num_layers
    head = (per_replay - per_layer * num_layers) // 2  # kernels before the first layer (embedding, ...)
    first = head + per_layer * (num_layers // 2)
    out = []
    for i in range(first, first + per_layer):
        gap = events[i].time_range.start - events[i - 1].time_range.end
        out.append((events[i].name, events[i].time_range.elapsed_us(), gap))
    return out


def profile_graph(graph, replays: int = 10, keep=None):
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    if keep is not None:
        keep.append(prof)
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            kernels[evt.name][0] += 1
            kernels[evt.name][1] += evt.device_time_total
    return {name: (count // replays, us / replays) for name, (count, us) in kernels.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--levels", default="top:1,top:7,top:17,middle:3,draft:1",
                    help="level:tokens, comma-separated; tree:4-2-1 for a token tree's verify (beside top:21, its chain)")
    ap.add_argument("--no-pdl", action="store_true", help="kernels without programmatic dependent launch")
    ap.add_argument("--sequence", action="store_true", help="also one middle layer's kernels in order, with gaps")
    args = ap.parse_args()
    target = random_model(SHAPES[args.shape], dtype=torch.bfloat16, device="cuda")
    draft = random_model(SHAPES[DRAFT_OF[args.shape]], dtype=torch.bfloat16, device="cuda", seed=1)
    bench = LevelBench(target, draft, PAPER, args.context, {"kernels": {"pdl": not args.no_pdl}})
    print(f"kernel policy: {bench.policy.describe()}")
    with torch.inference_mode():
        for spec in args.levels.split(","):
            level, tokens = spec.split(":")
            keep = []
            if level == "tree":  # tree:4-2-1: the top level's captured verify of that token tree (its mask in the kernel)
                graph, n_nodes = bench.tree_graph(widths_of(tokens))
                tokens = f"{tokens} ({n_nodes} tokens)"
            else:
                graph = bench.graph(level, int(tokens))
            kernels = profile_graph(graph, keep=keep)
            total = sum(us for _, us in kernels.values())
            n = sum(c for c, _ in kernels.values())
            print(f"\n== {args.shape} {level} T={tokens} at {args.context}: {total:.1f} us of kernels, {n} launches")
            classes = collections.defaultdict(lambda: [0, 0.0])
            for name, (count, us) in kernels.items():
                classes[kernel_class(name)][0] += count
                classes[kernel_class(name)][1] += us
            for cls, (count, us) in sorted(classes.items(), key=lambda kv: -kv[1][1]):
                print(f"  {cls:20s} {count:5d} launches {us:9.1f} us ({100 * us / total:4.1f}%), {us / max(count, 1):6.2f} us each")
            for name, (count, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:8]:
                print(f"    {us:9.1f} us x{count:4d}  {name[:110]}")
            if args.sequence:
                layers = (target if level != "draft" else draft).config.num_layers
                print("  one layer in order (us, idle us before):")
                for name, us, gap in layer_sequence(keep[0], n, layers):
                    print(f"    {us:8.2f} {gap:6.2f}  {kernel_class(name):18s} {name[:60]}")
    bench.close()


if __name__ == "__main__":
    main()
