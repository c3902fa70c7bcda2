"""The warm-up generation before a measured (or user-facing) one: what it feeds and how long it runs,
so that every kernel the measured generation launches compiles, and every graph it replays is
captured, before it starts (docs/DESIGN.md §7). `Engine.warm_up` runs it; the app, the benchmarks
and the profilers all warm up through it."""

from __future__ import annotations

from triforce.config import MethodConfig
from triforce.planner import method_plans


LIGHT_LENGTH, LIGHT_TOKENS = 64, 4  # where nothing compiles: a short generation (allocator, first calls)


def compiles(device) -> bool:
    """Whether first forwards on `device` compile kernels and capture graphs (a GPU), so that a warm-up
    must launch everything a measured generation will; on a CPU every op is eager and nothing
    compiles, and running every plan of an adaptive method over a long warm-up prompt would take
    minutes of a small model's CPU time for nothing."""
    return getattr(device, "type", str(device)) == "cuda"


def warm_length(method: MethodConfig, prompt_len: int) -> int:
    """Prompt tokens of a warm-up generation that compiles and captures every kernel a measured run
    of `method` launches, so Triton compiles nothing inside it: longer than the middle's budget
    (chunks are chosen) and than the draft's StreamingLLM window (it is full; warm_tokens then runs
    it past its slack), at least 64, at most the prompt."""
    need = 64
    if method.uses_middle:
        need = max(need, (method.budget or 0) + 2 * method.chunk_size + 1)
    if method.uses_draft and method.draft_cache == "streaming":
        need = max(need, method.draft_sink + method.draft_window + 1)
    return min(prompt_len, need)


def warm_tokens(method: MethodConfig) -> int:
    """New tokens of the warm-up generation: 8, or enough that a StreamingLLM draft's window runs
    past its slack, so that its first eviction (the shift kernel) compiles there and not in the
    measured run (the prompt cannot do it: a prefill keeps only `window` recent tokens); for an
    adaptive method, enough for a round of each candidate plan in turn (Engine.for_warm_up) however
    many tokens each emits (at most its top gamma + 1)."""
    tokens = 8
    if method.uses_draft and method.draft_cache == "streaming":
        tokens = max(tokens, method.draft_window_slack + 2)
    if method.adapts:
        tokens = max(tokens, sum((plan.gammas[-1] if plan.gammas else 0) + 1 for plan in method_plans(method)) + 1)
    return tokens


def warm_prompts(method: MethodConfig, prompts: list[list[int]], *, thorough: bool = True) -> list[list[int]]:
    """The warm-up's prompts (a batch's, or one prompt's as a batch of one): each cut to warm_length
    (thorough), or to LIGHT_LENGTH tokens."""
    return [p[:warm_length(method, len(p)) if thorough else LIGHT_LENGTH] for p in prompts]
