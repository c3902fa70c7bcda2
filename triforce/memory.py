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
from pathlib import Path

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
    items: dict[str, int]  # what -> bytes, on the device
    host: dict[str, int] = dataclasses.field(default_factory=dict)  # what -> bytes, pinned host memory

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {size / GiB:.2f}" for name, size in self.items.items() if size) + " GiB"


def plan_memory(target: ModelConfig, method, prompt_len: int, max_new_tokens: int, *, dtype_bytes: int,
                prefill_chunk: int | None, draft: ModelConfig | None = None, draft_is_target: bool = False,
                draft_dtype_bytes: int | None = None, offload: bool = False, on_chip_layers: int = 0) -> MemoryPlan:
    """The plan of one generation. `method`: an engine.MethodConfig. `draft`: the draft model's
    config when it is a separate model (None: unknown or none; its weights then count 0).
    With tensor parallelism pass one rank's configs (parallel.shard_config). `offload`: the full
    cache in host memory but `on_chip_layers` layers (cache/offload.py), two layers staged on the
    device, retrieval chunk statistics, and the layer-major prefill's hidden states."""
    ddb = draft_dtype_bytes or dtype_bytes
    lookahead = method.lookahead
    capacity = prompt_len + max_new_tokens + lookahead + SPARE_TOKENS  # as Engine._build_levels
    items = {"target weights": weight_bytes(target, dtype_bytes)}
    host = {}
    layer_kv = capacity * kv_bytes_per_token(target, dtype_bytes) // target.num_layers
    if offload:
        on_chip = min(on_chip_layers or 0, target.num_layers)
        offloaded = target.num_layers - on_chip
        host["offloaded KV cache"] = offloaded * layer_kv
        items["on-chip KV layers and staging"] = (on_chip + min(offloaded, 2)) * layer_kv + _queries(target, dtype_bytes)
        if method.uses_middle and method.middle_cache != "streaming":
            slots = 1 if method.scorer == "mean" else 2
            items["retrieval chunk statistics"] = (offloaded * target.num_kv_heads * (capacity // method.chunk_size)
                                                   * slots * target.head_dim * dtype_bytes)
    else:
        items["full KV cache"] = capacity * kv_bytes_per_token(target, dtype_bytes) + _queries(target, dtype_bytes)
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
    if offload:  # layer-major: the whole prompt's hidden state and residual, in and out
        prefill += 4 * prompt_len * target.hidden_size * dtype_bytes
    if prefill >= after_prefill:
        items["prefill activations"] = prefill
    else:
        items["middle and draft caches, rebuild"] = after_prefill
    items["workspaces and fragmentation"] = RESERVE
    return MemoryPlan(items, host)


def host_available() -> int:
    """Bytes of physical memory free now (pinned memory cannot be swapped out), after torch's
    caching host allocator has given back the pinned blocks it keeps from earlier caches."""
    import os

    import torch

    for name in ("_host_emptyCache", "_accelerator_emptyHostCache"):  # the name varies across torch versions
        release = getattr(torch._C, name, None)
        if release is not None and torch.cuda.is_available():
            try:
                release()
            except RuntimeError:  # no device after all (a mocked or vanished GPU)
                pass
            break
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    # a VM whose memory grows as it is used reports little free memory at first: a cgroup's
    # limit, where one is set, says what the process may still take
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = max(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def check_host_memory(plan: MemoryPlan, available: int, *, target: ModelConfig, dtype_bytes: int,
                      prompt_len: int, on_chip_layers: int) -> None:
    """Raise a ConfigError when an offloaded cache cannot fit the host's free memory."""
    need = sum(plan.host.values())
    if need <= available:
        return
    per_token_layer = kv_bytes_per_token(target, dtype_bytes) // target.num_layers
    offloaded = max(target.num_layers - (on_chip_layers or 0), 1)
    room = available // (per_token_layer * offloaded)
    raise ConfigError(
        f"the offloaded KV cache needs {need / GiB:.1f} GiB of pinned host memory but {available / GiB:.1f} GiB "
        f"are free; to fit: lower dataset.prefill to below {room} (from {prompt_len}), or keep more layers on the GPU (hardware.on_chip_layers), or free host memory")


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
    fixes.append("use a GPU with more memory, or offload the KV cache to host memory (hardware.offload=true)")
    raise ConfigError(
        f"this run needs about {plan.total / GiB:.1f} GiB on {where} but {available / GiB:.1f} GiB are free "
        f"({plan.describe()}); to fit: " + "; or ".join(fixes))
