"""Which levels run each round, and how many tokens each asks of the one below: the plan of a round,
chosen before it from what the rounds so far measured (docs/DESIGN.md §12).

    plan = planner.choose(view)     # before a top-level round (host arithmetic only)
    ... the round runs the plan's chain ...
    planner.observe(view)           # after it: acceptance counts and step times it produced

A `Plan` is a chain of levels, cheapest first, ending with the top level, and the gamma each level
asks of the one below: `("top",)` is plain autoregressive decoding (the very step `method=
autoregressive` runs), `("draft", "top")` / `("middle", "top")` two levels, `("draft", "middle",
"top")` TriForce. Planners:

- `FixedPlanner`: the method's own plan, every round (every method without `adaptive`);
- `ScheduledPlanner`: a fixed cycle of plans (tests: switching every round must stay exact);
- `AdaptivePlanner` (`method=auto`, or `method.adaptive=true`): the candidate plan with the highest
  expected tokens per second under the cost model and the acceptance estimates; when that is
  autoregressive decoding it still probes the best speculative plan now and then, so that its
  estimates do not go stale.

**Why a plan chosen this way keeps the output exact.** Every round is an exact speculative step
whatever the proposer (docs/DESIGN.md §2): given the tokens so far, the tokens a round emits are
distributed as the target's own sampling, for any chain and any gammas. A plan is a function of the
past only (the tokens emitted and the counts and timings the earlier rounds made), never of the
round's own random draws, so conditioned on the past each round is one such exact step, and by
induction the whole sequence is distributed as plain sampling from the target with its full cache.

**The cost model.** Each level's step time per (level, tokens per sequence), measured from the
forwards the rounds run (device time of each captured replay, read after the round's one
synchronisation; host time on a CPU) with a short memory; where a forward has not run yet, its byte
floor (weights once, every sequence's KV: costs.step_bytes) times the seconds per byte the measured
forwards show (an optimistic prior of the device's bandwidth before any is measured), and no less than
the measured widths imply (the per-token slope they show: a compute-bound forward grows with its tokens).

**Acceptance.** Per level boundary (lower, upper), the per-token acceptance alpha as the truncated
geometric estimate accepted / (accepted + rejections), pooled over the batch and per sequence, with
an exponential memory of `memory_rounds` rounds so that it follows text whose difficulty changes.
A batch's plan maximises the sum of its sequences' expected tokens over the round's time (every
sequence waits for the round).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol, Sequence

from triforce.costs import StepCosts, expected_accepted
from triforce.tree import Tree, candidate_trees, method_tree
from triforce.tree_shapes import expected_accepted as tree_expected

TOP = "top"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A round's chain of levels, cheapest first, ending with the top level; gammas[i]: the tokens
    level i + 1 asks of level i per round (len(chain) - 1 of them)."""
    chain: tuple[str, ...]
    gammas: tuple[int, ...] = ()
    # a token tree at the top (two-level chains): its label (MethodConfig.tree_label) and each node's
    # parent (triforce.tree.Tree); gammas: its depth
    tree: str = ""
    tree_parents: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.chain or self.chain[-1] != TOP or len(self.gammas) != len(self.chain) - 1:
            raise ValueError(f"a plan's chain ends with {TOP!r} and has a gamma per level above the first: {self}")

    @property
    def speculative(self) -> bool:
        return len(self.chain) > 1

    @functools.cached_property
    def name(self) -> str:  # (cached: every round logs its plan by name, every row records it)
        """autoregressive, spec g4, retrieval_spec g6, triforce[middle-streaming] g6/2 (the top's
        gamma first; a middle other than the method's own `middle` named in brackets), spec tree 4-2-1."""
        if not self.speculative:
            return "autoregressive"
        middles = [level for level in self.chain if level.startswith("middle")]
        draft = "draft" in self.chain
        kind = "triforce" if draft and middles else "spec" if draft else "retrieval_spec"
        which = f"[{middles[0]}]" if middles and middles[0] != "middle" else ""
        if self.tree:
            return f"{kind}{which} tree {self.tree}"
        return f"{kind}{which} g{'/'.join(str(g) for g in reversed(self.gammas))}"

    @property
    def kind(self) -> tuple[str, ...]:
        """What a round of the plan does, whatever its gammas: its chain, and its tree if any (a tree
        round's own work is not a chain round's)."""
        return self.chain + ((f"tree {self.tree}",) if self.tree else ())

    @functools.cached_property
    def token_tree(self) -> Tree | None:
        """The plan's tree (None: a chain)."""
        return Tree(self.tree_parents) if self.tree_parents else None

    def forwards(self) -> list[tuple[str, int]]:
        """(level, tokens per sequence) of the forwards a round runs, a tree's: the level below's
        after the root and over each depth's nodes but the last, the top's over the root and every
        node (a chain's: see AdaptivePlanner.round)."""
        tree = self.token_tree
        widths = [tree.depths.count(d) for d in range(1, tree.depth)]  # the depths the level below runs
        return [(self.chain[0], 1), *((self.chain[0], w) for w in widths), (self.chain[-1], tree.size + 1)]

    def boundaries(self) -> list[tuple[str, str]]:
        return list(zip(self.chain, self.chain[1:]))


