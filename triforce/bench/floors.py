"""The memory-bandwidth floor of each step, and the speedup model built on level costs.

Floor of a step = bytes it must read (the weights it multiplies by, the KV it attends over)
divided by the device-to-device copy bandwidth measured in the same run, counting bytes read
plus bytes written (docs/DESIGN.md §7).
"""

from __future__ import annotations

import dataclasses

import torch

from triforce.memory import kv_bytes_per_token, weight_bytes
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


def weight_bytes_read(cfg: ModelConfig, dtype_bytes: int) -> int:
    """A forward reads every weight once, except the embedding table (a few rows), unless the
    output head shares it."""
    total = weight_bytes(cfg, dtype_bytes)
    return total if cfg.tie_word_embeddings else total - cfg.vocab_size * cfg.hidden_size * dtype_bytes


def step_bytes(cfg: ModelConfig, kv_tokens: int, dtype_bytes: int, batch: int = 1) -> int:
    """A step of `batch` sequences reads the weights once and every sequence's KV."""
    return weight_bytes_read(cfg, dtype_bytes) + batch * kv_tokens * kv_bytes_per_token(cfg, dtype_bytes)


@dataclasses.dataclass(frozen=True)
class LevelCosts:
    """Seconds per forward: the top level over gamma + 1 tokens, the middle over draft_gamma + 1,
    the draft over one; and the autoregressive step it is compared with."""
    top: float
    middle: float
    draft: float
    autoregressive: float


def expected_accepted(alpha: float, k: int) -> float:
    """Tokens one round emits when each of k proposals is accepted with probability alpha
    (independently, until the first rejection), the residual or bonus token included."""
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def modelled_speedup(costs: LevelCosts, gamma: int, draft_gamma: int, alpha_draft: float, alpha_middle: float) -> float:
    """Autoregressive time per token over TriForce's: a top round verifies gamma middle tokens
    (one top forward) and emits E(alpha_middle, gamma) tokens; the middle makes its gamma tokens
    in gamma / E(alpha_draft, draft_gamma) rounds of draft_gamma draft steps and one middle forward."""
    middle_rounds = gamma / expected_accepted(alpha_draft, draft_gamma)
    round_s = costs.top + middle_rounds * (costs.middle + draft_gamma * costs.draft)
    return costs.autoregressive / (round_s / expected_accepted(alpha_middle, gamma))
