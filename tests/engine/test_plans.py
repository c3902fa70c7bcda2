"""Rounds that run different plans (docs/DESIGN.md §12): method=auto and adaptive methods emit exactly
the greedy tokens, one sequence or a batch of ragged prompts, with both executors and offloaded; so
does a plan switched every round on a fixed schedule (every level then falls behind and catches up);
autoregressive rounds of an adaptive method are the very steps of method=autoregressive; and the run
reports what each plan did."""

from __future__ import annotations

import pytest

from tests.engine.test_batches import batch_prompts
from tests.engine.test_greedy_identity import GREEDY, NEW, tiny_setup  # noqa: F401 - the shared fixture
from triforce.engine import Engine, EngineOptions
from triforce.costs import StepCosts
from triforce.planner import AUTOREGRESSIVE, AdaptivePlanner, Plan, ScheduledPlanner

# budgets below the 77-token prompt; small windows so the draft evicts; the largest gamma 6 + 3 + 2
AUTO = dict(name="auto", middle_caches=["hybrid", "streaming"], budget=32, streaming_budget=16, chunk_size=4,
            recent=0.5, recent_min=8, gammas=[2, 4, 6], draft_gammas=[1, 3], draft_sink=2, draft_window=30,
            probe_every=2)
ADAPTIVE = {
    "spec": dict(name="spec", adaptive=True, gammas=[2, 5], draft_gammas=[1], draft_sink=2, draft_window=24),
    "retrieval_spec": dict(name="retrieval_spec", adaptive=True, gammas=[3, 6], draft_gammas=[1], budget=24,
                           chunk_size=4, middle_cache="hybrid", recent=0.4, recent_min=0, rebuild="every_n",
                           rebuild_every=5),
    "triforce": dict(name="triforce", adaptive=True, gammas=[2, 4], draft_gammas=[1, 2], budget=16, chunk_size=4,
                     draft_sink=2, draft_window=22),
}
# every chain in turn, each level idle for rounds in between: it catches up when its plan comes back
SCHEDULE = [AUTOREGRESSIVE, Plan(("draft", "top"), (2,)), Plan(("draft", "middle-hybrid", "top"), (3, 2)),
            AUTOREGRESSIVE, AUTOREGRESSIVE, Plan(("middle-streaming", "top"), (4,)),
            Plan(("draft", "middle-streaming", "top"), (1, 5)), Plan(("middle-hybrid", "top"), (2,))]


def engine(setup, method, executor="eager", planner=None, **hardware) -> Engine:
    return Engine(setup.target, setup.drafts["other"], method, GREEDY, {"executor": executor, **hardware},
                  EngineOptions(planner=planner))


@pytest.mark.parametrize("executor", ["eager", "static"])
@pytest.mark.parametrize("kind", ["mha", "gqa"])
@pytest.mark.parametrize("name", ["auto", *ADAPTIVE])
def test_adaptive_plans_equal_greedy(tiny_setup, kind, name, executor):
    setup = tiny_setup[kind]
    method = AUTO if name == "auto" else ADAPTIVE[name]
    result = engine(setup, method, executor).generate(setup.prompt, NEW, seed=0)
    assert result.tokens == setup.reference
    plans = {k: v for k, v in result.metrics.items() if k.startswith("plan_rounds/")}
    assert sum(plans.values()) == len(result.rounds)  # one plan a top-level step, each recorded
    assert {r["plan"] for r in result.rounds} == {k.removeprefix("plan_rounds/") for k in plans}


@pytest.mark.parametrize("executor", ["eager", "static"])
def test_a_plan_switched_every_round_equals_greedy(tiny_setup, executor):
    setup = tiny_setup["gqa"]
    result = engine(setup, AUTO, executor, planner=lambda batch: ScheduledPlanner(SCHEDULE)).generate(
        setup.prompt, NEW, seed=0)
    assert result.tokens == setup.reference
    ran = {name.removeprefix("plan_rounds/") for name in result.metrics if name.startswith("plan_rounds/")}
    assert ran == {plan.name for plan in SCHEDULE}
    assert result.metrics["time_s/catchup"] > 0  # levels idle for rounds took the tokens they missed


def test_a_batch_of_ragged_prompts_under_auto_equals_each_prompt_greedy(tiny_setup):
    setup = tiny_setup["gqa"]
    prompts = batch_prompts(setup)
    alone = [Engine(setup.target, None, {"name": "autoregressive"}, GREEDY).generate(p, NEW).tokens for p in prompts]
    for executor in ("eager", "static"):
        batch = engine(setup, AUTO, executor).generate(prompts, NEW, seed=0)
        assert [r.tokens for r in batch] == alone
        switched = engine(setup, AUTO, executor, planner=lambda b: ScheduledPlanner(SCHEDULE)).generate(
            prompts, NEW, seed=0)
        assert [r.tokens for r in switched] == alone
        assert any(k.startswith("plan_rounds/") for k in batch.metrics)


def test_plans_switch_exactly_with_the_full_cache_offloaded(tiny_setup):
    setup = tiny_setup["gqa"]
    result = engine(setup, AUTO, "static", planner=lambda b: ScheduledPlanner(SCHEDULE), offload=True,
                    on_chip_layers=1, prefill_chunk=32).generate(setup.prompt, NEW, seed=0)
    assert result.tokens == setup.reference