AUTOREGRESSIVE = Plan((TOP,))


class PlannerView(Protocol):
    """What a planner reads of a generation (engine.Generation)."""
    batch_size: int

    def has_level(self, level: str) -> bool: ...

    def step_bytes(self, level: str, tokens: int) -> int: ...


class Planner(Protocol):
    def choose(self, view: PlannerView, active: Sequence[bool]) -> Plan: ...

    def choose_ahead(self, view: PlannerView, active: Sequence[bool]) -> Plan | None: ...

    def verified(self, lower: str, upper: str, row: int, proposed: int, accepted: int) -> None: ...

    def tree_verified(self, lower: str, upper: str, row: int, visits) -> None: ...

    def timed(self, level: str, tokens: int, seconds: float) -> None: ...

    def round_overhead(self, plan: Plan, seconds: float, forwards: int) -> None: ...

    def caught_up(self, level: str, seconds: float) -> None: ...

    def stepped(self, plan: Plan, emitted: int, seconds: float, predicted: float | None) -> None: ...


class PlanLog:
    """What the rounds of each plan did: rounds, tokens emitted (all sequences), wall seconds, and
    the tokens the planner expected (its predicted tokens/s times the round's seconds)."""

    def __init__(self):
        self.rounds: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.predicted_tokens: dict[str, float] = {}
        self.switches = 0
        self._last: str | None = None

    def add(self, plan: Plan, emitted: int, seconds: float, predicted: float | None) -> None:
        name = plan.name
        self.switches += self._last is not None and name != self._last
        self._last = name
        self.rounds[name] = self.rounds.get(name, 0) + 1
        self.tokens[name] = self.tokens.get(name, 0) + emitted
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if predicted is not None:
            self.predicted_tokens[name] = self.predicted_tokens.get(name, 0.0) + predicted * seconds

    def describe(self) -> dict[str, float]:
        """plan_rounds/, plan_tokens/, plan_s/, plan_tokens_per_s/ and plan_predicted_tokens_per_s/
        per plan (docs/DESIGN.md §9), and plan/switches."""
        out: dict[str, float] = {"plan/switches": self.switches}
        for name, rounds in self.rounds.items():
            seconds = self.seconds[name]
            out[f"plan_rounds/{name}"] = rounds
            out[f"plan_tokens/{name}"] = self.tokens[name]
            out[f"plan_s/{name}"] = seconds
            if seconds > 0:
                out[f"plan_tokens_per_s/{name}"] = self.tokens[name] / seconds
                if name in self.predicted_tokens:
                    out[f"plan_predicted_tokens_per_s/{name}"] = self.predicted_tokens[name] / seconds
        return out


class _Observer:
    """What every planner does with the rounds' observations: logs each plan's rounds."""

    def __init__(self):
        self.log = PlanLog()
        self.predicted: float | None = None

    def choose_ahead(self, view: PlannerView, active: Sequence[bool]) -> Plan | None:
        """The next round's plan, chosen while this round's verification is in flight, or None: choose
        it after this round, as usual (AdaptivePlanner.choose_ahead)."""
        return None

    def verified(self, lower: str, upper: str, row: int, proposed: int, accepted: int) -> None:
        pass

    def tree_verified(self, lower: str, upper: str, row: int, visits) -> None:
        """A tree round's verdict for one row: for each node the rule visited that had children,
        (its children, the rank accepted or None) — tree.TreeVerdict.visits."""

    def timed(self, level: str, tokens: int, seconds: float) -> None:
        pass

    def stepped(self, plan: Plan, emitted: int, seconds: float, predicted: float | None) -> None:
        self.log.add(plan, emitted, seconds, predicted)

    def round_overhead(self, plan: Plan, seconds: float, forwards: int) -> None:
        pass

    def caught_up(self, level: str, seconds: float) -> None:
        pass

    def describe(self) -> dict[str, float]:
        return self.log.describe()


class FixedPlanner(_Observer):
    """The method's own plan, every round."""

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def choose(self, view: PlannerView, active: Sequence[bool]) -> Plan:
        return self.plan


