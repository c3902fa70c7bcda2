"""Timing single kernels the way a captured forward runs them (scripts/tune_kernels.py).

`triton.testing.do_bench` clears the L2 cache before each run by writing zeros over 256 MB, which
leaves the L2 full of dirty lines: a kernel timed after it first writes them back (about 50 MB on
an H100, some 17 us of memory time), which makes a 45 us attention layer look 40% slower than it
runs inside a decode step. Here the calls are captured back to back in one CUDA graph, as the
engine replays a forward, each call on buffers of its own (like consecutive layers), so the L2
holds nothing the next call reads and nothing dirty it must write back.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

L2_FLUSH_BYTES = 400 * 1024 ** 2  # a stream through this much leaves nothing of interest in an H100/H200's L2


def copies_needed(nbytes: int, most: int = 8) -> int:
    """How many copies of a `nbytes` buffer to rotate through so the L2 never serves the next call."""
    return max(2, min(most, math.ceil(L2_FLUSH_BYTES / max(1, nbytes))))


def graph_time(calls: list[Callable[[], object]], repeats: int = 10, batches: int = 5) -> float:
    """Seconds per call: `calls` captured in order in one CUDA graph, replayed `repeats` times per
    batch; the median batch. Warm-up (compilation) runs on a side stream first."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    seconds = replay_time(graph, repeats, batches) / len(calls)
    del graph
    return seconds


def replay_time(graph: torch.cuda.CUDAGraph, repeats: int, batches: int = 5) -> float:
    """Seconds per replay of a captured graph: the median over `batches` of `repeats` back-to-back
    replays (three replays first, so nothing is timed cold)."""
    for _ in range(3):
        graph.replay()
    means = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        end.synchronize()
        means.append(start.elapsed_time(end) / 1e3 / repeats)
    return sorted(means)[len(means) // 2]
