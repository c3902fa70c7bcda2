"""The memory-bandwidth floor of each step, and the speedup model built on level costs.

Floor of a step = bytes it must read (the weights it multiplies by, the KV it attends over)
divided by the device-to-device copy bandwidth measured in the same run, counting bytes read
plus bytes written (docs/DESIGN.md §7).
"""

from __future__ import annotations

import torch

# the byte and yield arithmetic lives with the engine's cost model
from triforce.costs import (LevelCosts, expected_accepted, modelled_speedup, step_bytes,  # noqa: F401
                            weight_bytes_read)
from triforce.memory import kv_bytes_per_token
from triforce.models.config import ModelConfig


def copy_bandwidth(device: torch.device | str = "cuda", size_bytes: int = 2 * 1024 ** 3, repeats: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (median of `repeats`)."""
    src = torch.empty(size_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return 2 * size_bytes / times[len(times) // 2]


def host_to_device_bandwidth(device: torch.device | str = "cuda", size_bytes: int = 2 * 1024 ** 3,
                             repeats: int = 10) -> float:
    """Pinned host memory -> device copy, bytes per second (median of `repeats`): the link an
    offloaded KV cache streams over. Under tensor parallelism every rank copies at once (the ranks
    may share the host's memory and PCIe root), as they do when they stream their KV."""
    import torch.distributed as dist

    src = torch.empty(size_bytes // 2, dtype=torch.bfloat16, pin_memory=True)
    dst = torch.empty(size_bytes // 2, dtype=torch.bfloat16, device=device)
    times = []
    for i in range(repeats + 2):
        if dist.is_initialized():
            dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1000)
    times.sort()
    return size_bytes / times[len(times) // 2]


def offloaded_step_floor(cfg: ModelConfig, kv_tokens: int, dtype_bytes: int, on_chip_layers: int,
                         bandwidth: float, h2d: float) -> float:
    """Seconds a step of an offloaded top level must take: its offloaded layers' KV over the host
    link, plus its weights and on-chip KV from device memory."""
    per_layer = kv_tokens * kv_bytes_per_token(cfg, dtype_bytes) // cfg.num_layers
    on_chip = min(on_chip_layers, cfg.num_layers)
    return ((cfg.num_layers - on_chip) * per_layer / h2d
            + (weight_bytes_read(cfg, dtype_bytes) + on_chip * per_layer) / bandwidth)