class ScheduledPlanner(_Observer):
    """`plans` in turn, one per top-level round (tests: a switch every round must stay exact)."""

    lazy = True  # levels are prefilled when a plan first runs them (engine.Generation._use)

    def __init__(self, plans: Sequence[Plan]):
        super().__init__()
        self.plans, self.rounds = list(plans), 0

    def choose(self, view: PlannerView, active: Sequence[bool]) -> Plan:
        plan = self.plans[self.rounds % len(self.plans)]
        self.rounds += 1
        return plan


class Decayed:
    """An exponentially decayed sum: recent observations weigh most (half-life in observations)."""

    def __init__(self, halflife: float):
        self.keep = 0.5 ** (1 / max(halflife, 1e-9))
        self.value = 0.0

    def add(self, x: float) -> None:
        self.value = self.value * self.keep + x


@dataclasses.dataclass
class Acceptance:
    """Per-token acceptance at one level boundary: accepted and rejections, decayed per round."""
    halflife: float
    prior: float
    prior_weight: float = 2.0  # pseudo-observations of the prior (before any round ran this boundary)
    accepted: Decayed = None
    rejected: Decayed = None
    rounds: int = 0

    def __post_init__(self) -> None:
        # the prior as pseudo-observations that fade like real ones
        self.accepted, self.rejected = Decayed(self.halflife), Decayed(self.halflife)
        self.accepted.value = self.prior * self.prior_weight
        self.rejected.value = (1 - self.prior) * self.prior_weight

    def add(self, proposed: int, accepted: int) -> None:
        self.accepted.add(accepted)
        self.rejected.add(1.0 if accepted < proposed else 0.0)
        self.rounds += 1

    def add_trials(self, accepted: int, rejected: int) -> None:
        """A round of independent trials (a tree round's first children: each drawn from the
        proposer and accepted with probability alpha), counted as one round."""
        self.accepted.add(accepted)
        self.rejected.add(rejected)
        self.rounds += 1

    @property
    def alpha(self) -> float:
        """accepted / (accepted + rejections), the truncated geometric's estimate (near the prior
        while few rounds have been seen)."""
        a, r = self.accepted.value, self.rejected.value
        return a / (a + r) if a + r > 0 else self.prior


