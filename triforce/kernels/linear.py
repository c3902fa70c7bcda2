"""The decode path's matrix products, with the elementwise step before them fused in.

At batch 1 a linear layer reads its whole weight matrix for a handful of input rows: it should
stream the weights at the memory bandwidth. cuBLAS reaches about 0.84 of the device-to-device
copy bandwidth there (and adds split-K reduction kernels for the narrow outputs); this kernel
gives each program a slice of output columns, streams its rows of the weight matrix once and
applies the step that precedes every product in a Llama layer as it loads the input:

    norm_linear(x, residual, norm, linear)  ->  (rmsnorm(x + residual) @ W.T + b, x + residual)
    linear(x, linear)                        ->  x @ W.T + b

and SwiGLU is the gate/up product's epilogue (`gated=True`: each program's columns are gate
columns and the same up columns, and it writes silu(gate) * up), so it never takes a launch of
its own. Products of a few rows whose column tiles do not fill the GPU (o_proj, down_proj) split
their inputs too (split-K, reduced by each tile's last program: triton_linear.default_split_k).

RMSNorm needs whole rows, which no program of a product sees. Inside the product's kernel it
pays only for one input row of a small product (the draft's decode step; `fuse_prologue`): with
several rows the extra arithmetic between the loads and the matrix unit stalls the pipeline
(1.3-1.7x slower), and in a 7B/8B decode step each program's pass over the input before its
first weight load is a ramp nothing hides. Everywhere else on the kernel path the norm is split
across the products around it (`PreNormed`: the product before it adds the residual and writes
h * weight and its share of the rows' sums of squares, the product after it scales its rows),
or, where no product precedes it (the first layer, tensor parallelism), a small kernel writes
the PreNormed (`pre_norm`). All of them round the same way, so a one-token step and a
verification of several agree as closely as their sums allow. Longer inputs (prefill,
> MAX_ROWS) take the reference path, torch's own ops, which is also the CPU path.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from triforce.kernels import kernels_usable
from triforce.kernels.activation import silu_mul
from triforce.kernels.norm import rms_norm

MAX_ROWS = 32
# RMSNorm between two products of the kernel path split across their epilogues (see PreNormed):
# no launch of its own. False: the norm runs as its own kernel (scripts/tune_launch.py compares).
FOLD_NORM = True
FOLD_NORM_MIN_ROWS = 1  # ... for inputs of at least this many rows


@dataclasses.dataclass(frozen=True)
class PreNormed:
    """An RMSNorm's input, half normalised by the product before it (o_proj or down_proj, on the
    kernel path; `linear_add_norm`): that product's epilogue adds the residual, writes h, h times
    the norm's weight and each of its column tiles' share of every row's sum of squares. The
    product after the norm (gate/up, the next q/k/v, the output head) multiplies h * weight by its
    weights and scales each row by 1/sqrt(mean square + eps) in its epilogue, which equals
    RMSNorm(h) @ W.T up to rounding (torch rounds h * rstd before the weight; this rounds
    h * weight). So the norm, which needs whole rows, takes no launch of its own."""
    h: torch.Tensor  # the new residual stream: product + residual
    scaled: torch.Tensor  # h * norm weight, rounded to h's dtype
    sq: torch.Tensor  # (tiles, rows) float32


def folds_norm(x: torch.Tensor, producer: torch.Tensor, consumer: torch.Tensor, use_triton: bool | None = None) -> bool:
    """Whether the RMSNorm between the product of `x` with `producer` and the next product (with
    `consumer`) is split across their epilogues (PreNormed): both run on the kernel path, and the
    consumer would not take the norm into its own prologue (a small one-row product: the draft's)."""
    return (FOLD_NORM and x.numel() // x.shape[-1] >= FOLD_NORM_MIN_ROWS and not fuse_prologue(x, consumer)
            and _fused(x, producer, use_triton)
            and _fused(x, consumer, use_triton))


def pre_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor) -> PreNormed:
    """h = x + residual as a PreNormed for the RMSNorm with `norm_weight`, by the norm kernel (where
    no product before the norm does it: the first layer, tensor parallelism): the kernel path
    normalises every product's input the same way, so a step of one token and a verification of
    several round alike."""
    from triforce.kernels.triton_norm import rms_norm as triton_rms_norm

    scaled, h, sq = triton_rms_norm(x, norm_weight, 0.0, residual, pre_normed=True)
    return PreNormed(h=h, scaled=scaled, sq=sq)


def linear_add_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                    norm_weight: torch.Tensor) -> PreNormed:
    """x @ weight.T + bias + residual as a PreNormed for the RMSNorm with `norm_weight` (call only
    where folds_norm holds)."""
    from triforce.kernels.triton_linear import fused_linear

    return fused_linear(x, weight, bias, residual=residual.contiguous(), norm_out=norm_weight)[0]
# "triton": the fused kernel for decode-sized inputs on CUDA; "torch": always the reference path
# (cuBLAS), e.g. to compare the two in a benchmark (set through `use_backend`)
BACKEND = "triton"


def use_backend(name: str) -> None:
    global BACKEND
    if name not in ("triton", "torch"):
        raise ValueError(f"linear backend {name!r}: choose triton or torch")
    BACKEND = name


