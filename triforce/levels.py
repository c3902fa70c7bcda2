"""The levels of a method, each owning its model and its cache (docs/DESIGN.md §3).

    autoregressive   [top]                       top = target model, full cache
    spec             [draft, top]                draft model (full or StreamingLLM cache)
    retrieval_spec   [middle, top]               middle = target model with a cache selected from the
                                                 full one (retrieval, StreamingLLM or hybrid)
    triforce         [draft, middle, top]        draft (StreamingLLM) -> middle -> top

A level takes its prompt (`prefill`, prefill.py) and, if its cache is a selection of the full one,
re-selects (`rebuild`) through the cache contract (cache/static.py): the engine never asks what
kind of cache a level holds. Which cache each level gets is decided once per generation, by the
cache specs (cache/spec.py) that the memory plan counts too. A batch of B sequences gets caches of
B rows (each sequence's prefill and rebuild go through its row, `cache.row(b)`), with spare slots a
frozen row's forward writes into.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from triforce import prefill
from triforce.cache.spec import CacheSpec, cache_specs
from triforce.cache.static import StaticKVCache
from triforce.config import MethodConfig
from triforce.kernels.policy import KernelContext
from triforce.models.llama import Transformer


@dataclasses.dataclass
class Level:
    name: str  # draft | middle | top
    model: Transformer
    cache: StaticKVCache
    gamma: int = 0  # tokens asked of the level below per round (0 for level 0)
    residual: bool = True  # False only in tests: the biased rule of the reference implementation
    kernels: KernelContext | None = None  # the policy's launch context for its prefill forwards

    def prefill(self, b: int, tokens: torch.Tensor, upto: int, *, source: "Level | None" = None,
                chunk: int | None = None, report: Callable[[int, int], None] | None = None) -> None:
        """Take sequence b's prompt tokens[:upto] (its row of the token buffer) into row b of this
        level's cache (a selection takes them from the `source` level's full cache)."""
        prefill.absorb(self.model, self.cache.row(b), tokens, upto, chunk=chunk,
                       source=source.cache.row(b) if source else None, report=report, kernels=self.kernels)

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

    def caches(self, prompt_lens: list[int], max_new_tokens: int) -> dict[str, CacheSpec]:
        """Each level's cache for a generation of these prompts (cache/spec.py)."""
        draft = self.draft.config if self.method.uses_draft and self.draft is not None else None
        return cache_specs(self.method, self.target.config, draft, prompt_lens, max_new_tokens,
                           dtype_bytes=self.target.dtype.itemsize,
                           draft_dtype_bytes=self.draft.dtype.itemsize if draft is not None else None,
                           offload=self.offload, on_chip_layers=self.on_chip_layers)


def top_level(spec: LevelSpec, caches: dict[str, CacheSpec], kernels: KernelContext | None = None) -> Level:
    """The target with its full cache (in host memory when offloaded)."""
    m, target = spec.method, spec.target
    full = caches["top"].allocate(target.dtype, target.device)
    return Level("top", target, full, gamma=m.gamma if m.name != "autoregressive" else 0,
                 residual="top" not in spec.biased, kernels=kernels)


def lower_levels(spec: LevelSpec, caches: dict[str, CacheSpec], kernels: KernelContext | None = None) -> list[Level]:
    """The draft and middle levels, cheapest first. Allocated after the top level's prefill: their
    caches and a prefill chunk's activations need not fit in memory at once."""
    m, target = spec.method, spec.target
    levels: list[Level] = []
    if "draft" in caches:
        draft = spec.draft
        cache = caches["draft"].allocate(draft.dtype, draft.device, inv_freq=draft.rotary.inv_freq, kernels=kernels)
        levels.append(Level("draft", draft, cache, kernels=kernels))
    for name, _ in m.middle_levels:  # one level per middle cache (method=auto may build several)
        cache = caches[name].allocate(target.dtype, target.device)
        levels.append(Level(name, target, cache, gamma=m.draft_gamma if m.uses_draft else 0, kernels=kernels))
    for level in levels:
        level.residual = level.name not in spec.biased
    return levels