class AdaptivePlanner(_Observer):
    """The candidate plan with the highest expected tokens per second; autoregressive decoding when
    nothing beats it, probing the best speculative plan every `probe_every` rounds (the interval
    doubles while the probes confirm autoregressive decoding, up to `max_probe_every`).

    Leaving the running plan costs what the plan's new levels take to catch up (measured per level,
    spread over `memory_rounds` rounds of the new plan) and must gain `switch_margin` of the speed:
    a plan that is only as fast as the running one is not worth the catch-up and the estimates'
    noise."""

    lazy = True  # a level is prefilled when a plan first runs it: a level no plan runs costs nothing

    # what is assumed of a boundary before any round ran it (unless `prior` knows better): optimistic
    # enough that speculation is tried first (its first rounds measure it)
    PRIOR = 0.8
    # the rounds in a row a plan has run before the next choice is made while its round runs
    # (choose_ahead): from the second on, the plan's own first round has been read
    AHEAD_AFTER = 2

    def __init__(self, plans: Sequence[Plan], *, batch_size: int, costs: StepCosts | None = None,
                 memory_rounds: float = 8.0, probe_every: int = 8, max_probe_every: int = 256,
                 switch_margin: float = 0.03):
        if not plans:
            raise ValueError("an adaptive planner needs at least one candidate plan")
        super().__init__()
        self.plans = list(plans)
        self.batch_size = batch_size
        self.memory_rounds = memory_rounds
        self.probe_every, self.max_probe_every = probe_every, max_probe_every
        self.pooled: dict[tuple[str, str], Acceptance] = {}
        self.rows: dict[tuple[str, str, int], Acceptance] = {}
        # per boundary, a tree rule's acceptance by child rank: (offered, accepted) decayed per rank
        self.ranks: dict[tuple[str, str], list[tuple[Decayed, Decayed]]] = {}
        # step costs: the engine's (they outlive a generation; the engine records every forward in
        # them), else this planner's own, kept from what `timed` tells it
        self.costs = costs if costs is not None else StepCosts(memory_rounds)
        self._keeps_costs = costs is None
        # fixed step costs (tests): the rounds' measured wall times (overheads, catch-ups) are left out
        # too, so that the choices follow from the seed's acceptance alone and a seed reproduces its tokens
        self._measures_time = not self.costs.frozen
        # per chain: a round's seconds beyond its forwards' device time, and its forwards (decayed)
        self.overhead: dict[tuple[str, ...], tuple[Decayed, Decayed]] = {}
        self.catch_up: dict[str, tuple[Decayed, Decayed]] = {}  # per level: seconds, catch-ups
        self.switch_margin = switch_margin
        self._since_probe = 0
        self._probe_interval = probe_every
        self._since_look = 0  # rounds of speculative plans since the last second look (second_look)
        self._chosen: Plan | None = None  # the last speculative plan the estimates chose (not a look)
        self._look_interval = probe_every
        self._last: Plan | None = None
        self._streak = 0  # rounds in a row the last plan was chosen
        self.probes = 0  # speculative rounds run only to measure again while plain decoding wins
        self.second_looks = 0  # of them, those run while another speculative plan wins (second_look)
        self.ahead = 0  # choices made while the round before was still running (choose_ahead)

    # -- observations ------------------------------------------------------------------------
    def verified(self, lower: str, upper: str, row: int, proposed: int, accepted: int) -> None:
        key = (lower, upper)
        # pooled: every sequence's round counts, so its memory spans as many rounds as a row's
        self._acceptance(self.pooled, key, self.memory_rounds * self.batch_size).add(proposed, accepted)
        self._acceptance(self.rows, (*key, row), self.memory_rounds).add(proposed, accepted)

    def tree_verified(self, lower: str, upper: str, row: int, visits) -> None:
        """A tree round's visits: each a trial of the first child, drawn from the proposer as a chain's
        proposal is (the boundary's alpha), and of the later ranks (the acceptance by rank a tree's
        expected tokens are computed from: tree_shapes.expected_accepted)."""
        if not visits:
            return
        # one observation per row and round, as a chain's round is (the same memory in rounds)
        first = sum(1 for _, rank in visits if rank == 0)
        for table, key, halflife in ((self.pooled, (lower, upper), self.memory_rounds * self.batch_size),
                                     (self.rows, (lower, upper, row), self.memory_rounds)):
            self._acceptance(table, key, halflife).add_trials(first, len(visits) - first)
        width = max(children for children, _ in visits)
        ranks = self.ranks.setdefault((lower, upper), [])
        while len(ranks) < width:
            ranks.append((Decayed(self.memory_rounds * self.batch_size), Decayed(self.memory_rounds * self.batch_size)))
        for k in range(width):
            offered, accepted = ranks[k]
            offered.add(float(sum(1 for children, _ in visits if children > k)))
            accepted.add(float(sum(1 for _, rank in visits if rank == k)))

    def rank_accept(self, lower: str, upper: str, width: int) -> list[float]:
        """The probability that a visited node's (k + 1)-th child is the one accepted, k < width:
        measured where tree rounds offered that rank; before, the first is the boundary's alpha and
        each later one as if every child were a fresh trial at alpha (alpha (1 - alpha)^k)."""
        a = self.alpha(lower, upper)
        measured = self.ranks.get((lower, upper), [])
        out = []
        for k in range(width):
            if k < len(measured) and measured[k][0].value > 0:
                out.append(measured[k][1].value / measured[k][0].value)
            else:
                out.append(a * (1 - a) ** k)
        return out

    def _acceptance(self, table: dict, key, halflife: float) -> Acceptance:
        if key not in table:
            table[key] = Acceptance(halflife, self.prior(key[0], key[1]))
        return table[key]

    def prior(self, lower: str, upper: str) -> float:
        """What a boundary no round has verified yet is assumed to accept: a middle is the target over
        part of its cache, so a proposer's acceptance against a middle starts from its acceptance
        against the top where that was measured (a draft the target rejects makes no three-level
        chain worth a probe); otherwise the optimistic PRIOR, so that speculation is tried."""
        if upper != TOP:
            measured = self.pooled.get((lower, TOP))
            if measured is not None:
                return measured.alpha
        return self.PRIOR

    def timed(self, level: str, tokens: int, seconds: float) -> None:
        if self._keeps_costs:
            self.costs.add(level, tokens, self.batch_size, seconds)

    def round_overhead(self, plan: Plan, seconds: float, forwards: int) -> None:
        """A round's wall time beyond its forwards' device time (sampling and verification between
        them, host work, launches, the synchronisation), per forward of the plan's chain: what a plan
        of many small forwards pays beyond their bytes. Kept per chain: a speculative round's
        verification costs what a plain step does not, and one chain's cost must not lend its
        speed to another."""
        if forwards > 0 and self._measures_time:
            s, n = self.overhead.setdefault(plan.kind, (Decayed(self.memory_rounds), Decayed(self.memory_rounds)))
            s.add(max(seconds, 0.0))
            n.add(float(forwards))

    def caught_up(self, level: str, seconds: float) -> None:
        """A level that sat out took `seconds` to catch up with the sequence (engine.Generation._use)."""
        if not self._measures_time:
            return
        s, n = self.catch_up.setdefault(level, (Decayed(self.memory_rounds), Decayed(self.memory_rounds)))
        s.add(seconds)
        n.add(1.0)

    # -- the model -----------------------------------------------------------------------------
    def step_seconds(self, view: PlannerView, level: str, tokens: int, memo: dict | None = None) -> float:
        """A forward of `level` over `tokens` new tokens per sequence: measured, else its byte floor
        times the measured seconds per byte. `memo`: one choice's, shared by its plans."""
        memo = {} if memo is None else memo
        if (level, tokens) not in memo:
            seconds = self.costs.seconds(level, tokens, self.batch_size)
            if seconds is None:
                if "widths" not in memo:
                    memo["widths"] = self._widths_measured(view)
                    memo["seconds/byte"] = self._seconds_per_byte(view, memo["widths"])
                seconds = view.step_bytes(level, tokens) * memo["seconds/byte"]
                seconds = max(seconds, self._by_width(view, level, tokens, memo["widths"], seconds))
            memo[(level, tokens)] = seconds
        return memo[(level, tokens)]

    def _widths_measured(self, view: PlannerView) -> dict[str, list[tuple[int, float]]]:
        """Per level of the generation, its measured (tokens, seconds) at this batch size, fewest
        tokens first."""
        widths: dict[str, list[tuple[int, float]]] = {}
        for (level, tokens, batch), s in self.costs.measured():
            if batch == self.batch_size and view.has_level(level):
                widths.setdefault(level, []).append((tokens, s))
        return {level: sorted(points) for level, points in widths.items()}

    def _by_width(self, view: PlannerView, level: str, tokens: int, widths: dict, floor: float) -> float:
        """An unmeasured width of a level priced from the widths measured: the nearest width's seconds
        (or the byte estimate `floor` where the level never ran) plus the per-token slope the measured
        widths show — the level's own, else the least of the others' per byte of a one-token step,
        scaled to this level's (a forward's cost grows with its tokens where it is compute-bound: a
        CPU, a large batch; a byte floor is the same for every width, and every new gamma would look as
        cheap as a plain step). `floor` itself where no level was measured at two widths."""
        def slope(points: list[tuple[int, float]]) -> float:  # two or more distinct widths, sorted
            (t0, s0), (t1, s1) = points[0], points[-1]
            return max(0.0, (s1 - s0) / (t1 - t0))

        own = widths.get(level, [])
        per_token = slope(own) if len(own) > 1 else None
        if per_token is None:
            per_byte = [slope(points) / view.step_bytes(other, 1) for other, points in widths.items()
                        if len(points) > 1]
            if not per_byte:
                return floor
            per_token = min(per_byte) * view.step_bytes(level, 1)
        if not own:
            return floor + per_token * (tokens - 1)
        near, seconds = min(own, key=lambda point: abs(point[0] - tokens))
        return seconds + per_token * (tokens - near)

    def _seconds_per_byte(self, view: PlannerView, widths: dict) -> float:
        measured = [(s, view.step_bytes(level, tokens)) for level, points in widths.items() for tokens, s in points]
        if measured:
            return min(s / max(b, 1) for s, b in measured)  # the cheapest per byte: an optimistic prior
        return 1e-12  # nothing measured yet: the speeds only compare with each other

    def alpha(self, lower: str, upper: str, row: int | None = None) -> float:
        table, key = (self.pooled, (lower, upper)) if row is None else (self.rows, (lower, upper, row))
        entry = table.get(key) or self.pooled.get((lower, upper))
        return entry.alpha if entry is not None else self.prior(lower, upper)

    def seen(self, plan: Plan) -> bool:
        """Every boundary of the plan has been verified in some round (pooled over the batch)."""
        return all(key in self.pooled for key in plan.boundaries())

    def measured(self, plan: Plan) -> bool:
        """Every forward the plan runs has been timed (its speed is then a prediction, not a prior)."""
        steps = [(plan.chain[0], 1), *((level, g + 1) for level, g in zip(plan.chain[1:], plan.gammas))]
        if plan.tree:
            steps = plan.forwards()
        return all(self.costs.seconds(level, tokens, self.batch_size) is not None for level, tokens in steps)

    def speed(self, view: PlannerView, plan: Plan, active: Sequence[bool],
              yields: dict | None = None) -> float:
        """Expected tokens per second over the sequences of `active` under `plan`."""
        tokens, seconds = self.round(view, plan, active, yields)
        return tokens / seconds

    def _yield(self, lower: str, upper: str, gamma: int, rows: list[int], memo: dict) -> tuple[float, float]:
        """(sum, least) of the rows' expected tokens when `upper` asks `lower` for gamma per round.
        Each row's alpha is read once per choice (memo), whatever the plans that share it."""
        key = (lower, upper, gamma)
        if key not in memo:
            alphas = memo.get((lower, upper))
            if alphas is None:
                alphas = [self.alpha(lower, upper, b) for b in rows]
                if memo.get("optimistic"):  # second_look: as high as the other boundaries imply
                    floor = self.bound(lower, upper)
                    alphas = [max(a, floor) for a in alphas]
                memo[(lower, upper)] = alphas
            e = [expected_accepted(a, gamma) for a in alphas]
            memo[key] = (sum(e), min(e))
        return memo[key]

    def round(self, view: PlannerView, plan: Plan, active: Sequence[bool],
              yields: dict | None = None) -> tuple[float, float]:
        """A round of `plan` over the sequences of `active`: (expected tokens, expected seconds). A
        batch shares each round's time: the top round emits the sum of the sequences' expected
        tokens, and a level below runs as many rounds as its slowest sequence needs
        (costs.round_yield, row by row). `yields`: one choice's memo (step costs, each boundary's
        row alphas and expected tokens per gamma, each chain's overhead), shared by its plans."""
        memo = {} if yields is None else yields
        rows = memo.get("rows")
        if rows is None:
            rows = memo["rows"] = [b for b, on in enumerate(active) if on]
        chain, gammas = plan.chain, plan.gammas
        n = len(gammas)
        if plan.tree:
            return self._tree_round(view, plan, rows, memo)
        if n == 0:
            return float(len(rows)), self.step_seconds(view, chain[0], 1, memo) + self.forward_overhead(plan, memo)
        # from the top down: level j runs `rounds` rounds per top round, each a forward over
        # gammas[j - 1] + 1 tokens; the level below runs as many rounds as its slowest row needs to
        # make gammas[j - 1] tokens (costs.round_yield, row by row); the cheapest level's rounds are
        # one-token steps (costs.plan_seconds)
        rounds, seconds, forwards = 1.0, 0.0, 0.0
        for j in range(n, 0, -1):
            seconds += rounds * self.step_seconds(view, chain[j], gammas[j - 1] + 1, memo)
            forwards += rounds
            if j > 1:
                least = self._yield(chain[j - 2], chain[j - 1], gammas[j - 2], rows, memo)[1]
                rounds *= max(1.0, gammas[j - 1] / least)
        seconds += rounds * gammas[0] * self.step_seconds(view, chain[0], 1, memo)
        forwards += rounds * gammas[0]
        seconds += forwards * self.forward_overhead(plan, memo)
        return self._yield(chain[-2], chain[-1], gammas[-1], rows, memo)[0], seconds

    def _tree_round(self, view: PlannerView, plan: Plan, rows: list[int], memo: dict) -> tuple[float, float]:
        """A tree round: every row emits its accepted path and one token more, the path's expected
        length from the boundary's acceptance by rank (tree_shapes.expected_accepted, Sequoia's
        positional assumption); the round costs the level below's forwards (after the root, over each
        depth but the last) and the top's over the root and every node (Plan.forwards)."""
        tree = plan.token_tree
        key = ("tree", plan.chain, plan.tree_parents)
        if key not in memo:
            width = max((len(kids) for kids in tree.children), default=1)
            ranks = self.rank_accept(plan.chain[0], plan.chain[-1], width)
            forwards = plan.forwards()
            seconds = sum(self.step_seconds(view, level, tokens, memo) for level, tokens in forwards)
            seconds += len(forwards) * self.forward_overhead(plan, memo)
            memo[key] = (len(rows) * (1.0 + tree_expected(tree, ranks)), seconds)
        return memo[key]

    def forward_overhead(self, plan: Plan, memo: dict | None = None) -> float:
        """Seconds per forward a round of the plan's chain takes beyond its forwards' device time:
        the chain's own, measured; for a chain not run yet, what the speculative chains measured (a
        plain step's own otherwise); 0 before anything ran. `memo`: one choice's, per chain."""
        key = ("overhead", plan.kind)
        if memo is not None and key in memo:
            return memo[key]
        own = self.overhead.get(plan.kind)
        if own is not None and own[1].value > 0:
            value = own[0].value / own[1].value
        else:
            alike = [(s.value, n.value) for chain, (s, n) in self.overhead.items()
                     if (len(chain) > 1) == plan.speculative and n.value > 0]
            value = sum(s for s, _ in alike) / sum(n for _, n in alike) if alike else 0.0
        if memo is not None:
            memo[key] = value
        return value

    def switch_seconds(self, plan: Plan) -> float:
        """What running `plan` after the last round's plan costs first: its levels that sat out catch
        up (each level's catch-ups measured; 0 before its first)."""
        ran = set(self._last.chain) if self._last is not None else set(plan.chain)
        seconds = 0.0
        for level in plan.chain[:-1]:
            if level not in ran and level in self.catch_up:
                s, n = self.catch_up[level]
                seconds += s.value / n.value if n.value > 0 else 0.0
        return seconds

    def worth(self, view: PlannerView, plan: Plan, active: Sequence[bool], yields: dict) -> tuple[float, float]:
        """(expected tokens/s of the plan, the same net of leaving the running plan): the catch-up
        spread over memory_rounds of the plan's rounds, and switch_margin less."""
        tokens, seconds = self.round(view, plan, active, yields)
        speed = tokens / seconds
        if self._last is None or plan == self._last:
            return speed, speed
        key = ("switch", plan.chain)
        if key not in yields:
            yields[key] = self.switch_seconds(plan)
        horizon = self.memory_rounds * seconds
        return speed, speed * horizon / (horizon + yields[key]) / (1 + self.switch_margin)

    # -- the choice ----------------------------------------------------------------------------
    def choose(self, view: PlannerView, active: Sequence[bool]) -> Plan:
        if self._last is not None and not self._last.speculative and self._since_probe + 1 < self._probe_interval:
            # plain decoding between probes: it measures no acceptance, so nothing the choice reads has
            # changed but its own step cost; the round goes on as plain decoding, at no cost of choosing
            self._since_probe += 1
            return self._last
        yields: dict = {}
        worths = [self.worth(view, plan, active, yields) for plan in self.plans]
        best = max(range(len(self.plans)), key=lambda i: worths[i][1])
        choice = self.plans[best]
        if not choice.speculative:
            self._since_probe += 1
            speculative = [i for i, plan in enumerate(self.plans) if plan.speculative]
            if speculative and self._since_probe >= self._probe_interval:
                # a probe: the best speculative plan once, so its acceptance is measured again
                self._since_probe = 0
                self._probe_interval = min(2 * self._probe_interval, self.max_probe_every)
                best = max(speculative, key=lambda i: worths[i][1])
                choice = self.plans[best]
                self.probes += 1
        else:
            self._since_probe, self._probe_interval = 0, self.probe_every
            if self._chosen is not None and choice.chain != self._chosen.chain:  # (a look is no change)
                self._since_look, self._look_interval = 0, self.probe_every
            self._chosen = choice
            look = self.second_look(view, active, choice, worths[best][0])
            if look is not None:
                best = self.plans.index(look)
                choice = look
                self.probes += 1
                self.second_looks += 1
        if not self.seen(choice):
            # a chain none of whose rounds ran yet looks as good as the prior says: its first round
            # measures it at its smallest gammas (the cheapest round), not at the prior's best
            best = min((i for i, plan in enumerate(self.plans) if plan.chain == choice.chain),
                       key=lambda i: self.plans[i].gammas)
            choice = self.plans[best]
        # what the run reports as predicted: only a speed from measured step costs (a prior is a guess)
        self.predicted = worths[best][0] if self.measured(choice) else None
        self._streak = self._streak + 1 if choice == self._last else 1
        self._last = choice
        return choice

    def second_look(self, view: PlannerView, active: Sequence[bool], choice: Plan, speed: float) -> Plan | None:
        """While a speculative plan runs, every `probe_every` of its rounds (the interval doubling up to
        `max_probe_every` while the chain stays): a plan of another chain, once, where it would beat
        the choice by `switch_margin` if each of its boundaries accepted as much as the others imply
        (`bound`) — a boundary measured in one unlucky round (its first proposal rejected: one chance
        in eight where the draft accepts 0.88) would otherwise never run again while another
        speculative plan wins. None: no such plan, or not yet time."""
        self._since_look += 1
        if self._since_look < self._look_interval:
            return None
        self._since_look = 0
        self._look_interval = min(2 * self._look_interval, self.max_probe_every)
        memo: dict = {"optimistic": True}
        best, best_speed = None, speed * (1 + self.switch_margin)
        for plan in self.plans:
            if not plan.speculative or plan.tree or plan.chain == choice.chain:
                continue
            if not any(self.bound(*key) > self.alpha(*key) for key in plan.boundaries()):
                continue  # nothing the other boundaries imply raises it: its estimate stands
            optimistic = self.speed(view, plan, active, memo)
            if optimistic > best_speed:
                best, best_speed = plan, optimistic
        return best

    def bound(self, lower: str, upper: str) -> float:
        """A lower bound on the acceptance between two levels from the pooled estimates of two other
        boundaries through a third level: per-token acceptance is 1 - TV(p, q) at each position, and
        total variation obeys the triangle inequality, so alpha(x, y) >= alpha(x, z) + alpha(z, y) - 1
        (e.g. a draft that a middle accepts at 0.86 and a middle the top accepts at 0.88: the top
        accepts the draft at >= 0.74). 0 where no such pair was measured."""
        def pooled(x: str, y: str) -> float | None:
            entry = self.pooled.get((x, y)) or self.pooled.get((y, x))  # (acceptance is symmetric)
            return entry.alpha if entry is not None else None

        best = 0.0
        for z in {level for key in self.pooled for level in key} - {lower, upper}:
            a, b = pooled(lower, z), pooled(z, upper)
            if a is not None and b is not None:
                best = max(best, a + b - 1)
        return best

    def choose_ahead(self, view: PlannerView, active: Sequence[bool]) -> Plan | None:
        """The next round's plan, chosen while this round's top level verifies (the host would only
        wait for its verdicts): the choice's host time is then hidden behind the device's work
        instead of adding to every round. It does not see this round's outcome, which changes an
        estimate by one round in `memory_rounds`; still a function of the past only, so the next
        round is exact whatever it is (docs/DESIGN.md §12). Only once the running plan has run
        AHEAD_AFTER rounds in a row: a plan's first round (an exploration, a probe, a switch) is
        read before the choice that follows it, so that a plan found wanting is not run again
        blind. None: choose after the round, as usual."""
        if self._last is None or not self._last.speculative or self._streak < self.AHEAD_AFTER:
            return None
        self.ahead += 1
        return self.choose(view, active)

    def describe(self) -> dict[str, float]:
        """The plans' log, the probes, the choices made ahead, and the acceptance estimate of each
        boundary (pooled)."""
        out = {**self.log.describe(), "plan/probes": self.probes, "plan/second_looks": self.second_looks,
               "plan/ahead": self.ahead}
        for (lower, upper), entry in self.pooled.items():
            out[f"alpha/{lower}>{upper}"] = entry.alpha
        return out


