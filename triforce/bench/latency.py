"""Latency of every level against its bandwidth floor, and end-to-end decoding, on one GPU.

- `level_timings`: each captured forward of the engine (autoregressive step, top-level verify of
  gamma + 1 tokens, middle step, draft step) replayed at a given context over caches filled with
  random values, timed with CUDA events; floor and ratio beside each.
- `end_to_end`: the engine's own `generate` (autoregressive and TriForce) on a random prompt:
  prefill time, wall ms per token, the levels' GPU time and the engine overhead, peak memory.
- `transformers_decode`: transformers' LlamaForCausalLM decoding at the same shape.
- `speedups`: the speedup modelled from measured level costs at given acceptance rates, beside
  the speedup the floors allow.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from typing import Iterable

import torch

from triforce.bench.floors import LevelCosts, copy_bandwidth, modelled_speedup, offloaded_step_floor, step_bytes
from triforce.bench.kernel_timing import replay_time
from triforce.bench.shapes import DRAFT_OF
from triforce.cache.spec import full_capacity, spare_slots
from triforce.config import MethodConfig
from triforce.engine import Engine, EngineOptions
from triforce.executor import StaticExecutor
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.kernels.workspace import Workspace
from triforce.levels import lower_levels, top_level
from triforce.metrics import GenerationStats, forward_phase
from triforce.models.llama import Transformer
from triforce.sampling import SamplingParams


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def graph_engine(target: Transformer, draft: Transformer | None, method: MethodConfig, sampling: SamplingParams,
                 hardware: dict | None = None, prefill_memo=None) -> Engine:
    """An engine with CUDA graphs and `hardware` settings (hardware.* keys: kernels may also be a
    resolved KernelPolicy, which the engine then takes as it is)."""
    hardware = {"executor": "graphs", **(hardware or {})}
    policy = hardware.pop("kernels") if isinstance(hardware.get("kernels"), KernelPolicy) else None
    return Engine(target, draft, method, sampling, hardware, EngineOptions(kernel_policy=policy,
                                                                          prefill_memo=prefill_memo))


class LevelBench:
    """The engine's levels at a given context for a batch of `batch` sequences, caches filled with
    random values as they stand mid-generation (every row of the full cache holds the context, of
    the retrieval cache its budget, the draft's StreamingLLM window is full once the new token is
    in), and their captured forwards."""

    def __init__(self, target: Transformer, draft: Transformer, method: MethodConfig, context: int,
                 hardware: dict | None = None, batch: int = 1):
        self.sampling = SamplingParams(temperature=0.6, top_p=0.9)
        engine = graph_engine(target, draft, method, self.sampling, hardware)
        new = 64
        self.context, self.method, self.policy, self.batch = context, method, engine.policy, batch
        width = full_capacity(context, new, method) + spare_slots(method, batch)
        tokens = torch.randint(0, target.config.vocab_size, (batch, width), device=engine.device)
        spec = engine.level_spec()
        caches = spec.caches([context] * batch, new)
        # what the engine's eager forwards launch (the offloaded top level): the policy's kernels
        self.kernels = KernelContext(engine.policy, pdl=False, workspace=Workspace(engine.device))
        top = top_level(spec, caches, self.kernels)
        self.levels = {lv.name: lv for lv in [*lower_levels(spec, caches, self.kernels), top]}
        top.cache.k[:, :, :, :context].normal_()
        top.cache.v[:, :, :, :context].normal_()
        top.cache.length = top.cache.seq_len = context
        middle = self.levels["middle"].cache
        middle.k[:, :, :, :method.budget].normal_()
        middle.v[:, :, :, :method.budget].normal_()
        middle.length = middle.retrieved = method.budget
        middle.seq_len = context
        dcache = self.levels["draft"].cache
        dcache.k.normal_()
        dcache.v.normal_()
        dcache.length, dcache.seq_len = dcache.capacity - 1, context
        self.tokens = tokens
        self.executor = StaticExecutor(tokens, self.sampling, GenerationStats(engine.device, batch_size=batch),
                                       capture=True, generator=None, policy=engine.policy)

    def time_eager(self, level: str, num_tokens: int, repeats: int) -> float:
        """Seconds per forward of a level that runs eagerly (an offloaded full cache: it streams
        tens of GB per forward, so 3 forwards after a warm-up suffice); the median."""
        lv = self.levels[level]
        cache = lv.cache.row(0)
        start = cache.length
        times = []
        for _ in range(repeats + 1):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for b in range(self.batch):  # an offloaded cache runs one sequence per forward
                row = lv.cache.row(b)
                lv.model(self.tokens[b, start:start + num_tokens][None], None, row, num_logits=num_tokens,
                         kernels=self.kernels)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1000)
            for b in range(self.batch):
                lv.cache.row(b).crop(start)
        times = sorted(times[1:])
        return times[len(times) // 2]

    def time_tree(self, widths: tuple[int, ...], repeats: int) -> tuple[float, float, int]:
        """Seconds per top-level forward over a token tree of `widths` (the root and its nodes under
        the tree mask, every logit: what a tree round verifies) and over a causal chain of as many
        tokens, both through the eager executor (what runs trees today), alternated so that the
        ratio of the two medians is the mask's own cost; and the tokens per sequence."""
        from triforce.executor import EagerExecutor
        from triforce.tree import Tree
        from triforce.tree_round import rooted

        tree = rooted(Tree.from_widths(widths))
        n = tree.size
        mask = tree.ancestors(self.tokens.device)
        offsets = torch.tensor([d - 1 for d in tree.depths], device=self.tokens.device)
        executor = EagerExecutor(self.tokens, self.sampling, self.executor.stats, None, self.policy)
        top = self.levels["top"]
        start = top.cache.row(0).seq_len
        ids = self.tokens[:, :n]
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(2 * (repeats + 1)):
            with_tree = bool(i % 2)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            executor.logits(top, ids, None, num_logits=n, offsets=offsets if with_tree else None,
                            tree=mask if with_tree else None)
            end.record()
            end.synchronize()
            times[with_tree].append(begin.elapsed_time(end) / 1000)
            for b in range(self.batch):
                top.cache.row(b).crop(start)
        chain, with_mask = (sorted(times[k][1:])[repeats // 2] for k in (False, True))
        return chain, with_mask, n

    def tree_graph(self, widths: tuple[int, ...]) -> tuple[torch.cuda.CUDAGraph, int]:
        """The captured top-level forward over a token tree of `widths` (the root and its nodes, the
        tree mask in the decode kernel, every logit and its sampling transform: a tree round's verify
        as the graphs run it, and as the chain's verify graph has it), pointed at the cache's end;
        and its tokens per sequence."""
        from triforce.tree import Tree
        from triforce.tree_round import rooted

        tree = rooted(Tree.from_widths(widths))
        n = tree.size
        offsets = torch.tensor([d - 1 for d in tree.depths], device=self.tokens.device)
        top = self.levels["top"]
        runner = self.executor._logits_runner(top, n, n, offsets, tree.ancestors(self.tokens.device),
                                              ("bench", tuple(widths)), transform=True)
        cache = top.cache
        runner.view.set([0] * self.batch, cache.rows_of("seq_len"), cache.rows_of("length"))
        return runner.graph, n

    def graph(self, level: str, num_tokens: int) -> torch.cuda.CUDAGraph:
        """The captured forward of `level` over `num_tokens` new tokens, pointed at its cache's end."""
        lv = self.levels[level]
        runner = self.executor.runner(lv, num_tokens, num_tokens)
        cache = lv.cache
        position = cache.length if level == "draft" else cache.seq_len  # StreamingLLM: slot positions
        B = self.batch
        runner.view.set([self.context - 32] * B, [position] * B, [cache.length] * B)
        return runner.graph

    def kv_tokens(self, level: str, num_tokens: int) -> int:
        return self.levels[level].cache.length + num_tokens

    def close(self) -> None:
        self.executor.release()
        self.levels.clear()
        free_memory()


def _transform_graph(rows: int, vocab: int, sampling: SamplingParams, ctx) -> torch.cuda.CUDAGraph:
    """The sampling transform as a captured forward launches it (ctx: the executor's kernel context)."""
    from triforce.sampling import probabilities

    # seeded: the split top-p path's time depends on the rows (a bracket that misses falls back to a
    # bisection over the whole row); unseeded, one run read 0.296 ms for 7 rows and the next 0.040
    # on the same machine and code (docs/PERFORMANCE.md, session 8)
    generator = torch.Generator("cuda").manual_seed(rows)
    logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16, generator=generator) * 3
    for _ in range(2):
        probabilities(logits, sampling, ctx=ctx)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        probabilities(logits, sampling, ctx=ctx)
    return graph


@torch.inference_mode()
def level_timings(target: Transformer, draft: Transformer, method: MethodConfig, context: int, *,
                  verify_blocks: tuple[int, ...], bandwidth: float, repeats: int = 20,
                  hardware: dict | None = None, h2d: float | None = None, batch: int = 1,
                  transforms: bool = True, trees: tuple[tuple[int, ...], ...] = ()) -> list[dict]:
    """One row per (level, tokens): ms per forward (of the whole batch: `tokens` new tokens for each
    of `batch` sequences), its byte floor (the weights once, every sequence's KV), the ratio.
    hardware (hardware.* settings): offload, on_chip_layers: the top level's full cache in host
    memory, timed eagerly against the offloaded floor (its KV over the host link, `h2d` bytes/s)."""
    bench = LevelBench(target, draft, method, context, hardware, batch=batch)
    dtype_bytes = target.dtype.itemsize
    offload = bool((hardware or {}).get("offload"))

    def measure(level: str, num_tokens: int, cfg) -> tuple[float, float, int]:
        kv = bench.kv_tokens(level, num_tokens)
        if level == "top" and offload:
            seconds = bench.time_eager(level, num_tokens, 3)
            floor = batch * offloaded_step_floor(cfg, kv, dtype_bytes, (hardware or {}).get("on_chip_layers") or 0,
                                                 bandwidth, h2d)
            return seconds, floor, kv
        seconds = replay_time(bench.graph(level, num_tokens), repeats)
        return seconds, step_bytes(cfg, kv, dtype_bytes, batch) / bandwidth, kv

    rows = []
    ar_s, ar_floor, kv = measure("top", 1, target.config)
    rows.append(dict(level="autoregressive", tokens=1, kv_tokens=kv, ms=1e3 * ar_s, floor_ms=1e3 * ar_floor))
    for t in verify_blocks:
        s, _, kv = measure("top", t, target.config)
        # a verify reads what an autoregressive step reads: its bar is the autoregressive floor
        rows.append(dict(level="verify", tokens=t, kv_tokens=kv, ms=1e3 * s, floor_ms=1e3 * ar_floor))
    for widths in () if offload else trees:  # token trees at the top level (eager; tree_round.py)
        chain_s, tree_s, n = bench.time_tree(tuple(widths), repeats)
        kv = bench.kv_tokens("top", n)
        shape = "-".join(map(str, widths))
        rows.append(dict(level="verify (eager chain)", tokens=n, kv_tokens=kv, ms=1e3 * chain_s,
                         floor_ms=1e3 * ar_floor, tree=shape))
        rows.append(dict(level="tree verify (eager)", tokens=n, kv_tokens=kv, ms=1e3 * tree_s,
                         floor_ms=1e3 * ar_floor, tree=shape))
        # the same two captured: the chain's verify graph of n tokens, the tree's (executor.logits)
        graph, _ = bench.tree_graph(tuple(widths))
        s = replay_time(graph, repeats)
        chain_graph_s, _, _ = measure("top", n, target.config)
        rows.append(dict(level="verify (graph chain)", tokens=n, kv_tokens=kv, ms=1e3 * chain_graph_s,
                         floor_ms=1e3 * ar_floor, tree=shape))
        rows.append(dict(level="tree verify (graph)", tokens=n, kv_tokens=kv, ms=1e3 * s,
                         floor_ms=1e3 * ar_floor, tree=shape))
    t = method.draft_gamma + 1
    s, floor, kv = measure("middle", t, target.config)
    rows.append(dict(level="middle", tokens=t, kv_tokens=kv, ms=1e3 * s, floor_ms=1e3 * floor))
    s, floor, kv = measure("draft", 1, draft.config)
    rows.append(dict(level="draft", tokens=1, kv_tokens=kv, ms=1e3 * s, floor_ms=1e3 * floor))
    for t, cfg in ((1, draft.config), (method.gamma + 1, target.config)) if transforms else ():
        # the sampling transform (temperature, top-p) inside each captured forward, timed alone:
        # its floor is reading the logits and writing the probabilities
        s = replay_time(_transform_graph(t, cfg.vocab_size, bench.sampling, bench.executor.ctx), repeats)
        rows.append(dict(level="sampling transform", tokens=t, kv_tokens=0, ms=1e3 * s,
                         floor_ms=1e3 * 8 * t * cfg.vocab_size / bandwidth))
    tuning = ", ".join(bench.executor.tuning_used)
    for row in rows:
        row.update(context=context, batch=batch, ratio=row["ms"] / row["floor_ms"], tuning=tuning)
    bench.close()
    return rows


@torch.inference_mode()
def end_to_end(target: Transformer, draft: Transformer | None, method: MethodConfig, prompt: list[int], *,
               new_tokens: int, sampling: SamplingParams, prefill_chunk: int | None, seed: int = 0,
               hardware: dict | None = None) -> dict:
    """One `generate`, as a user runs it (graphs on), with its wall time split by level."""
    free_memory()
    engine = graph_engine(target, draft, method, sampling, {"prefill_chunk": prefill_chunk, **(hardware or {})})
    engine.warm_up(prompt, seed)
    free_memory()
    result = engine.generate(prompt, new_tokens, seed=seed, stop_at_eos=False)
    m = result.metrics
    levels_s = sum(v for k, v in m.items() if k.startswith("time_s/") and forward_phase(k[7:]))
    row = dict(method=method.name, context=len(prompt), new_tokens=m["new_tokens"], prefill_s=m["prefill_s"],
               ms_per_token=m["ms_per_token"], levels_ms_per_token=1e3 * levels_s / m["new_tokens"],
               overhead=m["time_s/overhead"] / m["decode_s"], mean_accepted_len=m["mean_accepted_len"],
               capture_s=m.get("time_s/capture", 0.0), peak_gib=torch.cuda.max_memory_allocated() / 1024 ** 3)
    row.update({k: v for k, v in m.items() if k.startswith(("accept_rate/", "time_s/", "forwards/", "offload/", "tree/"))})
    del engine
    free_memory()
    return row


@torch.no_grad()
def scale_heads(model: Transformer, s: float) -> None:
    """Controlled acceptance (docs/DESIGN.md §7): the output head's weights times `s` (< 1 flattens
    the distributions, so the levels agree more: sum min(p, q) rises). In place."""
    if model.config.tie_word_embeddings:
        raise ValueError("a tied output head is the embedding too: scaling it would change the inputs")
    model.lm_head.weight.mul_(s)


@torch.inference_mode()
def batch_end_to_end(target: Transformer, draft: Transformer | None, method: MethodConfig, prompts: list[list[int]], *,
                     new_tokens: int, sampling: SamplingParams, prefill_chunk: int | None, seed: int = 0,
                     hardware: dict | None = None, label: str | None = None, prefill_memo=None,
                     timeline: bool = False) -> dict:
    """One batched `generate`, as a user runs it (graphs on): the batch's measured throughput
    (generated tokens per second over the batch), its acceptance, and its wall time split into the
    levels' GPU time and the engine's overhead. `prefill_memo` (prefill_memo.PrefillMemo): the top
    level's prefill of prompts an earlier call prefilled, restored instead of computed again.
    `timeline`: also the run's rounds one by one (`round_timeline`), under the key "timeline"."""
    free_memory()
    engine = graph_engine(target, draft, method, sampling, {"prefill_chunk": prefill_chunk, **(hardware or {})},
                          prefill_memo=prefill_memo)
    engine.warm_up(prompts, seed)  # at the batch's size: graphs are per batch size
    free_memory()
    result = engine.generate(prompts, new_tokens, seed=seed, stop_at_eos=False)
    m = result.metrics
    rows = result.results
    mean = lambda key: sum(r.metrics.get(key, float("nan")) for r in rows) / len(rows)  # noqa: E731
    row = dict(method=label or method.name, batch=len(prompts), context=max(len(p) for p in prompts),
               new_tokens=m["new_tokens"], throughput=m["throughput"], ms_per_step=1e3 * m["decode_s"] / new_tokens,
               prefill_s=m["prefill_s"], overhead=m["time_s/overhead"] / m["decode_s"], capture_s=m.get("time_s/capture", 0.0),
               mean_accepted_len=mean("mean_accepted_len"), peak_gib=torch.cuda.max_memory_allocated() / 1024 ** 3)
    for key in ("accept_rate/draft", "accept_rate/middle"):
        if key in rows[0].metrics:
            row[key] = mean(key)
    row.update({k: v for k, v in m.items() if k.startswith(("time_s/", "forwards/", "plan", "alpha/"))})
    for early in (64,):  # how a run fares over its first tokens (an adaptive one is still learning)
        if new_tokens > early:
            row[f"throughput_first_{early}"] = early_throughput([r.rounds for r in rows], early)
    row["first_use_s"] = m.get("time_s/capture", 0.0) + m.get("time_s/catchup", 0.0)
    if timeline:
        row["timeline"] = round_timeline([r.rounds for r in rows])
    del engine, result
    free_memory()
    return row


def round_timeline(rounds: list[list[dict]]) -> list[dict]:
    """A batch's rounds one by one (from the per-step records, the same step for every row of a
    batch): its plan, wall ms, the tokens all rows emitted, the speed the planner predicted for it
    (where it predicted one from measured costs) and any graph capture inside it: how an adaptive
    run's choices and its measured speed went together."""
    out = []
    for step in range(max((len(r) for r in rounds), default=0)):
        records = [r[step] for r in rounds if step < len(r)]
        first = records[0]
        emitted = sum(x["emitted"] for x in records)
        out.append(dict(step=step, plan=first.get("plan", ""), ms=first["ms"], emitted=emitted,
                        tokens_per_s=1e3 * emitted / first["ms"] if first["ms"] else float("nan"),
                        predicted_tokens_per_s=first.get("predicted_tokens_per_s"),
                        capture_ms=first.get("capture_ms", 0.0)))
    return out


def early_throughput(rounds: list[list[dict]], tokens: int) -> float:
    """Tokens per second over the batch until every sequence had `tokens` (from the per-step
    records: each step's tokens and wall ms, the same step for every row of a batch)."""
    done, seconds = [0] * len(rounds), 0.0
    for step in range(max(len(r) for r in rounds)):
        records = [r[step] for r in rounds if step < len(r)]
        seconds += records[0]["ms"] / 1e3
        for b, r in enumerate(rounds):
            if step < len(r):
                done[b] += r[step]["emitted"]
        if min(done) >= tokens:
            break
    return sum(min(d, tokens) for d in done) / seconds if seconds else float("nan")


def speedups(levels: list[dict], gamma: int, draft_gamma: int, acceptance: list[tuple[float, float]]) -> list[dict]:
    """Modelled from measured level costs, and from the floors, per acceptance pair."""
    def pick(level: str, tokens: int | None = None) -> dict:
        return next(r for r in levels if r["level"] == level and (tokens is None or r["tokens"] == tokens))

    top = pick("verify", gamma + 1)
    measured = LevelCosts(top["ms"], pick("middle")["ms"], pick("draft")["ms"], pick("autoregressive")["ms"])
    floors = LevelCosts(top["floor_ms"], pick("middle")["floor_ms"], pick("draft")["floor_ms"],
                        pick("autoregressive")["floor_ms"])
    rows = []
    for a_draft, a_middle in acceptance:
        model = modelled_speedup(measured, gamma, draft_gamma, a_draft, a_middle)
        bound = modelled_speedup(floors, gamma, draft_gamma, a_draft, a_middle)
        rows.append(dict(context=top["context"], accept_draft=a_draft, accept_middle=a_middle, modelled=model,
                         floors_allow=bound, of_floors=model / bound))
    return rows


class _TokenTimer:
    """A transformers streamer that timestamps every generated token (generate synchronises at
    each step to check its stopping criteria, so host timestamps are step boundaries)."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value) -> None:
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def transformers_decode(cfg, context: int, new_tokens: int, *, dtype: torch.dtype, device: str = "cuda") -> dict:
    """transformers' own model of the shape's family (LlamaForCausalLM, Qwen2ForCausalLM, ...) at the
    same shape, random weights, as a user runs it:
    `generate` with its default cache and SDPA attention (no torch.compile: its static-cache path
    compiles the model on first use, minutes that would land in the timing). A short generation
    first loads the kernels; then the prefill time and decode ms per token of `generate`'s own loop."""
    from transformers import AutoConfig, AutoModelForCausalLM

    free_memory()
    hf_cfg = AutoConfig.for_model(cfg.family, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                  intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                                  num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                                  max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
                                  tie_word_embeddings=cfg.tie_word_embeddings, head_dim=cfg.head_dim,
                                  bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf_cfg._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_cfg).eval()  # random init (the values do not matter)
    finally:
        torch.set_default_dtype(default)
    row = dict(method="transformers", context=context, cache="dynamic")
    prompt = torch.randint(0, cfg.vocab_size, (1, context), device=device)
    kw = dict(do_sample=False, pad_token_id=0)
    try:
        model.generate(prompt[:, :64], max_new_tokens=2, min_new_tokens=2, **kw)
        timer = _TokenTimer()
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=timer, **kw)
        stamps = timer.stamps[1:]  # the first put is the prompt
        row.update(prefill_s=stamps[0] - start, ms_per_token=1e3 * (stamps[-1] - stamps[0]) / (len(stamps) - 1),
                   peak_gib=torch.cuda.max_memory_allocated() / 1024 ** 3)
    except torch.OutOfMemoryError:
        row.update(ms_per_token=float("nan"), note="out of memory")
    del model
    free_memory()
    return row


def require_gpu(what: str, shapes: Iterable[str] = ()) -> None:
    """Before any work: exit with a clear error (status 2) when there is no CUDA GPU or one of the
    random-weight shapes asked for has no draft shape (triforce/bench/shapes.py)."""
    if not torch.cuda.is_available():
        print(f"error: {what} needs a CUDA GPU", file=sys.stderr)
        sys.exit(2)
    unknown = sorted(set(shapes) - set(DRAFT_OF))
    if unknown:
        print(f"error: unknown shapes {unknown}; choose from {sorted(DRAFT_OF)}", file=sys.stderr)
        sys.exit(2)


@dataclasses.dataclass(frozen=True)
class Card:
    name: str
    bandwidth: float  # bytes / s, read + write counted

    @classmethod
    def measure(cls) -> "Card":
        """This GPU's name and device-to-device copy bandwidth (its 4 GB of buffers freed after)."""
        bandwidth = copy_bandwidth()
        free_memory()
        return cls(torch.cuda.get_device_name(), bandwidth)
