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
from typing import TYPE_CHECKING, Any, Iterator

import torch

from triforce.config import (EXECUTORS, METHODS, MIDDLE_CACHES, REBUILD_POLICIES, MethodConfig,  # noqa: F401
                             SamplingParams, context_needed)
from triforce.errors import ConfigError, PromptTooLongError
from triforce.executor import make_executor, resolve_executor
from triforce.kernels.policy import KernelContext, KernelPolicy
from triforce.kernels.workspace import Workspace
from triforce.levels import Level, LevelSpec, lower_levels, top_level
from triforce.metrics import GenerationStats
from triforce.models.llama import Transformer
from triforce.prefill_memo import PrefillMemo, weights_key
from triforce.sampling import probabilities, verify_into

if TYPE_CHECKING:
    from triforce.memory import MemoryPlan
    from triforce.progress import GenerationProgress

__all__ = ["Engine", "GenerationResult", "MethodConfig", "Stream", "context_needed"]


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]
    metrics: dict[str, float]
    # one record per top-level step: tokens emitted, accepted/proposed per level, wall time
    rounds: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # the kernel tuning-file entries its captured forwards were launched with (kernels/policy.py)
    tuning_used: tuple[str, ...] = ()


class Engine:
    """Build from models (`Engine(target, draft, method, sampling)`) or from a config
    (`Engine.from_config(cfg)`), then `generate(prompt_ids, max_new_tokens, seed)` or iterate
    `stream(prompt_ids, max_new_tokens, seed)`.

    executor: "auto" (CUDA graphs on a GPU, eager elsewhere), "eager", "static" (the graph path's
    static-shape forwards without capture; tests) or "graphs".
    kernels: a KernelPolicy, or its overrides (`hardware.kernels`): resolved once, here.
    prefill_memo: a `triforce.prefill_memo.PrefillMemo` to take the top level's prefill from when
    this target and prompt were prefilled before (in this engine or another sharing the memo).
    memory_plan: the run's memory plan (memory.py, made by the app's pre-flight for its longest
    prompt): the engine re-checks free memory against it instead of planning again."""

    def __init__(self, target: Transformer, draft: Transformer | None = None,
                 method: MethodConfig | dict | None = None, sampling: SamplingParams | dict | None = None,
                 *, max_context: int | None = None, prefill_chunk: int | None = None,
                 biased_levels: tuple[str, ...] = (), executor: str = "auto", offload: bool = False,
                 on_chip_layers: int | None = None, prefill_memo: PrefillMemo | None = None,
                 kernels: KernelPolicy | dict | None = None, memory_plan: "MemoryPlan | None" = None):
        self.method = method if isinstance(method, MethodConfig) else MethodConfig(**(method or {}))
        self.sampling = sampling if isinstance(sampling, SamplingParams) else SamplingParams(**(sampling or {}))
        if self.method.uses_draft and draft is None:
            raise ConfigError(f"method {self.method.name!r} needs a draft model (draft=self reuses the target)")
        if executor not in EXECUTORS:
            raise ConfigError(f"hardware.executor={executor!r}: choose one of {', '.join(EXECUTORS)}")
        self.target, self.draft = target, draft
        self.max_context = max_context or target.config.max_position_embeddings
        self.prefill_chunk = prefill_chunk
        self.offload, self.on_chip_layers = offload, on_chip_layers or 0
        self.biased_levels = frozenset(biased_levels)
        self.eos_ids = frozenset(target.config.eos_token_id)
        self.device = target.device
        # tensor parallelism: rank 0's draws decide every token and verdict (parallel.py)
        self.parallel = target.parallel
        self.executor_name = resolve_executor(executor, self.device)
        # every kernel choice of this engine, resolved once (kernels/policy.py)
        self.policy = kernels if isinstance(kernels, KernelPolicy) else KernelPolicy.resolve(self.device, kernels)
        self.prefill_memo = prefill_memo
        self.memory_plan = memory_plan
        self._weights_key = None  # names the target's weights in the memo (computed at first use)

    # -- construction from a config ------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any, **kw) -> "Engine":
        """cfg: a composed config, or a mapping with `model`, `method`, `sampling` and optionally
        `draft`, `hardware` (parsed into config.py's typed objects first)."""
        from triforce.assemble import engine_kwargs
        from triforce.config import engine_config

        return cls(**engine_kwargs(engine_config(cfg)), **kw)

    def with_method(self, method: MethodConfig) -> "Engine":
        """The same models, sampling, context, hardware settings, kernel policy and memo with
        another method (the app's autoregressive baseline)."""
        if method.uses_draft and self.draft is None:
            raise ConfigError(f"method {method.name!r} needs a draft model (draft=self reuses the target)")
        other = copy.copy(self)
        other.method = method
        return other

    # -- checks before any work ------------------------------------------------------------
    def check_prompt(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise before any work if the prompt and its continuation do not fit the context."""
        if prompt_len < 1:
            raise PromptTooLongError("the prompt is empty: give at least one token")
        if context_needed(prompt_len, max_new_tokens, self.method) > self.max_context:
            raise PromptTooLongError(
                f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens (+{self.method.lookahead} "
                f"speculative) exceeds the model's context of {self.max_context}; shorten the prompt "
                "(dataset.prefill) or max_new_tokens, or use a model with a longer context")

    def check_memory(self, prompt_len: int, max_new_tokens: int) -> None:
        """On a GPU, raise before allocating if the caches and transients cannot fit (the weights
        are already loaded; the app checked the whole plan before loading them)."""
        if self.device.type != "cuda":
            return
        from triforce.memory import check_plan, plan_for_engine

        plan = self.memory_plan or plan_for_engine(self, prompt_len, max_new_tokens)
        check_plan(plan, self.device, loaded=True)

    # -- public API ------------------------------------------------------------------------
    def stream(self, prompt_ids, max_new_tokens: int, seed: int = 0, *, stop_at_eos: bool = True,
               progress: "GenerationProgress | None" = None) -> "Stream":
        """Iterate the tokens each top-level step emits (a list per step: one token for
        autoregressive decoding, up to gamma + 1 for a speculative round), until max_new_tokens or
        the first EOS; `.result` is the GenerationResult afterwards. Checked before any work."""
        prompt = self._checked_prompt(prompt_ids, max_new_tokens)
        return Stream(Generation(self, prompt, max_new_tokens, seed, progress), stop_at_eos)

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, seed: int = 0, *, stop_at_eos: bool = True,
                 progress: "GenerationProgress | None" = None) -> GenerationResult:
        """`progress`: hooks told of the top level's prefill and of each top-level step
        (triforce.progress.TokenProgress shows them as tqdm bars); None: silent."""
        stream = self.stream(prompt_ids, max_new_tokens, seed, stop_at_eos=stop_at_eos, progress=progress)
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
        prompt = self._checked_prompt(prompt_ids, len(continuation))
        gen = Generation(self, prompt, len(continuation), seed=0)
        try:
            n, T = len(prompt), len(continuation)
            gen.tokens[n:n + T] = torch.tensor(continuation, dtype=torch.int64)
            gen.prefill()
            dists = [gen.forward_all(level, gen.tokens[n - 1:n - 1 + T]) for level in gen.levels]
            return {level.name: torch.minimum(q, p).sum(-1).tolist()
                    for level, q, p in zip(gen.levels, dists, dists[1:])}
        finally:
            gen.release()

    def _checked_prompt(self, prompt_ids, max_new_tokens: int) -> list[int]:
        """The prompt as a list, after every check that can fail before work."""
        if torch.is_tensor(prompt_ids) and prompt_ids.dim() > 1:
            raise ConfigError("generate() takes one prompt (batch size 1): pass a 1-D list of token ids")
        prompt = [int(t) for t in (prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)]
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        vocab = self.target.config.vocab_size
        if prompt and not 0 <= min(prompt) <= max(prompt) < vocab:
            # caught here: on a GPU an out-of-range id is a device-side assert, not an error
            raise ConfigError(f"prompt token ids must lie in [0, {vocab}) (the model's vocabulary); got "
                              f"{min(prompt)}..{max(prompt)}: was the prompt tokenized for another model?")
        self.check_prompt(len(prompt), max_new_tokens)
        self.method.for_prompt(len(prompt))  # a budget fraction too small for this prompt: fail before work
        self.check_memory(len(prompt), max_new_tokens)
        return prompt

    def level_spec(self) -> LevelSpec:
        return LevelSpec(self.method, self.target, self.draft, self.offload, self.on_chip_layers, self.biased_levels)


class Stream:
    """The steps of one generation (Engine.stream): iterate the emitted tokens of each top-level
    step; `result` once it is exhausted. Its caches and graphs are freed when it ends, however it
    ends (exhausted, an error, `close()`, garbage)."""

    def __init__(self, generation: "Generation", stop_at_eos: bool):
        self._generation, self._stop = generation, stop_at_eos
        self.result: GenerationResult | None = None
        self._steps = self._run()

    def __iter__(self) -> Iterator[list[int]]:
        return self._steps

    def __next__(self) -> list[int]:
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()

    def _run(self) -> Iterator[list[int]]:
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
                yield new
            with torch.inference_mode():
                self.result = gen.finish()
        finally:
            gen.release()


class Generation:
    """Everything one generation changes: the token buffer and its length, the generator, the
    counters, the executor and the levels with their caches. Made by Engine.stream; released at
    its end (a long-context KV cache is the largest allocation of a run, and a second engine, the
    autoregressive baseline, must not find this one's held)."""

    def __init__(self, engine: Engine, prompt: list[int], max_new_tokens: int, seed: int,
                 progress: "GenerationProgress | None" = None):
        self.engine, self.method, self.progress = engine, engine.method, progress
        self.prompt_len, self.max_new_tokens = len(prompt), max_new_tokens
        device = engine.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.stats = GenerationStats(device)
        self.tokens = torch.zeros(len(prompt) + max_new_tokens + self.method.lookahead + 2, dtype=torch.int64,
                                  device=device)
        self.tokens[: len(prompt)] = torch.tensor(prompt, dtype=torch.int64)
        self.n = len(prompt)
        self.recent_middle: list[float] = []
        self.since_rebuild = 0
        self.out: list[int] = []
        self.rounds: list[dict] = []
        self.spec = engine.level_spec()
        self.executor = make_executor(engine.executor_name, self.tokens, engine.sampling, self.stats,
                                      self.generator, engine.policy)
        # verification and the draft's samples between graph replays: launched plainly
        self.ctx = KernelContext(engine.policy, pdl=False, workspace=Workspace(device))
        self.parallel = engine.parallel
        self.levels: list[Level] = [top_level(self.spec, self.prompt_len, max_new_tokens)]  # the others: prefill
        self._started = 0.0

    # -- prefill ---------------------------------------------------------------------------
    def prefill(self) -> None:
        """Absorb all prompt tokens but the last into every cache (the last is fed with the first
        proposals, so the first round's forward yields its distribution). The full prompt runs
        once through the top level so a selection is scored with the last prompt token's query
        (as the paper); the last token is then rolled back."""
        with self.stats.wall("prefill"):
            top = self.levels[-1]
            self._prefill_top(top)
            top.cache.crop(self.prompt_len - 1)
            self.levels = lower_levels(self.spec, self.prompt_len, self.max_new_tokens) + [top]
            for level in self.levels[:-1]:
                level.prefill(self.tokens, self.prompt_len - 1, source=top, chunk=self.engine.prefill_chunk)

    def _prefill_top(self, top: Level) -> None:
        """The top level's prefill, from the memo when it holds this target and prompt."""
        engine, memo = self.engine, self.engine.prefill_memo
        report = self._report_prefill if self.progress is not None else None
        if memo is None or not top.cache.snapshots:  # an offloaded prefill is not kept
            top.prefill(self.tokens, self.prompt_len, chunk=engine.prefill_chunk, report=report)
            return
        if engine._weights_key is None:
            engine._weights_key = weights_key(engine.target)
        key = (engine._weights_key, engine.prefill_chunk, tuple(self.tokens[:self.prompt_len].tolist()))
        snap = memo.get(key)
        self.stats.prefill_reused = snap is not None
        if snap is None:
            top.prefill(self.tokens, self.prompt_len, chunk=engine.prefill_chunk, report=report)
            memo.put(key, top.cache.snapshot())
            return
        top.cache.restore(snap)
        if self.progress is not None:
            self.progress.prefill(self.prompt_len, self.prompt_len)

    def _report_prefill(self, done: int, total: int) -> None:
        self.stats.sync()  # the bar's tokens/s should count finished work
        self.progress.prefill(done, total)

    # -- the decode loop -------------------------------------------------------------------
    def begin_decode(self) -> None:
        self.prefill_traffic = sum(self.levels[-1].cache.traffic().values())
        self.stats.sync()
        self._started = time.perf_counter()
        if self.progress is not None:
            self.progress.generated(0, self.max_new_tokens)

    def step(self, stop_at_eos: bool) -> list[int] | None:
        """One top-level step: the tokens it emits (cut at max_new_tokens and after the first EOS),
        or None when the generation is done."""
        if len(self.out) >= self.max_new_tokens or getattr(self, "_stopped", False):
            return None
        top = len(self.levels) - 1
        with self.stats.round_record(self.rounds, step=len(self.rounds)):
            new = self._autoregressive_step() if top == 0 else self._round(top)[1]
        self.rounds[-1]["emitted"] = len(new)
        eos = self.engine.eos_ids
        if stop_at_eos and eos.intersection(new):
            new = new[: min(i for i, t in enumerate(new) if t in eos) + 1]
            self._stopped = True
        new = new[: self.max_new_tokens - len(self.out)]
        self.out.extend(new)
        if self.progress is not None:
            self.progress.generated(len(self.out), self.max_new_tokens)
        if not getattr(self, "_stopped", False):
            self._maybe_rebuild(self.rounds[-1]["emitted"])
        return new

    def finish(self) -> GenerationResult:
        self.stats.sync()
        decode_s = time.perf_counter() - self._started - self.stats.time_s.get("capture", 0.0)
        tokens = self.out
        metrics = self.stats.summary(new_tokens=len(tokens), top_level=self.levels[-1].name,
                                     emitted=sum(r["emitted"] for r in self.rounds), decode_s=decode_s)
        traffic = sum(self.levels[-1].cache.traffic().values())
        if traffic:  # host-link traffic of an offloaded cache (this rank's share under TP)
            metrics.update({"offload/prefill_gb": self.prefill_traffic / 1e9,
                            "offload/decode_gb_per_token": (traffic - self.prefill_traffic) / 1e9
                            / max(len(tokens), 1)})
        if self.method.uses_middle:  # in tokens, also when given as a fraction of the prompt
            metrics["middle_budget"] = self.method.budget_for(self.prompt_len)
        used = getattr(self.executor, "tuning_used", ())
        return GenerationResult(tokens=tokens, metrics=metrics, rounds=self.rounds, tuning_used=used)

    def release(self) -> None:
        self.levels = []
        self.executor.release()
        self.tokens = None

    # -- forwards --------------------------------------------------------------------------
    def forward(self, i: int, first_needed: int, *, sample: bool = False) -> torch.Tensor:
        """Distributions of level i for the next token after each of tokens[first_needed:n]:
        a (n - first_needed, V) tensor, from one forward over the tokens its cache has not seen.
        sample: also tokens[n] = a draw from the last of them (on the device)."""
        level = self.levels[i]
        cache = level.cache
        if cache.seq_len > first_needed:
            cache.crop(first_needed)
        phase = level.name if i < len(self.levels) - 1 else ("decode" if len(self.levels) == 1 else "verify")
        probs = self.executor.forward(level, cache.seq_len, self.n, self.n - first_needed, phase, sample=sample)
        self.stats.forwards[level.name] += 1
        return probs

    def forward_all(self, level: Level, inputs: torch.Tensor) -> torch.Tensor:
        """Sampling distributions after each of `inputs` (T, V), in forwards the cache accepts
        (a StreamingLLM cache takes at most its window at once)."""
        step = level.cache.max_step_tokens or len(inputs)
        logits = [level.model(inputs[i:i + step][None], None, level.cache, num_logits=len(inputs[i:i + step]))[0]
                  for i in range(0, len(inputs), step)]
        return probabilities(torch.cat(logits), self.engine.sampling)

    def _crop_all(self, upto_level: int, seq_len: int) -> None:
        for level in self.levels[: upto_level + 1]:
            if level.cache.seq_len > seq_len:
                level.cache.crop(seq_len)

    # -- the hierarchy -----------------------------------------------------------------------
    def _autoregressive_step(self) -> list[int]:
        """The one-level method: sample one token; read it back (the step's one synchronisation)."""
        self._extend(0, 1)
        return self.tokens[self.n - 1: self.n].tolist()

    def _extend(self, i: int, n: int) -> torch.Tensor:
        """Append exactly n tokens sampled from level i; return their distributions (n, V)."""
        if i == 0:
            dists = []
            for _ in range(n):
                p = self.forward(0, self.n - 1, sample=True)[-1]  # and tokens[n] drawn from p, on the device
                self.parallel.broadcast(self.tokens[self.n:self.n + 1])
                self.n += 1
                dists.append(p)
            return torch.stack(dists)
        start = self.n
        dists, count = [], 0
        while count < n:
            emitted_dists, _ = self._round(i)
            dists.append(emitted_dists)
            count += emitted_dists.shape[0]
        self.n = start + n
        self._crop_all(i, self.n - 1)
        return torch.cat(dists)[:n]

    def _round(self, i: int) -> tuple[torch.Tensor, list[int] | None]:
        """One speculative round at level i: the distributions of the emitted tokens (n + 1, V),
        and at the top level the emitted tokens themselves (read with the verdict)."""
        level = self.levels[i]
        base = self.n
        q = self._extend(i - 1, level.gamma)
        p = self.forward(i, base - 1)  # (gamma + 1, V)
        proposals = self.tokens[base:base + level.gamma]
        # [n, next token, proposals...]; the next token is already written at tokens[base + n]
        verdict = verify_into(proposals, q, p, self.generator, self.tokens, base, residual=level.residual,
                              ctx=self.ctx)
        if self.parallel.enabled:  # rank 0's verdict and token, on every rank
            self.parallel.broadcast(verdict)
            self.tokens.index_copy_(0, base + verdict[:1], verdict[1:2])
        if i == len(self.levels) - 1:
            values = verdict.tolist()  # the round's one synchronisation
            n, emitted = values[0], values[2:2 + values[0]] + [values[1]]
        else:
            n, emitted = int(verdict[0]), None  # the round's one synchronisation
        self.n = base + n + 1
        self._crop_all(i, base + n)
        below = self.levels[i - 1].name
        self.stats.proposed[below] += level.gamma
        self.stats.accepted[below] += n
        if below == "middle":
            self.recent_middle.append(n / level.gamma)
        return p[: n + 1], emitted

    # -- rebuilds of the middle's selection --------------------------------------------------
    def _maybe_rebuild(self, emitted: int) -> None:
        m = self.method
        if m.rebuild == "never" or not any(level.cache.selects for level in self.levels):
            return
        self.since_rebuild += emitted
        if m.rebuild == "every_n":
            due = self.since_rebuild >= m.rebuild_every
        else:
            recent = self.recent_middle[-m.rebuild_window:]
            due = len(recent) >= m.rebuild_window and sum(recent) / len(recent) < m.rebuild_threshold
        if not due:
            return
        top = self.levels[-1]
        # score with the query of the last accepted token (position n - 2: the newest token is the
        # verifier's own sample, not yet run through any model)
        query = top.cache.query_at(self.n - 2)
        with self.stats.wall("rebuild"):
            rebuilt = sum(level.rebuild(top, query) for level in self.levels[:-1])
        self.stats.rebuilds += bool(rebuilt)
        self.since_rebuild = 0
        self.recent_middle.clear()