def test_autoregressive_rounds_are_the_steps_of_method_autoregressive(tiny_setup):
    """A plain-decoding round of an adaptive method runs the top level's one-token step with its
    sample, exactly as method=autoregressive does: the same forward (level, width, sample), the same
    draws (a sampled run gives the same tokens as plain sampling with the seed), no lower level."""
    setup = tiny_setup["gqa"]
    sampling = {"temperature": 0.8, "top_p": 0.95}
    plain = Engine(setup.target, None, {"name": "autoregressive"}, sampling, {"executor": "static"})
    always_plain = Engine(setup.target, setup.drafts["other"], AUTO, sampling, {"executor": "static"},
                          EngineOptions(planner=lambda b: ScheduledPlanner([AUTOREGRESSIVE])))
    a = plain.generate(setup.prompt, NEW, seed=5)
    b = always_plain.generate(setup.prompt, NEW, seed=5)
    assert a.tokens == b.tokens
    assert b.metrics["forwards/top"] == NEW and not any(k in b.metrics for k in ("forwards/draft",
                                                                              "forwards/middle-hybrid"))
    assert b.metrics["plan_rounds/autoregressive"] == NEW


@pytest.mark.parametrize("name", ["spec", "retrieval_spec", "triforce"])
def test_a_fixed_method_never_catches_a_level_up(tiny_setup, name):
    """Its levels all run every round: a level one round left a token behind (every proposal
    accepted) feeds it with the next round's forward, as always — never a catch-up (for a selection
    that would be a re-selection the method did not ask for)."""
    setup = tiny_setup["gqa"]
    method = {**ADAPTIVE[name], "adaptive": False, "gamma": 3, "draft_gamma": 2}
    result = Engine(setup.target, setup.target, method, GREEDY).generate(setup.prompt, NEW, seed=0)  # self-drafting
    below = "draft" if name == "spec" else "middle"
    assert any(r.get(f"accepted/{below}") == r.get(f"proposed/{below}") for r in result.rounds)  # a full accept
    assert "time_s/catchup" not in result.metrics


# chains and trees in turn (the draft's and the hybrid middle's): a tree round after a chain round and
# the reverse leave every level as the other expects
TREE_SCHEDULE = [Plan(("draft", "top"), (2,)), Plan(("draft", "top"), (2,), tree="2-2", tree_parents=(-1, -1, 0, 0, 1, 1)),
                 AUTOREGRESSIVE, Plan(("middle-hybrid", "top"), (3,), tree="3-1-1",
                                      tree_parents=(-1, -1, -1, 0, 1, 2, 3, 4, 5)),
                 Plan(("draft", "middle-hybrid", "top"), (1, 3)), Plan(("middle-hybrid", "top"), (2,))]


@pytest.mark.parametrize("executor", ["eager", "static"])
def test_trees_among_the_plans_equal_greedy(tiny_setup, executor):
    """method=auto with method.trees: scheduled in turn with chains, and chosen by the adaptive planner
    (it may or may not pick a tree: either way the tokens are greedy decoding's), one sequence and a
    ragged batch."""
    setup = tiny_setup["gqa"]
    method = dict(AUTO, trees=[[2, 2], [3, 1, 1]])
    scheduled = engine(setup, method, executor, planner=lambda batch: ScheduledPlanner(TREE_SCHEDULE))
    result = scheduled.generate(setup.prompt, NEW, seed=0)
    assert result.tokens == setup.reference
    ran = {name.removeprefix("plan_rounds/") for name in result.metrics if name.startswith("plan_rounds/")}
    assert ran == {plan.name for plan in TREE_SCHEDULE}
    assert "tree/rank_accept_1" in result.metrics
    adaptive = engine(setup, method, executor).generate(setup.prompt, NEW, seed=0)
    assert adaptive.tokens == setup.reference
    prompts = batch_prompts(setup)
    alone = [Engine(setup.target, None, {"name": "autoregressive"}, GREEDY).generate(p, NEW).tokens for p in prompts]
    assert [r.tokens for r in scheduled.generate(prompts, NEW, seed=0)] == alone


# a cheap draft and a dear top, whatever the measurements: self-drafting then wins every round
AHEAD_COSTS = {**{("draft", n, b): 0.001 for n in range(1, 16) for b in (1, 3)},
               **{("top", n, b): 0.010 for n in range(1, 16) for b in (1, 3)}}
AHEAD_PLANS = {"chain": [AUTOREGRESSIVE, Plan(("draft", "top"), (2,)), Plan(("draft", "top"), (4,))],
               "tree": [AUTOREGRESSIVE, Plan(("draft", "top"), (2,), tree="2-2", tree_parents=(-1, -1, 0, 0, 1, 1))]}


@pytest.mark.parametrize("executor", ["eager", "static"])
@pytest.mark.parametrize("round_kind", list(AHEAD_PLANS))
def test_plans_chosen_while_the_round_verifies_keep_the_tokens(tiny_setup, round_kind, executor):
    """The adaptive planner chooses the next plan while a round's top level verifies (Generation.
    plan_ahead, once the running plan has been read): the rounds it chose so stay exact, for a chain
    and a tree round, one sequence and a ragged batch."""
    setup = tiny_setup["gqa"]
    options = EngineOptions(planner=lambda batch: AdaptivePlanner(
        AHEAD_PLANS[round_kind], batch_size=batch, costs=StepCosts.fixed(AHEAD_COSTS)))
    ahead = Engine(setup.target, setup.target, dict(AUTO, plans=["autoregressive", "spec"]), GREEDY,
                   {"executor": executor}, options)
    result = ahead.generate(setup.prompt, NEW, seed=0)
    assert result.tokens == setup.reference
    assert result.metrics["plan/ahead"] > 0 and result.metrics["plan/ahead"] < len(result.rounds)
    prompts = batch_prompts(setup)
    alone = [Engine(setup.target, None, {"name": "autoregressive"}, GREEDY).generate(p, NEW).tokens for p in prompts]
    batch = ahead.generate(prompts, NEW, seed=0)
    assert [r.tokens for r in batch] == alone and batch.metrics["plan/ahead"] > 0
