"""The plan of a round (triforce/planner.py): plans and their names, the expected speed of a plan
(costs.py), the adaptive choice, its probes while plain decoding wins, acceptance that follows the
text, and the step costs an engine keeps across generations and runs."""

from __future__ import annotations

import math

import pytest

from triforce.config import MethodConfig
from triforce.costs import StepCosts, expected_accepted, plan_speed
from triforce.errors import ConfigError
from triforce.planner import AUTOREGRESSIVE, AdaptivePlanner, Plan, ScheduledPlanner, candidate_plans, plan_of


class View:
    """A generation as a planner sees it: its levels and their byte floors (the draft 100x cheaper)."""
    batch_size = 1
    BYTES = {"draft": 1e6, "middle": 5e7, "middle-streaming": 5e7, "top": 1e8}

    def has_level(self, level: str) -> bool:
        return level in self.BYTES

    def step_bytes(self, level: str, tokens: int) -> float:
        return self.BYTES[level]


SPEC = Plan(("draft", "top"), (4,))
TRIFORCE = Plan(("draft", "middle", "top"), (2, 6))


def test_plans_and_their_names():
    assert AUTOREGRESSIVE.name == "autoregressive" and not AUTOREGRESSIVE.speculative
    assert SPEC.name == "spec g4"
    assert Plan(("middle", "top"), (6,)).name == "retrieval_spec g6"
    assert TRIFORCE.name == "triforce g6/2"
    assert Plan(("draft", "middle-streaming", "top"), (3, 8)).name == "triforce[middle-streaming] g8/3"
    with pytest.raises(ValueError):
        Plan(("draft", "middle"), (2,))  # a chain ends with the top level
    with pytest.raises(ValueError):
        Plan(("draft", "top"), ())  # a gamma per level above the first
    assert plan_of(MethodConfig(name="triforce", gamma=5, draft_gamma=3)) == Plan(("draft", "middle", "top"), (3, 5))
    assert plan_of(MethodConfig(name="autoregressive")) == AUTOREGRESSIVE
    # a tree's rounds are named by the tree (its depth the plan's gamma): not as a chain they are not
    tree = plan_of(MethodConfig(name="spec", tree=(4, 2, 1)))
    assert (tree.chain, tree.gammas, tree.name) == (("draft", "top"), (3,), "spec tree 4-2-1")
    dp = plan_of(MethodConfig(name="retrieval_spec", tree_parents=(-1, -1, 0, 1, 2)))
    assert (dp.chain, dp.gammas, dp.name) == (("middle", "top"), (3,), "retrieval_spec tree n5d3")


def test_candidates_of_auto_and_of_an_adaptive_method():
    auto = MethodConfig(name="auto", plans=("autoregressive", "retrieval_spec", "triforce"),
                        middle_caches=("hybrid", "streaming"), gammas=(2, 4), draft_gammas=(1, 2))
    assert auto.middle_levels == (("middle-hybrid", "hybrid"), ("middle-streaming", "streaming"))
    plans = candidate_plans(auto, [name for name, _ in auto.middle_levels])
    assert plans[0] == AUTOREGRESSIVE and len(plans) == 1 + 2 * 2 + 2 * 2 * 2
    assert Plan(("draft", "middle-streaming", "top"), (1, 4)) in plans
    adaptive = MethodConfig(name="spec", adaptive=True, gammas=(2, 3))
    assert candidate_plans(adaptive, []) == [AUTOREGRESSIVE, Plan(("draft", "top"), (2,)), Plan(("draft", "top"), (3,))]
    assert MethodConfig(name="triforce", adaptive=True, gammas=(2, 9)).lookahead == 9 + 3 + 2  # the largest gammas
    with pytest.raises(ConfigError, match="method.plans"):
        MethodConfig(name="auto", plans=("beam",))
    with pytest.raises(ConfigError, match="nothing to adapt"):
        MethodConfig(name="autoregressive", adaptive=True)
    with pytest.raises(ConfigError, match="method.gammas"):
        MethodConfig(name="spec", adaptive=True, gammas=(0,))


