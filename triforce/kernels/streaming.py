"""StreamingLLM eviction in one kernel: drop the oldest window tokens, shift the rest down.

Positions in a StreamingLLM cache are slots (cache/streaming.py), so evicting n tokens moves every
kept window key down n slots and re-rotates it by -n positions (rotations compose), and moves the
values with them. A draft cache stays full, so this happens at every draft step; as torch ops it
is some twenty small launches (the rotation's tables, the float copies, rotate_half, the copies
back) between two graph replays. The kernel does all layers and heads at once: one program per
(layer, batch, head) row walks the window in ascending slot tiles, each read before it is
overwritten.

A batch of B sequences fills its windows at its own pace: each sequence b has its own end and its
own eviction count n_b (0: it keeps its slots). One launch still serves every row: the per-sequence
values travel as a small int32 device tensor (copied without blocking from pinned host memory, or
given as device tensors), which each row's program reads.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from triforce.inputs import rotate_keys
from triforce.kernels import runs_kernel
from triforce.kernels.policy import KernelContext

PerSequence = int | Sequence[int] | torch.Tensor


def _one(x: PerSequence) -> bool:
    """One value for every sequence (a Python or NumPy integer)."""
    return isinstance(x, numbers.Integral)


def shift_window_reference(k: torch.Tensor, v: torch.Tensor, start: int, end: PerSequence, n: PerSequence,
                           inv_freq: torch.Tensor) -> None:
    """k, v: (L, B, H, S, D); slots [start + n, end) move to [start, end - n), keys re-rotated by
    -n positions (inv_freq: the model's rotary inverse frequencies, (D / 2,) float32). end and n:
    one int for every sequence, or one per sequence (a list, or a (B,) tensor: read on the host
    here); n_b <= 0 or end_b - n_b <= start leaves sequence b as it is."""
    if _one(end) and _one(n):
        kept = slice(start + n, end)
        k[:, :, :, start:end - n] = rotate_keys(k[:, :, :, kept], inv_freq, -n)
        v[:, :, :, start:end - n] = v[:, :, :, kept].clone()
        return
    ends, ns = _per_sequence(end, k.shape[1]), _per_sequence(n, k.shape[1])
    for b, (end_b, n_b) in enumerate(zip(ends, ns)):
        if n_b > 0 and end_b - n_b > start:
            kept = slice(start + n_b, end_b)
            k[:, b, :, start:end_b - n_b] = rotate_keys(k[:, b, :, kept], inv_freq, -n_b)
            v[:, b, :, start:end_b - n_b] = v[:, b, :, kept].clone()


def _per_sequence(x: PerSequence, batch: int) -> list[int]:
    if _one(x):
        return [int(x)] * batch
    values = x.reshape(-1).tolist() if isinstance(x, torch.Tensor) else [int(i) for i in x]
    if len(values) == 1:
        values = values * batch
    if len(values) != batch:
        raise ValueError(f"{len(values)} per-sequence values for {batch} sequences")
    return values


def _device_values(end: PerSequence, n: PerSequence, batch: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(end, n) as (B,) integer device tensors for the kernel. Host values are staged in pinned
    memory and copied without blocking (the caching host allocator keeps the staging buffer until
    the copy has run), so the host never waits for the device here; device tensors pass as given."""
    pinned = device.type == "cuda"
    if not isinstance(end, torch.Tensor) and not isinstance(n, torch.Tensor):  # one copy for both
        host = torch.tensor([_per_sequence(end, batch), _per_sequence(n, batch)], dtype=torch.int32,
                            pin_memory=pinned)
        values = host.to(device, non_blocking=True)
        return values[0], values[1]

    def on_device(x: PerSequence) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.device == device:
            return x.reshape(-1)
        if not isinstance(x, torch.Tensor):
            x = torch.tensor(_per_sequence(x, batch), dtype=torch.int32)
        x = x.reshape(-1)
        return (x.pin_memory() if pinned and not x.is_pinned() else x).to(device, non_blocking=True)

    return on_device(end), on_device(n)


def shift_window(k: torch.Tensor, v: torch.Tensor, start: int, end: PerSequence, n: PerSequence,
                 inv_freq: torch.Tensor, *, ctx: KernelContext | None = None) -> None:
    """shift_window_reference, in one Triton kernel where the policy runs kernels. end, n: ints (every sequence
    alike, as one StreamingLLM cache of batch 1 calls it), or per sequence: lists of ints or (B,)
    integer tensors (one element: every sequence; device tensors are read by the kernel, never on
    the host)."""
    half = k.shape[-1] // 2
    usable = k.is_contiguous() and v.is_contiguous() and not half & (half - 1) and runs_kernel(ctx, k)
    if _one(end) and _one(n):
        if n <= 0 or end - n <= start:
            return
        if not usable:
            return shift_window_reference(k, v, start, end, n, inv_freq)
        from triforce.kernels.triton_streaming import shift_window as triton_shift_window

        return triton_shift_window(k, v, start, end, n, inv_freq)
    batch = k.shape[1]
    if not isinstance(n, torch.Tensor) and not any(x > 0 for x in _per_sequence(n, batch)):
        return  # nothing to evict (known on the host: no launch)
    if not usable:
        return shift_window_reference(k, v, start, end, n, inv_freq)
    from triforce.kernels.triton_streaming import shift_window_per_sequence

    ends, ns = _device_values(end, n, batch, k.device)
    if ends.numel() not in (1, batch) or ns.numel() not in (1, batch):
        raise ValueError(f"per-sequence end / n of {ends.numel()} / {ns.numel()} values for {batch} sequences")
    shift_window_per_sequence(k, v, start, ends, ns, inv_freq)
