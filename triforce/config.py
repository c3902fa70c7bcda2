"""The one owner of configuration: typed, frozen objects parsed once from a composed config.

    run = RunConfig.parse(cfg)          # the app, once per job: every section typed and checked
    run.method, run.hardware, run.model, run.draft, run.sampling, run.dataset, run.logger

A composed config (a Hydra DictConfig or a plain dict) is parsed section by section into
dataclasses whose fields carry their types: a value of the wrong type (`method.gamma=2.5`,
`sampling.temperature=abc`) or an unknown key (`method.gama=4`, `+foo=1`) is a ConfigError naming
the key, the value and what it accepts, before anything heavy happens. The engine takes these
objects (`Engine(target, draft, method=MethodConfig(...), ...)` or `triforce.build_engine(cfg)`); no
other module reads a config mapping key by key.

Nothing here imports torch: composing and validating a config stays cheap (docs/DESIGN.md §8).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from triforce.errors import ConfigError

METHODS = ("autoregressive", "spec", "retrieval_spec", "triforce", "auto")
# the chains of levels a round can run (planner.py): auto chooses among them each round
CHAINS = METHODS[:4]
REBUILD_POLICIES = ("never", "every_n", "on_low_acceptance")
# The middle level's cache, a selection of `budget` tokens of the full cache (cache/retrieval.py):
# retrieval = sink chunk + top-scored chunks (the paper), streaming = sink chunk + recent window
# (StreamingLLM of the same budget, at true positions), hybrid = sink + retrieved chunks + a
# recent window (the share `recent` of the budget, at least `recent_min` tokens).
MIDDLE_CACHES = ("retrieval", "streaming", "hybrid")
SCORERS = ("mean", "bound")
EXECUTORS = ("auto", "eager", "static", "graphs")
# model.dtype / draft.dtype names -> torch dtype names (models/loading.py maps them to torch's);
# `auto` is bfloat16 on a GPU and float32 on a CPU
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}
# Queries a full cache keeps of its latest forward's last rows (cache/static.py): more than any
# verify width (gamma + 1), so a rebuild can score with the query of any of them
QUERY_HISTORY = 64
# The caches' room beyond prompt + new tokens: the speculative lookahead plus this many spare slots
SPARE_TOKENS = 2
# model.name of the seeded tiny random model (models/tiny.py): no files, its own tokenizer
TINY_MODEL = "tiny-random"


# -- typed parsing ------------------------------------------------------------------------------

def to_dict(cfg: Any) -> dict:
    """A plain, resolved dict of a DictConfig or mapping (None: empty)."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a mapping of options, got {type(cfg).__name__} {cfg!r}")
    return dict(cfg)


