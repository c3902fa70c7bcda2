"""One speculative engine for every method: a method is an ordered list of levels, cheapest first.

    autoregressive   [top]                       top = target model, full cache
    spec             [draft, top]                draft model (full or StreamingLLM cache)
    retrieval_spec   [middle, top]               middle = target model with a cache selected from the
                                                 full one (retrieval, StreamingLLM or hybrid)
    triforce         [draft, middle, top]        draft (StreamingLLM) -> middle -> top

Level 0 samples autoregressively. Level i > 0 runs rounds: ask level i-1 for `gamma` tokens,
score them in ONE forward, and keep the tokens the exact rule of `sampling.verify` emits. Each
emitted token is recorded with the distribution of level i at its position — the distribution
it was actually drawn from — so level i+1 can verify it exactly in turn. That is what makes the
whole hierarchy lossless (DESIGN.md §2): the top level's output is distributed as plain
autoregressive sampling from the target model with the full cache.

Bookkeeping: the token buffer `self.tokens` (on the model's device) holds the committed tokens
plus the current speculative tail, `self.n` of them; sampled tokens are written there on the
device and never visit the host, except the top level's, read with its verdict. Every cache
knows how many sequence tokens it has absorbed (`seq_len`); a forward feeds exactly the tokens
it has not seen, and whenever tokens are rejected every cache is cropped back to at most the
surviving prefix. The last token is never absorbed by the top level before it is verified, so
one forward always yields the distributions a round needs. All lengths follow from the
accepted counts, so the host always knows them: a round synchronises once, to read its verdict.

The forwards themselves go through an executor (executor.py): eager (the CPU reference) or
static-shape CUDA graphs (the GPU path). The round logic here is the same for both.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch

from triforce.cache.offload import OffloadedKVCache
from triforce.cache.retrieval import RetrievalCache, validate_retrieval
from triforce.cache.static import QUERY_HISTORY, StaticKVCache
from triforce.cache.streaming import StreamingCache
from triforce.errors import ConfigError, PromptTooLongError
from triforce.executor import EXECUTORS, make_executor, resolve_executor
from triforce.metrics import GenerationStats
from triforce.models.llama import Transformer
from triforce.prefill import layer_major_prefill
from triforce.prefill_memo import PrefillMemo, weights_key
from triforce.sampling import SamplingParams, probabilities, verify_into

if TYPE_CHECKING:
    from triforce.progress import GenerationProgress

METHODS = ("autoregressive", "spec", "retrieval_spec", "triforce")
REBUILD_POLICIES = ("never", "every_n", "on_low_acceptance")
# The middle level's cache, a selection of `budget` tokens of the full cache (cache/retrieval.py):
# retrieval = sink chunk + top-scored chunks (the paper), streaming = sink chunk + recent window
# (StreamingLLM of the same budget, at true positions), hybrid = sink + retrieved chunks + a
# recent window (the share `recent` of the budget, at least `recent_min` tokens).
MIDDLE_CACHES = ("retrieval", "streaming", "hybrid")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    name: str = "triforce"
    gamma: int = 6  # γ2: tokens the top level verifies per forward
    draft_gamma: int = 2  # γ1: tokens the draft proposes per middle round (triforce)
    budget: int | None = 4096  # middle cache size, tokens (None: set budget_fraction)
    budget_fraction: float | None = None  # middle cache size as a fraction of each prompt's length
    chunk_size: int = 8
    scorer: str = "mean"
    recent: float = 0.5  # hybrid: share of the budget (beyond the sink chunk) kept as the recent window...
    recent_min: int = 384  # ...but at least this many tokens (all of it: StreamingLLM) — see recent_tokens
    rebuild: str = "never"
    rebuild_every: int = 64  # every_n: generated tokens between rebuilds
    rebuild_threshold: float = 0.5  # on_low_acceptance: rebuild when the middle's recent acceptance falls below
    rebuild_window: int = 4  # on_low_acceptance: top-level rounds averaged
    draft_cache: str = "streaming"  # streaming | full
    draft_sink: int = 16
    draft_window: int = 240
    # retrieval | streaming | hybrid (MIDDLE_CACHES). The library default is the paper's cache; the app's
    # method configs (conf/method/triforce.yaml, retrieval_spec.yaml) default to hybrid: docs/RESULTS.md
    middle_cache: str = "retrieval"

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ConfigError(f"method.name={self.name!r}: choose one of {', '.join(METHODS)}")
        if self.gamma <= 0:
            raise ConfigError(f"method.gamma={self.gamma} must be a positive number of tokens")
        if self.draft_gamma <= 0:
            raise ConfigError(f"method.draft_gamma={self.draft_gamma} must be a positive number of tokens")
        if self.rebuild not in REBUILD_POLICIES:
            raise ConfigError(f"method.rebuild={self.rebuild!r}: choose one of {', '.join(REBUILD_POLICIES)}")
        if self.rebuild != "never" and self.gamma + 2 > QUERY_HISTORY:
            raise ConfigError(f"method.gamma={self.gamma} is too large for rebuilds during generation "
                              f"(at most {QUERY_HISTORY - 2})")
        if self.rebuild == "every_n" and self.rebuild_every <= 0:
            raise ConfigError(f"method.rebuild_every={self.rebuild_every} must be positive")
        if self.draft_cache not in ("streaming", "full"):
            raise ConfigError(f"method.draft_cache={self.draft_cache!r}: choose streaming or full")
        if self.middle_cache not in MIDDLE_CACHES:
            raise ConfigError(f"method.middle_cache={self.middle_cache!r}: choose one of {', '.join(MIDDLE_CACHES)}")
        if isinstance(self.recent, bool) or not isinstance(self.recent, (int, float)) or not 0 <= self.recent <= 1:
            raise ConfigError(f"method.recent={self.recent!r} must be a share of the budget in [0, 1] "
                              "(the hybrid's recent window: 0 is retrieval, 1 is StreamingLLM)")
        if isinstance(self.recent_min, bool) or not isinstance(self.recent_min, int) or self.recent_min < 0:
            raise ConfigError(f"method.recent_min={self.recent_min!r} must be a number of tokens >= 0")
        if self.uses_middle:
            self._check_budget()
        if self.uses_draft and self.draft_cache == "streaming":
            need = 2 * self.lookahead + 2
            if self.draft_window < need:
                raise ConfigError(f"method.draft_window={self.draft_window} must be >= {need} "
                                  "(2 * (gamma + draft_gamma) + 2) to roll back rejected tokens")

    def _check_budget(self) -> None:
        if (self.budget is None) == (self.budget_fraction is None):
            raise ConfigError(
                f"method.budget={_null(self.budget)} and method.budget_fraction={_null(self.budget_fraction)}: "
                "set exactly one (tokens, or a fraction of the prompt), e.g. method.budget=null "
                "method.budget_fraction=0.125")
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, int):
                raise ConfigError(f"method.budget={self.budget!r} must be a whole number of tokens")
            validate_retrieval(self.budget, self.chunk_size, self.scorer, self.recent_tokens(self.budget))
            return
        f = self.budget_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ConfigError(f"method.budget_fraction={f!r} must be a fraction of the prompt in (0, 1]")
        validate_retrieval(2 * max(self.chunk_size, 1), self.chunk_size, self.scorer)  # chunk size, scorer

    def budget_for(self, prompt_len: int) -> int:
        """The middle cache's budget in tokens for a prompt of `prompt_len` tokens."""
        if self.budget is not None:
            return self.budget
        return max(1, round(self.budget_fraction * prompt_len))

    def for_prompt(self, prompt_len: int) -> "MethodConfig":
        """This method with its budget in tokens for that prompt; a ConfigError if a budget
        fraction leaves too few tokens (before any work)."""
        if not self.uses_middle or self.budget_fraction is None:
            return self
        budget = self.budget_for(prompt_len)
        try:
            return dataclasses.replace(self, budget=budget, budget_fraction=None)
        except ConfigError as e:
            raise ConfigError(f"method.budget_fraction={self.budget_fraction} of a {prompt_len}-token prompt "
                              f"gives a budget of {budget} tokens: {e}") from None

    def recent_tokens(self, budget: int) -> int:
        """Tokens of the middle cache's recent window at that budget (cache/retrieval.py):
        retrieval keeps only the partial tail chunk, StreamingLLM everything but the sink chunk,
        hybrid the share `recent` of it but at least `recent_min` tokens.

        Why a floor: the window pays off only once it spans the local context the model leans on
        (on SmolLM2, ~250-500 tokens whatever the budget and prompt length: docs/RESULTS.md), so
        below it a window share is wasted and the hybrid is StreamingLLM; above it, retrieved chunks
        add the distant context a window cannot reach."""
        if self.middle_cache == "retrieval":
            return 0
        room = max(budget - self.chunk_size, 0)
        if self.middle_cache == "streaming":
            return room
        return min(room, max(self.recent_min, round(self.recent * room)))

    @property
    def uses_draft(self) -> bool:
        return self.name in ("spec", "triforce")

    @property
    def uses_middle(self) -> bool:
        return self.name in ("retrieval_spec", "triforce")

    @property
    def lookahead(self) -> int:
        """Most tokens any cache can hold beyond the committed prefix."""
        return self.gamma + self.draft_gamma + 2


