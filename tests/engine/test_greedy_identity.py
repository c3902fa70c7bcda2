"""Greedy identity (docs/DESIGN.md §10.2): at temperature 0 every method emits exactly the tokens of plain
autoregressive greedy decoding with the full cache (fp32), whatever the draft, the retrieval
budget, the scorer, the chunk size, the rebuild policy or the middle cache (retrieval, StreamingLLM,
hybrid); and generation stops right after the first EOS."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.engine.conftest import greedy_reference, perturbed, random_model, shape_fields
from triforce.config import MethodConfig
from triforce.engine import Engine, EngineOptions
from triforce.prefill_memo import PrefillMemo

GREEDY = dict(temperature=0.0)
PROMPT_LEN = 77  # not a multiple of any chunk size used
NEW = 24
KERNEL_NEW = 8  # tokens of the runs through Triton's interpreter (every level still runs rounds; rebuilds happen)

# (id, method, draft): draft "self" = the target itself (self-speculation); "other" = a separate model
# (the target's weights plus independent noise: it agrees with the target part of the time);
# "small" = an unrelated random model of another shape (it almost never agrees)
TINY_CASES = [
    ("autoregressive", dict(name="autoregressive"), None),
    ("spec-other-streaming", dict(name="spec", gamma=4, draft_sink=4, draft_window=18), "other"),
    ("spec-other-full", dict(name="spec", gamma=3, draft_cache="full"), "other"),
    ("spec-self-streaming", dict(name="spec", gamma=5, draft_sink=2, draft_window=20), "self"),
    ("retrieval-mean-c4-b16", dict(name="retrieval_spec", gamma=3, budget=16, chunk_size=4), None),
    ("retrieval-bound-c8-b32", dict(name="retrieval_spec", gamma=5, budget=32, chunk_size=8, scorer="bound"), None),
    ("retrieval-every_n", dict(name="retrieval_spec", gamma=2, budget=16, chunk_size=8, rebuild="every_n",
                               rebuild_every=5), None),
    ("retrieval-on_low_acceptance", dict(name="retrieval_spec", gamma=4, budget=24, chunk_size=4, scorer="bound",
                                         rebuild="on_low_acceptance", rebuild_threshold=0.99, rebuild_window=1),
     None),
    ("retrieval-streaming-middle", dict(name="retrieval_spec", gamma=3, budget=24, middle_cache="streaming",
                                        draft_sink=4), None),
    ("triforce-other", dict(name="triforce", gamma=4, draft_gamma=2, budget=16, chunk_size=4, draft_sink=2,
                            draft_window=18), "other"),
    ("triforce-self-bound", dict(name="triforce", gamma=3, draft_gamma=1, budget=24, chunk_size=8, scorer="bound",
                                 draft_sink=4, draft_window=14), "self"),
    ("triforce-every_n", dict(name="triforce", gamma=5, draft_gamma=3, budget=16, chunk_size=4, rebuild="every_n",
                              rebuild_every=3, draft_sink=2, draft_window=22), "other"),
    ("triforce-on_low_acceptance", dict(name="triforce", gamma=2, draft_gamma=2, budget=16, chunk_size=8,
                                        rebuild="on_low_acceptance", rebuild_threshold=0.99, rebuild_window=2,
                                        draft_sink=2, draft_window=14), "self"),
    ("triforce-streaming-middle", dict(name="triforce", gamma=4, draft_gamma=2, budget=28, middle_cache="streaming",
                                       draft_sink=4, draft_window=18), "other"),
    # hybrid middle caches (sink + retrieved chunks + recent window), under every rebuild policy
    ("retrieval-hybrid-mean", dict(name="retrieval_spec", gamma=4, budget=32, chunk_size=4, middle_cache="hybrid",
                                   recent=0.5, recent_min=0), None),
    ("retrieval-hybrid-bound-every_n", dict(name="retrieval_spec", gamma=3, budget=24, chunk_size=4, scorer="bound",
                                            middle_cache="hybrid", recent=0.3, recent_min=0, rebuild="every_n",
                                            rebuild_every=4),
     None),
    ("triforce-hybrid-on_low_acceptance", dict(name="triforce", gamma=4, draft_gamma=2, budget=32, chunk_size=4,
                                               middle_cache="hybrid", recent=0.6, recent_min=0,
                                               rebuild="on_low_acceptance", rebuild_threshold=0.99, rebuild_window=1,
                                               draft_sink=2, draft_window=18), "other"),
    ("triforce-hybrid-every_n-c8", dict(name="triforce", gamma=5, draft_gamma=2, budget=40, chunk_size=8,
                                        middle_cache="hybrid", recent=0, recent_min=16, rebuild="every_n",
                                        rebuild_every=3, draft_sink=2, draft_window=22), "self"),
    ("triforce-streaming-middle-every_n", dict(name="triforce", gamma=3, draft_gamma=2, budget=24, chunk_size=4,
                                               middle_cache="streaming", rebuild="every_n", rebuild_every=2,
                                               draft_sink=2, draft_window=16), "other"),
    ("triforce-full-draft", dict(name="triforce", gamma=6, draft_gamma=2, budget=16, chunk_size=4,
                                 draft_cache="full"), "other"),
    ("spec-small", dict(name="spec", gamma=3, draft_sink=2, draft_window=16), "small"),
    ("triforce-small", dict(name="triforce", gamma=3, draft_gamma=2, budget=16, chunk_size=8, draft_sink=2,
                            draft_window=16), "small"),
]

MODELS = {"mha": dict(kv_heads=4), "gqa": dict(kv_heads=2), "mqa-1layer": dict(kv_heads=1, layers=1),
          # the other families' shapes (issue 27): q/k/v biases + q/k head norms (Qwen2 / Qwen3); head_dim
          # 12 of hidden 32 / 4 heads and a sliding window beyond every run (Mistral)
          "qwen-shaped": dict(kv_heads=2, **shape_fields("qwen", hidden=32, heads=4)),
          "mistral-shaped": dict(kv_heads=2, **shape_fields("mistral", hidden=32, heads=4, window=128))}
# tokens each kind generates: the shapes' runs are fewer tokens (every level still runs rounds and the
# rebuild policies rebuild), to keep their cost small
TOKENS = {"qwen-shaped": 12, "mistral-shaped": 12}


@dataclasses.dataclass
class Setup:
    target: torch.nn.Module
    drafts: dict  # "other" | "small" -> model
    prompt: list[int]
    reference: list[int]


@pytest.fixture(scope="module")
def tiny_setup() -> dict[str, Setup]:
    out = {}
    for kind, kw in MODELS.items():
        target = random_model(seed=10, scale=2.0, **kw)
        other = perturbed(target, random_model(seed=11, scale=2.0, **kw), 0.3)
        small = random_model(seed=13, hidden=16, layers=1, heads=2, kv_heads=1)
        prompt = torch.randint(0, 64, (PROMPT_LEN,), generator=torch.Generator().manual_seed(12)).tolist()
        out[kind] = Setup(target, {"other": other, "small": small}, prompt,
                          greedy_reference(target, prompt, TOKENS.get(kind, NEW)))
    return out


# eager: the reference path; static: the GPU path's static-shape forwards (device-resident lengths,
# the decode-attention entry point), run uncaptured on the CPU
EXECUTORS = ("eager", "static")


def run(setup: Setup, case, n=None, target=None, executor="eager", engine_kw=None, **kw):
    """Generate `n` tokens (None: as many as the setup's reference has)."""
    n = len(setup.reference) if n is None else n
    target = target or setup.target
    _, method, draft = case
    draft = target if draft == "self" else setup.drafts.get(draft)
    engine = Engine(target, draft, method, GREEDY, {"executor": executor, **(engine_kw or {})})
    return engine.generate(setup.prompt, n, seed=0, **kw)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("case", TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_tiny_models_every_method_equals_greedy(tiny_setup, kind, case, executor):
    setup = tiny_setup[kind]
    result = run(setup, case, executor=executor)
    assert result.tokens == setup.reference
    m = MethodConfig(**case[1])
    if m.rebuild != "never":
        assert result.metrics["rebuilds"] > 0  # the rebuild path really ran


# KV offloading (cache/offload.py): the full cache in host memory, streamed layer by layer through
# two staging buffers, a layer-major prefill, retrieval rebuilds from kept chunk statistics. The
# 5-layer model keeps one layer's KV on chip and streams four through the two buffers; prefill in
# chunks of 32 tokens.
OFFLOAD = {"gqa-5layer": dict(offload=True, on_chip_layers=1, prefill_chunk=32),
           "mha": dict(offload=True, on_chip_layers=0, prefill_chunk=32),
           "mqa-1layer": dict(offload=True, on_chip_layers=0)}


@pytest.fixture(scope="module")
def offload_setup(tiny_setup) -> dict[str, Setup]:
    target = random_model(seed=20, scale=2.0, layers=5, kv_heads=2)
    other = perturbed(target, random_model(seed=21, scale=2.0, layers=5, kv_heads=2), 0.3)
    prompt = tiny_setup["gqa"].prompt
    return {"gqa-5layer": Setup(target, dict(tiny_setup["gqa"].drafts, other=other), prompt,
                                greedy_reference(target, prompt, NEW)),
            "mha": tiny_setup["mha"], "mqa-1layer": tiny_setup["mqa-1layer"]}


@pytest.mark.parametrize("kind", list(OFFLOAD))
@pytest.mark.parametrize("case", TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_offloaded_full_cache_equals_greedy(offload_setup, kind, case):
    setup = offload_setup[kind]
    result = run(setup, case, executor="static", engine_kw=OFFLOAD[kind])
    assert result.tokens == setup.reference
    if MethodConfig(**case[1]).rebuild != "never":
        assert result.metrics["rebuilds"] > 0


@pytest.mark.parametrize("kind", list(MODELS))
def test_tiny_hierarchy_is_non_trivial(tiny_setup, kind):
    """The identity above means something only if the cheaper levels partly disagree with the
    target: every level must see rejections (rollback, residual) AND accepted proposals (multi-token
    commits, bonus tokens). Only the unrelated "small" draft is allowed to be useless."""
    setup = tiny_setup[kind]
    rates = {}
    for case in TINY_CASES:
        if case[2] == "small":
            continue
        metrics = run(setup, case).metrics
        rates.update({f"{case[0]}/{k}": v for k, v in metrics.items() if k.startswith("accept_rate/")})
    assert all(0.05 < v < 0.95 for v in rates.values()), rates


@pytest.mark.parametrize("case", [c for c in TINY_CASES if c[0] in
                                  ("autoregressive", "spec-other-streaming", "retrieval-every_n", "triforce-other",
                                   "triforce-streaming-middle")], ids=lambda c: c[0])
def test_generation_stops_after_the_first_eos(tiny_setup, case):
    setup = tiny_setup["gqa"]
    target, ref = setup.target, setup.reference
    # an EOS id that greedy decoding first emits at index >= 5, and a second one never emitted first
    stop = next(i for i in range(5, NEW) if ref[i] not in ref[:i])
    never = next(t for t in range(64) if t not in ref)
    eos_target = copy.deepcopy(target)
    eos_target.config = dataclasses.replace(target.config, eos_token_id=(never, ref[stop]))
    result = run(setup, case, target=eos_target, executor="static")
    assert result.tokens == ref[: stop + 1]
    assert result.metrics["new_tokens"] == stop + 1
    # stop_at_eos=False keeps going
    assert run(setup, case, target=eos_target, stop_at_eos=False).tokens == ref


def test_greedy_is_seed_independent(tiny_setup):
    setup = tiny_setup["mha"]
    triforce_other = next(c for c in TINY_CASES if c[0] == "triforce-other")
    engine = Engine(setup.target, setup.drafts["other"], triforce_other[1], GREEDY)
    for seed in (1, 2, 12345):
        assert engine.generate(setup.prompt, NEW, seed=seed).tokens == setup.reference


# -- SmolLM2 (real weights, real text) ---------------------------------------------------------

SMOL_NEW = 20
# prompt = 603 tokens, budgets far below it; the draft is SmolLM2 itself with a small StreamingLLM cache
SMOL_CASES = [
    ("triforce-b64-c8-mean-never", dict(name="triforce", gamma=4, draft_gamma=2, budget=64, chunk_size=8,
                                        draft_sink=4, draft_window=32)),
    ("triforce-b128-c16-bound-every_n", dict(name="triforce", gamma=5, draft_gamma=2, budget=128, chunk_size=16,
                                             scorer="bound", rebuild="every_n", rebuild_every=6,
                                             draft_sink=4, draft_window=32)),
    ("retrieval-b64-c16-bound-on_low_acceptance", dict(name="retrieval_spec", gamma=4, budget=64, chunk_size=16,
                                                       scorer="bound", rebuild="on_low_acceptance",
                                                       rebuild_threshold=0.99, rebuild_window=1)),
    ("triforce-streaming-middle-b128", dict(name="triforce", gamma=4, draft_gamma=2, budget=128,
                                            middle_cache="streaming", draft_sink=4, draft_window=32)),
    ("spec-self-streaming-w24", dict(name="spec", gamma=4, draft_sink=4, draft_window=24)),
    ("triforce-hybrid-b96-c8-mean-never", dict(name="triforce", gamma=4, draft_gamma=2, budget=96, chunk_size=8,
                                               middle_cache="hybrid", recent=0.25, recent_min=40, draft_sink=4,
                                               draft_window=32)),
    ("retrieval-hybrid-b64-c8-bound-on_low_acceptance", dict(name="retrieval_spec", gamma=4, budget=64, chunk_size=8,
                                                             scorer="bound", middle_cache="hybrid", recent=0.25,
                                                             recent_min=24, rebuild="on_low_acceptance",
                                                             rebuild_threshold=0.99, rebuild_window=1)),
]


@pytest.fixture(scope="module")
def smol_reference(smollm2, gutenberg_prompt):
    return greedy_reference(smollm2, gutenberg_prompt, SMOL_NEW)


@pytest.fixture(scope="module")
def smol_prefills():
    """One prefill of the prompt for every case (the engine's prefill memo: the full cache restored
    bit for bit, tests/engine/test_prefill_memo.py), as a sweep over methods keeps it."""
    return PrefillMemo(max_bytes=1 << 30)


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("case", SMOL_CASES, ids=[c[0] for c in SMOL_CASES])
def test_smollm2_every_method_equals_greedy(smollm2, gutenberg_prompt, smol_reference, smol_prefills, case, executor):
    _, method = case
    engine = Engine(smollm2, smollm2, method, GREEDY, {"executor": executor}, EngineOptions(prefill_memo=smol_prefills))
    result = engine.generate(gutenberg_prompt, SMOL_NEW, seed=0)
    assert result.tokens == smol_reference
    rates = {k: v for k, v in result.metrics.items() if k.startswith("accept_rate/")}
    # budgets far below the prompt and a small draft window: every level must both accept and
    # reject proposals, or the identity would be vacuous (measured: 0.37-0.63)
    assert rates and all(0 < v < 1 for v in rates.values()), rates
    if method.get("rebuild", "never") != "never":
        assert result.metrics["rebuilds"] > 0


SHORT_CASES = [c for c in TINY_CASES if c[0] in ("autoregressive", "spec-other-streaming", "retrieval-mean-c4-b16",
                                                  "retrieval-every_n", "retrieval-streaming-middle", "triforce-other",
                                                  "triforce-on_low_acceptance", "triforce-hybrid-every_n-c8")]




@pytest.mark.parametrize("case,prompt_len", [
    pytest.param(c, n, id=f"{c[0]}-{n}")
    for c in SHORT_CASES for n in (1, 2, 7, 17)])
def test_short_prompts_and_single_tokens(tiny_setup, case, prompt_len):
    """Prompts shorter than a chunk or the budget (the retrieval cache keeps everything), a single
    prompt token, and max_new_tokens of 1 and 2."""
    setup = tiny_setup["gqa"]
    short = dataclasses.replace(setup, prompt=setup.prompt[:prompt_len])
    ref = greedy_reference(setup.target, short.prompt, 9)
    assert run(short, case, n=9).tokens == ref
    assert run(short, case, n=9, executor="static").tokens == ref
    assert run(short, case, n=1).tokens == ref[:1]
    assert run(short, case, n=2).tokens == ref[:2]


@pytest.mark.slow
# (a GQA model's StreamingLLM draft through the kernels: tests/engine/test_batches.py's gqa-triforce-other)
@pytest.mark.parametrize("kind,name", [("mha", "autoregressive"), ("mha", "triforce-other"),
                                       ("gqa", "retrieval-every_n")])
def test_static_executor_with_the_triton_kernels_equals_greedy(tiny_setup, kind, name):
    """The captured path's forwards with every Triton kernel in them (run by Triton's interpreter):
    token slice embedding, positions and lengths read from the view's metadata, the q/k/v
    projection's rotary + cache-write epilogue, split-KV attention, the sampling transform."""
    from triforce.kernels import triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    setup = tiny_setup[kind]
    case = next(c for c in TINY_CASES if c[0] == name)
    # the policy runs every kernel on the CPU's tensors, through Triton's interpreter (slow: the
    # first KERNEL_NEW tokens, still several rounds of every level and, where the case has one, a rebuild)
    result = run(setup, case, n=KERNEL_NEW, executor="static", engine_kw={"kernels": {"kernels": True}})
    assert result.tokens == setup.reference[:KERNEL_NEW]
    if case[1].get("rebuild", "never") != "never":
        assert result.metrics["rebuilds"] > 0