def _describe(tp) -> str:
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in parts)
        return text + (" or null" if len(parts) < len(typing.get_args(tp)) else "")
    if origin in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _check(value: Any, tp) -> tuple[bool, Any]:
    """(fits, value as the field keeps it) for a value of the type `tp`."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return True, None
                continue
            ok, out = _check(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:  # an int is a number too (kept as given, so messages show what the user wrote)
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg, *_) = typing.get_args(tp) or (Any,)
        checked = [_check(v, arg) for v in value]
        return all(ok for ok, _ in checked), tuple(v for _, v in checked)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        return True, list(value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return isinstance(value, tp), value


def parse(cls, values: Any, section: str):
    """A `cls` dataclass from a mapping: unknown keys and values of the wrong type are ConfigErrors
    naming `section.key`; missing keys take the field defaults; the dataclass then checks ranges."""
    values = to_dict(values)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {section} option(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        ok, value = _check(value, hints[name])
        if not ok:
            raise ConfigError(f"{section}.{name}={values[name]!r} must be {_describe(hints[name])}")
        kwargs[name] = value
    return cls(**kwargs)


def method_config(values: Any) -> "MethodConfig":
    return parse(MethodConfig, values, "method")


def sampling_params(values: Any) -> "SamplingParams":
    return parse(SamplingParams, values, "sampling")


def _key(section: str, name: str) -> str:
    """`method.gamma`; a top-level option (section "") is its name alone."""
    return f"{section}.{name}" if section else name


def _choice(section: str, name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{_key(section, name)}={value!r}: choose one of {', '.join(map(str, choices))}")


def _positive(section: str, name: str, value: int | float | None, what: str = "positive", allow_none=False,
              minimum: float = 1) -> None:
    if value is None and allow_none:
        return
    if value is None or value < minimum:
        raise ConfigError(f"{_key(section, name)}={value!r} must be {what}")


def _dtype(section: str, value: str | None, allow_none: bool = False) -> None:
    """A dtype name checked with the rest of the config, not when the weights are about to load."""
    if value is None and allow_none:
        return
    _choice(section, "dtype", value, ("auto", *DTYPE_NAMES))


# -- the method ---------------------------------------------------------------------------------

def validate_retrieval(budget: int, chunk_size: int, scorer: str, recent: int = 0) -> None:
    if chunk_size <= 0:
        raise ConfigError(f"method.chunk_size={chunk_size} must be a positive number of tokens")
    if budget < 2 * chunk_size:
        raise ConfigError(f"method.budget={budget} must be at least 2 * chunk_size = {2 * chunk_size} "
                          "(the sink chunk and the partial tail chunk are always kept)")
    if scorer not in SCORERS:
        raise ConfigError(f"method.scorer={scorer!r}: choose one of {', '.join(SCORERS)}")
    if not 0 <= recent <= budget - chunk_size:
        raise ConfigError(f"recent window of {recent} tokens: it must lie in [0, budget - chunk_size = "
                          f"{budget - chunk_size}] (the sink chunk is always kept)")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    name: str = "triforce"
    gamma: int = 6  # γ2: tokens the top level verifies per forward
    draft_gamma: int = 2  # γ1: tokens the draft proposes per middle round (triforce)
    budget: int | None = 4096  # middle cache size, tokens (None: set budget_fraction)
    budget_fraction: float | None = None  # middle cache size as a fraction of each prompt's length
    chunk_size: int = 8
    scorer: str = "mean"
    recent: float = 0.5  # hybrid: share of the budget (beyond the sink chunk) kept as the recent window...
    recent_min: int = 384  # ...but at least this many tokens (all of it: StreamingLLM) — see recent_tokens
    rebuild: str = "never"
    rebuild_every: int = 64  # every_n: generated tokens between rebuilds
    rebuild_threshold: float = 0.5  # on_low_acceptance: rebuild when the middle's recent acceptance falls below
    rebuild_window: int = 4  # on_low_acceptance: top-level rounds averaged
    draft_cache: str = "streaming"  # streaming | full
    draft_sink: int = 16
    draft_window: int = 240
    # slots the draft's window may run over before it evicts down to draft_window at once
    # (cache/streaming.py: one shift per draft_slack + 1 steps); null: a quarter of the window, at most 32
    draft_slack: int | None = None
    # retrieval | streaming | hybrid (MIDDLE_CACHES). The library default is the paper's cache; the app's
    # method configs (conf/method/triforce.yaml, retrieval_spec.yaml) default to hybrid: docs/RESULTS.md
    middle_cache: str = "retrieval"
    # -- adaptive plans (planner.py, docs/DESIGN.md §12) -------------------------------------------
    adaptive: bool = False  # choose each round's gammas, or plain decoding, from what the rounds measure
    plans: tuple[str, ...] = CHAINS  # method=auto: the chains it chooses among each round
    middle_caches: tuple[str, ...] = ()  # method=auto: a middle level for each of these caches (empty: middle_cache)
    streaming_budget: int | None = None  # the budget of a StreamingLLM middle among middle_caches (null: budget)
    gammas: tuple[int, ...] = (2, 3, 4, 6, 8)  # adaptive: the top level's gamma candidates (with `gamma`)
    draft_gammas: tuple[int, ...] = (1, 2, 3)  # adaptive: the middle's draft_gamma candidates (with `draft_gamma`)
    probe_every: int = 8  # adaptive: plain-decoding rounds before a speculative probe (doubling, up to 256)
    memory_rounds: float = 8.0  # adaptive: half-life, in rounds, of the acceptance and cost estimates
    # -- token trees at the top level (tree.py, tree_round.py, docs/DESIGN.md §13) ----------------
    # children per node at each depth (widths[0]: the root's); () verifies a chain of gamma tokens
    tree: tuple[int, ...] = ()
    # or the tree node by node: each node's parent (-1: the root), breadth-first, e.g. the shape
    # tree_shapes.best_tree chose from measured acceptance (Sequoia's dynamic program)
    tree_parents: tuple[int, ...] = ()
    # adaptive (method=auto, or an adaptive spec / retrieval_spec): token trees (widths per depth) the
    # planner may verify at the top of a two-level chain instead of a chain of gamma
    trees: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        for name, tp in (("gamma", int), ("draft_gamma", int), ("chunk_size", int), ("rebuild_every", int),
                         ("rebuild_window", int), ("draft_sink", int), ("draft_window", int), ("recent_min", int),
                         ("rebuild_threshold", float), ("recent", float)):
            ok, _ = _check(getattr(self, name), tp)
            if not ok:
                raise ConfigError(f"method.{name}={getattr(self, name)!r} must be {_describe(tp)}")
        _choice("method", "name", self.name, METHODS)
        _positive("method", "gamma", self.gamma, "a positive number of tokens")
        _positive("method", "draft_gamma", self.draft_gamma, "a positive number of tokens")
        self._check_adaptive()
        self._check_tree()
        _choice("method", "rebuild", self.rebuild, REBUILD_POLICIES)
        if self.rebuild != "never" and self.max_gamma + 2 > QUERY_HISTORY:
            what = (f"{self.tree_setting} ({self.tree_nodes} nodes)" if self.has_tree
                    else f"method.gamma={self.max_gamma}")
            raise ConfigError(f"{what} is too large for rebuilds during generation (at most {QUERY_HISTORY - 2} "
                              "tokens per top-level forward: a rebuild scores with a recorded query)")
        if self.rebuild == "every_n":
            _positive("method", "rebuild_every", self.rebuild_every, "a positive number of tokens")
        if self.rebuild == "on_low_acceptance":
            _positive("method", "rebuild_window", self.rebuild_window, "a positive number of rounds")
        _choice("method", "draft_cache", self.draft_cache, ("streaming", "full"))
        _choice("method", "middle_cache", self.middle_cache, MIDDLE_CACHES)
        if not 0 <= self.recent <= 1:
            raise ConfigError(f"method.recent={self.recent!r} must be a share of the budget in [0, 1] "
                              "(the hybrid's recent window: 0 is retrieval, 1 is StreamingLLM)")
        if self.recent_min < 0:
            raise ConfigError(f"method.recent_min={self.recent_min!r} must be a number of tokens >= 0")
        if self.draft_sink < 0:
            raise ConfigError(f"method.draft_sink={self.draft_sink} must be a number of tokens >= 0")
        if self.budget is not None and not _check(self.budget, int)[0]:
            raise ConfigError(f"method.budget={self.budget!r} must be a whole number of tokens")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"method.budget={self.budget} must be a positive number of tokens (>= 2 * chunk_size)")
        if self.chunk_size <= 0:
            raise ConfigError(f"method.chunk_size={self.chunk_size} must be a positive number of tokens")
        if self.budget is not None and self.budget < self.chunk_size:  # meaningless for any method, even unused
            raise ConfigError(f"method.budget={self.budget} is smaller than method.chunk_size={self.chunk_size}; "
                              f"allowed: budget >= 2 * chunk_size = {2 * self.chunk_size}")
        if self.uses_middle:
            for kind in self.middle_kinds:
                self.middle_config(kind)._check_budget()
        if self.draft_slack is not None and (not _check(self.draft_slack, int)[0] or self.draft_slack < 0):
            raise ConfigError(f"method.draft_slack={self.draft_slack!r} must be a number of tokens >= 0 "
                              "(or null: a quarter of draft_window, at most 32)")
        if self.uses_draft and self.draft_cache == "streaming":
            need = 2 * self.lookahead + 2
            if self.draft_window < need:
                raise ConfigError(f"method.draft_window={self.draft_window} must be >= {need} "
                                  "(2 * (gamma + draft_gamma) + 6) to roll back rejected tokens")

    @property
    def draft_window_slack(self) -> int:
        """The draft's StreamingLLM slack in slots (draft_slack, or its default)."""
        return min(32, self.draft_window // 4) if self.draft_slack is None else self.draft_slack

    def _check_adaptive(self) -> None:
        for name in ("plans", "middle_caches"):
            ok, _ = _check(getattr(self, name), tuple[str, ...])
            if not ok:
                raise ConfigError(f"method.{name}={getattr(self, name)!r} must be a list of names")
        for name in ("gammas", "draft_gammas"):
            ok, _ = _check(getattr(self, name), tuple[int, ...])
            if not ok or not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ConfigError(f"method.{name}={list(getattr(self, name))!r} must be a non-empty list of "
                                  "positive numbers of tokens")
        if not self.plans or set(self.plans) - set(CHAINS):
            raise ConfigError(f"method.plans={list(self.plans)}: choose among {', '.join(CHAINS)}")
        if set(self.middle_caches) - set(MIDDLE_CACHES):
            raise ConfigError(f"method.middle_caches={list(self.middle_caches)}: choose among {', '.join(MIDDLE_CACHES)}")
        if self.adaptive and self.name == "autoregressive":
            raise ConfigError("method.adaptive=true with method=autoregressive: there is nothing to adapt; use a "
                              "speculative method, or method=auto to choose among them")
        _positive("method", "probe_every", self.probe_every, "a positive number of rounds")
        _positive("method", "memory_rounds", self.memory_rounds, "a positive number of rounds")
        _positive("method", "streaming_budget", self.streaming_budget, "a positive number of tokens or null",
                  allow_none=True)

    def _check_tree(self) -> None:
        ok, _ = _check(self.tree, tuple[int, ...])
        if not ok or any(w < 1 for w in self.tree):
            raise ConfigError(f"method.tree={self.tree!r} must be a list of positive widths, one per depth "
                              "(e.g. method.tree=[4,2,1]; [] verifies a chain of method.gamma tokens)")
        ok, _ = _check(self.tree_parents, tuple[int, ...])
        if not ok or any(not -1 <= p < i for i, p in enumerate(self.tree_parents)):
            raise ConfigError(f"method.tree_parents={self.tree_parents!r} must list each node's parent, an earlier "
                              "node or -1 for the root's children (e.g. [-1,-1,0,0,2]: breadth-first)")
        if self.tree and self.tree_parents:
            raise ConfigError("method.tree and method.tree_parents both set: give the tree one way (widths per depth, "
                              "or each node's parent)")
        self._check_candidate_trees()
        if not self.has_tree:
            return
        if self.tree_parents:
            depths = _tree_depths(self.tree_parents)
            if depths != sorted(depths):
                raise ConfigError(f"method.tree_parents={list(self.tree_parents)}: number the nodes breadth-first "
                                  "(every node of a depth before the next depth's)")
        if self.name not in ("spec", "retrieval_spec") or self.adapts:
            raise ConfigError(f"method.tree with method={self.name}{' (adaptive)' if self.adapts else ''}: a tree is "
                              "verified at the top level of a two-level method whose lower level proposes it "
                              "(method=spec: the draft; method=retrieval_spec: the middle level), a fixed plan; "
                              "TriForce's middle proposes by speculation, one continuation at a time")
        if self.tree_nodes > 1024:
            raise ConfigError(f"{self.tree_setting} has {self.tree_nodes} nodes: at most 1024 per forward")

    def _check_candidate_trees(self) -> None:
        ok, _ = _check(self.trees, tuple[tuple[int, ...], ...])
        if not ok or any(not t or min(t) < 1 for t in self.trees):
            raise ConfigError(f"method.trees={self.trees!r} must be a list of trees, each a list of positive widths "
                              "(e.g. method.trees=[[4,2,1],[2,2,2,1]])")
        if not self.trees:
            return
        chains = self.plans if self.name == "auto" else (self.name,)
        if not self.adapts or not set(chains) & {"spec", "retrieval_spec"}:
            raise ConfigError("method.trees are candidates of an adaptive plan at the top of a two-level chain: "
                              "use method=auto with spec or retrieval_spec among method.plans, or an adaptive spec / "
                              "retrieval_spec (method.adaptive=true); a fixed tree is method.tree")
        for widths in self.trees:
            if _tree_nodes(widths) > 1024:
                raise ConfigError(f"method.trees: {list(widths)} has {_tree_nodes(widths)} nodes: at most 1024 "
                                  "per forward")

    @property
    def has_tree(self) -> bool:
        """The top level verifies a token tree (method.tree or method.tree_parents), not a chain."""
        return bool(self.tree or self.tree_parents)

    @property
    def tree_setting(self) -> str:
        """The setting that gives the tree, as a user writes it."""
        if self.tree_parents:
            return f"method.tree_parents={list(self.tree_parents)}"
        return f"method.tree={list(self.tree)}"

    @property
    def tree_label(self) -> str:
        """A short name of the tree for tables: its widths (4-2-1), or its nodes and depth (n64d12)."""
        if self.tree_parents:
            return f"n{len(self.tree_parents)}d{max(_tree_depths(self.tree_parents))}"
        return "-".join(map(str, self.tree)) or "chain"

    @property
    def tree_nodes(self) -> int:
        """Tokens of the top level's tree (0: no tree)."""
        if self.tree_parents:
            return len(self.tree_parents)
        return _tree_nodes(self.tree)

    def _check_budget(self) -> None:
        if (self.budget is None) == (self.budget_fraction is None):
            raise ConfigError(
                f"method.budget={_null(self.budget)} and method.budget_fraction={_null(self.budget_fraction)}: "
                "set exactly one (tokens, or a fraction of the prompt), e.g. method.budget=null "
                "method.budget_fraction=0.125")
        if self.budget is not None:
            validate_retrieval(self.budget, self.chunk_size, self.scorer, self.recent_tokens(self.budget))
            return
        f = self.budget_fraction
        if not _check(f, float)[0] or not 0 < f <= 1:
            raise ConfigError(f"method.budget_fraction={f!r} must be a fraction of the prompt in (0, 1]")
        validate_retrieval(2 * max(self.chunk_size, 1), self.chunk_size, self.scorer)  # chunk size, scorer

    def budget_for(self, prompt_len: int) -> int:
        """The middle cache's budget in tokens for a prompt of `prompt_len` tokens."""
        if self.budget is not None:
            return self.budget
        return max(1, round(self.budget_fraction * prompt_len))

    def for_prompt(self, prompt_len: int) -> "MethodConfig":
        """This method with its budget in tokens for that prompt; a ConfigError if a budget
        fraction leaves too few tokens (before any work)."""
        if not self.uses_middle or self.budget_fraction is None:
            return self
        budget = self.budget_for(prompt_len)
        try:
            return dataclasses.replace(self, budget=budget, budget_fraction=None)
        except ConfigError as e:
            raise ConfigError(f"method.budget_fraction={self.budget_fraction} of a {prompt_len}-token prompt "
                              f"gives a budget of {budget} tokens: {e}") from None

    def recent_tokens(self, budget: int) -> int:
        """Tokens of the middle cache's recent window at that budget (cache/retrieval.py):
        retrieval keeps only the partial tail chunk, StreamingLLM everything but the sink chunk,
        hybrid the share `recent` of it but at least `recent_min` tokens.

        Why a floor: the window pays off only once it spans the local context the model leans on
        (on SmolLM2, ~250-500 tokens whatever the budget and prompt length: docs/RESULTS.md), so
        below it a window share is wasted and the hybrid is StreamingLLM; above it, retrieved chunks
        add the distant context a window cannot reach."""
        if self.middle_cache == "retrieval":
            return 0
        room = max(budget - self.chunk_size, 0)
        if self.middle_cache == "streaming":
            return room
        return min(room, max(self.recent_min, round(self.recent * room)))

    @property
    def adapts(self) -> bool:
        """Each round's plan is chosen (planner.AdaptivePlanner): method=auto, or adaptive=true."""
        return self.name == "auto" or self.adaptive

    @property
    def chains(self) -> tuple[str, ...]:
        """The chains of levels its rounds run: its own, or (auto) those it chooses among."""
        return self.plans if self.name == "auto" else (self.name,)

    @property
    def uses_draft(self) -> bool:
        return any(c in ("spec", "triforce") for c in self.chains)

    @property
    def uses_middle(self) -> bool:
        return any(c in ("retrieval_spec", "triforce") for c in self.chains)

    @property
    def middle_kinds(self) -> tuple[str, ...]:
        """The middle caches it builds, one level each."""
        return tuple(dict.fromkeys(self.middle_caches)) or (self.middle_cache,)

    @property
    def middle_levels(self) -> tuple[tuple[str, str], ...]:
        """(level name, middle cache) of each middle level: `middle` alone, else `middle-<cache>`."""
        kinds = self.middle_kinds if self.uses_middle else ()
        if len(kinds) == 1:
            return (("middle", kinds[0]),)
        return tuple((f"middle-{kind}", kind) for kind in kinds)

    def middle_config(self, kind: str) -> "MethodConfig":
        """This method with one middle cache of `kind` (its budget: streaming_budget for a StreamingLLM
        middle where set)."""
        if kind == "streaming" and self.streaming_budget:
            budget, fraction = self.streaming_budget, None
        else:
            budget, fraction = self.budget, self.budget_fraction
        if kind == self.middle_cache and budget == self.budget and not self.middle_caches:
            return self
        return dataclasses.replace(self, middle_cache=kind, middle_caches=(), budget=budget, budget_fraction=fraction)

    @property
    def scores_chunks(self) -> bool:
        """A middle cache scores chunks of the full cache (retrieval, hybrid; not StreamingLLM)."""
        return self.uses_middle and any(kind != "streaming" for kind in self.middle_kinds)

    @property
    def max_gamma(self) -> int:
        """The most tokens the top level verifies in a round (an adaptive method's largest gamma)."""
        if self.has_tree:  # a tree's nodes are the proposals of its top-level forward
            return self.tree_nodes
        if self.adapts:
            return max(self.gamma, *self.gammas, *(_tree_nodes(t) for t in self.trees))
        return self.gamma

    @property
    def max_draft_gamma(self) -> int:
        return max(self.draft_gamma, *self.draft_gammas) if self.adapts else self.draft_gamma

    @property
    def lookahead(self) -> int:
        """Most tokens any cache can hold beyond the committed prefix."""
        return self.max_gamma + self.max_draft_gamma + 2


def _null(value) -> str:
    return "null" if value is None else str(value)


def resolve_executor(name: str, cuda: bool) -> str:
    """hardware.executor as it runs: auto is CUDA graphs on a GPU, eager elsewhere; graphs needs a GPU."""
    if name == "auto":
        return "graphs" if cuda else "eager"
    if name == "graphs" and not cuda:
        raise ConfigError("hardware.executor=graphs needs a CUDA device; use eager or static on a CPU")
    return name


def _tree_nodes(widths: tuple[int, ...]) -> int:
    """Nodes of the tree whose every node of depth d has widths[d] children (triforce.tree.Tree.from_widths)."""
    nodes, frontier = 0, 1
    for width in widths:
        frontier *= width
        nodes += frontier
    return nodes


def _tree_depths(parents: tuple[int, ...]) -> list[int]:
    """Each node's depth (1: the root's children) from its parent's (triforce.tree.Tree.depths)."""
    depths: list[int] = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def check_tree_setting(method: MethodConfig, executor: str, parallel: bool) -> None:
    """What runs a tree today: every executor (the graphs: a captured forward per block of the
    tree), the full cache on chip or offloaded, one process."""
    if not method.has_tree:
        return
    if parallel:
        raise ConfigError("method.tree with tensor parallelism: not built yet; run the tree on one device")


def context_needed(prompt_len: int, max_new_tokens: int, method: MethodConfig) -> int:
    """Positions a generation may occupy: the prompt, the new tokens and the speculative lookahead."""
    return prompt_len + max_new_tokens + method.lookahead


# -- the sampling transform ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0  # 0 = off

    def __post_init__(self) -> None:
        for name, tp in (("temperature", float), ("top_p", float), ("top_k", int)):
            ok, _ = _check(getattr(self, name), tp)
            if not ok:
                raise ConfigError(f"sampling.{name}={getattr(self, name)!r} must be {_describe(tp)}")
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k={self.top_k} must be >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# -- models and the hardware --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str | None = None  # alias, local folder or Hugging Face id; tiny-random: the seeded tiny model
    tokenizer: str | None = None  # null: the model's own; bytes: the byte-level fallback; or a model name
    dtype: str = "auto"
    max_context: int | None = None  # null: the checkpoint's max_position_embeddings (+ rope scaling)
    rope_scaling: dict | None = None
    seed: int = 0  # tiny-random only
    tiny: dict | None = None  # tiny-random only: ModelConfig overrides

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model.name is required: a model config (model=smollm2, tiny, llama2-7b-128k, ...), "
                              "a local folder or a Hugging Face id owner/name")
        _positive("model", "max_context", self.max_context, "a positive number of positions or null", allow_none=True)
        _dtype("model", self.dtype)


