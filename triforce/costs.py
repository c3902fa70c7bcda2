"""What a step costs and what a round yields: the arithmetic the adaptive policy (planner.py) and the
benchmarks (bench/) share (docs/DESIGN.md §7, §12).

- Bytes: a decode step reads every weight it multiplies by once and every sequence's KV
  (`step_bytes`); divided by the copy bandwidth that is its floor.
- Yield: a round in which each of k proposals is accepted with probability alpha, independently,
  until the first rejection, emits `expected_accepted(alpha, k)` tokens (the residual or bonus token
  included).
- Speed: a plan's expected tokens per second from the levels' step costs and the acceptances
  (`plan_speed`); TriForce's modelled speedup over autoregressive decoding is one case of it.
"""

from __future__ import annotations

import dataclasses

from triforce.memory import kv_bytes_per_token, weight_bytes


def weight_bytes_read(cfg, dtype_bytes: int) -> int:
    """A forward reads every weight once, except the embedding table (a few rows), unless the
    output head shares it."""
    total = weight_bytes(cfg, dtype_bytes)
    return total if cfg.tie_word_embeddings else total - cfg.vocab_size * cfg.hidden_size * dtype_bytes


def step_bytes(cfg, kv_tokens: int, dtype_bytes: int, batch: int = 1) -> int:
    """A step of `batch` sequences reads the weights once and every sequence's KV."""
    return weight_bytes_read(cfg, dtype_bytes) + batch * kv_tokens * kv_bytes_per_token(cfg, dtype_bytes)


def expected_accepted(alpha: float, k: int) -> float:
    """Tokens one round emits when each of k proposals is accepted with probability alpha
    (independently, until the first rejection), the residual or bonus token included."""
    if k <= 0:
        return 1.0
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


@dataclasses.dataclass(frozen=True)
class LevelCosts:
    """Seconds per forward: the top level over gamma + 1 tokens, the middle over draft_gamma + 1,
    the draft over one; and the autoregressive step it is compared with."""
    top: float
    middle: float
    draft: float
    autoregressive: float


def round_yield(alphas: tuple[float, ...], gammas: tuple[int, ...]) -> tuple[float, tuple[float, ...]]:
    """For a chain of levels (cheapest first) where level i + 1 asks level i for gammas[i] tokens and
    accepts each with probability alphas[i]: (tokens one top-level round emits, how many rounds of
    each level below the top it takes). Level i + 1 needs gammas[i] tokens of level i; a round of
    level i emits E(alphas[i - 1], gammas[i - 1]) of them, so it takes gammas[i] / E rounds of level i
    (at least one) for each round of level i + 1."""
    top_tokens = expected_accepted(alphas[-1], gammas[-1]) if gammas else 1.0
    rounds = [1.0] * len(gammas)  # rounds of level i + 1 ... per top round, for each speculative level
    for i in range(len(gammas) - 2, -1, -1):  # level i + 1's rounds per round of the level above
        per_round = gammas[i + 1] / expected_accepted(alphas[i], gammas[i])
        rounds[i] = max(1.0, per_round) * rounds[i + 1]
    return top_tokens, tuple(rounds)


def plan_seconds(step_s: list[float], gammas: tuple[int, ...], rounds: tuple[float, ...]) -> float:
    """Seconds of one top-level round: step_s[0] is the cheapest level's one-token step, step_s[i]
    (i > 0) level i's forward over gammas[i - 1] + 1 tokens; level i runs rounds[i - 1] times per top
    round, each asking gammas[i - 1] tokens of the level below (whose own rounds are counted there)."""
    if not gammas:
        return step_s[0]
    seconds = step_s[0] * gammas[0] * rounds[0]  # the cheapest level's one-token steps
    for i in range(1, len(step_s)):
        seconds += step_s[i] * rounds[i - 1]
    return seconds


def plan_speed(step_s: list[float], alphas: tuple[float, ...], gammas: tuple[int, ...]) -> float:
    """Expected tokens per second of one sequence under a plan (see round_yield, plan_seconds)."""
    tokens, rounds = round_yield(alphas, gammas)
    return tokens / plan_seconds(step_s, gammas, rounds)


def modelled_speedup(costs: LevelCosts, gamma: int, draft_gamma: int, alpha_draft: float, alpha_middle: float) -> float:
    """Autoregressive time per token over TriForce's: a top round verifies gamma middle tokens
    (one top forward) and emits E(alpha_middle, gamma) tokens; the middle makes its gamma tokens
    in gamma / E(alpha_draft, draft_gamma) rounds of draft_gamma draft steps and one middle forward."""
    middle_rounds = gamma / expected_accepted(alpha_draft, draft_gamma)
    round_s = costs.top + middle_rounds * (costs.middle + draft_gamma * costs.draft)
    return costs.autoregressive / (round_s / expected_accepted(alpha_middle, gamma))


class StepCosts:
    """Measured seconds per forward, by (level, tokens per sequence, batch size), each an
    exponentially decayed mean (half-life `halflife` forwards: it follows a cache that grows). Kept by
    an engine across its generations; `save` / `load` carry it to later runs on the same card and
    shapes (a run writes its own: costs.json)."""

    def __init__(self, halflife: float = 8.0, table: dict | None = None, about: dict | None = None,
                 frozen: bool = False):
        self.keep = 0.5 ** (1 / max(halflife, 1e-9))
        self.table: dict[tuple[str, int, int], list[float]] = dict(table or {})  # key -> [decayed s, decayed n]
        self.about = dict(about or {})  # what the costs were measured on (device, model shapes)
        self.frozen = frozen  # measurements are not added (fixed costs: a plan then depends on acceptance only)

    @classmethod
    def fixed(cls, seconds: dict[tuple[str, int, int], float]) -> "StepCosts":
        """Costs that measurements do not change (tests: decisions reproducible from the seed)."""
        return cls(table={key: [s, 1.0] for key, s in seconds.items()}, frozen=True)

    def add(self, level: str, tokens: int, batch: int, seconds: float) -> None:
        if self.frozen:
            return
        entry = self.table.setdefault((level, tokens, batch), [0.0, 0.0])
        entry[0] = entry[0] * self.keep + seconds
        entry[1] = entry[1] * self.keep + 1.0

    def seconds(self, level: str, tokens: int, batch: int) -> float | None:
        entry = self.table.get((level, tokens, batch))
        return entry[0] / entry[1] if entry and entry[1] > 0 else None

    def measured(self) -> list[tuple[tuple[str, int, int], float]]:
        return [(key, s / n) for key, (s, n) in self.table.items() if n > 0]

    def to_json(self) -> dict:
        return {"about": self.about, "keep": self.keep,
                "seconds": [{"level": k[0], "tokens": k[1], "batch": k[2], "seconds": s / n, "weight": n}
                            for k, (s, n) in self.table.items() if n > 0]}

    def save(self, path) -> None:
        import json
        from pathlib import Path

        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path, halflife: float = 8.0) -> "StepCosts":
        """Costs a run saved (costs.json); a ConfigError names the file if it is not one."""
        import json
        from pathlib import Path

        from triforce.errors import ConfigError

        try:
            data = json.loads(Path(path).expanduser().read_text())
            table = {(e["level"], int(e["tokens"]), int(e["batch"])): [float(e["seconds"]) * float(e["weight"]),
                                                                      float(e["weight"])]
                     for e in data["seconds"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"hardware.costs_file={path}: not a costs file a run wrote (costs.json): "
                              f"{type(e).__name__}: {e}") from None
        return cls(halflife, table, data.get("about"))
