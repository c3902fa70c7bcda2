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
their inputs too (split-K, reduced by each tile's last program: policy.KernelPolicy.split_k).

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
more than policy.MAX_ROWS rows) take the reference path, torch's own ops, which is also the CPU path.

Which path runs is decided by the caller's `KernelContext` (kernels/policy.py): None, or a policy
without kernels, is the reference; the decode plan passes the run's policy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triforce.kernels.activation import silu_mul
from triforce.kernels.norm import rms_norm
from triforce.inputs import DevicePositions, batch_stride, kernel_positions
from triforce.kernels.policy import KernelContext, LinearLaunch
from triforce.kernels.prenormed import PreNormed


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1]


def _fused(x: torch.Tensor, weight: torch.Tensor, ctx: KernelContext | None) -> bool:
    """The fused kernel for this product: the policy says so for its rows, and the operands suit it."""
    return (ctx is not None and ctx.policy.fused(_rows(x)) and ctx.on(x) and x.is_contiguous()
            and weight.is_contiguous())


def _launch(ctx: KernelContext, x: torch.Tensor, weight: torch.Tensor, *, gated: bool = False, rope=None,
            launch: LinearLaunch | None = None) -> dict:
    """The launch keywords of fused_linear for this product: `launch` as the caller resolved it (the
    decode plan, once per step), else from the policy's rules."""
    launch = launch or ctx.policy.linear_launch(_rows(x), weight.shape[0], x.shape[-1], gated=gated,
                                                element_size=x.element_size(),
                                      rope_head_dim=rope.head_dim if rope is not None else None)
    return dict(launch=launch, pdl=ctx.pdl, prefetch=ctx.policy.linear_prefetch if ctx.pdl else 0,
                workspace=ctx.workspace)


def launch_of(ctx: KernelContext, x: torch.Tensor, weight: torch.Tensor, *, gated: bool = False, rope=None):
    """The policy's launch for this product (its tuning entry, if any, is `launch.entry`)."""
    return _launch(ctx, x, weight, gated=gated, rope=rope)["launch"]


def pre_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
             ctx: KernelContext) -> PreNormed:
    """h = x + residual as a PreNormed for the RMSNorm with `norm_weight`, by the norm kernel (where
    no product before the norm does it: the first layer, tensor parallelism): the kernel path
    normalises every product's input the same way, so a step of one token and a verification of
    several round alike."""
    from triforce.kernels.triton_norm import rms_norm as triton_rms_norm

    scaled, h, sq = triton_rms_norm(x, norm_weight, 0.0, residual, pre_normed=True, pdl=ctx.pdl)
    return PreNormed(h=h, scaled=scaled, sq=sq)


def linear_add_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                    norm_weight: torch.Tensor, ctx: KernelContext, *, launch: LinearLaunch | None = None) -> PreNormed:
    """x @ weight.T + bias + residual as a PreNormed for the RMSNorm with `norm_weight` (only where
    the policy folds the norm: KernelPolicy.folds_norm)."""
    from triforce.kernels.triton_linear import fused_linear

    return fused_linear(x, weight, bias, residual=residual.contiguous(), norm_out=norm_weight,
                        **_launch(ctx, x, weight, launch=launch))[0]


def norm_linear(x: torch.Tensor | PreNormed, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                weight: torch.Tensor, bias: torch.Tensor | None = None, *, gated: bool = False,
                ctx: KernelContext | None = None,
                launch: LinearLaunch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(h) @ weight.T + bias, h) with h = x + residual (or x when residual is None; x.h for
    a PreNormed x); gated: the product's columns are [gate | up] and the result is silu(gate) * up."""
    from triforce.kernels.triton_linear import fused_linear

    if isinstance(x, PreNormed):
        if _fused(x.scaled, weight, ctx):
            launch_kw = _launch(ctx, x.scaled, weight, gated=gated, launch=launch)
            return fused_linear(x, weight, bias, eps=eps, gated=gated, **launch_kw)[0], x.h
        x, residual = x.h, None
    contiguous = x.is_contiguous() and (residual is None or residual.is_contiguous())
    if _fused(x, weight, ctx) and contiguous:
        if ctx.policy.fuses_prologue(_rows(x), weight.numel() * weight.element_size()):
            return fused_linear(x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps, gated=gated,
                                **_launch(ctx, x, weight, gated=gated, launch=launch))
        pre = pre_norm(x, residual, norm_weight, ctx)
        return fused_linear(pre, weight, bias, eps=eps, gated=gated,
                            **_launch(ctx, x, weight, gated=gated, launch=launch))[0], pre.h
    normed, h = rms_norm(x, norm_weight, eps, residual, ctx=ctx)
    return linear(normed, weight, bias, gated=gated, ctx=ctx, launch=launch), h


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, gated: bool = False,
           ctx: KernelContext | None = None, launch: LinearLaunch | None = None) -> torch.Tensor:
    """x @ weight.T + bias; gated: silu(gate) * up of it, for columns [gate | up]."""
    if _fused(x, weight, ctx):
        from triforce.kernels.triton_linear import fused_linear

        return fused_linear(x, weight, bias, gated=gated, **_launch(ctx, x, weight, gated=gated, launch=launch))[0]
    out = F.linear(x, weight, bias)
    if not gated:
        return out
    return silu_mul(out, ctx=ctx)