def plan_of(method, middle: str = "middle") -> Plan:
    """The plan a (non-adaptive) method runs every round."""
    if method.name == "autoregressive":
        return AUTOREGRESSIVE
    if method.has_tree:  # (two-level methods only: MethodConfig refuses the rest)
        lower = "draft" if method.name == "spec" else middle
        tree = method_tree(method)
        return Plan((lower, TOP), (tree.depth,), tree=method.tree_label, tree_parents=tree.parents)
    if method.name == "spec":
        return Plan(("draft", TOP), (method.gamma,))
    if method.name == "retrieval_spec":
        return Plan((middle, TOP), (method.gamma,))
    return Plan(("draft", middle, TOP), (method.draft_gamma, method.gamma))


def method_plans(method) -> list[Plan]:
    """The plans a method's rounds run: an adaptive method's candidates over the middle levels it
    builds, or the method's own plan (over its first middle level)."""
    middles = [name for name, _ in method.middle_levels]
    if not method.adapts:
        return [plan_of(method, middles[0] if middles else "middle")]
    return candidate_plans(method, middles)


def candidate_plans(method, middles: Sequence[str]) -> list[Plan]:
    """The plans an adaptive method chooses among: its chains (method=auto: method.plans; an adaptive
    method: its own) over each middle cache it builds, every gamma of method.gammas (and
    draft_gamma of method.draft_gammas), each tree of method.trees at the top of a two-level chain,
    and autoregressive decoding."""
    chains = method.plans if method.name == "auto" else (method.name,)
    plans = [AUTOREGRESSIVE]
    trees = candidate_trees(method)
    for chain in chains:
        if chain == "spec":
            plans += [Plan(("draft", TOP), (g,)) for g in method.gammas]
            plans += [Plan(("draft", TOP), (t.depth,), tree=label, tree_parents=t.parents) for label, t in trees]
        elif chain == "retrieval_spec":
            plans += [Plan((m, TOP), (g,)) for m in middles for g in method.gammas]
            plans += [Plan((m, TOP), (t.depth,), tree=label, tree_parents=t.parents) for m in middles
                      for label, t in trees]
        elif chain == "triforce":
            plans += [Plan(("draft", m, TOP), (g1, g)) for m in middles for g in method.gammas
                      for g1 in method.draft_gammas]
    return list(dict.fromkeys(plans))