def _null(value) -> str:
    return "null" if value is None else str(value)


def context_needed(prompt_len: int, max_new_tokens: int, method: MethodConfig) -> int:
    """Positions a generation may occupy: the prompt, the new tokens and the speculative lookahead."""
    return prompt_len + max_new_tokens + method.lookahead


@dataclasses.dataclass
class Level:
    name: str  # draft | middle | top
    model: Transformer
    cache: StaticKVCache
    gamma: int = 0  # tokens asked of the level below per round (0 for level 0)
    residual: bool = True  # False only in tests: the biased rule of the reference implementation


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]
    metrics: dict[str, float]
    # one record per top-level step: tokens emitted, accepted/proposed per level, wall time
    rounds: list[dict[str, float]] = dataclasses.field(default_factory=list)


class Engine:
    """Build from models (`Engine(target, draft, method, sampling)`) or from a config
    (`Engine.from_config(cfg)`), then `generate(prompt_ids, max_new_tokens, seed)`.

    executor: "auto" (CUDA graphs on a GPU, eager elsewhere), "eager", "static" (the graph path's
    static-shape forwards without capture; tests) or "graphs".
    prefill_memo: a `triforce.prefill_memo.PrefillMemo` to take the top level's prefill from when
    this target and prompt were prefilled before (in this engine or another sharing the memo)."""

    def __init__(self, target: Transformer, draft: Transformer | None = None,
                 method: MethodConfig | dict | None = None, sampling: SamplingParams | dict | None = None,
                 *, max_context: int | None = None, prefill_chunk: int | None = None,
                 biased_levels: tuple[str, ...] = (), executor: str = "auto", offload: bool = False,
                 on_chip_layers: int | None = None, prefill_memo: PrefillMemo | None = None):
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
        self.biased_levels = set(biased_levels)
        self.eos_ids = set(target.config.eos_token_id)
        self.device = target.device
        # tensor parallelism: rank 0's draws decide every token and verdict (parallel.py)
        self.parallel = target.parallel
        self.executor_name = resolve_executor(executor, self.device)
        self.levels: list[Level] = []
        self.progress: GenerationProgress | None = None  # set for the duration of generate()
        self.prefill_memo = prefill_memo
        self._weights_key = None  # names the target's weights in the memo (computed at first use)

    # -- construction from a config ------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> "Engine":
        """cfg: mapping with `model`, `method`, `sampling` and optionally `draft`, `hardware`."""
        from triforce.config import engine_kwargs_from_config

        return cls(**engine_kwargs_from_config(cfg))

    # -- public API ------------------------------------------------------------------------
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
        are already loaded; the app checks the whole plan before loading them)."""
        if self.device.type != "cuda":
            return
        from triforce.memory import check_host_memory, check_memory, host_available, plan_memory

        draft_cfg = None if self.draft is None or self.draft is self.target else self.draft.config
        plan = plan_memory(self.target.config, self.method.for_prompt(prompt_len), prompt_len, max_new_tokens,
                           dtype_bytes=self.target.dtype.itemsize, prefill_chunk=self.prefill_chunk,
                           draft=draft_cfg, draft_is_target=self.draft is self.target,
                           draft_dtype_bytes=None if draft_cfg is None else self.draft.dtype.itemsize,
                           offload=self.offload, on_chip_layers=self.on_chip_layers)
        plan = dataclasses.replace(plan, items={k: v for k, v in plan.items.items() if "weights" not in k})
        check_host_memory(plan, host_available(), target=self.target.config, dtype_bytes=self.target.dtype.itemsize,
                          prompt_len=prompt_len, on_chip_layers=self.on_chip_layers)
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        check_memory(plan, free + cached, where=torch.cuda.get_device_name(self.device), target=self.target.config,
                     dtype_bytes=self.target.dtype.itemsize, prompt_len=prompt_len, prefill_chunk=self.prefill_chunk)

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, seed: int = 0, *, stop_at_eos: bool = True,
                 progress: GenerationProgress | None = None) -> GenerationResult:
        """`progress`: hooks told of the top level's prefill and of each top-level step
        (triforce.progress.TokenProgress shows them as tqdm bars); None: silent."""
        prompt = self._checked_prompt(prompt_ids, max_new_tokens)
        self.progress = progress
        try:
            return self._generate(prompt, max_new_tokens, seed, stop_at_eos)
        finally:
            self._release()

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
        try:
            self._start(prompt, len(continuation), seed=0)
            n, T = len(prompt), len(continuation)
            self.tokens[n:n + T] = torch.tensor(continuation, dtype=torch.int64)
            self._prefill()
            dists = [self._forward_all(level, self.tokens[n - 1:n - 1 + T]) for level in self.levels]
            return {level.name: torch.minimum(q, p).sum(-1).tolist()
                    for level, q, p in zip(self.levels, dists, dists[1:])}
        finally:
            self._release()

    def _forward_all(self, level: Level, inputs: torch.Tensor) -> torch.Tensor:
        """Sampling distributions after each of `inputs` (T, V), in forwards the cache accepts
        (a StreamingLLM cache takes at most its window at once)."""
        step = level.cache.max_step_tokens or len(inputs)
        logits = [level.model(inputs[i:i + step][None], None, level.cache, num_logits=len(inputs[i:i + step]))[0]
                  for i in range(0, len(inputs), step)]
        return probabilities(torch.cat(logits), self.sampling)

    def _checked_prompt(self, prompt_ids, max_new_tokens: int) -> list[int]:
        """The prompt as a list, after every check that can fail before work; allocates the top level."""
        prompt = [int(t) for t in (prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)]
        if torch.is_tensor(prompt_ids) and prompt_ids.dim() > 1:
            raise ConfigError("generate() takes one prompt (batch size 1): pass a 1-D list of token ids")
        if max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens={max_new_tokens} must be positive")
        vocab = self.target.config.vocab_size
        if prompt and not 0 <= min(prompt) <= max(prompt) < vocab:
            # caught here: on a GPU an out-of-range id is a device-side assert, not an error
            raise ConfigError(f"prompt token ids must lie in [0, {vocab}) (the model's vocabulary); got "
                              f"{min(prompt)}..{max(prompt)}: was the prompt tokenized for another model?")
        self.check_prompt(len(prompt), max_new_tokens)
        self.method.for_prompt(len(prompt))  # a budget fraction too small for this prompt: fail before work
        self.check_memory(len(prompt), max_new_tokens)
        self.levels = [self._top_level(len(prompt), max_new_tokens)]  # the others after the prefill
        return prompt

    def _release(self) -> None:
        # Drop the caches and graphs: a long-context KV cache is the largest allocation of a
        # run, and a second engine (the autoregressive baseline) must not find this one's held.
        self.levels = []
        self.progress = None
        if getattr(self, "executor", None) is not None:
            self.executor.release()
        self.executor = self.tokens = None

    def _start(self, prompt: list[int], max_new_tokens: int, seed: int) -> None:
        """Per-generation state: the token buffer holding the prompt, the generator, the counters."""
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._max_new_tokens = max_new_tokens
        self.stats = GenerationStats(self.device)
        self.tokens = torch.zeros(len(prompt) + max_new_tokens + self.method.lookahead + 2, dtype=torch.int64,
                                  device=self.device)
        self.tokens[: len(prompt)] = torch.tensor(prompt, dtype=torch.int64)
        self.n = len(prompt)
        self._recent_middle: list[float] = []
        self._since_rebuild = 0
        self.executor = make_executor(self.executor_name, self.tokens, self.sampling, self.stats, self.generator)

    def _generate(self, prompt: list[int], max_new_tokens: int, seed: int, stop_at_eos: bool) -> GenerationResult:
        self._start(prompt, max_new_tokens, seed)
        with self.stats.wall("prefill"):
            self._prefill()
        full = self.levels[-1].cache
        prefill_bytes = full.bytes_h2d + full.bytes_d2h if isinstance(full, OffloadedKVCache) else 0
        top = len(self.levels) - 1
        rounds: list[dict] = []
        out: list[int] = []
        self.stats.sync()
        started = time.perf_counter()
        if self.progress is not None:
            self.progress.generated(0, max_new_tokens)
        while len(out) < max_new_tokens:
            with self.stats.round_record(rounds, step=len(rounds)):
                new = self._autoregressive_step() if top == 0 else self._round(top)[1]
            rounds[-1]["emitted"] = len(new)
            out.extend(new)
            if stop_at_eos and self.eos_ids.intersection(new):
                del out[len(out) - len(new) + min(i for i, t in enumerate(new) if t in self.eos_ids) + 1:]
                break
            if self.progress is not None:
                self.progress.generated(min(len(out), max_new_tokens), max_new_tokens)
            self._maybe_rebuild(len(new))
        self.stats.sync()
        decode_s = time.perf_counter() - started - self.stats.time_s.get("capture", 0.0)
        tokens = out[:max_new_tokens]
        metrics = self.stats.summary(new_tokens=len(tokens), top_level=self.levels[-1].name,
                                     emitted=sum(r["emitted"] for r in rounds), decode_s=decode_s)
        if isinstance(full, OffloadedKVCache):  # host-link traffic (this rank's share under TP)
            moved = full.bytes_h2d + full.bytes_d2h
            metrics.update({"offload/prefill_gb": prefill_bytes / 1e9,
                            "offload/decode_gb_per_token": (moved - prefill_bytes) / 1e9 / max(len(tokens), 1)})
        if self.method.uses_middle:  # in tokens, also when given as a fraction of the prompt
            metrics["middle_budget"] = self.method.budget_for(len(prompt))
        return GenerationResult(tokens=tokens, metrics=metrics, rounds=rounds)

    # -- levels and caches -----------------------------------------------------------------
    def _top_level(self, prompt_len: int, max_new_tokens: int) -> Level:
        m = self.method
        capacity = prompt_len + max_new_tokens + m.lookahead + 2
        if self.offload:
            full = OffloadedKVCache.for_model(self.target.config, capacity, self.target.dtype, self.device,
                                              on_chip_layers=self.on_chip_layers)
            if m.uses_middle and m.middle_cache != "streaming":  # (a streaming middle scores nothing)
                full.track_chunks(m.chunk_size, m.scorer)  # rebuilds choose chunks without streaming keys
        else:
            full = self.target.new_cache(capacity)
        # a captured top-level forward records its queries only where a rebuild will read them
        full.record_queries = m.uses_middle and m.rebuild != "never"
        return Level("top", self.target, full, gamma=m.gamma if m.name != "autoregressive" else 0,
                     residual="top" not in self.biased_levels)

    def _lower_levels(self, prompt_len: int, max_new_tokens: int) -> list[Level]:
        """The draft and middle levels, cheapest first. Allocated after the top level's prefill:
        their caches and a prefill chunk's activations need not fit in memory at once."""
        m, target = self.method.for_prompt(prompt_len), self.target
        spare = m.lookahead + 2
        levels: list[Level] = []
        if m.uses_middle:
            # every middle cache is a selection of the full cache at true positions, plus room
            # for the tokens generated after it (rolled back like any cache)
            cache = RetrievalCache.for_model(
                target.config, budget=m.budget, chunk_size=m.chunk_size, scorer=m.scorer,
                recent=m.recent_tokens(m.budget), extra_capacity=max_new_tokens + spare, dtype=target.dtype,
                device=target.device)
            cache.record_queries = False
            levels.insert(0, Level("middle", target, cache, gamma=m.draft_gamma if m.uses_draft else 0))
        if m.uses_draft:
            if m.draft_cache == "streaming":
                cache = StreamingCache.for_model(self.draft, sink=m.draft_sink, window=m.draft_window)
            else:
                cache = self.draft.new_cache(prompt_len + max_new_tokens + spare)
            cache.record_queries = False
            levels.insert(0, Level("draft", self.draft, cache))
        for level in levels:
            level.residual = level.name not in self.biased_levels
        return levels

    def _prefill(self) -> None:
        """Absorb all prompt tokens but the last into every cache (the last is fed with the
        first proposals, so the first round's forward yields its distribution)."""
        prompt_len = self.n
        top = self.levels[-1]
        # The full prompt runs once so the retrieval cache is scored with the last prompt
        # token's query (as the paper); the last token is then rolled back (see docstring).
        self._prefill_top(top, prompt_len)
        top.cache.crop(prompt_len - 1)
        self.levels = self._lower_levels(prompt_len, self._max_new_tokens) + [top]
        for level in self.levels[:-1]:
            if isinstance(level.cache, RetrievalCache):
                level.cache.rebuild(top.cache)
            elif isinstance(level.cache, StreamingCache):
                self._feed_streaming(level, prompt_len - 1)
            else:
                self._feed(level, prompt_len - 1)

    def _prefill_top(self, top: Level, prompt_len: int) -> None:
        """The top level's prefill, from the memo when it holds this target and prompt."""
        memo = self.prefill_memo
        if memo is None or isinstance(top.cache, OffloadedKVCache):  # an offloaded prefill is not kept
            self._feed(top, prompt_len)
            return
        if self._weights_key is None:
            self._weights_key = weights_key(self.target)
        key = (self._weights_key, self.prefill_chunk, tuple(self.tokens[:prompt_len].tolist()))
        snap = memo.get(key)
        self.stats.prefill_reused = snap is not None
        if snap is None:
            self._feed(top, prompt_len)
            memo.put(key, top.cache.snapshot())
            return
        top.cache.restore(snap)
        if self.progress is not None:
            self.progress.prefill(prompt_len, prompt_len)

    def _feed(self, level: Level, upto: int) -> None:
        """Run `level` eagerly over tokens [cache.seq_len, upto), in chunks where needed."""
        cache = level.cache
        step = cache.max_step_tokens or self.prefill_chunk or upto
        report = self.progress if level is self.levels[-1] else None  # the top level's prefill is the long one
        if report is not None:
            report.prefill(cache.seq_len, upto)
        if isinstance(cache, OffloadedKVCache) and cache.seq_len < upto:
            start, layers = cache.seq_len, len(level.model.layers)

            def layer_done(i: int) -> None:
                if report is not None:
                    self.stats.sync()
                    report.prefill(start + (upto - start) * (i + 1) // layers, upto)

            layer_major_prefill(level.model, self.tokens[start:upto][None], cache, self.prefill_chunk, layer_done)
            return
        while cache.seq_len < upto:
            end = min(upto, cache.seq_len + step)
            level.model(self.tokens[cache.seq_len:end][None], None, cache, num_logits=1)
            if report is not None:
                self.stats.sync()  # the bar's tokens/s should count finished work
                report.prefill(cache.seq_len, upto)

    def _feed_streaming(self, level: Level, upto: int) -> None:
        """A StreamingLLM cache keeps the sink and the last `window` tokens: feed only those."""
        cache = level.cache
        keep_from = upto - cache.window
        if keep_from > cache.sink:
            self._feed(level, cache.sink)
            cache.skip(keep_from - cache.seq_len)
        self._feed(level, upto)

    def _forward(self, i: int, first_needed: int, *, sample: bool = False) -> torch.Tensor:
        """Distributions of level i for the next token after each of tokens[first_needed:n]:
        a (n - first_needed, V) tensor, from one forward over the tokens its cache has not seen.
        sample: also tokens[n] = a draw from the last of them (on the device)."""
        level = self.levels[i]
        cache = level.cache
        if cache.seq_len > first_needed:
            cache.crop(first_needed)
        phase = level.name if i < len(self.levels) - 1 else self._top_phase
        probs = self.executor.forward(level, cache.seq_len, self.n, self.n - first_needed, phase, sample=sample)
        self.stats.forwards[level.name] += 1
        return probs

    @property
    def _top_phase(self) -> str:
        return "decode" if len(self.levels) == 1 else "verify"

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
                p = self._forward(0, self.n - 1, sample=True)[-1]  # and tokens[n] drawn from p, on the device
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
        p = self._forward(i, base - 1)  # (gamma + 1, V)
        proposals = self.tokens[base:base + level.gamma]
        # [n, next token, proposals...]; the next token is already written at tokens[base + n]
        verdict = verify_into(proposals, q, p, self.generator, self.tokens, base, residual=level.residual)
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
            self._recent_middle.append(n / level.gamma)
        return p[: n + 1], emitted

    # -- retrieval cache rebuilds --------------------------------------------------------------
    def _maybe_rebuild(self, emitted: int) -> None:
        m = self.method
        middle = next((lv for lv in self.levels if isinstance(lv.cache, RetrievalCache)), None)
        if middle is None or m.rebuild == "never":
            return
        self._since_rebuild += emitted
        if m.rebuild == "every_n":
            due = self._since_rebuild >= m.rebuild_every
        else:
            recent = self._recent_middle[-m.rebuild_window:]
            due = len(recent) >= m.rebuild_window and sum(recent) / len(recent) < m.rebuild_threshold
        if due:
            full = self.levels[-1].cache
            with self.stats.wall("rebuild"):
                # score with the query of the last accepted token (position n - 2: the newest
                # token is the verifier's own sample, not yet run through any model)
                middle.cache.rebuild(full, query=full.query_at(self.n - 2))
            self.stats.rebuilds += 1
            self._since_rebuild = 0
            self._recent_middle.clear()
