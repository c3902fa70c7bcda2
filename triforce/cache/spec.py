"""Each level's cache, decided once: a small spec from which both the memory plan (memory.py) and the
allocation (levels.py) are computed, so the bytes a run is planned for are the bytes it allocates.

    specs = cache_specs(method, target_cfg, draft_cfg, prompt_lens, max_new_tokens, dtype_bytes=2)
    specs["top"].memory()        # {"device": bytes, "host": bytes}
    specs["top"].allocate(dtype, device)  # the cache itself

A level's cache (docs/DESIGN.md §4):

| level  | kind                          | slots per sequence                                        |
|--------|-------------------------------|-----------------------------------------------------------|
| top    | full, or offloaded            | prompt + new tokens + lookahead + SPARE_TOKENS            |
| middle | selection (retrieval / hybrid / StreamingLLM of the budget) | budget + new tokens + lookahead + SPARE_TOKENS |
| draft  | streaming (sink + window), or full | sink + window + method.draft_slack, or as the top |

In a batch every cache also has `spare` slots past its capacity, where a frozen row's forward
writes (the widest forward of any level; levels.py). Model shapes come from the configs' fields
(num_layers, num_kv_heads, num_heads, head_dim): this module needs no model.
"""

from __future__ import annotations

import dataclasses

import torch

from triforce.cache.offload import OffloadedKVCache
from triforce.cache.retrieval import RetrievalCache
from triforce.cache.static import StaticKVCache
from triforce.cache.streaming import StreamingCache
from triforce.config import SPARE_TOKENS, MethodConfig

KINDS = ("full", "offloaded", "streaming", "selection")


@dataclasses.dataclass(frozen=True)
class KVShape:
    """What a cache needs to know of its model."""
    num_layers: int
    num_kv_heads: int
    num_heads: int
    head_dim: int

    @classmethod
    def of(cls, cfg) -> "KVShape":
        return cls(cfg.num_layers, cfg.num_kv_heads, cfg.num_heads, cfg.head_dim)


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """One level's cache for a batch of `batch_size` sequences."""
    kind: str  # KINDS
    shape: KVShape
    capacity: int  # slots one sequence may fill
    batch_size: int = 1
    spare: int = 0  # slots past the capacity a frozen row's forward writes into (batches)
    dtype_bytes: int = 2
    on_chip_layers: int = 0  # offloaded: layers whose KV stays on the device
    sink: int = 0  # streaming
    window: int = 0
    slack: int = 0  # streaming: slots past sink + window before an eviction (the capacity counts them)
    budget: int = 0  # selection: the largest budget of the batch (the capacity holds it)
    chunk_size: int = 0
    scorer: str = "mean"
    recent: int = 0
    row_budgets: tuple[tuple[int, int], ...] = ()  # selection: (budget, recent) of each sequence
    scored_by: tuple[int, str] | None = None  # full / offloaded: (chunk_size, scorer) a selection ranks it by
    record_queries: bool = True  # its captured forwards record their queries (a rebuild reads them)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cache kind {self.kind!r}: one of {KINDS}")

    @property
    def slots(self) -> int:
        """Slots allocated per sequence."""
        return self.capacity + self.spare

    @property
    def scores(self) -> bool:
        """A selection that ranks chunks (a rebuild then holds one layer's chunk statistics)."""
        return self.kind == "selection" and self.recent < self.budget - self.chunk_size

    def memory(self) -> dict[str, int]:
        """Bytes it allocates, on the device and in pinned host memory, for the whole batch."""
        cfg, B, slots, db = self.shape, self.batch_size, self.slots, self.dtype_bytes
        if self.kind == "offloaded":
            scored = self.scored_by or (None, "mean")
            one = OffloadedKVCache.memory(cfg, slots, db, on_chip_layers=self.on_chip_layers,
                                          chunk_size=scored[0], scorer=scored[1])
        else:
            one = StaticKVCache.memory(cfg, slots, db)
        return {"device": B * one["device"], "host": B * one["host"]}

    def allocate(self, dtype: torch.dtype, device: torch.device | str, *, inv_freq: torch.Tensor | None = None,
                 kernels=None) -> StaticKVCache:
        """The cache this spec describes. inv_freq: the model's rotary frequencies (a streaming
        cache re-rotates its window); kernels: the policy's launch context for the kernels a cache
        launches itself (a streaming cache's window shift)."""
        cfg = self.shape
        common = dict(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                      num_heads=cfg.num_heads, dtype=dtype, device=device, batch_size=self.batch_size,
                      spare=self.spare)
        if self.kind == "full":
            cache = StaticKVCache(capacity=self.capacity, **common)
        elif self.kind == "offloaded":
            cache = OffloadedKVCache(capacity=self.capacity, on_chip_layers=min(self.on_chip_layers, cfg.num_layers),
                                     **common)
        elif self.kind == "streaming":
            cache = StreamingCache(sink=self.sink, window=self.window, slack=self.slack, inv_freq=inv_freq,
                                   kernels=kernels, **common)
        else:
            cache = RetrievalCache(budget=self.budget, chunk_size=self.chunk_size, scorer=self.scorer,
                                   recent=self.recent, extra_capacity=self.capacity - self.budget, **common)
            for b, (budget, recent) in enumerate(self.row_budgets):  # each sequence selects within its own
                row = cache.row(b)
                row.budget, row.recent = budget, recent
        if self.scored_by is not None:
            cache.serves(*self.scored_by)
        cache.record_queries = self.record_queries
        return cache


