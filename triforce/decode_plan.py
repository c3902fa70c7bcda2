"""The captured GPU decode path: a flat list of fused steps built once from a loaded model.

The model (models/llama.py) reads like the math; a decode step on a GPU should instead be as few
memory passes as possible. The plan is that step, written out (docs/DESIGN.md §5):

    Embed                       ids gathered from the engine's token buffer at the view's start
    per layer i:
      QKV i                     RMSNorm (its row scale) + q/k/v product (+ bias) + rotary + cache write
                                (q/k-normed models, Qwen3: norm + product, then each head's q/k norm,
                                rotary and cache write in one kernel: the norm sits between product
                                and rotary)
      Attend i                  split-KV decode attention over the cache's valid prefix
      OProj i                   o_proj + residual add + the next norm's elementwise half (PreNormed)
      GateUp i                  the norm's row scale + gate/up product + SwiGLU
      Down i                    down_proj + residual add + the next layer's norm's half
    Head                        the final norm's row scale + the output head

Which fusions a step takes is the policy's (kernels/policy.py): an RMSNorm folds into the
products around it where both run the fused kernel and no all-reduce sits between them (tensor
parallelism reduces o_proj and down_proj first, then a norm kernel runs); a small one-row product
(the draft's) takes its norm inside its own kernel; products of more rows than the fused kernel
takes run on cuBLAS with the norm and SwiGLU as kernels of their own. Every step calls the same
kernel entry points as the tests (kernels/linear.py, kernels/decode_attention.py).

Without kernels (a CPU), the plan is one step, the model's own forward through the static view:
the static executor then tests its bookkeeping with the reference arithmetic.

`print(plan)` lists the steps with their launches; `plan.tuning_used` names the tuning-file
entries any launch came from (recorded in the run's outputs).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

import torch

from triforce.kernels.decode_attention import decode_attention
from triforce.kernels.embedding import embed
from triforce.kernels.linear import (
    launch_of,
    linear,
    linear_add_norm,
    norm_linear,
    qkv_rope_store,
)
from triforce.kernels.policy import KernelContext, LinearLaunch
from triforce.kernels.prenormed import PreNormed
from triforce.kernels.rotary import rope_store
from triforce.models.llama import Transformer


@dataclasses.dataclass
class State:
    """The live tensors of one forward: the residual stream as (x, residual) or a PreNormed, the
    current layer's queries and attention output, the logits."""
    x: Any = None
    residual: torch.Tensor | None = None
    q: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    attn: torch.Tensor | None = None
    act: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a bound plan reads at replay: the view (positions, slots, lengths on the device) and the
    engine's token buffer."""
    view: Any  # cache.static_view.StaticView
    tokens: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[State, Inputs], None]
    detail: str = ""

    def __repr__(self) -> str:
        return f"{self.name}{(': ' + self.detail) if self.detail else ''}"


@dataclasses.dataclass
class DecodePlan:
    steps: list[Step]
    num_tokens: int
    num_logits: int
    tuning_used: tuple[str, ...] = ()
    batch: int = 1  # sequences per forward: the plan's products have batch x num_tokens rows

    def run(self, view, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_logits, V) of the forward over the view's tokens."""
        state, inputs = State(), Inputs(view, tokens)
        for step in self.steps:
            step.run(state, inputs)
        return state.logits

    def __repr__(self) -> str:
        lines = [f"DecodePlan(B={self.batch}, T={self.num_tokens}, logits={self.num_logits}, {len(self.steps)} steps)"]
        lines += [f"  {i:3d} {step!r}" for i, step in enumerate(self.steps)]
        if self.tuning_used:
            lines.append(f"  tuning entries: {list(self.tuning_used)}")
        return "\n".join(lines)


def build_plan(model: Transformer, num_tokens: int, num_logits: int, ctx: KernelContext,
               batch: int = 1, kv_slots: int = 0) -> DecodePlan:
    """The decode step of `model` over `num_tokens` new tokens for each of `batch` sequences (logits
    of the last `num_logits`) against caches of `kv_slots` slots, fused as the context's policy says
    for its batch x tokens rows. Every launch is resolved here, once; the steps only run them."""
    probe = model.embed_tokens.weight
    if not ctx.on(probe):
        return DecodePlan([_reference_step(model, num_tokens, num_logits, ctx)], num_tokens, num_logits)
    return _Builder(model, num_tokens, num_logits, ctx, batch, kv_slots).build()


def _reference_step(model: Transformer, num_tokens: int, num_logits: int, ctx: KernelContext) -> Step:
    def run(s: State, io: Inputs) -> None:
        s.logits = model(io.view.tokens(io.tokens), None, io.view, num_logits=num_logits, kernels=ctx)

    return Step("Forward", run, "the model's own forward through the static view (reference arithmetic)")