@dataclasses.dataclass(frozen=True)
class DraftSpec:
    name: str | None = None  # null: none; self: the target itself; or a model name as model.name
    dtype: str | None = None  # null: the target's

    def __post_init__(self) -> None:
        _dtype("draft", self.dtype, allow_none=True)

    @property
    def is_self(self) -> bool:
        return self.name == "self"


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    name: str = "cpu"
    device: str = "cpu"
    attention: str = "sdpa"  # prefill attention (decode steps use the split-KV kernel on a GPU)
    executor: str = "auto"  # auto (CUDA graphs on a GPU, eager on a CPU) | graphs | static | eager
    threads: int | None = None  # torch's CPU threads; null: torch's default
    prefill_chunk: int | None = None  # tokens per prefill forward; null: the whole prompt
    offload: bool = False  # the full KV cache in pinned host memory
    on_chip_layers: int | None = None  # with offload: layers whose KV stays on the GPU
    tensor_parallel: int = 1  # GPUs sharing each layer (torchrun)
    prefill_memo_gb: float = 0  # host memory keeping prefilled prompts across a sweep's jobs
    progress: bool = True  # tqdm bars (on a terminal)
    kernels: dict | None = None  # KernelPolicy overrides (kernels/policy.py): pdl, linear, fold_norm, ...
    batch_size: int = 1  # prompts generated together (one batch of caches, every forward serves them all)
    costs_file: str | None = None  # step costs an earlier run measured (its costs.json): the adaptive plans start from them

    def __post_init__(self) -> None:
        _choice("hardware", "executor", self.executor, EXECUTORS)
        _choice("hardware", "attention", self.attention, ("sdpa", "flash"))
        _positive("hardware", "threads", self.threads, "a positive integer or null (torch's default)", allow_none=True)
        _positive("hardware", "prefill_chunk", self.prefill_chunk, "positive or null (whole prompt)", allow_none=True)
        if self.on_chip_layers is not None and self.on_chip_layers < 0:
            raise ConfigError(f"hardware.on_chip_layers={self.on_chip_layers!r} must be a non-negative integer or "
                              "null (0)")
        _positive("hardware", "tensor_parallel", self.tensor_parallel,
                  "a positive integer (GPUs sharing each layer)")
        _positive("hardware", "batch_size", self.batch_size, "a positive number of prompts generated together")
        if self.prefill_memo_gb < 0:
            raise ConfigError(f"hardware.prefill_memo_gb={self.prefill_memo_gb!r} must be a number of GB >= 0 (0: off)")
        if not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"hardware.device={self.device!r}: choose cpu, cuda or cuda:<index>")

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def check_executor(self) -> str:
        """The executor that runs (resolve_executor): graphs on a CPU refused before any work."""
        return resolve_executor(self.executor, self.cuda)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run of the app (conf/config.yaml): the engine's sections, typed, and the run's own
    options. Parsed once per job; `dataset` and `logger` stay mappings their own modules check."""
    model: ModelSpec
    draft: DraftSpec
    method: MethodConfig
    sampling: SamplingParams
    hardware: HardwareConfig
    dataset: dict
    logger: dict
    seed: int = 0
    max_new_tokens: int = 32
    baseline: bool = True
    reference_acceptance: bool = False
    stop_at_eos: bool = False
    warmup: bool = True
    print_text: bool = True
    tags: tuple[str, ...] = ()

    SECTIONS = {"model": ModelSpec, "draft": DraftSpec, "method": MethodConfig, "sampling": SamplingParams,
                "hardware": HardwareConfig}

    @classmethod
    def parse(cls, cfg: Any) -> "RunConfig":
        values = to_dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown top-level option(s) {unknown}; known: {sorted(known)} "
                              "(a typo, or an override with + that the run does not read?)")
        kwargs: dict[str, Any] = {name: parse(tp, values.get(name), name) for name, tp in cls.SECTIONS.items()}
        for name in ("dataset", "logger"):
            kwargs[name] = to_dict(values.get(name))
        hints = typing.get_type_hints(cls)
        for name in ("seed", "max_new_tokens", "baseline", "reference_acceptance", "stop_at_eos", "warmup",
                     "print_text", "tags"):
            if name in values:
                ok, value = _check(values[name], hints[name])
                if not ok:
                    raise ConfigError(f"{name}={values[name]!r} must be {_describe(hints[name])}")
                kwargs[name] = value
        return cls(**kwargs)

    def __post_init__(self) -> None:
        _positive("", "max_new_tokens", self.max_new_tokens, "a positive integer")
        if self.reference_acceptance and not self.baseline:
            raise ConfigError("reference_acceptance=true measures along the autoregressive baseline's tokens: "
                              "set baseline=true")
        self.engine  # the engine's sections checked together

    @property
    def engine(self) -> "EngineConfig":
        """The engine's part of the run."""
        return EngineConfig(self.model, self.draft, self.method, self.sampling, self.hardware)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What an engine is built from (assemble.build_engine): the models to load, the method, the
    sampling transform, the hardware."""
    model: ModelSpec
    draft: DraftSpec
    method: MethodConfig
    sampling: SamplingParams
    hardware: HardwareConfig

    def __post_init__(self) -> None:
        check_draft(self.model, self.draft, self.method)


def check_draft(model: ModelSpec, draft: DraftSpec, method: MethodConfig) -> None:
    """The method's need of a draft model against the draft given (the one place this is checked)."""
    if not method.uses_draft:
        return
    if not draft.name:
        raise ConfigError(f"method={method.name} needs a draft model: set draft=self, draft=llama-68m "
                          "or draft.name=<model>")
    if model.name == TINY_MODEL and not draft.is_self:
        raise ConfigError(f"draft.name={draft.name!r} with the tiny random model: only draft=self is supported")


def engine_config(cfg: Any) -> EngineConfig:
    """The engine's typed configuration from the app's RunConfig, an EngineConfig, or a mapping
    with `model`, `draft`, `method`, `sampling` and `hardware` sections (triforce.build_engine)."""
    if isinstance(cfg, EngineConfig):
        return cfg
    if isinstance(cfg, RunConfig):
        return cfg.engine
    values = to_dict(cfg)
    unknown = sorted(set(values) - set(RunConfig.SECTIONS))
    if unknown:
        raise ConfigError(f"unknown engine config section(s) {unknown}; known: {sorted(RunConfig.SECTIONS)}")
    return EngineConfig(**{name: parse(tp, values.get(name), name) for name, tp in RunConfig.SECTIONS.items()})