def qkv_rope_store(x: torch.Tensor | PreNormed, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                   weight: torch.Tensor, bias: torch.Tensor | None, rope, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int,
                   *, ctx: KernelContext | None = None,
                   launch: LinearLaunch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's attention input, all of it: q/k/v = RMSNorm(x + residual) @ weight.T + bias, q and k
    rotated (rope: inputs.Rope), k and v written to the cache slots slot.. slot + T. Returns
    (q as a (B, Hq, T, D) view, x + residual). On the kernel path the rotation and the cache write
    are the product's epilogue (no launch of their own); elsewhere norm_linear then kernels.rotary.
    A PreNormed x brings its h (residual is then unused).

    A batch: x (B, T, K) holds T new tokens of each of B sequences (the product's B * T rows);
    positions (T,) / (B, T) or a DevicePositions with a start of one element or (B,); slot one
    element or (B,): sequence b's keys go to slots slot[b] .. slot[b] + T of its cache row
    (caches (B, Hkv, S, D), as kernels.rotary)."""
    from triforce.kernels.rotary import rope_store

    pre_normed = x if isinstance(x, PreNormed) else None
    if pre_normed is not None:  # the norm's row scale in this product's epilogue, where it takes the kernel path
        x, residual = x.h, None
    B, T, _ = x.shape
    q_cols = num_heads * head_dim
    fuse = (_fused(x, weight, ctx) and (residual is None or residual.is_contiguous()) and head_dim % 16 == 0
            and kernel_positions(rope, B, T) is not None and batch_stride(slot, B) is not None
            and k_cache.is_contiguous() and v_cache.is_contiguous())
    if not fuse:
        qkv, h = norm_linear(pre_normed if pre_normed is not None else x, residual, norm_weight, eps, weight, bias,
                             ctx=ctx, launch=launch)
        q, k, v = (t.view(B, T, -1, head_dim).transpose(1, 2)
                   for t in qkv.split([q_cols, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1))
        rope_store(q, k, v, rope, k_cache, v_cache, slot, ctx=ctx)
        return q, h
    from triforce.kernels.triton_linear import RopeStore, fused_linear

    from_start = isinstance(rope.positions, DevicePositions)
    spec = RopeStore(positions=rope.positions.start if from_start else rope.positions, from_start=from_start,
                     inv_freq=rope.inv_freq, scale=float(rope.scale), k_cache=k_cache, v_cache=v_cache, slot=slot,
                     num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
    launch = _launch(ctx, x, weight, rope=spec, launch=launch)
    if pre_normed is not None:
        qkv, h = fused_linear(pre_normed, weight, bias, eps=eps, rope=spec, **launch)[0], x
    elif ctx.policy.fuses_prologue(_rows(x), weight.numel() * weight.element_size()):
        # the norm (and residual add) fused into the product too, as in norm_linear
        qkv, h = fused_linear(x, weight, bias, residual=residual, norm_weight=norm_weight, eps=eps, rope=spec, **launch)
    else:
        pre = pre_norm(x, residual, norm_weight, ctx)
        qkv, h = fused_linear(pre, weight, bias, eps=eps, rope=spec, **launch)[0], pre.h
    return qkv[..., :q_cols].view(B, T, num_heads, head_dim).transpose(1, 2), h
