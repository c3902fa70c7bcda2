"""Pre-flight memory plan: what a generation will allocate on its device, from the configs alone.

The paper's on-chip setting (Llama2-7B-128K, a 124,928-token prompt, retrieval budget 4096, the
68M draft) fills an 80 GB card to within a few GB, so a run that cannot fit must be refused
before its weights load (minutes for a 13 GB checkpoint) and before a CUDA out-of-memory error
half-way through a prefill, with the change that would make it fit.

Counted: the weights of the target (and of a separate draft), the full KV cache of the top level
(and of the autoregressive baseline, which reuses the freed space: not counted twice), and the
larger of the two phases that follow: the prefill (one chunk's activations) or, once the prefill
is done (the engine allocates them only then), the middle and draft caches with a retrieval
rebuild's transient (one layer's chunk statistics); plus a reserve for library workspaces,
captured graphs and allocator fragmentation (the CUDA context is outside the free memory the
plan is compared with).
"""

from __future__ import annotations

import dataclasses

from triforce.cache.static import QUERY_HISTORY
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig

GiB = 1024 ** 3
RESERVE = GiB  # library workspaces, graph pools, allocator fragmentation
SPARE_TOKENS = 2  # the engine's caches hold prompt + new + lookahead + 2 tokens


def weight_bytes(cfg: ModelConfig, dtype_bytes: int) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    per_layer = (h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h
                 + 3 * h * cfg.intermediate_size + 2 * h)
    embeddings = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return dtype_bytes * (cfg.num_layers * per_layer + embeddings + h)


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: int) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes


def _queries(cfg: ModelConfig, dtype_bytes: int) -> int:
    return cfg.num_layers * cfg.num_heads * QUERY_HISTORY * cfg.head_dim * dtype_bytes


def prefill_activation_bytes(cfg: ModelConfig, chunk: int, dtype_bytes: int) -> int:
    """Live tensors of one layer's forward over a chunk: hidden state and residual, q/k/v, the
    attention output, gate/up and their product, rotary tables (float32 and cast), plus the
    last position's logits."""
    h, d = cfg.hidden_size, cfg.head_dim
    per_token = (4 * h + (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d
                 + 3 * cfg.intermediate_size + 4 * d) * dtype_bytes + 8 * d
    return chunk * per_token + 4 * cfg.vocab_size


def rebuild_bytes(cfg: ModelConfig, prompt_len: int, chunk_size: int, scorer: str) -> int:
    """One layer's chunk statistics in float32: sums and means (mean scorer), or max, min and the
    bound scorer's per-query-head products."""
    chunks = prompt_len // chunk_size + 1
    stats = cfg.num_kv_heads * chunks * cfg.head_dim * 4
    return 2 * stats if scorer == "mean" else 2 * stats + 3 * cfg.num_heads * chunks * cfg.head_dim * 4


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    items: dict[str, int]  # what -> bytes

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {size / GiB:.2f}" for name, size in self.items.items() if size) + " GiB"


def plan_memory(target: ModelConfig, method, prompt_len: int, max_new_tokens: int, *, dtype_bytes: int,
                prefill_chunk: int | None, draft: ModelConfig | None = None, draft_is_target: bool = False,
                draft_dtype_bytes: int | None = None) -> MemoryPlan:
    """The plan of one generation. `method`: an engine.MethodConfig. `draft`: the draft model's
    config when it is a separate model (None: unknown or none; its weights then count 0)."""
    ddb = draft_dtype_bytes or dtype_bytes
    lookahead = method.lookahead
    capacity = prompt_len + max_new_tokens + lookahead + SPARE_TOKENS  # as Engine._build_levels
    items = {
        "target weights": weight_bytes(target, dtype_bytes),
        "full KV cache": capacity * kv_bytes_per_token(target, dtype_bytes) + _queries(target, dtype_bytes),
    }
    after_prefill = 0  # the lower levels' caches and the rebuild, allocated once the prefill is done
    if method.uses_middle:
        budget = method.budget_for(prompt_len)
        middle_tokens = budget + max_new_tokens + lookahead + SPARE_TOKENS  # every middle cache is selected
        after_prefill += middle_tokens * kv_bytes_per_token(target, dtype_bytes) + _queries(target, dtype_bytes)
        if method.recent_tokens(budget) < budget - method.chunk_size:  # some chunks are scored
            after_prefill += rebuild_bytes(target, prompt_len, method.chunk_size, method.scorer)
    if method.uses_draft:
        draft_cfg = target if draft_is_target else draft
        if draft_cfg is not None:
            if not draft_is_target:
                items["draft weights"] = weight_bytes(draft_cfg, ddb)
            tokens = (method.draft_sink + method.draft_window if method.draft_cache == "streaming" else capacity)
            after_prefill += tokens * kv_bytes_per_token(draft_cfg, ddb) + _queries(draft_cfg, ddb)
    chunk = min(prompt_len, prefill_chunk or prompt_len)
    prefill = prefill_activation_bytes(target, chunk, dtype_bytes)
    if prefill >= after_prefill:
        items["prefill activations"] = prefill
    else:
        items["middle and draft caches, rebuild"] = after_prefill
    items["workspaces and fragmentation"] = RESERVE
    return MemoryPlan(items)


def check_memory(plan: MemoryPlan, available: int, *, where: str, target: ModelConfig, dtype_bytes: int,
                 prompt_len: int, prefill_chunk: int | None) -> None:
    """Raise a ConfigError naming what to change when the plan does not fit `available` bytes."""
    if plan.total <= available:
        return
    over = plan.total - available
    per_token = kv_bytes_per_token(target, dtype_bytes)
    fixes = []
    room = prompt_len - -(-over // per_token)  # ceil: tokens the full cache must give up
    if room > 0:
        fixes.append(f"lower dataset.prefill to <= {room}")
    chunk = min(prompt_len, prefill_chunk or prompt_len)
    activations = prefill_activation_bytes(target, chunk, dtype_bytes)
    if chunk > 4096 and activations - prefill_activation_bytes(target, 4096, dtype_bytes) >= over:
        fixes.append("lower hardware.prefill_chunk to 4096")
    fixes.append("use a GPU with more memory (or KV offloading, hardware.offload, once available)")
    raise ConfigError(
        f"this run needs about {plan.total / GiB:.1f} GiB on {where} but {available / GiB:.1f} GiB are free "
        f"({plan.describe()}); to fit: " + "; or ".join(fixes))
