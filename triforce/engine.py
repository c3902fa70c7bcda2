"""One speculative engine for every method: a method is an ordered list of levels, cheapest first
(levels.py).

Level 0 samples autoregressively. Level i > 0 runs rounds: ask level i-1 for `gamma` tokens,
score them in ONE forward, and keep the tokens the exact rule of `sampling.verify` emits. Each
emitted token is recorded with the distribution of level i at its position — the distribution
it was actually drawn from — so level i+1 can verify it exactly in turn. That is what makes the
whole hierarchy lossless (docs/DESIGN.md §2): the top level's output is distributed as plain
autoregressive sampling from the target model with the full cache.

`Engine` holds what does not change between generations: the models, the method, the sampling
transform, the kernel policy, the executor kind. Everything a generation changes lives in a
`Generation`, local to `stream` / `generate` (as a streaming API needs):

Bookkeeping: the token buffer `tokens` (on the model's device) holds the committed tokens plus the
current speculative tail, `n` of them; sampled tokens are written there on the device and never
visit the host, except the top level's, read with its verdict. Every cache knows how many sequence
tokens it has absorbed (`seq_len`); a forward feeds exactly the tokens it has not seen, and
whenever tokens are rejected every cache is cropped back to at most the surviving prefix. The last
token is never absorbed by the top level before it is verified, so one forward always yields the
distributions a round needs. All lengths follow from the accepted counts, so the host always knows
them: a round synchronises once, to read its verdict.

The forwards themselves go through an executor (executor.py): eager (the CPU reference) or
static-shape CUDA graphs running the decode plan (the GPU path). The round logic here is the same
for both.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import torch

from triforce.cache.spec import spare_slots
from triforce.config import HardwareConfig, MethodConfig, SamplingParams, check_tree_setting, context_needed, parse
from triforce.costs import StepCosts, step_bytes
from triforce.errors import ConfigError, PromptTooLongError
from triforce.executor import make_executor, resolve_executor
from triforce.inputs import device_index
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.kernels.workspace import Workspace
from triforce.levels import Level, LevelSpec, lower_levels, top_level
from triforce.metrics import GenerationStats
from triforce.models.config import draft_vocabulary_problem
from triforce.models.llama import Transformer
from triforce.parallel import SINGLE
from triforce.planner import AdaptivePlanner, FixedPlanner, Plan, Planner, ScheduledPlanner, method_plans
from triforce.prefill_memo import PrefillMemo, weights_key
from triforce.sampling import Verdict, probabilities, verify_into
from triforce.tree_round import TreeRound
from triforce.warmup import LIGHT_TOKENS, compiles, warm_prompts, warm_tokens

if TYPE_CHECKING:
    from triforce.memory import MemoryPlan
    from triforce.progress import GenerationProgress

__all__ = ["BatchResult", "Engine", "EngineOptions", "GenerationResult", "MethodConfig", "Stream", "context_needed"]


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]
    metrics: dict[str, float]
    # one record per top-level step: tokens emitted, accepted/proposed per level, wall time
    rounds: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # the kernel tuning-file entries its captured forwards were launched with (kernels/policy.py)
    tuning_used: tuple[str, ...] = ()


@dataclasses.dataclass
class BatchResult:
    """A batch's generation: one result per sequence (in the prompts' order) and the batch's own
    metrics (`batch_size`, `throughput`: generated tokens per second over the batch, ...)."""
    results: list[GenerationResult]
    metrics: dict[str, float]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, b: int) -> GenerationResult:
        return self.results[b]


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """What an engine is given beyond its configs: what the app resolves once per run (or a test
    sets)."""
    max_context: int | None = None  # positions a generation may occupy (model.max_context); None: the checkpoint's
    kernel_policy: KernelPolicy | None = None  # every kernel choice, resolved; None: from hardware.kernels, once, here
    prefill_memo: PrefillMemo | None = None  # where the top level's prefill of a prompt seen before is kept
    memory_plan: "MemoryPlan | None" = None  # the run's plan (the app's pre-flight): re-checked, not re-made
    costs: StepCosts | None = None  # measured step costs to start from (a run's costs.json); None: none yet
    biased_levels: tuple[str, ...] = ()  # tests only: these levels use the reference's biased rule
    # tests only: the planner of each generation, made from its batch size (None: the method's, planner.py)
    planner: Callable[[int], Planner] | None = None


class Engine:
    """Build from models (`Engine(target, draft, method, sampling, hardware)`) or from a config
    (`triforce.build_engine(cfg)`, assemble.py: it loads the models), then
    `generate(prompt_ids, max_new_tokens, seed)` or iterate `stream(prompt_ids, max_new_tokens, seed)`.

    method, sampling, hardware: the typed configs (config.py), or mappings of their fields.
    hardware.executor: "auto" (CUDA graphs on a GPU, eager elsewhere), "eager", "static" (the graph
    path's static-shape forwards without capture; tests) or "graphs"; hardware.kernels: the kernel
    policy's overrides, resolved once, here (unless options.kernel_policy is given); prefill_chunk,
    offload, on_chip_layers as in the app. options: EngineOptions.

    Each round runs a plan (planner.py): the method's own every round, or, with method=auto or
    method.adaptive=true, the one the measured costs and acceptances favour (docs/DESIGN.md §12).
    `costs` (planner's StepCosts) keeps what this engine's forwards measured across its generations."""

    def __init__(self, target: Transformer, draft: Transformer | None = None,
                 method: MethodConfig | Mapping | None = None, sampling: SamplingParams | Mapping | None = None,
                 hardware: HardwareConfig | Mapping | None = None, options: EngineOptions | None = None):
        self.method = method if isinstance(method, MethodConfig) else parse(MethodConfig, method, "method")
        self.sampling = sampling if isinstance(sampling, SamplingParams) else parse(SamplingParams, sampling, "sampling")
        self.hardware = hw = hardware if isinstance(hardware, HardwareConfig) else parse(HardwareConfig, hardware,
                                                                                           "hardware")
        options = options or EngineOptions()
        _check_draft_model(self.method, draft, target)
        self.target, self.draft = target, draft
        # a sliding-window model runs exactly within its window only (ModelConfig.exact_context)
        self.max_context = target.config.context_for(options.max_context)
        self.prefill_chunk = hw.prefill_chunk
        self.offload, self.on_chip_layers = hw.offload, hw.on_chip_layers or 0
        self.biased_levels = frozenset(options.biased_levels)
        self.eos_ids = frozenset(target.config.eos_token_id)
        self.device = target.device
        # tensor parallelism: rank 0's draws decide every token and verdict (parallel.py)
        self.parallel = target.parallel or SINGLE
        self.executor_name = resolve_executor(hw.executor, self.device)
        check_tree_setting(self.method, self.executor_name, self.parallel.enabled)
        # every kernel choice of this engine, resolved once (kernels/policy.py)
        self.policy = options.kernel_policy or KernelPolicy.resolve(self.device, hw.kernels)
        self.prefill_memo = options.prefill_memo
        self.memory_plan = options.memory_plan
        self.costs = options.costs if options.costs is not None else StepCosts(self.method.memory_rounds)
        self._planner = options.planner
        self._weights_key = None  # names the target's weights in the memo (computed at first use)

    def with_method(self, method: MethodConfig) -> "Engine":
        """The same models, sampling, context, hardware settings, kernel policy, memo and step costs
        with another method (the app's autoregressive baseline)."""
        _check_draft_model(method, self.draft, self.target)
        other = copy.copy(self)
        other.method = method
        other._planner = None
        return other

    def planner(self, batch_size: int) -> Planner:
        """A generation's planner: the method's own plan every round, or (method=auto, adaptive=true)
        the adaptive choice among its candidates (planner.py)."""
        if self._planner is not None:
            return self._planner(batch_size)
        m = self.method
        if not m.adapts:
            return FixedPlanner(self.candidates()[0])
        return AdaptivePlanner(self.candidates(), batch_size=batch_size, costs=self.costs,
                               memory_rounds=m.memory_rounds, probe_every=m.probe_every)

    def candidates(self) -> list[Plan]:
        """The plans this engine's rounds run: an adaptive method's candidates, or the method's own."""
        return method_plans(self.method)

    def for_warm_up(self) -> "Engine":
        """The same engine for a warm-up generation (benchmarks): with step costs of its own, so that
        a short warm-up teaches the measured generation's planner nothing; an adaptive method's
        planner runs every candidate plan in turn, one round each, so that whatever any plan launches
        compiles there, not inside a measured generation (a fixed method's plan runs every round as
        usual)."""
        other = copy.copy(self)
        other.costs = StepCosts(self.method.memory_rounds)
        if self.method.adapts:
            plans = self.candidates()
            other._planner = lambda batch_size: ScheduledPlanner(plans)
        return other

    def warm_up(self, prompts, seed: int = 0, *, thorough: bool | None = None):
        """The warm-up generation before a measured one (or a user's first), through for_warm_up.
        Thorough (the default where first forwards compile kernels and capture graphs: a GPU,
        warmup.compiles): the prompt, or each of a batch's, cut to warmup.warm_length and
        warmup.warm_tokens new tokens, so that nothing compiles and no graph is captured inside the
        generations that follow (graphs are per batch size: warm up the batch size that will run).
        Light (a CPU, where nothing compiles): LIGHT_LENGTH prompt tokens and LIGHT_TOKENS new ones.
        Returns its result (its metrics name the plans it ran); nothing of it reaches a later
        generation but compiled kernels and captured graphs."""
        thorough = compiles(self.device) if thorough is None else thorough
        batch, single = self._checked_prompts(prompts, 1)  # one prompt or a batch, as generate takes them
        cut = warm_prompts(self.method, batch, thorough=thorough)
        tokens = warm_tokens(self.method) if thorough else LIGHT_TOKENS
        return self.for_warm_up().generate(cut[0] if single else cut, tokens, seed=seed, stop_at_eos=False)

    # -- checks before any work ------------------------------------------------------------
    def check_prompt(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise before any work if the prompt and its continuation do not fit the context."""
        if prompt_len < 1:
            raise PromptTooLongError("the prompt is empty: give at least one token")
        if context_needed(prompt_len, max_new_tokens, self.method) > self.max_context:
            raise PromptTooLongError(
                f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens (+{self.method.lookahead} "
                f"speculative) exceeds the model's context of {self.max_context}{self._window_note()}; shorten "
                "the prompt (dataset.prefill) or max_new_tokens, or use a model with a longer context")

    def _window_note(self) -> str:
        window = self.target.config.sliding_window
        if window is None or window != self.max_context:
            return ""
        return (f" (its sliding window: beyond {window} tokens its attention slides, and the engine runs a "
                "model exactly only where it attends to every cached token)")

    # -- public API ------------------------------------------------------------------------
    def stream(self, prompts, max_new_tokens: int, seed: int = 0, *, stop_at_eos: bool = True,
               progress: "GenerationProgress | None" = None) -> "Stream":
        """Iterate the tokens each top-level step emits until every sequence has max_new_tokens or
        its first EOS; `.result` is the GenerationResult (one prompt) or BatchResult (a batch)
        afterwards. A step yields a list of tokens for one prompt (one for autoregressive decoding,
        up to gamma + 1 for a speculative round); for a batch, one such list per sequence (empty
        for a sequence that has finished). Checked before any work."""
        batch, single = self._checked_prompts(prompts, max_new_tokens)
        return Stream(Generation(self, batch, max_new_tokens, seed, progress), stop_at_eos, single)

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens: int, seed: int = 0, *, stop_at_eos: bool = True,
                 progress: "GenerationProgress | None" = None) -> "GenerationResult | BatchResult":
        """One prompt (a list of token ids, or a 1-D tensor): its GenerationResult. A batch (a list
        of such prompts, of any lengths, or a 2-D tensor): a BatchResult, one result per sequence.
        Every sequence is distributed as plain autoregressive sampling of its own prompt; a seed
        reproduces the batch. `progress`: hooks told of each prefill and of each top-level step
        (triforce.progress.TokenProgress shows them as tqdm bars); None: silent."""
        stream = self.stream(prompts, max_new_tokens, seed, stop_at_eos=stop_at_eos, progress=progress)
        for _ in stream:
            pass
        return stream.result

    @torch.inference_mode()
    def reference_acceptance(self, prompt_ids, continuation) -> dict[str, list[float]]:
        """For each level below the top, at every position of `continuation` (tokens the target
        could generate after the prompt, e.g. its own autoregressive sample): sum_x min(p(x), q(x)),
        the probability that the level above accepts this level's proposal there (q: this level's
        distribution, p: the level above's; both after the sampling transform).

        A generation's acceptance rate mixes this with the noise of sampling and of its own random
        trajectory; along a shared continuation the expected acceptance of different caches or
        budgets is paired and free of both. The caches are built exactly as generate() builds them
        (prefill, retrieval, no rebuilds); one forward per level."""
        continuation = [int(t) for t in continuation]
        (prompt,), _ = self._checked_prompts(prompt_ids, len(continuation), single_only=True)
        gen = Generation(self, [prompt], len(continuation), seed=0)
        try:
            n, T = len(prompt), len(continuation)
            gen.tokens[0, n:n + T] = torch.tensor(continuation, dtype=torch.int64)
            gen.prefill()
            # the levels of the method's longest chain (method=auto: its longest candidate)
            plan = max(gen.planner.plans, key=lambda p: len(p.chain)) if hasattr(gen.planner, "plans") \
                else gen.planner.plan
            levels = [gen.level(name) for name in plan.chain]
            dists = [gen.forward_all(level, gen.tokens[0, n - 1:n - 1 + T]) for level in levels]
            return {level.name: torch.minimum(q, p).sum(-1).tolist()
                    for level, q, p in zip(levels, dists, dists[1:])}
        finally:
            gen.release()

    def _checked_prompts(self, prompts, max_new_tokens: int, single_only: bool = False) -> tuple[list[list[int]], bool]:
        """(the prompts as lists, whether one prompt was given), after every check that can fail
        before work."""
        if torch.is_tensor(prompts):
            if prompts.dim() > 2:
                raise ConfigError(f"prompts of shape {tuple(prompts.shape)}: give one prompt (1-D) or a batch (2-D)")
            prompts = prompts.tolist()
        prompts = list(prompts)
        single = not prompts or not isinstance(prompts[0], (list, tuple)) and not torch.is_tensor(prompts[0])
        if single_only and not single:
            raise ConfigError("this takes one prompt: pass a 1-D list of token ids")
        batch = [prompts] if single else [list(p.tolist() if torch.is_tensor(p) else p) for p in prompts]
        if not batch:
            raise ConfigError("the batch is empty: give at least one prompt")
        batch = [[int(t) for t in p] for p in batch]
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        vocab = self.target.config.vocab_size
        for b, prompt in enumerate(batch):
            where = "" if single else f"prompt {b}: "
            if prompt and not 0 <= min(prompt) <= max(prompt) < vocab:
                # caught here: on a GPU an out-of-range id is a device-side assert, not an error
                raise ConfigError(f"{where}token ids must lie in [0, {vocab}) (the model's vocabulary); got "
                                  f"{min(prompt)}..{max(prompt)}: was the prompt tokenized for another model?")
            try:
                self.check_prompt(len(prompt), max_new_tokens)
                self.method.for_prompt(len(prompt))  # a budget fraction too small for this prompt
            except (ConfigError, PromptTooLongError) as e:
                raise type(e)(where + str(e)) from None
        self.check_memory(max(len(p) for p in batch), max_new_tokens, batch_size=len(batch))
        return batch, single

    def check_memory(self, prompt_len: int, max_new_tokens: int, batch_size: int = 1) -> None:
        """On a GPU, raise before allocating if the caches and transients cannot fit (the weights
        are already loaded; the app checked the whole plan before loading them)."""
        if self.device.type != "cuda":
            return
        from triforce.memory import check_plan, plan_for_engine

        plan = self.memory_plan
        if plan is None or plan.batch_size < batch_size or plan.prompt_len < prompt_len:
            plan = plan_for_engine(self, prompt_len, max_new_tokens, batch_size)
        check_plan(plan, self.device, loaded=True)

    def level_spec(self) -> LevelSpec:
        return LevelSpec(self.method, self.target, self.draft, self.offload, self.on_chip_layers, self.biased_levels)


def _check_draft_model(method: MethodConfig, draft: Transformer | None, target: Transformer | None = None) -> None:
    """A method with a draft level has a draft model (its configuration: config.check_draft) that
    proposes from the target's vocabulary (a draft with fewer embedding rows of the same family:
    its distributions are padded to the target's, models.config.draft_vocabulary_problem)."""
    if method.uses_draft and draft is None:
        raise ConfigError(f"method {method.name!r} needs a draft model (draft=self reuses the target)")
    if draft is None or target is None or draft is target:
        return
    problem = draft_vocabulary_problem(target.config, draft.config)
    if problem:
        raise ConfigError(f"the draft model has {problem}")
    draft.widen_vocabulary(target.config.vocab_size)


class Stream:
    """The steps of one generation (Engine.stream): iterate the emitted tokens of each top-level
    step; `result` once it is exhausted. Its caches and graphs are freed when it ends, however it
    ends (exhausted, an error, `close()`, garbage)."""

    def __init__(self, generation: "Generation", stop_at_eos: bool, single: bool = True):
        self._generation, self._stop, self._single = generation, stop_at_eos, single
        self.result: GenerationResult | BatchResult | None = None
        self._steps = self._run()

    def __iter__(self) -> Iterator:
        return self._steps

    def __next__(self):
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()

    def _run(self) -> Iterator:
        gen = self._generation
        try:
            with torch.inference_mode():
                gen.prefill()
                gen.begin_decode()
            while True:
                with torch.inference_mode():
                    new = gen.step(self._stop)
                if new is None:
                    break
                yield new[0] if self._single else new
            with torch.inference_mode():
                batch = gen.finish()
            self.result = batch.results[0] if self._single else batch
        finally:
            gen.release()


@dataclasses.dataclass
class Row:
    """One sequence of a generation: its place in the token buffer and what it has produced."""
    prompt_len: int
    n: int  # tokens in its row of the token buffer: committed ones plus the current speculative tail
    out: list[int] = dataclasses.field(default_factory=list)  # emitted tokens (cut at max_new_tokens / EOS)
    rounds: list[dict] = dataclasses.field(default_factory=list)  # one record per top-level step
    emitted: int = 0  # tokens the top level emitted for it, before the cut
    done: bool = False  # at its EOS or max_new_tokens: frozen for the rest of the generation
    finished_at: float | None = None
    since_rebuild: int = 0  # tokens emitted since the middle's last selection
    recent_middle: list[float] = dataclasses.field(default_factory=list)  # the middle's per-round acceptance


class Generation:
    """Everything one generation of a batch of B sequences (B >= 1) changes: the token buffer
    (B, N), one `Row` per sequence, the generator, the counters, the executor and the levels with
    their caches. Made by Engine.stream; released at its end (a long-context KV cache is the largest
    allocation of a run, and a second engine, the autoregressive baseline, must not find this one's
    held).

    Every forward serves the whole batch with the same number of new tokens per sequence (static
    shapes: one captured graph per level and width); each sequence then advances by its own
    accepted count. `active` (booleans) names the sequences a round or forward runs for: a sequence
    that has its tokens for the level above already, or has finished, is frozen (its rows are
    computed, its caches and length stay as they are: docs/DESIGN.md §3)."""

    def __init__(self, engine: Engine, prompts: list[list[int]], max_new_tokens: int, seed: int,
                 progress: "GenerationProgress | None" = None):
        self.engine, self.method, self.progress = engine, engine.method, progress
        self.B = len(prompts)
        self.rows = [Row(prompt_len=len(p), n=len(p)) for p in prompts]
        self.max_new_tokens = max_new_tokens
        device = engine.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.stats = GenerationStats(device, batch_size=self.B)
        self.spec = engine.level_spec()
        self.caches = self.spec.caches(self.prompt_lens, max_new_tokens)  # every level's, decided once
        width = max(self.prompt_lens) + max_new_tokens + self.method.lookahead + 2 + spare_slots(self.method, self.B)
        self.tokens = torch.zeros(self.B, width, dtype=torch.int64, device=device)
        for b, prompt in enumerate(prompts):
            self.tokens[b, : len(prompt)] = torch.tensor(prompt, dtype=torch.int64)
        self.executor = make_executor(engine.executor_name, self.tokens, engine.sampling, self.stats,
                                      self.generator, engine.policy)
        # verification, the draft's samples between graph replays and the prefill: launched plainly
        self.ctx = KernelContext(engine.policy, pdl=False, workspace=Workspace(device))
        self.parallel = engine.parallel
        self.levels: list[Level] = [top_level(self.spec, self.caches, self.ctx)]  # every level built
        # trees at the top level in place of a chain (method.tree, or a plan among method.trees): the
        # rounds of each (tree_round.py), made when a plan first runs it
        self.tree_rounds: dict[tuple[int, ...], TreeRound] = {}
        # the round's plan (planner.py): the levels it runs, cheapest first, and their gammas
        self.planner = engine.planner(self.B)
        self.plan: Plan | None = None
        self._next_plan: Plan | None = None  # the next round's, chosen while this one verified (plan_ahead)
        self.chain: list[Level] = self.levels
        self.gammas: tuple[int, ...] = (0,)  # gammas[i]: tokens level i of the chain asks of level i - 1
        self._started = 0.0

    @property
    def prompt_lens(self) -> list[int]:
        return [row.prompt_len for row in self.rows]

    @property
    def lengths(self) -> list[int]:
        """Each sequence's tokens in the buffer (committed + speculative tail)."""
        return [row.n for row in self.rows]

    @property
    def all_rows(self) -> list[bool]:
        return [True] * self.B

    # -- what a planner reads (planner.PlannerView) ------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.B

    def level(self, name: str) -> Level:
        return next(level for level in self.levels if level.name == name)

    def has_level(self, name: str) -> bool:
        return any(level.name == name for level in self.levels)

    def step_bytes(self, name: str, tokens: int) -> int:
        """The byte floor of a forward of level `name` (the weights once, every sequence's KV)."""
        level = self.level(name)
        kv = max(level.cache.rows_of("length")) + tokens
        return step_bytes(level.model.config, kv, level.model.dtype.itemsize, self.B)

    # -- prefill ---------------------------------------------------------------------------
    def prefill(self) -> None:
        """Absorb all prompt tokens but the last into every cache, sequence by sequence (the last
        is fed with the first proposals, so the first round's forward yields its distribution). The
        full prompt runs once through the top level so a selection is scored with the last prompt
        token's query (as the paper); the last token is then rolled back."""
        with self.stats.wall("prefill"):
            top = self.levels[-1]
            reused = []
            for b, row in enumerate(self.rows):
                reused.append(self._prefill_top(top, b))
                top.cache.row(b).crop(row.prompt_len - 1)
            self.stats.prefill_reused = bool(reused) and all(reused)
            self.levels = lower_levels(self.spec, self.caches, self.ctx) + [top]
            # a planner that may leave levels idle takes each when its first plan runs it (a level
            # behind the sequence catches up: _use); the method's own plan has them all from the start
            lazy = getattr(self.planner, "lazy", False)
            for level in [] if lazy else self.levels[:-1]:
                for b, row in enumerate(self.rows):
                    level.prefill(b, self.tokens[b], row.prompt_len - 1, source=top, chunk=self.engine.prefill_chunk)

    def _prefill_top(self, top: Level, b: int) -> bool:
        """Sequence b's prefill of the top level, from the memo when it holds this target and
        prompt; whether it came from the memo."""
        engine, memo, n = self.engine, self.engine.prefill_memo, self.rows[b].prompt_len
        report = self._report_prefill(b) if self.progress is not None else None
        cache = top.cache.row(b)
        if memo is None or not top.cache.snapshots:  # an offloaded prefill is not kept
            top.prefill(b, self.tokens[b], n, chunk=engine.prefill_chunk, report=report)
            return False
        if engine._weights_key is None:
            engine._weights_key = weights_key(engine.target)
        key = (engine._weights_key, engine.prefill_chunk, tuple(self.tokens[b, :n].tolist()))
        snap = memo.get(key)
        if snap is None:
            top.prefill(b, self.tokens[b], n, chunk=engine.prefill_chunk, report=report)
            memo.put(key, cache.snapshot())
            return False
        cache.restore(snap)
        if self.progress is not None:
            self.progress.prefill(sum(self.prompt_lens[:b + 1]), sum(self.prompt_lens))
        return True

    def _report_prefill(self, b: int):
        done_before, total = sum(self.prompt_lens[:b]), sum(self.prompt_lens)

        def report(done: int, _total: int) -> None:
            self.stats.sync()  # the bar's tokens/s should count finished work
            self.progress.prefill(done_before + done, total)

        return report

    # -- the decode loop -------------------------------------------------------------------
    def begin_decode(self) -> None:
        self.prefill_traffic = sum(self.levels[-1].cache.traffic().values())
        self.stats.sync()
        self._started = time.perf_counter()
        if self.progress is not None:
            self.progress.generated(0, self.B * self.max_new_tokens)

    def step(self, stop_at_eos: bool) -> list[list[int]] | None:
        """One top-level step of every unfinished sequence: each sequence's tokens (cut at
        max_new_tokens and after its first EOS; [] for a finished one), or None when all are done."""
        active = [not row.done for row in self.rows]
        if not any(active):
            return None
        # the round's plan, from what the rounds so far measured: a function of the past only, so the
        # round is an exact step whichever plan it is (docs/DESIGN.md §12)
        plan = self._next_plan if self._next_plan is not None else self.planner.choose(self, active)
        self._next_plan = None
        predicted = getattr(self.planner, "predicted", None)
        before = [counts.frozen() for counts in self.stats.rows]
        self.stats.sync()
        start, captured = time.perf_counter(), self.stats.time_s.get("capture", 0.0)
        caught_up = self._use(plan, active)
        top = len(self.chain) - 1
        if top == 0:
            emitted = self._autoregressive_step(active)
        elif plan.tree:
            emitted = self._tree_round(plan).run(active)
        else:
            emitted = self._round(top, active).emitted()
        self.stats.sync()
        # a graph captured in this step (a width used for the first time) is first-use cost, apart
        capture_s = self.stats.time_s.get("capture", 0.0) - captured
        seconds = time.perf_counter() - start - capture_s
        ms = 1000 * seconds
        forwards = self.stats.drain()  # the step's forwards, complete after the sync
        for (level, tokens), forward_s in forwards:
            self.engine.costs.add(level, tokens, self.B, forward_s)  # whatever the planner (costs.json)
            self.planner.timed(level, tokens, forward_s)
        # beyond the forwards: the round's own work (what a catch-up cost is the switch's, told apart)
        self.planner.round_overhead(plan, seconds - caught_up - sum(s for _, s in forwards), len(forwards))
        self.planner.stepped(plan, sum(len(e) for e in emitted), seconds, predicted)
        eos = self.engine.eos_ids
        news: list[list[int]] = [[] for _ in range(self.B)]
        for b, row in enumerate(self.rows):
            if not active[b]:
                continue
            new = emitted[b]
            record = self.stats.step_record(len(row.rounds), before[b], self.stats.rows[b])
            record.update(ms=ms, emitted=len(new), plan=plan.name)
            if capture_s:
                record["capture_ms"] = 1000 * capture_s
            if predicted is not None:
                record["predicted_tokens_per_s"] = predicted
            row.rounds.append(record)
            row.emitted += len(new)
            stopped = False
            if stop_at_eos and eos.intersection(new):
                new = new[: min(i for i, t in enumerate(new) if t in eos) + 1]
                stopped = True
            new = new[: self.max_new_tokens - len(row.out)]
            row.out.extend(new)
            news[b] = new
            if stopped or len(row.out) >= self.max_new_tokens:
                row.done = True
                row.finished_at = time.perf_counter()
            if not stopped:
                self._maybe_rebuild(b, len(emitted[b]))
        if self.progress is not None:
            self.progress.generated(sum(len(row.out) for row in self.rows), self.B * self.max_new_tokens)
        return news

    def finish(self) -> BatchResult:
        self.stats.sync()
        end = time.perf_counter()
        capture = self.stats.time_s.get("capture", 0.0)
        decode_s = end - self._started - capture
        traffic = sum(self.levels[-1].cache.traffic().values())
        used = getattr(self.executor, "tuning_used", ())
        generated = sum(len(row.out) for row in self.rows)
        plans = self.planner.describe()  # rounds, tokens and time per plan; the adaptive estimates
        results = []
        for b, row in enumerate(self.rows):
            # a sequence's own time: until its last token (the batch's when it ran to the end)
            seq_s = (row.finished_at or end) - self._started - capture if self.B > 1 else decode_s
            metrics = self.stats.summary(new_tokens=len(row.out), top_level=self.levels[-1].name,
                                         emitted=row.emitted, decode_s=seq_s, row=b)
            if traffic:  # host-link traffic of an offloaded cache (this rank's share under TP)
                metrics.update({"offload/prefill_gb": self.prefill_traffic / 1e9 / self.B,
                                "offload/decode_gb_per_token": (traffic - self.prefill_traffic) / 1e9
                                / max(generated, 1)})
            if self.method.uses_middle:  # in tokens, also when given as a fraction of the prompt
                metrics["middle_budget"] = self.method.budget_for(row.prompt_len)
            if self.B > 1:
                metrics["batch_size"] = self.B
            metrics.update(plans)
            metrics.update(self._tree_metrics())
            results.append(GenerationResult(tokens=row.out, metrics=metrics, rounds=row.rounds, tuning_used=used))
        batch = {**self.stats.batch_summary(new_tokens=[len(row.out) for row in self.rows], decode_s=decode_s),
                 **plans}
        for result in results:
            result.metrics["throughput"] = batch["throughput"]
        return BatchResult(results, batch)

    def release(self) -> None:
        self.levels = []
        self.executor.release()
        self.tokens = None

    def _tree_round(self, plan: Plan) -> TreeRound:
        if plan.tree_parents not in self.tree_rounds:
            self.tree_rounds[plan.tree_parents] = TreeRound(self, plan.token_tree)
        return self.tree_rounds[plan.tree_parents]

    def _tree_metrics(self) -> dict[str, float]:
        """tree/rank_accept_<k> of the tree the rounds ran (several: pooled by rank)."""
        if len(self.tree_rounds) == 1:
            return next(iter(self.tree_rounds.values())).metrics()
        if not self.tree_rounds:
            return {}
        from triforce.tree_shapes import RankCounts

        pooled = RankCounts()
        for tree_round in self.tree_rounds.values():
            for k, (offered, accepted) in enumerate(zip(tree_round.ranks.offered, tree_round.ranks.accepted)):
                while len(pooled.offered) <= k:
                    pooled.offered.append(0)
                    pooled.accepted.append(0)
                pooled.offered[k] += offered
                pooled.accepted[k] += accepted
        return {f"tree/rank_accept_{k + 1}": v for k, v in enumerate(pooled.rank_accept())}

    # -- the plan of a round --------------------------------------------------------------------
    def plan_ahead(self, active: list[bool]) -> None:
        """Called by a round between launching its top level's verification and reading its verdicts
        (the round's one synchronisation): the next round's plan, where the planner chooses it without
        this round's outcome (planner.choose_ahead), so that its host time overlaps the device's."""
        self._next_plan = self.planner.choose_ahead(self, active)

    def _use(self, plan: Plan, active: list[bool]) -> float:
        """Run `plan` from this round on: its chain of levels and gammas. A level the last rounds did
        not run has fallen behind the sequence: it takes the tokens it has not seen as a prefill takes
        a prompt (a selection re-selects from the full cache; a StreamingLLM draft keeps its window),
        up to all but the last token, as after the prefill. Its caches hold only committed tokens
        (every level of a chain is cropped to the accepted prefix when its round ends). Returns the
        seconds the catch-ups took (each level's told to the planner)."""
        if plan is self.plan:
            return 0.0  # the levels that ran the last round feed what they have not seen as every round does
        ran = set() if self.plan is None else set(self.plan.chain)  # up to date but for a round's tokens
        self.plan = plan
        self.chain = [self.level(name) for name in plan.chain]
        self.gammas = (0, *plan.gammas)
        top = self.chain[-1]
        total = 0.0
        for level in self.chain[:-1]:
            if level.name in ran:
                continue
            behind = [b for b, row in enumerate(self.rows) if active[b] and level.cache.row(b).seq_len < row.n - 1]
            if not behind:
                continue
            before = self.stats.time_s.get("catchup", 0.0)
            with self.stats.wall("catchup"):
                for b in behind:
                    level.prefill(b, self.tokens[b], self.rows[b].n - 1, source=top, chunk=self.engine.prefill_chunk)
            seconds = self.stats.time_s["catchup"] - before
            self.planner.caught_up(level.name, seconds)
            total += seconds
        return total

    # -- forwards --------------------------------------------------------------------------
    def forward(self, i: int, first_needed: list[int], active: list[bool], *, sample: bool = False) -> torch.Tensor:
        """Distributions of level i for the next token after each of tokens[b, first_needed[b]:n_b]
        for every active row b: a (B, n_b - first_needed[b], V) tensor (the same width for every
        row), from one forward over the tokens the level's cache has not seen. Rows with fewer unseen
        tokens than the widest are rolled back to feed as many (the same tokens again: the same keys).
        sample: also tokens[b, n_b] = a draw from each row's last distribution (on the device)."""
        level = self.chain[i]
        cache = level.cache
        seq = cache.rows_of("seq_len")
        for b in range(self.B):
            if active[b] and seq[b] > first_needed[b]:
                cache.row(b).crop(first_needed[b])
                seq[b] = first_needed[b]
        lengths = self.lengths
        num_logits = next(lengths[b] - first_needed[b] for b in range(self.B) if active[b])
        phase = self._phase(i)
        out = None
        for num_tokens, group in self.feed_groups(cache, seq, active):
            starts = [max(n - num_tokens, 0) for n in lengths]
            probs = self.executor.forward(level, starts, num_tokens, num_logits, phase, sample=sample, rows=group)
            self.stats.forward_of(level.name, group)
            if out is None:
                out = probs
            else:  # this group's rows from its forward
                take = device_index(group, probs.device).bool()[:, None, None]
                out = torch.where(take, probs, out)
        return out

    def _phase(self, i: int) -> str:
        """The stats phase of level i's forwards: a proposer's its own name; the top's verify, or
        decode when it runs alone."""
        return self.chain[i].name if i < len(self.chain) - 1 else ("decode" if len(self.chain) == 1 else "verify")

    def feed_groups(self, cache, seq: list[int], active: list[bool]) -> list[tuple[int, list[bool]]]:
        """The forwards a level's step takes (a chain's step, a tree round's root): (tokens per
        sequence, the rows it serves). One, as wide as the row with the most unseen tokens, where
        every other row can roll back to feed as many (the same tokens again: the same keys); a row
        that cannot (a selection just rebuilt) gets a forward of its own width."""
        lengths = self.lengths
        unseen = {b: lengths[b] - seq[b] for b in range(self.B) if active[b]}
        width = max(unseen.values())
        groups: dict[int, list[bool]] = {}
        for b, t in unseen.items():
            if t < width and cache.row(b).can_crop(lengths[b] - width):
                cache.row(b).crop(lengths[b] - width)
                t = width
            groups.setdefault(t, [False] * self.B)[b] = True
        return sorted(groups.items(), reverse=True)

    def forward_all(self, level: Level, inputs: torch.Tensor) -> torch.Tensor:
        """Sampling distributions after each of `inputs` (T, V) of the one sequence, in forwards
        the cache accepts (a StreamingLLM cache takes at most its window at once)."""
        cache = level.cache.row(0)
        step = cache.max_step_tokens or len(inputs)
        logits = [level.model(inputs[i:i + step][None], None, cache, num_logits=len(inputs[i:i + step]),
                              kernels=self.ctx)[0]
                  for i in range(0, len(inputs), step)]
        return probabilities(torch.cat(logits), self.engine.sampling, ctx=self.ctx)

    def _crop(self, upto_level: int, b: int, seq_len: int) -> None:
        for level in self.chain[: upto_level + 1]:
            cache = level.cache.row(b)
            if cache.seq_len > seq_len:
                cache.crop(seq_len)

    # -- the hierarchy -----------------------------------------------------------------------
    def _autoregressive_step(self, active: list[bool]) -> list[list[int]]:
        """The one-level method: sample one token per row; read them back (the step's one
        synchronisation)."""
        self._extend(0, 1, active)
        last = device_index([n - 1 for n in self.lengths], self.tokens.device)
        values = self.tokens.gather(1, last[:, None])[:, 0].tolist()
        return [[values[b]] if active[b] else [] for b in range(self.B)]

    def _extend(self, i: int, n: int, active: list[bool]) -> torch.Tensor:
        """Append exactly n tokens sampled from level i to every active row; their distributions
        (B, n, V) (a frozen row's are not used)."""
        if i == 0:
            dists = []
            for step in range(n):
                if step == 1 and (chained := self._chained_steps(n - 1, active)) is not None:
                    dists.append(chained)
                    break
                # and tokens[b, n_b] drawn from each row's p, on the device
                p = self.forward(0, [m - 1 for m in self.lengths], active, sample=True)[:, -1:]
                self._broadcast_new_tokens()
                for row, on in zip(self.rows, active):
                    if on:
                        row.n += 1
                dists.append(p)
            return torch.cat(dists, dim=1)
        start = self.lengths
        counts = [0] * self.B
        pending = list(active)
        out = None
        while any(pending):
            result = self._round(i, pending)
            p, accepted = result.probs, result.verdict.accepted  # p: (B, gamma + 1, V)
            if out is None:
                out = torch.full((self.B, n, p.shape[-1]), 1.0 / p.shape[-1], dtype=p.dtype, device=p.device)
            for b in range(self.B):
                if not pending[b]:
                    continue
                take = min(accepted[b] + 1, n - counts[b])
                out[b, counts[b]:counts[b] + take] = p[b, :take]
                counts[b] += accepted[b] + 1
                pending[b] = counts[b] < n
        for b, row in enumerate(self.rows):
            if active[b]:
                row.n = start[b] + n
                self._crop(i, b, row.n - 1)
        return out

    def _chained_steps(self, k: int, active: list[bool]) -> torch.Tensor | None:
        """The proposer's next k one-token steps as one static forward (StaticExecutor.steps) where
        the executor can: after a round's first step every active row has exactly one token its
        cache has not seen, so the k steps have one shape. Their distributions (B, k, V), or None
        (one forward a step then: an eager executor, an eviction due within the k, or tensor
        parallelism, whose ranks take rank 0's draw between steps)."""
        level = self.chain[0]
        if self.parallel.enabled or not self.executor.can_step(level, k, active):
            return None
        probs = self.executor.steps(level, [m - 1 for m in self.lengths], k, self._phase(0), rows=active)
        for _ in range(k):
            self.stats.forward_of(level.name, active)
        for row, on in zip(self.rows, active):
            if on:
                row.n += k
        return probs

    def _round(self, i: int, active: list[bool]) -> "Round":
        """One speculative round at level i for every active row: ask level i - 1 for gamma tokens,
        score them in one forward, verify; each row then keeps its accepted tokens and the next."""
        level = self.chain[i]
        base = self.lengths
        gamma = self.gammas[i]
        q = self._extend(i - 1, gamma, active)  # (B, gamma, V)
        p = self.forward(i, [m - 1 for m in base], active)  # (B, gamma + 1, V)
        device = self.tokens.device
        bases = device_index(base, device)
        proposals = self.tokens.gather(1, bases[:, None] + torch.arange(gamma, device=device))
        # row b's next token is written at tokens[b, base_b + accepted_b] on the device
        packed = verify_into(proposals, q, p, self.generator, self.tokens, bases, residual=level.residual,
                             ctx=self.ctx)
        if self.parallel.enabled:  # rank 0's verdicts and tokens, on every rank
            self.parallel.broadcast(packed)
            self.tokens[torch.arange(self.B, device=device), bases + packed[:, 0]] = packed[:, 1]
        if i == len(self.chain) - 1:
            self.plan_ahead(active)  # while the verification runs
        verdict = Verdict.read(packed)  # the round's one synchronisation
        below = self.chain[i - 1].name
        for b, row in enumerate(self.rows):
            if not active[b]:
                continue
            acc = verdict.accepted[b]
            row.n = base[b] + acc + 1
            self._crop(i, b, base[b] + acc)
            self.stats.verified(below, b, gamma, acc)
            self.planner.verified(below, level.name, b, gamma, acc)
            if below.startswith("middle"):
                row.recent_middle.append(acc / gamma)
        return Round(p, verdict, tuple(active))

    def _broadcast_new_tokens(self) -> None:
        """Tensor parallelism: rank 0's draws of the tokens just sampled, on every rank."""
        if not self.parallel.enabled:
            return
        idx = device_index(self.lengths, self.tokens.device)[:, None]
        new = self.tokens.gather(1, idx)
        self.parallel.broadcast(new)
        self.tokens.scatter_(1, idx, new)

    # -- rebuilds of the middle's selection --------------------------------------------------
    def _maybe_rebuild(self, b: int, emitted: int) -> None:
        m, row = self.method, self.rows[b]
        if m.rebuild == "never" or not any(level.cache.selects for level in self.chain):
            return
        row.since_rebuild += emitted
        if m.rebuild == "every_n":
            due = row.since_rebuild >= m.rebuild_every
        else:
            recent = row.recent_middle[-m.rebuild_window:]
            due = len(recent) >= m.rebuild_window and sum(recent) / len(recent) < m.rebuild_threshold
        if not due:
            return
        top = self.chain[-1]
        # score with the query of the last accepted token (position n - 2: the newest token is the
        # verifier's own sample, not yet run through any model)
        query = top.cache.row(b).query_at(row.n - 2)
        with self.stats.wall("rebuild"):
            rebuilt = sum(level.rebuild(b, top, query) for level in self.chain[:-1])
        self.stats.rows[b].rebuilds += bool(rebuilt)
        row.since_rebuild = 0
        row.recent_middle.clear()


@dataclasses.dataclass(frozen=True)
class Round:
    """One speculative round at a level, for every sequence of the batch: the verifier's
    distributions (B, gamma + 1, V) (row b's first accepted + 1 are its emitted tokens') and the
    verdict (each row's accepted count, next token and proposals)."""
    probs: torch.Tensor
    verdict: Verdict
    active: tuple[bool, ...]

    def emitted(self) -> list[list[int]]:
        """Each sequence's emitted tokens ([] for a frozen one)."""
        return [self.verdict.emitted(b) if on else [] for b, on in enumerate(self.active)]
