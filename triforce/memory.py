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

The plan is made once per run: the app's pre-flight makes it from the configs before any weights
load (app/validate.py), checks it, and hands it to the engine, which re-checks the device's free
memory against it before each generation allocates (Engine.check_memory). Each cache states what
it allocates (`Cache.memory`, cache/static.py); this module adds them up with the weights and the
transients. The caches are counted from the same cache specs the levels allocate
(cache/spec.py): planned and allocated bytes are one computation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from triforce.cache.spec import cache_specs
from triforce.cache.static import kv_bytes_per_token
from triforce.config import MethodConfig
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig

__all__ = ["GiB", "MemoryPlan", "check_host_memory", "check_memory", "check_plan", "host_available",
           "kv_bytes_per_token", "plan_for_engine", "plan_memory", "weight_bytes"]

GiB = 1024 ** 3
RESERVE = GiB  # library workspaces, graph pools, allocator fragmentation


def weight_bytes(cfg: ModelConfig, dtype_bytes: int) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    per_layer = (h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h
                 + 3 * h * cfg.intermediate_size + 2 * h)
    embeddings = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return dtype_bytes * (cfg.num_layers * per_layer + embeddings + h)


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
    # what the refusals name a fix in terms of
    target: ModelConfig | None = None
    dtype_bytes: int = 2
    prompt_len: int = 0  # the longest prompt of a batch
    prefill_chunk: int | None = None
    on_chip_layers: int = 0
    batch_size: int = 1
    per_sequence: int = 0  # device bytes one more sequence of the batch takes (its caches)

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {size / GiB:.2f}" for name, size in self.items.items() if size) + " GiB"

    def without_weights(self) -> "MemoryPlan":
        """What remains to allocate once the weights are loaded."""
        return dataclasses.replace(self, items={k: v for k, v in self.items.items() if "weights" not in k})


def plan_memory(target: ModelConfig, method: MethodConfig, prompt_len: int, max_new_tokens: int, *, dtype_bytes: int,
                prefill_chunk: int | None, draft: ModelConfig | None = None, draft_is_target: bool = False,
                draft_dtype_bytes: int | None = None, offload: bool = False, on_chip_layers: int = 0,
                batch_size: int = 1) -> MemoryPlan:
    """The plan of one generation of `batch_size` sequences of up to `prompt_len` tokens. `draft`:
    the draft model's config when it is a separate model (None: unknown or none; its weights then
    count 0). With tensor parallelism pass one rank's configs (parallel.shard_config). `offload`:
    the full cache in host memory but `on_chip_layers` layers (cache/offload.py), and the
    layer-major prefill's hidden states. The caches are the ones the levels allocate (the same
    cache specs: cache/spec.py); a prefill runs one sequence at a time."""
    kw = dict(dtype_bytes=dtype_bytes, prefill_chunk=prefill_chunk, draft=draft, draft_is_target=draft_is_target,
              draft_dtype_bytes=draft_dtype_bytes, offload=offload, on_chip_layers=on_chip_layers)
    plan = _plan(target, method, prompt_len, max_new_tokens, batch_size=batch_size, **kw)
    # what one more sequence would cost: the refusal of a batch that does not fit names the largest that does
    one_more = _plan(target, method, prompt_len, max_new_tokens, batch_size=batch_size + 1, **kw)
    return dataclasses.replace(plan, per_sequence=one_more.total - plan.total)


def _plan(target: ModelConfig, method: MethodConfig, prompt_len: int, max_new_tokens: int, *, dtype_bytes: int,
          prefill_chunk: int | None, draft: ModelConfig | None, draft_is_target: bool, draft_dtype_bytes: int | None,
          offload: bool, on_chip_layers: int, batch_size: int) -> MemoryPlan:
    ddb = draft_dtype_bytes or dtype_bytes
    method = method.for_prompt(prompt_len)
    B = batch_size
    draft_cfg = target if draft_is_target else draft
    specs = cache_specs(method, target, draft_cfg if method.uses_draft else None, [prompt_len] * B, max_new_tokens,
                        dtype_bytes=dtype_bytes, draft_dtype_bytes=ddb, offload=offload, on_chip_layers=on_chip_layers)
    items = {"target weights": weight_bytes(target, dtype_bytes)}
    if method.uses_draft and draft_cfg is not None and not draft_is_target:
        items["draft weights"] = weight_bytes(draft_cfg, ddb)
    top = specs["top"].memory()
    host = {"offloaded KV cache": top["host"]} if offload else {}
    items["on-chip KV layers and staging" if offload else "full KV cache"] = top["device"]
    # the lower levels' caches and a rebuild's transient, allocated once the prefill is done
    after_prefill = sum(spec.memory()["device"] for name, spec in specs.items() if name != "top")
    if any(spec.scores for spec in specs.values()):  # one selection rebuilds at a time
        after_prefill += rebuild_bytes(target, prompt_len, method.chunk_size, method.scorer)
    chunk = min(prompt_len, prefill_chunk or prompt_len)
    prefill = prefill_activation_bytes(target, chunk, dtype_bytes)
    if offload:  # layer-major: the whole prompt's hidden state, in and out
        prefill += 2 * prompt_len * target.hidden_size * dtype_bytes
    if prefill >= after_prefill:
        items["prefill activations"] = prefill
    else:
        items["middle and draft caches, rebuild"] = after_prefill
    items["workspaces and fragmentation"] = RESERVE
    if B > 1:  # the decode steps' activations: B x (gamma + 1) rows of every product, and the logits
        rows = B * (method.max_gamma + 1)
        items["batch activations"] = rows * (4 * target.hidden_size + 2 * target.intermediate_size
                                             + 3 * target.vocab_size) * 4
    return MemoryPlan(items, host, target=target, dtype_bytes=dtype_bytes, prompt_len=prompt_len,
                      prefill_chunk=prefill_chunk, on_chip_layers=on_chip_layers if offload else 0, batch_size=B)