# Inputs of up to this many rows may get the step before the product (RMSNorm + residual) inside
# the product's kernel; more rows split it across the products around it (see the module docstring).
FUSED_PROLOGUE_ROWS = 1
# ... where that pays: a small product (the draft's), whose own launch would cost more than the
# prologue. A 7B/8B product does not: every program's prologue (a pass over the input row before
# its first weight load) is a ramp that nothing hides (scripts/tune_launch.py, H100, 8B at 32K
# with PDL: autoregressive step 1.113 of its floor fused, 1.089 with a norm kernel apart; the
# draft's step is 7-9% slower apart). It now takes the split norm (PreNormed), as several rows do.
FUSED_PROLOGUE_SMALL_BYTES = 16 * 2 ** 20


def fuse_prologue(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the product of `x` with `weight` takes its prologue inside (see above)."""
    if x.numel() // x.shape[-1] > FUSED_PROLOGUE_ROWS:
        return False
    return weight.numel() * weight.element_size() < FUSED_PROLOGUE_SMALL_BYTES


def _fused(x: torch.Tensor, weight: torch.Tensor, use_triton: bool | None) -> bool:
    if BACKEND == "torch" and not use_triton:
        return False
    rows = x.numel() // x.shape[-1]
    return rows <= MAX_ROWS and x.is_contiguous() and weight.is_contiguous() and kernels_usable(x, use_triton)


def norm_linear(x: torch.Tensor | PreNormed, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                weight: torch.Tensor, bias: torch.Tensor | None = None, *, gated: bool = False,
                use_triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(h) @ weight.T + bias, h) with h = x + residual (or x when residual is None; x.h for
    a PreNormed x); gated: the product's columns are [gate | up] and the result is silu(gate) * up."""
    if isinstance(x, PreNormed):
        if _fused(x.scaled, weight, use_triton):
            from triforce.kernels.triton_linear import fused_linear

            return fused_linear(x, weight, bias, eps=eps, gated=gated)[0], x.h
        x, residual = x.h, None
    contiguous = x.is_contiguous() and (residual is None or residual.is_contiguous())
    if _fused(x, weight, use_triton) and contiguous:
        from triforce.kernels.triton_linear import fused_linear

        if fuse_prologue(x, weight):
            return fused_linear(x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps, gated=gated)
        pre = pre_norm(x, residual, norm_weight)
        return fused_linear(pre, weight, bias, eps=eps, gated=gated)[0], pre.h
    normed, h = rms_norm(x, norm_weight, eps, residual, use_triton=use_triton)
    return linear(normed, weight, bias, gated=gated, use_triton=use_triton), h


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, gated: bool = False,
           use_triton: bool | None = None) -> torch.Tensor:
    """x @ weight.T + bias; gated: silu(gate) * up of it, for columns [gate | up]."""
    if _fused(x, weight, use_triton):
        from triforce.kernels.triton_linear import fused_linear

        return fused_linear(x, weight, bias, gated=gated)[0]
    out = F.linear(x, weight, bias)
    return silu_mul(out, use_triton=use_triton) if gated else out


def qkv_rope_store(x: torch.Tensor | PreNormed, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                   weight: torch.Tensor, bias: torch.Tensor | None, rope, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int,
                   *, use_triton: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's attention input, all of it: q/k/v = RMSNorm(x + residual) @ weight.T + bias, q and k
    rotated (rope: models.rope.Rope), k and v written to the cache slots slot.. slot + T. Returns
    (q as a (B, Hq, T, D) view, x + residual). On the GPU the rotation and the cache write are the
    product's epilogue (no launch of their own); elsewhere norm_linear then kernels.rotary. A
    PreNormed x brings its h (residual is then unused)."""
    from triforce.kernels.rotary import positions_1d, rope_store

    pre_normed = x if isinstance(x, PreNormed) else None
    if pre_normed is not None:  # the norm's row scale in this product's epilogue, where it takes the kernel path
        x, residual = x.h, None
    B, T, _ = x.shape
    q_cols = num_heads * head_dim
    fuse = (B == 1 and _fused(x, weight, use_triton) and (residual is None or residual.is_contiguous())
            and head_dim % 16 == 0 and positions_1d(rope) and k_cache.is_contiguous() and v_cache.is_contiguous())
    if not fuse:
        qkv, h = norm_linear(pre_normed if pre_normed is not None else x, residual, norm_weight, eps, weight, bias, use_triton=use_triton)
        q, k, v = (t.view(B, T, -1, head_dim).transpose(1, 2)
                   for t in qkv.split([q_cols, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1))
        rope_store(q, k, v, rope, k_cache, v_cache, slot, use_triton=use_triton)
        return q, h
    from triforce.kernels.triton_linear import RopeStore, fused_linear
    from triforce.models.rope import DevicePositions

    from_start = isinstance(rope.positions, DevicePositions)
    spec = RopeStore(positions=rope.positions.start if from_start else rope.positions, from_start=from_start,
                     inv_freq=rope.inv_freq, scale=float(rope.scale), k_cache=k_cache, v_cache=v_cache, slot=slot,
                     num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
    if pre_normed is not None:
        qkv, h = fused_linear(pre_normed, weight, bias, eps=eps, rope=spec)[0], x
    elif fuse_prologue(x, weight):  # the norm (and residual add) fused into the product too, as in norm_linear
        qkv, h = fused_linear(x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps, rope=spec)
    else:
        pre = pre_norm(x, residual, norm_weight)
        qkv, h = fused_linear(pre, weight, bias, eps=eps, rope=spec)[0], pre.h
    return qkv[..., :q_cols].view(B, T, num_heads, head_dim).transpose(1, 2), h