def test_plan_speed_is_tokens_per_round_over_the_round_s_seconds():
    assert expected_accepted(0.0, 5) == 1 and expected_accepted(1.0, 5) == 6
    assert math.isclose(expected_accepted(0.5, 2), 1 + 0.5 + 0.25)
    assert plan_speed([0.01], (), ()) == pytest.approx(100)  # plain decoding: one token a step
    # two levels: gamma draft steps and one verify per round
    assert plan_speed([0.001, 0.012], (0.8,), (4,)) == pytest.approx(expected_accepted(0.8, 4) / (4 * 0.001 + 0.012))
    # three levels: the middle needs gamma / E(draft) rounds of (draft_gamma draft steps + a middle forward)
    e1, e2 = expected_accepted(0.9, 2), expected_accepted(0.7, 6)
    assert plan_speed([0.001, 0.004, 0.012], (0.9, 0.7), (2, 6)) == pytest.approx(
        e2 / (6 / e1 * (2 * 0.001 + 0.004) + 0.012))


def timed_planner(plans, batch_size=1, **kw) -> AdaptivePlanner:
    """A planner whose levels' steps were measured: draft 1 ms, middle 5 ms, top 10 ms (any width)."""
    planner = AdaptivePlanner(plans, batch_size=batch_size, **kw)
    for level, seconds in (("draft", 0.001), ("middle", 0.005), ("top", 0.010)):
        for tokens in range(1, 10):
            planner.timed(level, tokens, seconds)
    return planner


def observe(planner: AdaptivePlanner, plan: Plan, alphas: dict, rounds: int = 30, rows: int = 1) -> None:
    """Rounds of `plan` whose boundaries accept at the given per-token rates (their expectation)."""
    for _ in range(rounds):
        for lower, upper in plan.boundaries():
            gamma = plan.gammas[plan.chain.index(upper) - 1]
            accepted = round(expected_accepted(alphas[(lower, upper)], gamma) - 1)
            for row in range(rows):
                planner.verified(lower, upper, row, gamma, min(accepted, gamma))


def test_speculation_where_it_pays_plain_decoding_where_it_does_not():
    plans = [AUTOREGRESSIVE, SPEC, TRIFORCE]
    view = View()
    planner = timed_planner(plans)
    observe(planner, TRIFORCE, {("draft", "middle"): 0.95, ("middle", "top"): 0.95})
    observe(planner, SPEC, {("draft", "top"): 0.3})
    assert planner.choose(view, [True]) == TRIFORCE
    collapsed = timed_planner(plans)
    observe(collapsed, TRIFORCE, {("draft", "middle"): 0.05, ("middle", "top"): 0.05})
    observe(collapsed, SPEC, {("draft", "top"): 0.05})
    assert collapsed.choose(view, [True]) == AUTOREGRESSIVE


def test_plain_decoding_still_probes_speculation_and_backs_off():
    view = View()
    planner = timed_planner([AUTOREGRESSIVE, SPEC], probe_every=4, max_probe_every=16)
    observe(planner, SPEC, {("draft", "top"): 0.0})
    choices = []
    for _ in range(60):
        plan = planner.choose(view, [True])
        choices.append(plan)
        if plan.speculative:
            observe(planner, SPEC, {("draft", "top"): 0.0}, rounds=1)
    probes = [i for i, plan in enumerate(choices) if plan.speculative]
    # one round in 4 is a probe, then one in 8, then one in 16 (the cap)
    assert probes[0] < 4 and [b - a for a, b in zip(probes, probes[1:])][:3] == [8, 16, 16]
    assert planner.probes == len(probes) and choices.count(AUTOREGRESSIVE) > 50


def test_acceptance_follows_text_whose_difficulty_changes():
    planner = timed_planner([AUTOREGRESSIVE, SPEC], memory_rounds=4)
    observe(planner, SPEC, {("draft", "top"): 0.95}, rounds=40)
    assert planner.alpha("draft", "top") > 0.85
    assert planner.choose(View(), [True]) == SPEC
    observe(planner, SPEC, {("draft", "top"): 0.0}, rounds=16)  # four half-lives later
    assert planner.alpha("draft", "top") < 0.3
    assert planner.choose(View(), [True]) == AUTOREGRESSIVE