def plan_for_engine(engine, prompt_len: int, max_new_tokens: int, batch_size: int = 1) -> MemoryPlan:
    """The plan of one generation of an engine built without one (the Python API)."""
    draft = engine.draft
    draft_cfg = None if draft is None or draft is engine.target else draft.config
    return plan_memory(engine.target.config, engine.method, prompt_len, max_new_tokens,
                       dtype_bytes=engine.target.dtype.itemsize, prefill_chunk=engine.prefill_chunk, draft=draft_cfg,
                       draft_is_target=draft is engine.target,
                       draft_dtype_bytes=None if draft_cfg is None else draft.dtype.itemsize, offload=engine.offload,
                       on_chip_layers=engine.on_chip_layers, batch_size=batch_size)


def check_plan(plan: MemoryPlan, device, *, loaded: bool = False) -> None:
    """Raise a ConfigError naming what to change when `plan` does not fit the device's free memory
    and the host's (pinned memory for an offloaded cache). loaded: the weights are on the device
    already (the engine's re-check before a generation allocates)."""
    import torch

    if loaded:
        plan = plan.without_weights()
    check_host_memory(plan, host_available())
    check_memory(plan, device_available(device), where=torch.cuda.get_device_name(device))


def device_available(device=None) -> int:
    """Bytes this process can still allocate on the device: its free memory plus the blocks torch's
    allocator keeps cached (freed tensors, a model's construction's temporaries), which are free to
    this process but not to `mem_get_info`."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


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


def check_host_memory(plan: MemoryPlan, available: int) -> None:
    """Raise a ConfigError when an offloaded cache cannot fit the host's free memory."""
    need = sum(plan.host.values())
    if need <= available:
        return
    target = plan.target
    per_token_layer = kv_bytes_per_token(target, plan.dtype_bytes) // target.num_layers
    offloaded = max(target.num_layers - (plan.on_chip_layers or 0), 1)
    room = available // (per_token_layer * offloaded)
    raise ConfigError(
        f"the offloaded KV cache needs {need / GiB:.1f} GiB of pinned host memory but {available / GiB:.1f} GiB "
        f"are free; to fit: lower dataset.prefill to below {room} (from {plan.prompt_len}), or keep more layers on "
        "the GPU (hardware.on_chip_layers), or free host memory")


def check_memory(plan: MemoryPlan, available: int, *, where: str) -> None:
    """Raise a ConfigError naming what to change when the plan does not fit `available` bytes."""
    if plan.total <= available:
        return
    over = plan.total - available
    target, dtype_bytes, prompt_len = plan.target, plan.dtype_bytes, plan.prompt_len
    per_token = kv_bytes_per_token(target, dtype_bytes) * plan.batch_size
    fixes = []
    if plan.batch_size > 1 and plan.per_sequence > 0:
        fits = plan.batch_size - -(-over // plan.per_sequence)  # ceil: sequences the batch must give up
        if fits >= 1:
            fixes.append(f"lower hardware.batch_size to <= {fits}")
    room = prompt_len - -(-over // per_token)  # ceil: tokens the full cache must give up
    if room > 0:
        fixes.append(f"lower dataset.prefill to <= {room}")
    chunk = min(prompt_len, plan.prefill_chunk or prompt_len)
    activations = prefill_activation_bytes(target, chunk, dtype_bytes)
    if chunk > 4096 and activations - prefill_activation_bytes(target, 4096, dtype_bytes) >= over:
        fixes.append("lower hardware.prefill_chunk to 4096")
    fixes.append("use a GPU with more memory, or offload the KV cache to host memory (hardware.offload=true)")
    batch = f" for a batch of {plan.batch_size}" if plan.batch_size > 1 else ""
    raise ConfigError(
        f"this run needs about {plan.total / GiB:.1f} GiB{batch} on {where} but {available / GiB:.1f} GiB are free "
        f"({plan.describe()}); to fit: " + "; or ".join(fixes))
