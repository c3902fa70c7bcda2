"""Latency of the tensor-parallel all-reduce of a decode step, inside a CUDA graph.

    torchrun --nproc-per-node 2 scripts/tp_allreduce.py

Times 64 back-to-back all-reduces of (tokens, 4096) bf16 activations (a 7B model's middle step
makes 64: after o_proj and down_proj of 32 layers) with NCCL and with the one-shot
symmetric-memory all-reduce (parallel.OneShotAllReduce), each captured in a graph, and checks
both sum correctly. Rank 0 prints a table.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from triforce.parallel import init_parallel


def graph_of(fn, xs):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for x in xs:
                fn(x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for x in xs:
            fn(x)
    return g


def main() -> None:
    world = dist.get_world_size() if dist.is_initialized() else int(__import__("os").environ.get("WORLD_SIZE", 1))
    par, device = init_parallel(world, "cuda")
    rows = []
    for tokens in (1, 3, 13, 17):
        for name in ("nccl", "one-shot"):
            if name == "one-shot" and par.fast_reduce is None:
                continue
            fn = (lambda t: dist.all_reduce(t)) if name == "nccl" else par.fast_reduce
            xs = [torch.full((tokens, 4096), float(par.rank + 1), device=device, dtype=torch.bfloat16)
                  for _ in range(64)]
            g = graph_of(fn, xs)
            for x in xs:
                x.fill_(par.rank + 1)
            g.replay()
            torch.cuda.synchronize()
            ok = all(bool(torch.all(x == world * (world + 1) / 2)) for x in xs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                g.replay()
            end.record()
            end.synchronize()
            rows.append((name, tokens, start.elapsed_time(end) / 20 / 64 * 1000, ok))
    if par.is_main:
        print(f"{torch.cuda.get_device_name()} x{world}: all-reduce inside a CUDA graph")
        print("| backend | tokens | us per all-reduce | sums right |\n|---|---|---|---|")
        for name, tokens, us, ok in rows:
            print(f"| {name} | {tokens} | {us:.1f} | {ok} |")


if __name__ == "__main__":
    main()