def test_an_unseen_draft_to_middle_boundary_starts_from_the_draft_to_top_acceptance():
    """A middle is the target over part of its cache: before any round verified the draft against a
    middle, the draft's acceptance against the target is the better guess than the optimistic prior,
    so a draft the target rejects does not make the three-level chains look worth a probe."""
    view = View()
    planner = timed_planner([AUTOREGRESSIVE, SPEC, TRIFORCE])
    assert planner.alpha("draft", "middle") == AdaptivePlanner.PRIOR  # nothing measured: the prior
    observe(planner, SPEC, {("draft", "top"): 0.05})
    assert planner.alpha("draft", "middle") == pytest.approx(planner.alpha("draft", "top"))
    assert planner.alpha("draft", "middle", row=0) == pytest.approx(planner.alpha("draft", "top"))
    assert planner.alpha("middle", "top") == AdaptivePlanner.PRIOR  # only the draft's boundaries borrow
    assert planner.choose(view, [True]) == AUTOREGRESSIVE  # the old prior (0.8) chose TRIFORCE here
    # once a round verified the draft against the middle, that boundary's own counts take over
    observe(planner, TRIFORCE, {("draft", "middle"): 0.95, ("middle", "top"): 0.95})
    assert planner.alpha("draft", "middle") > 0.8


def test_the_next_plan_is_chosen_ahead_only_once_the_running_plan_has_been_read():
    """choose_ahead (called while a round verifies): None for a plan's first round in a row (its outcome
    must be read before the next choice) and while plain decoding runs; afterwards the same choice
    choose makes from the same estimates, counted as made ahead."""
    view = View()
    planner = timed_planner([AUTOREGRESSIVE, SPEC])
    assert planner.choose_ahead(view, [True]) is None  # nothing ran yet
    observe(planner, SPEC, {("draft", "top"): 0.9})
    assert planner.choose(view, [True]) == SPEC
    assert planner.choose_ahead(view, [True]) is None  # SPEC's first round in a row is running
    assert planner.choose(view, [True]) == SPEC
    assert planner.choose_ahead(view, [True]) == SPEC and planner.ahead == 1
    observe(planner, SPEC, {("draft", "top"): 0.0}, rounds=40)
    assert planner.choose_ahead(view, [True]) == AUTOREGRESSIVE and planner.ahead == 2
    assert planner.choose_ahead(view, [True]) is None  # plain decoding: chosen after its step, for free
    assert planner.describe()["plan/ahead"] == 2


def test_the_triangle_bound_and_the_second_look_it_sends():
    """bound: acceptance is 1 - TV, so alpha(x, y) >= alpha(x, z) + alpha(z, y) - 1 from measured
    boundaries (either order). second_look: while a speculative plan runs, every probe_every rounds,
    a plan of another chain runs once where the bound says it would beat the choice; none where the
    bound raises nothing, and the interval doubles."""
    view = View()
    planner = timed_planner([AUTOREGRESSIVE, SPEC, TRIFORCE], probe_every=4, max_probe_every=16)
    assert planner.bound("draft", "top") == 0.0  # nothing measured
    observe(planner, SPEC, {("draft", "top"): 0.0}, rounds=1)  # one unlucky spec round: 0 of 4 accepted
    observe(planner, TRIFORCE, {("draft", "middle"): 0.95, ("middle", "top"): 0.95}, rounds=30)
    implied = planner.alpha("draft", "middle") + planner.alpha("middle", "top") - 1
    assert planner.bound("draft", "top") == pytest.approx(implied) and implied > 0.8
    assert planner.bound("top", "draft") == pytest.approx(implied)
    assert planner.alpha("draft", "top") < 0.6  # its own estimate: the one unlucky round
    choices = [planner.choose(view, [True]) for _ in range(40)]
    assert choices[0] == TRIFORCE  # by the estimates, TriForce wins ...
    looks = [i for i, plan in enumerate(choices) if plan == SPEC]  # ... but spec is looked at again,
    assert looks == [3, 11, 27] and planner.second_looks == 3 == planner.probes  # every 4, 8, 16 rounds
    # where the other boundaries imply nothing better, no second look
    plain = timed_planner([AUTOREGRESSIVE, SPEC, TRIFORCE], probe_every=4)
    observe(plain, SPEC, {("draft", "top"): 0.0}, rounds=1)
    observe(plain, TRIFORCE, {("draft", "middle"): 0.4, ("middle", "top"): 0.95}, rounds=30)
    assert plain.bound("draft", "top") < plain.alpha("draft", "top")
    for _ in range(40):
        plain.choose(view, [True])
    assert plain.second_looks == 0


