"""The levels of a method, each owning its model and its cache (docs/DESIGN.md §3).

    autoregressive   [top]                       top = target model, full cache
    spec             [draft, top]                draft model (full or StreamingLLM cache)
    retrieval_spec   [middle, top]               middle = target model with a cache selected from the
                                                 full one (retrieval, StreamingLLM or hybrid)
    triforce         [draft, middle, top]        draft (StreamingLLM) -> middle -> top

A level takes its prompt (`prefill`) and, if its cache is a selection of the full one, re-selects
(`rebuild`) through the cache contract (cache/static.py): the engine never asks what kind of cache
a level holds. Which cache each level gets is decided here, from the method, once per generation.
A batch of B sequences gets caches of B rows (each sequence's prefill and rebuild go through its
row, `cache.row(b)`), with spare slots a frozen row's forward writes into.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from triforce.cache.offload import OffloadedKVCache
from triforce.cache.retrieval import RetrievalCache
from triforce.cache.static import StaticKVCache
from triforce.cache.streaming import StreamingCache
from triforce.config import SPARE_TOKENS, MethodConfig
from triforce.models.llama import Transformer


@dataclasses.dataclass
class Level:
    name: str  # draft | middle | top
    model: Transformer
    cache: StaticKVCache
    gamma: int = 0  # tokens asked of the level below per round (0 for level 0)
    residual: bool = True  # False only in tests: the biased rule of the reference implementation

    def prefill(self, b: int, tokens: torch.Tensor, upto: int, *, source: "Level | None" = None,
                chunk: int | None = None, report: Callable[[int, int], None] | None = None) -> None:
        """Take sequence b's prompt tokens[:upto] (its row of the token buffer) into row b of this
        level's cache (a selection takes them from the `source` level's full cache)."""
        self.cache.row(b).absorb(self.model, tokens, upto, chunk=chunk,
                                 source=source.cache.row(b) if source else None, report=report)

    def rebuild(self, b: int, source: "Level", query: torch.Tensor | None = None) -> bool:
        """Re-select sequence b from the source's full cache if this level's cache is a selection (True)."""
        return self.cache.row(b).rebuild(source.cache.row(b), query)


@dataclasses.dataclass(frozen=True)
class LevelSpec:
    """How an engine builds its levels (what Engine knows that they need)."""
    method: MethodConfig
    target: Transformer
    draft: Transformer | None
    offload: bool = False
    on_chip_layers: int = 0
    biased: frozenset[str] = frozenset()


def capacity(prompt_len: int, max_new_tokens: int, method: MethodConfig) -> int:
    """Slots of a cache that holds the whole sequence: prompt, new tokens, the lookahead, spare."""
    return prompt_len + max_new_tokens + method.lookahead + SPARE_TOKENS


def spare_slots(method: MethodConfig, batch_size: int) -> int:
    """Slots past a cache's capacity where a frozen row's forward writes (batches): the widest
    forward of any level (the top level's gamma + 1; a middle catching up, draft_gamma + 2)."""
    return method.lookahead + SPARE_TOKENS if batch_size > 1 else 0


def top_level(spec: LevelSpec, prompt_len: int, max_new_tokens: int, batch_size: int = 1) -> Level:
    """The target with its full cache (in host memory when offloaded); `prompt_len`: the longest
    prompt of the batch."""
    m, target = spec.method, spec.target
    size = capacity(prompt_len, max_new_tokens, m)
    batch = dict(batch_size=batch_size, spare=spare_slots(m, batch_size))
    if spec.offload:
        full = OffloadedKVCache.for_model(target.config, size, target.dtype, target.device,
                                          on_chip_layers=spec.on_chip_layers, **batch)
    else:
        full = StaticKVCache.for_model(target.config, size, target.dtype, target.device, **batch)
    if m.scores_chunks:  # the middle's selection will rank this cache's chunks
        full.serves(m.chunk_size, m.scorer)
    # a captured top-level forward records its queries only where a rebuild will read them
    full.record_queries = m.uses_middle and m.rebuild != "never"
    return Level("top", target, full, gamma=m.gamma if m.name != "autoregressive" else 0,
                 residual="top" not in spec.biased)


def lower_levels(spec: LevelSpec, prompt_lens: list[int], max_new_tokens: int) -> list[Level]:
    """The draft and middle levels, cheapest first. Allocated after the top level's prefill: their
    caches and a prefill chunk's activations need not fit in memory at once. `prompt_lens`: each
    sequence's (a budget given as a fraction of the prompt is each sequence's own; the middle's
    cache is sized for the largest)."""
    prompt_len, batch_size = max(prompt_lens), len(prompt_lens)
    target = spec.target
    methods = [spec.method.for_prompt(n) for n in prompt_lens]  # each sequence's budget in tokens
    m = max(methods, key=lambda x: x.budget or 0)
    spare = m.lookahead + SPARE_TOKENS
    batch = dict(batch_size=batch_size, spare=spare_slots(m, batch_size))
    levels: list[Level] = []
    if m.uses_draft:
        if m.draft_cache == "streaming":
            cache = StreamingCache.for_model(spec.draft, sink=m.draft_sink, window=m.draft_window, **batch)
        else:
            cache = StaticKVCache.for_model(spec.draft.config, prompt_len + max_new_tokens + spare, spec.draft.dtype,
                                            spec.draft.device, **batch)
        cache.record_queries = False
        levels.append(Level("draft", spec.draft, cache))
    if m.uses_middle:
        # every middle cache is a selection of the full cache at true positions, plus room for the
        # tokens generated after it (rolled back like any cache)
        cache = RetrievalCache.for_model(target.config, budget=m.budget, chunk_size=m.chunk_size, scorer=m.scorer,
                                         recent=m.recent_tokens(m.budget), extra_capacity=max_new_tokens + spare,
                                         dtype=target.dtype, device=target.device, **batch)
        cache.record_queries = False
        for b, mb in enumerate(methods):  # each sequence selects within its own budget
            row = cache.row(b)
            row.budget, row.recent = mb.budget, mb.recent_tokens(mb.budget)
        levels.append(Level("middle", target, cache, gamma=m.draft_gamma if m.uses_draft else 0))
    for level in levels:
        level.residual = level.name not in spec.biased
    return levels
