"""Where a captured forward spends its time: torch.profiler over graph replays, kernels grouped.

    python scripts/profile_levels.py [--shape llama2-7b] [--context 32768] [--levels top:1,top:7,middle:3,draft:1] [--pdl]

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
from triforce.engine import MethodConfig

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


def profile_graph(graph, replays: int = 10):
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
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
    ap.add_argument("--levels", default="top:1,top:7,top:17,middle:3,draft:1")
    ap.add_argument("--pdl", action="store_true", help="kernels with programmatic dependent launch")
    args = ap.parse_args()
    if args.pdl:
        from triforce.kernels import use_pdl

        use_pdl(True)
    target = random_model(SHAPES[args.shape], dtype=torch.bfloat16, device="cuda")
    draft = random_model(SHAPES[DRAFT_OF[args.shape]], dtype=torch.bfloat16, device="cuda", seed=1)
    bench = LevelBench(target, draft, PAPER, args.context)
    with torch.inference_mode():
        for spec in args.levels.split(","):
            level, tokens = spec.split(":")
            kernels = profile_graph(bench.graph(level, int(tokens)))
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
    bench.close()


if __name__ == "__main__":
    main()