def test_a_batch_plans_for_the_sum_of_its_rows_and_its_slowest_middle():
    """Rows that accept differently: a batch's round takes as many middle rounds as its slowest row
    needs, and yields the sum of its rows' tokens."""
    view = View()
    one = timed_planner([AUTOREGRESSIVE, TRIFORCE], batch_size=2)
    for row, (a_draft, a_middle) in enumerate(((0.9, 0.9), (0.2, 0.6))):
        for _ in range(30):
            one.verified("draft", "middle", row, 2, round(expected_accepted(a_draft, 2) - 1))
            one.verified("middle", "top", row, 6, round(expected_accepted(a_middle, 6) - 1))
    tokens = sum(expected_accepted(one.alpha("middle", "top", b), 6) for b in range(2))
    slowest = min(expected_accepted(one.alpha("draft", "middle", b), 2) for b in range(2))
    seconds = 6 / slowest * (2 * 0.001 + 0.005) + 0.010
    assert one.speed(view, TRIFORCE, [True, True]) == pytest.approx(tokens / seconds)
    assert one.speed(view, AUTOREGRESSIVE, [True, False]) == pytest.approx(100)  # one active row


def test_a_schedule_runs_its_plans_in_turn():
    planner = ScheduledPlanner([AUTOREGRESSIVE, SPEC, TRIFORCE])
    assert [planner.choose(View(), [True]) for _ in range(5)] == [AUTOREGRESSIVE, SPEC, TRIFORCE, AUTOREGRESSIVE, SPEC]


def test_step_costs_follow_the_last_forwards_and_survive_a_run(tmp_path):
    costs = StepCosts(halflife=2)
    for _ in range(20):
        costs.add("top", 7, 4, 0.010)
    for _ in range(6):
        costs.add("top", 7, 4, 0.020)
    assert 0.017 < costs.seconds("top", 7, 4) < 0.020  # mostly the recent forwards
    assert costs.seconds("top", 7, 1) is None
    costs.about = {"device": "NVIDIA H100 80GB HBM3"}
    costs.save(tmp_path / "costs.json")
    again = StepCosts.load(tmp_path / "costs.json", halflife=2)
    assert again.seconds("top", 7, 4) == pytest.approx(costs.seconds("top", 7, 4))
    assert again.about == costs.about
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="bad.json"):
        StepCosts.load(tmp_path / "bad.json")


def test_an_unmeasured_width_costs_what_the_measured_widths_imply():
    """Where a forward's cost grows with its tokens (a CPU, a large batch), a verify of a width no
    round has run yet is priced from the measured ones (the per-token slope they show), not from its
    byte floor, which is the same for every width: otherwise every new gamma looks as cheap as a
    plain step and is explored in turn."""
    view = View()
    planner = AdaptivePlanner([AUTOREGRESSIVE, SPEC], batch_size=1)
    planner.timed("top", 1, 0.100)
    planner.timed("top", 3, 0.140)  # 20 ms per token more
    assert planner.step_seconds(view, "top", 5) == pytest.approx(0.180)  # the slope, from the nearest width
    assert planner.step_seconds(view, "top", 2) == pytest.approx(0.120)
    # a level never timed: its byte floor at the measured seconds per byte, and the slope scaled to its
    # bytes (the middle's 5e7 bytes against the top's 1e8: half the top's slope)
    assert planner.step_seconds(view, "middle", 1) == pytest.approx(0.050)
    assert planner.step_seconds(view, "middle", 3) == pytest.approx(0.050 + 2 * 0.010)
    # flat costs (a GPU at batch 1, offloading): widths stay as cheap as the measured ones
    flat = AdaptivePlanner([AUTOREGRESSIVE, SPEC], batch_size=1)
    flat.timed("top", 1, 0.100)
    flat.timed("top", 3, 0.099)
    assert flat.step_seconds(view, "top", 8) == pytest.approx(0.099)
    # nothing measured at two widths: the byte floor alone (the optimistic prior)
    one = AdaptivePlanner([AUTOREGRESSIVE, SPEC], batch_size=1)
    one.timed("top", 1, 0.100)
    assert one.step_seconds(view, "top", 7) == pytest.approx(0.100)