class _Builder:
    def __init__(self, model: Transformer, num_tokens: int, num_logits: int, ctx: KernelContext, batch: int = 1,
                 kv_slots: int = 0):
        self.model, self.T, self.num_logits, self.ctx, self.B = model, num_tokens, num_logits, ctx, batch
        self.kv_slots = kv_slots
        # the products' rows: every sequence's tokens (the launch rules and the fusion choices read
        # rows, so a verify of 7 tokens for 16 sequences is planned as the 112-row product it is)
        self.rows = batch * num_tokens
        self.policy = ctx.policy
        self.cfg = model.config
        self.tuning: list[str] = []
        self.dtype = model.dtype
        self.device = model.device

    # -- helpers ----------------------------------------------------------------------------
    def _probe(self, cols: int, tokens: int) -> torch.Tensor:
        """A (B, tokens, cols) tensor of a product's input shape and dtype (the launch rules read
        shapes only)."""
        return torch.empty((self.B, tokens, cols), dtype=self.dtype, device=self.device)

    def _launch(self, weight: torch.Tensor, *, gated: bool = False, rope=None,
                tokens: int | None = None) -> tuple[LinearLaunch | None, str]:
        """The launch of a product over `tokens` rows per sequence (default: all T), resolved once
        (None: cuBLAS), and how the plan prints it."""
        tokens = tokens or self.T
        if not self.policy.fused(self.B * tokens):
            return None, "cuBLAS"
        launch = launch_of(self.ctx, self._probe(weight.shape[1], tokens), weight, gated=gated, rope=rope)
        if launch.entry:
            self.tuning.append(launch.entry)
        t = launch.tile
        return launch, (f"tile d{t.design} n{t.block_n} k{t.block_k} w{t.warps} s{launch.stages} split{launch.split_k}"
                        + (f" [tuning: {launch.entry}]" if launch.entry else ""))

    def _folds(self, reduce, consumer: torch.Tensor) -> bool:
        """The norm after a product folds into it and into `consumer` (no all-reduce between)."""
        return reduce is None and self.policy.folds_norm(self.rows, consumer.numel() * consumer.element_size())

    # -- the plan ----------------------------------------------------------------------------
    def build(self) -> DecodePlan:
        model, T = self.model, self.T
        steps = [self._embed()]
        layers = list(model.layers)
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            steps.append(self._qkv(layer))
            steps.append(self._attend(attn))
            post = layer.post_attention_layernorm
            steps.append(self._product_before_norm(f"OProj {i}", attn.o_proj, attn.reduce, post.weight,
                                                   mlp.gate_up_proj.weight))
            steps.append(self._gate_up(i, post, mlp.gate_up_proj))
            if i + 1 < len(layers):
                nxt = layers[i + 1]
                after = (nxt.input_layernorm.weight, nxt.self_attn.qkv_proj.weight)
            else:  # the output head's norm: folded only when every token's logits are wanted
                after = (model.norm.weight, model.lm_head.weight) if self.num_logits == T else None
            steps.append(self._product_before_norm(f"Down {i}", mlp.down_proj, mlp.reduce, *(after or (None, None))))
        steps.append(self._head())
        return DecodePlan(steps, T, self.num_logits, tuple(dict.fromkeys(self.tuning)), batch=self.B)

    def _embed(self) -> Step:
        weight, ctx = self.model.embed_tokens.weight, self.ctx

        def run(s: State, io: Inputs) -> None:
            s.x = embed(weight, io.view.tokens(io.tokens), ctx=ctx)
            s.residual = None

        return Step("Embed", run, "ids from the token buffer at the view's start")

    def _qkv(self, layer) -> Step:
        attn, norm, ctx, model = layer.self_attn, layer.input_layernorm, self.ctx, self.model
        w, b, i, T = attn.qkv_proj.weight, attn.qkv_proj.bias, attn.index, self.T
        hq, hkv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        if attn.q_norm is not None:
            return self._qkv_normed(layer)
        launch, shown = self._launch(w, rope=types.SimpleNamespace(head_dim=d))  # the rule reads only the head size

        def run(s: State, io: Inputs) -> None:
            view = io.view
            rope = model.rotary.at(view.next_positions(T), w.dtype)
            q, s.residual = qkv_rope_store(s.x, s.residual, norm.weight, norm.eps, w, b, rope, *view.store_slots(i),
                                           hq, hkv, d, ctx=ctx, launch=launch)
            s.q, s.keys, s.values = view.stored(i, q)

        return Step(f"QKV {i}", run, f"norm + q/k/v + rotary + cache write; {shown}")

    def _qkv_normed(self, layer) -> Step:
        """QKV of a model that normalises each head's queries and keys before rotary (Qwen3): the
        norm + product (its own launch, no rotary epilogue), then one kernel that normalises each
        q and k head, rotates them and writes k and v to the cache (kernels/rotary.py, norms=)."""
        attn, norm, ctx, model = layer.self_attn, layer.input_layernorm, self.ctx, self.model
        w, b, i, T = attn.qkv_proj.weight, attn.qkv_proj.bias, attn.index, self.T
        hq, hkv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        norms = (attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps)
        if attn.k_norm.eps != attn.q_norm.eps:
            raise ValueError(f"layer {i}: q_norm and k_norm with different eps ({attn.q_norm.eps}, {attn.k_norm.eps})")
        launch, shown = self._launch(w)

        def run(s: State, io: Inputs) -> None:
            view = io.view
            out, s.residual = norm_linear(s.x, s.residual, norm.weight, norm.eps, w, b, ctx=ctx, launch=launch)
            heads = out.view(out.shape[0], T, hq + 2 * hkv, d).transpose(1, 2)  # (B, heads, T, d) views
            q, k, v = heads[:, :hq], heads[:, hq:hq + hkv], heads[:, hq + hkv:]
            rope = model.rotary.at(view.next_positions(T), w.dtype)
            rope_store(q, k, v, rope, *view.store_slots(i), ctx=ctx, norms=norms)
            s.q, s.keys, s.values = view.stored(i, q)

        return Step(f"QKV {i}", run, f"norm + q/k/v; q/k head norms + rotary + cache write (one kernel); {shown}")

    def _attend(self, attn) -> Step:
        ctx, i, T, scale = self.ctx, attn.index, self.T, attn.scale
        rows = attn.num_heads // attn.num_kv_heads * T
        launch = self.policy.attention_launch(batch=self.B, kv_heads=attn.num_kv_heads, rows=rows,
                                              head_dim=attn.head_dim, capacity=self.kv_slots,
                                              element_size=self.model.dtype.itemsize)

        def run(s: State, io: Inputs) -> None:
            length = io.view.attention_mask(T)[0]  # a DeviceLength: the block's first slot + T
            out = decode_attention(s.q, s.keys, s.values, length.kv_len, scale, kv_offset=length.offset, ctx=ctx,
                                   launch=launch, tree=length.tree)
            s.attn = out.reshape(out.shape[0], T, -1)

        return Step(f"Attend {i}", run, f"{rows} query rows per KV head, {attn.num_kv_heads} KV heads; "
                                        f"tile m{launch.block_m} n{launch.block_n} w{launch.warps} s{launch.stages} "
                                        f"{launch.splits} key slices")

    def _product_before_norm(self, name: str, proj, reduce, norm_weight, consumer) -> Step:
        """o_proj or down_proj: with the next norm folded in (a PreNormed for the next product), or
        plain (+ the all-reduce), the next product then normalising its input itself."""
        ctx, w, b = self.ctx, proj.weight, proj.bias
        fold = norm_weight is not None and self._folds(reduce, consumer)
        source = "attn" if name.startswith("OProj") else "act"
        launch, shown = self._launch(w)

        def run(s: State, io: Inputs) -> None:
            x = getattr(s, source)
            if fold:
                s.x = linear_add_norm(x, w, b, s.residual, norm_weight, ctx, launch=launch)
                s.residual = None
            else:
                out = linear(x, w, b, ctx=ctx, launch=launch)
                s.x = out if reduce is None else reduce(out)

        what = "+ residual + next norm's half (PreNormed)" if fold else ("+ all-reduce" if reduce else "")
        return Step(name, run, f"{what}; {shown}".lstrip("; "))

    def _gate_up(self, i: int, norm, proj) -> Step:
        ctx, w, b = self.ctx, proj.weight, proj.bias
        launch, shown = self._launch(w, gated=True)

        def run(s: State, io: Inputs) -> None:
            s.act, s.residual = norm_linear(s.x, s.residual, norm.weight, norm.eps, w, b, gated=True, ctx=ctx,
                                            launch=launch)

        return Step(f"GateUp {i}", run, f"norm + gate/up + SwiGLU; {shown}")

    def _head(self) -> Step:
        model, ctx, n, T = self.model, self.ctx, self.num_logits, self.T
        norm, w = model.norm, model.lm_head.weight
        launch, shown = self._launch(w, tokens=n)  # the rows of the last n tokens

        def run(s: State, io: Inputs) -> None:
            x, residual = s.x, s.residual
            if isinstance(x, PreNormed):  # folded: every row's logits
                s.logits = model.widen(norm_linear(x, None, norm.weight, norm.eps, w, ctx=ctx, launch=launch)[0])
                return
            if n < T:
                x = x[:, T - n:]
                residual = residual[:, T - n:] if residual is not None else None
            s.logits = model.widen(norm_linear(x.contiguous(), None if residual is None else residual.contiguous(),
                                               norm.weight, norm.eps, w, ctx=ctx, launch=launch)[0])

        return Step("Head", run, f"final norm + output head, {n} of {T} rows; {shown}")

