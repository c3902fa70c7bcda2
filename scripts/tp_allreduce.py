"""Latency of the tensor-parallel all-reduce of a decode step, inside a CUDA graph.

    torchrun --nproc-per-node 2 scripts/tp_allreduce.py

Times 64 back-to-back all-reduces of (tokens, 4096) bf16 activations (a 7B model's middle step
makes 64: after o_proj and down_proj of 32 layers, alternating buffer slots as the model does)
with NCCL, torch's one-shot symmetric-memory all-reduce and the project's one-kernel one
(parallel.SymmetricAllReduce), each captured in a graph, and checks each against NCCL's sum of
the same random partials after several replays. Rank 0 prints a table.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from triforce.parallel import SymmetricAllReduce, init_parallel


def graph_of(fn, xs):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for i, x in enumerate(xs):
                fn(i, x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i, x in enumerate(xs):
            fn(i, x)
    return g


def main() -> None:
    world = dist.get_world_size() if dist.is_initialized() else int(__import__("os").environ.get("WORLD_SIZE", 1))
    par, device = init_parallel(world, "cuda")
    kernels = {"nccl": lambda t, slot: dist.all_reduce(t)}
    if par.fast_reduce is not None:
        kernels["torch one-shot"] = SymmetricAllReduce(device, kernel="torch")
        kernels["triton one-kernel"] = SymmetricAllReduce(device, kernel="triton")
    gen = torch.Generator(device=device).manual_seed(par.rank)
    rows = []
    for tokens in (1, 3, 13, 17):
        for name, fn in kernels.items():
            parts = [torch.randn((tokens, 4096), device=device, dtype=torch.bfloat16, generator=gen) for _ in range(64)]
            want = [p.clone() for p in parts]
            for w in want:
                dist.all_reduce(w)
            xs = [p.clone() for p in parts]
            g = graph_of(lambda i, x: fn(x, i % 2), xs)
            ok = True
            for _ in range(3):  # replays reuse the slots and flags: each must sum right again
                for x, p in zip(xs, parts):
                    x.copy_(p)
                g.replay()
                torch.cuda.synchronize()
                ok &= all(torch.equal(x, w) for x, w in zip(xs, want))
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                g.replay()
            end.record()
            end.synchronize()
            rows.append((name, tokens, start.elapsed_time(end) / 20 / 64 * 1000, ok))
    if par.is_main:
        print(f"{torch.cuda.get_device_name()} x{world}: all-reduce inside a CUDA graph")
        print("| backend | tokens | us per all-reduce | equals NCCL's sum |\n|---|---|---|---|")
        for name, tokens, us, ok in rows:
            print(f"| {name} | {tokens} | {us:.1f} | {ok} |")


if __name__ == "__main__":
    main()