def test_trees_are_candidates_of_two_level_chains():
    auto = MethodConfig(name="auto", plans=("autoregressive", "spec", "retrieval_spec", "triforce"),
                        middle_caches=("hybrid",), gammas=(2,), draft_gammas=(1,), trees=((2, 1), (4,)))
    plans = candidate_plans(auto, ["middle-hybrid"])
    trees = [p for p in plans if p.tree]
    assert {(p.chain, p.tree) for p in trees} == {(("draft", "top"), "2-1"), (("draft", "top"), "4"),
                                                  (("middle-hybrid", "top"), "2-1"), (("middle-hybrid", "top"), "4")}
    two_one = next(p for p in trees if p.tree == "2-1" and p.chain[0] == "draft")
    assert two_one.name == "spec tree 2-1" and two_one.gammas == (2,) and two_one.tree_parents == (-1, -1, 0, 1)
    # the level below after the root and over depth 1's two nodes; the top over the root and 4 nodes
    assert two_one.forwards() == [("draft", 1), ("draft", 2), ("top", 5)]
    assert auto.lookahead >= 4 + 2  # the largest tree's nodes are a round's proposals
    with pytest.raises(ConfigError, match="two-level chain"):
        MethodConfig(name="triforce", adaptive=True, trees=((2, 1),))
    with pytest.raises(ConfigError, match="two-level chain"):
        MethodConfig(name="spec", trees=((2, 1),))  # not adaptive: a fixed tree is method.tree
    with pytest.raises(ConfigError, match="positive widths"):
        MethodConfig(name="spec", adaptive=True, trees=((2, 0),))


def test_a_tree_wins_where_the_top_costs_the_same_for_any_width_and_later_ranks_accept():
    """Offloading-like: a top forward costs the same for 1 token or 100 (here 100 ms), the draft's steps
    1-2 ms. Where a rejected first child's siblings are often accepted (measured by rank), the tree's
    expected path beats the chain of the same depth; where they never are, the chain (the same path,
    cheaper forwards of the draft) stays ahead."""
    chain = Plan(("draft", "top"), (3,))
    tree = Plan(("draft", "top"), (3,), tree="4-1-1", tree_parents=(-1, -1, -1, -1, 0, 1, 2, 3, 4, 5, 6, 7))
    view = View()

    def planner_with(second_rank: float) -> AdaptivePlanner:
        planner = AdaptivePlanner([AUTOREGRESSIVE, chain, tree], batch_size=1)
        for tokens in range(1, 20):
            planner.timed("draft", tokens, 0.001 if tokens == 1 else 0.002)  # a depth of 4 nodes costs more
            planner.timed("top", tokens, 0.100)
        for _ in range(200):  # visits: the first child accepted at 0.6, the second at `second_rank`
            planner.tree_verified("draft", "top", 0, [(4, 0)] * 6 + [(4, 1)] * round(10 * second_rank)
                                  + [(4, None)] * (4 - round(10 * second_rank)))
        return planner

    good = planner_with(0.3)
    assert good.rank_accept("draft", "top", 2) == pytest.approx([0.6, 0.3])
    assert good.choose(view, [True]) == tree
    poor = planner_with(0.0)
    assert poor.rank_accept("draft", "top", 2) == pytest.approx([0.6, 0.0])
    assert poor.choose(view, [True]) == chain
    # before any tree round: the first rank is the boundary's alpha, later ones fresh trials at it
    fresh = AdaptivePlanner([chain, tree], batch_size=1)
    fresh.verified("draft", "top", 0, 4, 2)
    a = fresh.alpha("draft", "top")
    assert fresh.rank_accept("draft", "top", 3) == pytest.approx([a, a * (1 - a), a * (1 - a) ** 2])