def spare_slots(method: MethodConfig, batch_size: int) -> int:
    """Slots past a cache's capacity where a frozen row's forward writes (batches): the widest
    forward of any level (the top level's gamma + 1; a middle catching up, draft_gamma + 2)."""
    return method.lookahead + SPARE_TOKENS if batch_size > 1 else 0


def full_capacity(prompt_len: int, max_new_tokens: int, method: MethodConfig) -> int:
    """Slots of a cache that holds the whole sequence: prompt, new tokens, the lookahead, spare."""
    return prompt_len + max_new_tokens + method.lookahead + SPARE_TOKENS


def cache_specs(method: MethodConfig, target, draft, prompt_lens: list[int], max_new_tokens: int, *,
                dtype_bytes: int, draft_dtype_bytes: int | None = None, offload: bool = False,
                on_chip_layers: int = 0) -> dict[str, CacheSpec]:
    """Every level's cache of a generation of len(prompt_lens) sequences, by level name (top,
    middle, draft). target / draft: model configs (draft None: the method has none, or it is not
    known yet: no draft cache is planned). A budget given as a fraction of the prompt is each
    sequence's own; the middle's capacity fits the largest."""
    B, longest = len(prompt_lens), max(prompt_lens)
    spare = spare_slots(method, B)
    shape = KVShape.of(target)
    full = full_capacity(longest, max_new_tokens, method)
    top = CacheSpec("offloaded" if offload else "full", shape, full, B, spare, dtype_bytes,
                    on_chip_layers=on_chip_layers if offload else 0,
                    scored_by=(method.chunk_size, method.scorer) if method.scores_chunks else None,
                    # a captured top-level forward records its queries only where a rebuild will read them
                    record_queries=method.uses_middle and method.rebuild != "never")
    specs = {"top": top}
    for name, kind in method.middle_levels:  # one level per middle cache (method=auto may build several)
        middle = method.middle_config(kind)
        methods = [middle.for_prompt(n) for n in prompt_lens]  # each sequence's budget in tokens
        m = max(methods, key=lambda x: x.budget or 0)
        # every middle cache is a selection of the full cache at true positions, plus room for the
        # tokens generated after it (rolled back like any cache)
        specs[name] = CacheSpec(
            "selection", shape, m.budget + max_new_tokens + method.lookahead + SPARE_TOKENS, B, spare, dtype_bytes,
            budget=m.budget, chunk_size=m.chunk_size, scorer=m.scorer, recent=m.recent_tokens(m.budget),
            row_budgets=tuple((x.budget, x.recent_tokens(x.budget)) for x in methods), record_queries=False)
    if method.uses_draft and draft is not None:
        ddb = draft_dtype_bytes or dtype_bytes
        if method.draft_cache == "streaming":
            slack = method.draft_window_slack
            specs["draft"] = CacheSpec("streaming", KVShape.of(draft), method.draft_sink + method.draft_window + slack,
                                       B, spare, ddb, sink=method.draft_sink, window=method.draft_window, slack=slack,
                                       record_queries=False)
        else:
            specs["draft"] = CacheSpec("full", KVShape.of(draft), full, B, spare, ddb, record_queries=False)
    return specs
