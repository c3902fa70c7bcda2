"""How the engine runs one level's forward: eagerly (the reference), or with static shapes and,
on a GPU, as a replayed CUDA graph. The round logic (engine.py) is the same for both.

    probs = executor.forward(level, starts, num_tokens, num_logits, phase, sample=False, rows=None)

feeds, for every sequence b of the batch, the tokens [starts[b], starts[b] + num_tokens) of row b
of the engine's token buffer (B, N) to the level's model and cache and returns the sampling
distributions (B, num_logits, V) of each row's last `num_logits` positions. `rows` (booleans)
names the sequences the forward advances; the others are frozen (their rows are computed, their
caches keep their state, their outputs are not used). With `sample=True` it also draws each
row's next token from its last distribution into tokens[b, starts[b] + num_tokens] (the draft's
step): on the device, with the engine's generator, the same draws in the same order on every path
(`sampling.sample_into`); a captured forward does it inside its graph (its Exp(1) draws filled just
before the replay), which saves the host a kernel launch per draft step.

- `EagerExecutor`: the model's forward with the cache's host-side lengths (slices and masks).
  The CPU reference path, and the prefill of every path.
- `StaticExecutor`: per (level, T, num_logits), a forward whose shapes never change: tokens,
  positions and cache lengths come from device tensors (`cache.static_view.StaticView`), the
  forward is the level's decode plan (decode_plan.py: the fused kernels the policy chooses; on a
  CPU the model's own forward through the view), the sampling transform is part of it. With
  `capture=True` (CUDA) each is captured once as a CUDA graph and replayed, its kernels launched
  with programmatic dependent launch where the policy says so; without (CPU tests) it runs as it
  is, which tests the static path's bookkeeping on any machine. A level whose cache cannot be
  captured (`capturable = False`: the offloaded full cache, whose copies vary in length and take
  tens of milliseconds, so launch overhead does not matter there) runs eagerly.

A proposer's one-token steps after the first of its round can run as one static forward
(`StaticExecutor.steps`: k steps, each with its own view of the cache, one after another inside one
graph, each step's draw read by the next): one replay instead of k, the host's per-step work (the
views, the draws, the timers) done once for the k. The same draws in the same order as k single
steps, so the same tokens.

Both time each forward under its level's phase (CUDA events on a GPU: no synchronisation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Protocol

import torch

from triforce import config
from triforce.cache.static_view import StaticView
from triforce.decode_plan import DecodePlan, build_plan
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.inputs import device_index
from triforce.kernels.verify import race_sample, race_sample_reference
from triforce.kernels.workspace import Workspace
from triforce.metrics import GenerationStats
from triforce.sampling import SamplingParams, probabilities, sample_into
from triforce.tree import tree_walk, verify_tree_batch


class LevelLike(Protocol):
    name: str
    model: torch.nn.Module
    cache: object


class Executor(Protocol):
    def forward(self, level: LevelLike, starts: list[int], num_tokens: int, num_logits: int, phase: str, *,
                sample: bool = False, rows: list[bool] | None = None) -> torch.Tensor: ...

    def can_step(self, level: LevelLike, steps: int, rows: list[bool] | None = None) -> bool:
        """Whether `steps(level, ...)` may run that many one-token steps as one forward."""
        ...

    def tree_rule(self, tree, batch: int, vocab: int, *, residual: bool) -> "TreeRule":
        """A tree round's rule over its buffers (captured where the executor captures)."""
        ...

    def release(self) -> None: ...


def resolve_executor(name: str, device: torch.device) -> str:
    """The executor that runs on `device` (config.resolve_executor: auto is graphs on CUDA, eager elsewhere)."""
    return config.resolve_executor(name, device.type == "cuda")


def make_executor(name: str, tokens: torch.Tensor, sampling: SamplingParams, stats: GenerationStats,
                  generator: torch.Generator | None, policy: KernelPolicy) -> Executor:
    """The executor `name` over the engine's token buffer, launching what the engine's `policy` says."""
    kind = resolve_executor(name, tokens.device)
    if kind == "eager":
        return EagerExecutor(tokens, sampling, stats, generator, policy)
    return StaticExecutor(tokens, sampling, stats, capture=kind == "graphs", generator=generator, policy=policy)


