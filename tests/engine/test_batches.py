"""Batches (docs/DESIGN.md §3): B prompts of different lengths generated together, each sequence
advancing by its own accepted count. At temperature 0 every sequence of a batch emits exactly the
greedy tokens of its prompt run alone — for every method, middle cache and rebuild policy, with
both executors and with the full cache offloaded — and sequences that finish at different steps
(their own EOS) stop there while the others go on."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.engine.conftest import greedy_reference
from tests.engine.test_greedy_identity import GREEDY, KERNEL_NEW, NEW, TINY_CASES, run  # noqa: F401 - shared fixtures
from tests.engine.test_greedy_identity import tiny_setup  # noqa: F401
from triforce.engine import BatchResult, Engine
from triforce.errors import ConfigError

LENGTHS = (77, 45, 90)  # ragged, none a multiple of any chunk size used


def batch_prompts(setup) -> list[list[int]]:
    """Three prompts of different lengths: the setup's, a shorter and a longer one."""
    g = torch.Generator().manual_seed(40)
    return [setup.prompt[:n] if n <= len(setup.prompt) else setup.prompt + torch.randint(
        0, 64, (n - len(setup.prompt),), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def references(tiny_setup):
    """Each prompt's greedy tokens alone, per model kind."""
    return {kind: [greedy_reference(s.target, p, NEW) for p in batch_prompts(s)] for kind, s in tiny_setup.items()}


def run_batch(setup, case, prompts, *, executor="eager", target=None, engine_kw=None, n=NEW, **kw) -> BatchResult:
    target = target or setup.target
    _, method, draft = case
    draft = target if draft == "self" else setup.drafts.get(draft)
    return Engine(target, draft, method, GREEDY, {"executor": executor, **(engine_kw or {})}).generate(
        prompts, n, seed=0, **kw)


@pytest.mark.parametrize("executor", ("eager", "static"))
@pytest.mark.parametrize("case", TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_every_sequence_of_a_batch_equals_its_greedy_tokens_alone(tiny_setup, references, case, executor):
    setup = tiny_setup["gqa"]
    result = run_batch(setup, case, batch_prompts(setup), executor=executor)
    assert isinstance(result, BatchResult) and len(result) == 3
    assert [r.tokens for r in result] == references["gqa"]
    if case[1].get("rebuild", "never") != "never":
        assert sum(r.metrics["rebuilds"] for r in result) > 0  # the rebuild path really ran
    m = result.metrics
    assert m["batch_size"] == 3 and m["new_tokens"] == 3 * NEW and m["throughput"] > 0
    for r in result:
        assert r.metrics["new_tokens"] == NEW and r.metrics["batch_size"] == 3
        assert r.metrics["throughput"] == m["throughput"]


@pytest.mark.parametrize("kind", ["mha", "mqa-1layer"])
@pytest.mark.parametrize("name", ["spec-other-streaming", "triforce-other", "retrieval-hybrid-bound-every_n",
                                  "triforce-streaming-middle"])
def test_batches_of_other_shapes(tiny_setup, references, kind, name):
    setup = tiny_setup[kind]
    case = next(c for c in TINY_CASES if c[0] == name)
    assert [r.tokens for r in run_batch(setup, case, batch_prompts(setup), executor="static")] == references[kind]


@pytest.mark.parametrize("name", ["autoregressive", "triforce-other", "retrieval-every_n", "spec-other-full"])
def test_a_batch_of_one_is_the_single_sequence_generation(tiny_setup, name):
    """generate([prompt]) and generate(prompt) are the same generation (tokens, metrics, rounds)."""
    setup = tiny_setup["gqa"]
    case = next(c for c in TINY_CASES if c[0] == name)
    one = run_batch(setup, case, [setup.prompt])
    single = run(setup, case)
    assert one.results[0].tokens == single.tokens == setup.reference
    assert [dict(r, ms=0) for r in one.results[0].rounds] == [dict(r, ms=0) for r in single.rounds]


@pytest.mark.parametrize("name", ["spec-other-streaming", "triforce-other", "retrieval-every_n"])
def test_offloaded_batches_equal_greedy(tiny_setup, references, name):
    setup = tiny_setup["gqa"]
    case = next(c for c in TINY_CASES if c[0] == name)
    result = run_batch(setup, case, batch_prompts(setup), executor="static",
                       engine_kw=dict(offload=True, on_chip_layers=1, prefill_chunk=32))
    assert [r.tokens for r in result] == references["gqa"]


@pytest.mark.parametrize("executor", ("eager", "static"))
@pytest.mark.parametrize("name", ["autoregressive", "spec-other-streaming", "triforce-other",
                                  "triforce-hybrid-on_low_acceptance"])
def test_sequences_finishing_at_different_steps(tiny_setup, references, name, executor):
    """Each sequence stops right after its own first EOS; the others go on to max_new_tokens, with
    their tokens unchanged by the finished one."""
    setup = tiny_setup["gqa"]
    refs = references["gqa"]
    case = next(c for c in TINY_CASES if c[0] == name)
    def cut(ref: list[int], eos: int) -> list[int]:
        return ref[: ref.index(eos) + 1] if eos in ref else ref

    # an EOS id the first sequence emits early (at index >= 3), so that the sequences stop at
    # different steps (some run to the end)
    eos = next(t for t in refs[0][3:10] if t not in refs[0][:3] and len({len(cut(r, t)) for r in refs}) > 1)
    eos_target = copy.deepcopy(setup.target)
    eos_target.config = dataclasses.replace(setup.target.config, eos_token_id=(eos,))
    result = run_batch(setup, case, batch_prompts(setup), executor=executor, target=eos_target)
    assert [r.tokens for r in result] == [cut(r, eos) for r in refs]
    assert len(result.results[0].tokens) < NEW
    assert result.metrics["new_tokens"] == sum(len(cut(r, eos)) for r in refs)


def test_streamed_steps_of_a_batch(tiny_setup, references):
    setup = tiny_setup["gqa"]
    case = next(c for c in TINY_CASES if c[0] == "triforce-other")
    _, method, _ = case
    engine = Engine(setup.target, setup.drafts["other"], method, GREEDY)
    stream = engine.stream(batch_prompts(setup), NEW, seed=0)
    steps = list(stream)
    assert all(len(step) == 3 for step in steps)
    assert [[t for step in steps for t in step[b]] for b in range(3)] == references["gqa"]
    assert [r.tokens for r in stream.result] == references["gqa"]


def test_bad_batches_fail_before_work(tiny_setup):
    setup = tiny_setup["gqa"]
    engine = Engine(setup.target, None, {"name": "autoregressive"}, GREEDY)
    with pytest.raises(Exception, match="the prompt is empty"):
        engine.generate([], 4)  # one empty prompt
    with pytest.raises(ConfigError, match=r"prompt 1: token ids must lie in \[0, 64\)"):
        engine.generate([[1, 2, 3], [1, 99]], 4)
    with pytest.raises(Exception, match="prompt 2: the prompt is empty"):
        engine.generate([[1, 2], [3], []], 4)


@pytest.mark.slow
# triforce-other runs all three levels (its draft a StreamingLLM cache, as spec-other-streaming's)
@pytest.mark.parametrize("kind,name", [("gqa", "triforce-other"), ("mha", "retrieval-every_n")])
def test_batches_through_the_triton_kernels(tiny_setup, references, kind, name):
    """The captured path's forwards of a batch with every Triton kernel in them (Triton's
    interpreter): per-sequence token starts, positions, cache slots and lengths read from the
    view's (3, B) metadata, the batched verification and sampling races."""
    from triforce.kernels import triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    setup = tiny_setup[kind]
    case = next(c for c in TINY_CASES if c[0] == name)
    # the first KERNEL_NEW tokens of each sequence (the interpreter is slow)
    result = run_batch(setup, case, batch_prompts(setup), executor="static", engine_kw={"kernels": {"kernels": True}},
                       n=KERNEL_NEW)
    assert [r.tokens for r in result] == [tokens[:KERNEL_NEW] for tokens in references[kind]]
    if case[1].get("rebuild", "never") != "never":
        assert sum(r.metrics["rebuilds"] for r in result) > 0


def test_a_seed_reproduces_a_sampled_batch(tiny_setup):
    setup = tiny_setup["gqa"]
    case = next(c for c in TINY_CASES if c[0] == "triforce-other")
    engine = Engine(setup.target, setup.drafts["other"], case[1], {"temperature": 0.8, "top_p": 0.9})
    a = engine.generate(batch_prompts(setup), NEW, seed=3)
    b = engine.generate(batch_prompts(setup), NEW, seed=3)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in engine.generate(batch_prompts(setup), NEW, seed=4)] != [r.tokens for r in a]
