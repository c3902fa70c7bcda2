"""What one forward reads besides the weights: the ground floor of the package.

The model, the caches and the kernels all pass these around (docs/DESIGN.md §5), so they live
below all three and import none of them (torch only):

- `TokenSlice`: a forward's ids, read from the engine's token buffer at per-sequence starts;
- `DevicePositions` and `Rope`: the new tokens' rotary positions and the tables that turn them
  into angles (`apply_rotary`, `rotate_half`; `rotate_keys` re-rotates stored keys, which a
  StreamingLLM cache does when it shifts its window);
- `DeviceLength`: what a captured forward's queries may see, a cache length kept on the device;
- `batch_stride` / `kernel_positions`: how a kernel reads a per-sequence value or the positions;
- `device_index`: host integers on the device without a synchronisation (a round's indices).
"""

from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class TokenSlice:
    """ids buffer[b, start[b] : start[b] + count] for each sequence b: buffer (B, N) int64 with
    start (B,) a device tensor, or buffer (N,) with start a device scalar (one sequence, B = 1)."""
    buffer: torch.Tensor  # (N,) or (B, N) int64
    start: torch.Tensor  # 0-d / (1,) for a flat buffer, (B,) (or one element for all rows) for (B, N)
    count: int

    @property
    def batch(self) -> int:
        return self.buffer.shape[0] if self.buffer.dim() == 2 else 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.batch, self.count)

    def ids(self) -> torch.Tensor:
        """(B, count) ids, with torch ops (the reference; static shapes, so graph-capturable)."""
        steps = torch.arange(self.count, device=self.buffer.device)
        if self.buffer.dim() == 1:
            return self.buffer.index_select(0, self.start + steps)[None]
        index = self.start.reshape(-1, 1).to(torch.int64) + steps
        return self.buffer.gather(1, index.expand(self.batch, self.count))


@dataclasses.dataclass(frozen=True)
class DevicePositions:
    """The positions start, start + 1, ..., start + count - 1 with `start` a device scalar, or per
    sequence of a batch with `start` (B,): a captured forward's positions, which the kernels read
    from `start` without a launch to materialise them (`tensor()` does, for the reference path)."""
    start: torch.Tensor  # 0-d or one element: (count,) positions; (B,): (B, count)
    count: int

    def tensor(self) -> torch.Tensor:
        steps = torch.arange(self.count, device=self.start.device)
        if self.start.numel() == 1:
            return self.start + steps
        return self.start.reshape(-1, 1) + steps


@dataclasses.dataclass(frozen=True)
class DeviceLength:
    """Keys [0, kv_len + offset) of each sequence, the T new queries the last T of them, causal
    among themselves: a captured forward's attention extent, read by the decode kernel."""
    kv_len: torch.Tensor  # 0-d / (1,) integer tensor on the cache's device, or (B,): one length per sequence
    offset: int = 0  # added to kv_len (by the kernel: no launch of its own)
    # a token tree's (T, W) mask over the last W slots in place of the causal block (triforce.tree)
    tree: torch.Tensor | None = None


@dataclasses.dataclass
class Rope:
    """The rotary inputs of one forward: positions (T,) or (B, T) plus what turns them into angles.
    cos/sin are computed on first use (the eager path); the fused rotary + store kernels of the
    captured path compute them themselves from `positions`, `inv_freq` and `scale` and never ask."""
    positions: torch.Tensor | DevicePositions
    inv_freq: torch.Tensor  # (head_dim / 2,) float32
    scale: float  # YaRN's magnitude scale of cos / sin
    dtype: torch.dtype

    @functools.cached_property
    def position_tensor(self) -> torch.Tensor:
        p = self.positions
        return p.tensor() if isinstance(p, DevicePositions) else p

    @functools.cached_property
    def cos_sin(self) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_tables(self.position_tensor, self.inv_freq, self.scale, self.dtype)


def rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape positions.shape + (head_dim,): float32 angles, then cast to `dtype`."""
    if positions.dtype != torch.float32:
        positions = positions.to(torch.float32)
    if inv_freq.device != positions.device:
        inv_freq = inv_freq.to(positions.device)
    freqs = positions[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    if dtype != torch.float32:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D) or (T, D)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


def rotate_keys(k: torch.Tensor, inv_freq: torch.Tensor, delta: int) -> torch.Tensor:
    """Re-rotate already-rotated keys (..., seq, head_dim) by `delta` positions.

    Rotations compose, so R(delta) R(pos) k = R(pos + delta) k; the YaRN magnitude scale already
    applied to the keys is left untouched (unscaled cos/sin here)."""
    pos = torch.full((1,), float(delta), device=k.device)
    cos, sin = rotary_tables(pos, inv_freq, 1.0, torch.float32)
    out = k.float() * cos + rotate_half(k.float()) * sin
    return out.to(k.dtype)


def batch_stride(t: torch.Tensor, batch: int) -> int | None:
    """The stride between the per-sequence values of `t` (one element or (B,)): 0 for one value
    shared by every row, None where it is neither (the caller then takes the reference path)."""
    if t.numel() == 1:
        return 0
    return t.stride(0) if t.dim() == 1 and t.shape[0] == batch else None


def kernel_positions(rope: Rope, batch: int, tokens: int) -> tuple[torch.Tensor, bool, int, int] | None:
    """How a kernel reads the positions of `rope`: (tensor, from_start, batch stride, token stride),
    or None where it cannot (the reference path then runs). from_start: `tensor` holds each
    sequence's first position (DevicePositions), else each token's position."""
    p = rope.positions
    if isinstance(p, DevicePositions):
        stride = batch_stride(p.start, batch)
        return None if stride is None else (p.start, True, stride, 0)
    if p.dim() == 1 and p.shape[0] == tokens:
        return p, False, 0, p.stride(0)
    if p.dim() == 2 and p.shape[1] == tokens and p.shape[0] in (1, batch):
        return p, False, p.stride(0) if p.shape[0] > 1 else 0, p.stride(1)
    return None


def device_index(values: list[int], device: torch.device) -> torch.Tensor:
    """A small int64 device tensor of host values, copied without a synchronisation (through pinned
    memory on a GPU; the caching host allocator keeps the block until the copy has run)."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