@contextlib.contextmanager
def _reserved(cache, num_tokens: int, rows: list[bool] | None):
    """A static forward's host bookkeeping around it: the slots of `num_tokens` per active row
    reserved (capacity, StreamingLLM eviction; yields each row's first position), then the cache
    advanced past them. A frozen row (rows[b] False) writes past its length into the cache's spare
    slots and does not advance."""
    cache.active = tuple(rows) if rows is not None and cache.batch_size > 1 else None
    try:
        yield cache.reserve_rows(num_tokens) if cache.batch_size > 1 else [cache.reserve(num_tokens)]
        cache.advance(num_tokens)
    finally:
        cache.active = None


def _graph_of(body: Callable[[], torch.Tensor], pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`body` captured as a CUDA graph in `pool`, and its output buffer. Warmed up twice on a side
    stream first (Triton compiles, cuBLAS picks its kernels, constant tables are made): nothing may
    compile or synchronise while a graph records."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = body()
    return graph, out


def _transformed(logits: torch.Tensor, sampling: SamplingParams, ctx: KernelContext) -> torch.Tensor:
    """The sampling transform of a (B, T, V) block of logits, row by row: float32 (B, T, V)."""
    return probabilities(logits.reshape(-1, logits.shape[-1]), sampling, ctx=ctx).view(logits.shape)


def _uniform_rows(probs: torch.Tensor, rows: list[bool] | None) -> torch.Tensor:
    """Frozen rows' outputs replaced by a uniform distribution: never used, but always a valid one
    for the batched verification that runs over every row."""
    if rows is None or all(rows):
        return probs
    frozen = device_index([b for b, on in enumerate(rows) if not on], probs.device)
    return probs.index_fill(0, frozen, 1.0 / probs.shape[-1])


class EagerExecutor:
    """The model's forward; the sampling transform and the draft's sample through the policy's
    kernels where it runs them (launched plainly: nothing is captured here). A cache that runs
    one sequence per forward (an offloaded one: `capturable` is False) gets one forward per active
    row."""

    def __init__(self, tokens: torch.Tensor, sampling: SamplingParams, stats: GenerationStats,
                 generator: torch.Generator | None, policy: KernelPolicy):
        self.tokens, self.sampling, self.stats, self.generator = tokens, sampling, stats, generator
        self.ctx = KernelContext(policy, pdl=False, workspace=Workspace(tokens.device))

    def forward(self, level, starts: list[int], num_tokens: int, num_logits: int, phase: str, *,
                sample: bool = False, rows: list[bool] | None = None) -> torch.Tensor:
        B = len(starts)
        with self.stats.timed(phase, key=(level.name, num_tokens)):
            if B == 1:  # a view of the token buffer, no copy
                ids = self.tokens[0, starts[0]:starts[0] + num_tokens][None]
            else:
                ids = torch.stack([self.tokens[b, s:s + num_tokens] for b, s in enumerate(starts)])
            probs = _uniform_rows(self.logits(level, ids, rows, num_logits=num_logits, transform=True), rows)
        if sample:  # tokens[b, starts[b] + T] drawn from row b's last distribution, on the device
            index = device_index([s + num_tokens for s in starts], self.tokens.device)
            sample_into(probs[:, -1], self.generator, self.tokens, 0, index_from=index, ctx=self.ctx)
        return probs

    def logits(self, level, ids: torch.Tensor, rows: list[bool] | None = None, *, num_logits: int | None,
               offsets: torch.Tensor | None = None, tree: torch.Tensor | None = None,
               shape_key=None, phase: str | None = None, transform: bool = False) -> torch.Tensor:
        """The level's logits (B, num_logits or T, V) after ids (B, T) — with `transform`, the
        sampling transform of them (float32 probabilities, as `forward` returns) —, advancing the rows of `rows`
        (booleans; None: all): one forward for the batch where the cache serves a batch (the other
        rows frozen), else one per active row (an offloaded cache; a frozen row's logits are zeros).
        offsets (T,): each token's position relative to the first slot the row reserves (None: the
        cache's next positions); tree (T, T'): which cached slots of the block each token sees (a
        token tree's mask; None: causal); shape_key: what names the pair to a static executor (unused here);
        phase: the stats phase its device time counts to (None: the caller's)."""
        if phase is not None:
            with self.stats.timed(phase, key=(level.name, ids.shape[1])):
                return self.logits(level, ids, rows, num_logits=num_logits, offsets=offsets, tree=tree,
                                   transform=transform)
        if transform:
            return _transformed(self.logits(level, ids, rows, num_logits=num_logits, offsets=offsets, tree=tree),
                                self.sampling, self.ctx)
        cache, (B, T) = level.cache, ids.shape
        if B == 1 or cache.capturable:
            cache.active = tuple(rows) if rows is not None and B > 1 else None
            try:
                positions = None
                if offsets is not None:
                    reserved = cache.reserve_rows(T) if B > 1 else [cache.reserve(T)]
                    positions = torch.tensor(reserved, device=ids.device)[:, None] + offsets[None]
                    positions = positions if B > 1 else positions[0]
                return level.model(ids, positions, cache, num_logits=num_logits, tree=tree, kernels=self.ctx)
            finally:
                cache.active = None
        out = None
        for b in range(B):
            if rows is not None and not rows[b]:
                continue
            row = cache.row(b)
            at = None if offsets is None else row.reserve(T) + offsets
            logits = level.model(ids[b:b + 1], at, row, num_logits=num_logits, tree=tree, kernels=self.ctx)
            if out is None:
                out = torch.zeros(B, *logits.shape[1:], dtype=logits.dtype, device=logits.device)
            out[b] = logits[0]
        return out

    def tree_rule(self, tree, batch: int, vocab: int, *, residual: bool) -> TreeRule:
        """The tree rule's buffers for a round of `tree` (uncaptured: launched op by op)."""
        return TreeRule(tree, batch, vocab, self.tokens.device, self.generator, residual=residual, capture=False)

    def can_step(self, level, steps: int, rows: list[bool] | None = None) -> bool:
        """Never: an eager forward is one step (see StaticExecutor.steps)."""
        return False

    def release(self) -> None:
        pass


@dataclasses.dataclass
class Runner:
    """One static forward: its view of the cache, its decode plan, and either its captured graph
    with the graph's output buffer, or (uncaptured) the forward itself."""
    view: StaticView
    body: Callable[[], torch.Tensor]
    plan: DecodePlan
    graph: torch.cuda.CUDAGraph | None = None
    out: torch.Tensor | None = None
    race: torch.Tensor | None = None  # the Exp(1) draws a graph that samples reads (filled before replay)
    ids: torch.Tensor | None = None  # a logits forward's own input ids (B, T), copied in before each run
    views: tuple[StaticView, ...] = ()  # a chain of steps: one view per step (`view` is the first)
    races: tuple[torch.Tensor, ...] = ()  # and, captured, each step's draws, filled in step order

    def run(self) -> torch.Tensor:
        if self.graph is None:
            return self.body()
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites `out`; the round keeps these rows


class TreeRule:
    """The tree rule of a round (tree.verify_tree_batch) over buffers the round fills: `tokens` (B, N)
    the proposed nodes, `q` (B, N + 1, V) the distributions they were drawn from; `run(p)` with the
    top level's distributions returns the packed verdicts (tree.TreeVerdict.read). Captured (a CUDA
    graph of tree.tree_walk and the emitted token's exponential race): one replay instead of a few
    hundred small launches, its uniform and Exp(1) draws made just before it — the draws
    verify_tree_batch makes, in its order, so the same verdicts as uncaptured."""

    def __init__(self, tree, batch: int, vocab: int, device: torch.device, generator: torch.Generator | None, *,
                 residual: bool, capture: bool, pool=None):
        self.tree, self.generator, self.residual = tree, generator, residual
        self.tokens = torch.zeros(batch, tree.size, dtype=torch.int64, device=device)
        self.q = torch.full((batch, tree.size + 1, vocab), 1.0 / vocab, device=device)
        self.graph = None
        if capture:
            self.p = torch.full_like(self.q, 1.0 / vocab)
            self.u = torch.zeros(batch, tree.size, device=device)
            self.race = torch.ones(batch, vocab, device=device)
            self.graph, self.out = _graph_of(self._body, pool)  # (its warm-up makes the walk's constant tables)

    def _body(self) -> torch.Tensor:
        final, walked = tree_walk(self.tree, self.tokens, self.q, self.p, self.u, residual=self.residual)
        token = race_sample_reference(final, self.race)  # sampling.sample's race on a GPU, its draws given
        return torch.cat([token[:, None], walked], 1)

    def run(self, p: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return verify_tree_batch(self.tree, self.tokens, self.q, p, self.generator, residual=self.residual)
        self.p.copy_(p)
        self.u.uniform_(generator=self.generator)  # torch.rand's draws, then sample's race
        self.race.exponential_(generator=self.generator)
        self.graph.replay()
        return self.out


class StaticExecutor:
    def __init__(self, tokens: torch.Tensor, sampling: SamplingParams, stats: GenerationStats, *,
                 capture: bool, generator: torch.Generator | None, policy: KernelPolicy):
        self.tokens, self.sampling, self.stats, self.capture = tokens, sampling, stats, capture
        self.generator = generator
        # what a graph captures launches with programmatic dependent launch (where the policy says);
        # an uncaptured forward launches plainly
        self.ctx = KernelContext(policy, pdl=policy.pdl and capture, workspace=Workspace(tokens.device))
        # a proposer's one-token steps may run as one static forward (`steps`): the policy's choice
        self.chain_steps = policy.chain_steps
        self.runners: dict[tuple, Runner] = {}
        self.rules: dict[tuple, TreeRule] = {}  # a tree round's rule per shape (`tree_rule`)
        # one memory pool for every graph: they never run at the same time
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.eager = EagerExecutor(tokens, sampling, stats, generator, policy)
        self._step_rows: list[bool] | None = None  # the rows of the chain of steps running (`steps`)

    def forward(self, level, starts: list[int], num_tokens: int, num_logits: int, phase: str, *,
                sample: bool = False, rows: list[bool] | None = None) -> torch.Tensor:
        cache = level.cache
        if not cache.capturable:
            return self.eager.forward(level, starts, num_tokens, num_logits, phase, sample=sample, rows=rows)
        with _reserved(cache, num_tokens, rows) as positions:
            runner = self.runner(level, num_tokens, num_logits, sample=sample and self.capture)
            runner.view.set(starts, positions, cache.rows_of("length"))
            if runner.race is not None:  # the draws sample_into would make, in the same order
                runner.race.exponential_(generator=self.generator)
            with self.stats.timed(phase, key=(level.name, num_tokens)):
                probs = runner.run()
        probs = _uniform_rows(probs, rows)
        if sample and runner.race is None:
            index = device_index([s + num_tokens for s in starts], self.tokens.device)
            sample_into(probs[:, -1], self.generator, self.tokens, 0, index_from=index, ctx=self.eager.ctx)
        return probs

    def logits(self, level, ids: torch.Tensor, rows: list[bool] | None = None, *, num_logits: int | None,
               offsets: torch.Tensor | None = None, tree: torch.Tensor | None = None,
               shape_key=None, phase: str | None = None, transform: bool = False) -> torch.Tensor:
        """EagerExecutor.logits through a static forward (a tree round's forwards): the ids copied
        into the forward's own buffer, the positions the cache reserves plus `offsets`, the tree mask
        fixed with the forward (`shape_key`: a hashable name of the (offsets, tree) pair, one static
        forward each; needed with either); `transform`: the sampling transform inside the forward, as
        a chain's forwards have it. A cache that is not capturable: the eager forward. phase:
        the stats phase the replay's device time counts to (a first use's capture apart, as a chain's)."""
        cache, (B, T) = level.cache, ids.shape
        if not cache.capturable:
            return self.eager.logits(level, ids, rows, num_logits=num_logits, offsets=offsets, tree=tree, phase=phase,
                                     transform=transform)
        if (offsets is not None or tree is not None) and shape_key is None:
            raise ValueError("a tree's static forward needs a shape_key naming its offsets and mask")
        with _reserved(cache, T, rows) as positions:
            runner = self._logits_runner(level, T, num_logits or T, offsets, tree, shape_key, transform=transform)
            runner.ids.copy_(ids)
            runner.view.set([0] * B, positions, cache.rows_of("length"))
            with self.stats.timed(phase, key=(level.name, T)) if phase is not None else contextlib.nullcontext():
                return runner.run()

    def tree_rule(self, tree, batch: int, vocab: int, *, residual: bool) -> TreeRule:
        """The tree rule's buffers for a round of `tree`, made once per shape; captured on a GPU."""
        key = ("tree_rule", tree.parents, batch, vocab, residual)
        if key not in self.rules:
            start = time.perf_counter()
            self.rules[key] = TreeRule(tree, batch, vocab, self.tokens.device, self.generator, residual=residual,
                                       capture=self.capture, pool=self.pool)
            self.stats.time_s["capture"] += time.perf_counter() - start
        return self.rules[key]

    def can_step(self, level, steps: int, rows: list[bool] | None = None) -> bool:
        """Whether `steps` one-token sampling steps of `level` can run as one static forward: its
        cache is captured, and every active row has room for them without an eviction (a
        StreamingLLM window's shift is device work done when the slots are reserved, between steps)."""
        cache = level.cache
        if not (self.chain_steps and steps > 1 and cache.capturable):
            return False
        lengths = cache.rows_of("length")
        return all(n + steps <= cache.capacity for b, n in enumerate(lengths) if rows is None or rows[b])

    def steps(self, level, starts: list[int], steps: int, phase: str, *, rows: list[bool] | None = None) -> torch.Tensor:
        """`steps` forwards of one token per sequence, each drawing the next token into the token
        buffer (the first reads tokens[b, starts[b]], step j an active row's starts[b] + j; a frozen
        row's stay put), as one static forward: one graph replay on a GPU. Returns their
        distributions (B, steps, V). The draws are those of `steps` single forwards, in their order."""
        cache = level.cache
        runner = self._steps_runner(level, steps)
        for j, view in enumerate(runner.views):
            with _reserved(cache, 1, rows) as positions:
                view.set([s + j if rows is None or rows[b] else s for b, s in enumerate(starts)], positions,
                         cache.rows_of("length"))
        for race in runner.races:  # the draws the single steps would make, in their order
            race.exponential_(generator=self.generator)
        self._step_rows = rows  # read by an uncaptured chain's draws (a captured one's do not depend on them)
        with self.stats.timed(phase, key=(level.name, 1), share=steps):
            probs = runner.run()
        return _uniform_rows(probs, rows)

    def _steps_runner(self, level, steps: int) -> Runner:
        key = (level.name, id(level.cache), 1, 1, "steps", steps)
        if key in self.runners:
            return self.runners[key]
        cache, tokens, sampling = level.cache, self.tokens, self.sampling
        B, V = cache.batch_size, level.model.output_vocab
        views = tuple(StaticView(cache, 1) for _ in range(steps))
        plan = build_plan(level.model, 1, 1, self.ctx, batch=B, kv_slots=cache.k.shape[3])
        races = tuple(torch.ones(B, V, dtype=torch.float32, device=tokens.device) for _ in views) if self.capture else ()
        generator, eager_ctx = self.generator, self.eager.ctx

        def body() -> torch.Tensor:
            out = []
            for j, view in enumerate(views):
                probs = probabilities(plan.run(view, tokens).reshape(B, V), sampling, ctx=self.ctx)
                if races:  # captured: the race over the draws filled before the replay, as a sampling graph's
                    race_sample(probs, races[j], out_tokens=tokens, index=1, index_from=view.token_start, ctx=self.ctx)
                else:  # as an uncaptured step samples after its forward (a frozen row from a uniform row)
                    sample_into(_uniform_rows(probs, self._step_rows), generator, tokens, 1,
                                index_from=view.token_start, ctx=eager_ctx)
                out.append(probs)
            return torch.stack(out, dim=1)  # (B, steps, V)

        runner = Runner(views[0], body, plan, views=views, races=races)
        if self.capture:
            runner.graph, runner.out = self._capture(body, views, cache)
        self.runners[key] = runner
        return runner

    def _logits_runner(self, level, num_tokens: int, num_logits: int, offsets, tree, shape_key, *,
                       transform: bool = False) -> "Runner":
        key = (level.name, id(level.cache), num_tokens, num_logits, "probs" if transform else "logits", shape_key)
        if key in self.runners:
            return self.runners[key]
        cache = level.cache
        B = cache.batch_size
        if offsets is None and tree is not None:  # a tree's mask over positions one after another
            offsets = torch.arange(num_tokens, device=self.tokens.device)
        # the mask stored as the decode kernel reads it (int8, contiguous): converted here once, not
        # by a kernel per layer inside every replay
        fixed = None if offsets is None else (None if tree is None else tree.to(torch.int8).contiguous().clone(),
                                              offsets.to(torch.int64).clone())
        view = StaticView(cache, num_tokens, fixed)
        ids = torch.zeros(B, num_tokens, dtype=self.tokens.dtype, device=self.tokens.device)
        plan = build_plan(level.model, num_tokens, num_logits, self.ctx, batch=B, kv_slots=cache.k.shape[3])

        sampling, ctx = self.sampling, self.ctx

        def body() -> torch.Tensor:
            logits = plan.run(view, ids)  # (B, num_logits, V)
            return _transformed(logits, sampling, ctx) if transform else logits

        runner = Runner(view, body, plan, ids=ids)
        if self.capture:
            runner.graph, runner.out = self._capture(body, (view,), cache, token_start=0)
        self.runners[key] = runner
        return runner

    def runner(self, level, num_tokens: int, num_logits: int, *, sample: bool = False) -> Runner:
        """The static forward of `level` over `num_tokens` tokens per sequence (captured on first
        use); with `sample`, the graph also draws each row's next token into the token buffer."""
        key = (level.name, id(level.cache), num_tokens, num_logits, sample)
        if key not in self.runners:
            self.runners[key] = self._make_runner(level, num_tokens, num_logits, sample)
        return self.runners[key]

    def _make_runner(self, level, num_tokens: int, num_logits: int, sample: bool = False) -> Runner:
        view = StaticView(level.cache, num_tokens)
        tokens, sampling, ctx = self.tokens, self.sampling, self.ctx
        B, V = level.cache.batch_size, level.model.output_vocab
        plan = build_plan(level.model, num_tokens, num_logits, ctx, batch=B, kv_slots=level.cache.k.shape[3])
        race = torch.ones(B, V, dtype=torch.float32, device=tokens.device) if sample else None

        def body() -> torch.Tensor:
            probs = _transformed(plan.run(view, tokens), sampling, ctx)  # (B, num_logits, V)
            if race is not None:  # tokens[b, start_b + num_tokens] = the race's winner over row b's last row
                race_sample(probs[:, -1], race, out_tokens=tokens, index=num_tokens, index_from=view.token_start,
                            ctx=ctx)
            return probs

        if not self.capture:
            return Runner(view, body, plan)
        graph, out = self._capture(body, (view,), level.cache)
        return Runner(view, body, plan, graph, out, race)

    @property
    def tuning_used(self) -> tuple[str, ...]:
        """The tuning-file entries the captured plans' launches came from."""
        return tuple(dict.fromkeys(e for r in self.runners.values() for e in r.plan.tuning_used))

    def _capture(self, body, views: tuple[StaticView, ...], cache, token_start: int | None = None):
        # The warm-up before the capture (_graph_of) writes keys at slots >= each row's length, which
        # the real forward overwrites, and (a sampling forward) a token into each row's last slot of
        # the token buffer, which never holds a live token.
        # (token_start: where a forward with its own ids buffer reads them.) Its time is the
        # generation's first-use cost ("capture"), kept apart from the levels'.
        start = time.perf_counter()
        last = self.tokens.shape[-1] - 1 - views[0].num_tokens if token_start is None else token_start
        for view in views:  # (a chain of steps: every step at the same slots)
            view.set([last] * cache.batch_size, cache.rows_of("seq_len"), cache.rows_of("length"))
        graph, out = _graph_of(body, self.pool)
        self.stats.time_s["capture"] += time.perf_counter() - start
        return graph, out

    def release(self) -> None:
        self.runners.clear()
        self.rules.clear()
