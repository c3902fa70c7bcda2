"""Token trees at the top level through the engine (method.tree; triforce/tree_round.py): greedy
decoding's tokens are plain greedy decoding's, one sequence and a ragged batch; a tree of width 1
is the chain, token for token, under sampling (one sequence and a batch); what does not run a tree yet is refused before any
work; the same offloaded, and through the static executor (the graphs' forwards, uncaptured). (Their sampled tokens against the exact law: tests/engine/test_distribution.py.)"""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import greedy_reference, perturbed, random_model
from triforce.engine import Engine
from triforce.errors import ConfigError

NEW = 20
METHODS = {
    "spec": dict(name="spec", draft_sink=4, draft_window=40),  # the draft proposes (StreamingLLM cache)
    "retrieval_spec": dict(name="retrieval_spec", budget=16, chunk_size=4),  # the retrieval middle proposes
}
EAGER = dict(executor="eager")


@pytest.fixture(scope="module")
def models():
    target = random_model(11, kv_heads=2)
    draft = perturbed(target, random_model(12, kv_heads=2), 0.3)
    prompt = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    return target, draft, prompt


STATIC = dict(executor="static")  # the graphs' forwards, uncaptured: a static forward per block of the tree


@pytest.mark.parametrize("executor", [EAGER, STATIC], ids=["eager", "static"])
@pytest.mark.parametrize("tree", [(3, 2, 1), (2, 2), (4,)], ids=["3-2-1", "2-2", "4"])
@pytest.mark.parametrize("name", list(METHODS))
def test_greedy_trees_equal_greedy_decoding(models, name, tree, executor):
    target, draft, prompt = models
    engine = Engine(target, draft, dict(METHODS[name], tree=tree), dict(temperature=0.0), executor)
    one = engine.generate(prompt, NEW, seed=0)
    assert one.tokens == greedy_reference(target, prompt, NEW)
    assert one.metrics["mean_accepted_len"] > 1  # the trees are accepted in part
    prompts = [prompt[:25], prompt, prompt[:33]]  # ragged
    batch = engine.generate(prompts, NEW, seed=0)
    assert [r.tokens for r in batch] == [greedy_reference(target, p, NEW) for p in prompts]


OFFLOAD = dict(executor="eager", offload=True, on_chip_layers=1, prefill_chunk=16)


@pytest.mark.parametrize("name", list(METHODS))
def test_offloaded_trees_equal_greedy_decoding(models, name):
    """The full cache in host memory (its first layer on chip): the accepted path moved in host memory,
    the staging buffers refilled, the chunk statistics a rebuild scores recomputed (every 4 tokens)."""
    target, draft, prompt = models
    method = dict(METHODS[name], tree=(3, 2), rebuild="every_n", rebuild_every=4)
    engine = Engine(target, draft, method, dict(temperature=0.0), OFFLOAD)
    one = engine.generate(prompt, NEW, seed=0)
    assert one.tokens == greedy_reference(target, prompt, NEW)
    if name == "retrieval_spec":
        assert one.metrics["rebuilds"] > 0
    prompts = [prompt[:25], prompt]
    assert [r.tokens for r in engine.generate(prompts, NEW, seed=0)] == [greedy_reference(target, p, NEW)
                                                                          for p in prompts]


@pytest.mark.parametrize("where", ["on-chip", "offloaded", "static"])
@pytest.mark.parametrize("name", list(METHODS))
def test_a_tree_of_width_one_is_the_chain_token_for_token(models, name, where):
    target, draft, prompt = models
    sampling = dict(temperature=0.8, top_p=0.9)
    hardware = {"on-chip": EAGER, "offloaded": OFFLOAD, "static": STATIC}[where]
    chain = Engine(target, draft, dict(METHODS[name], gamma=3), sampling, hardware)
    tree = Engine(target, draft, dict(METHODS[name], tree=(1, 1, 1)), sampling, hardware)
    for seed in range(8):
        assert tree.generate(prompt, NEW, seed=seed).tokens == chain.generate(prompt, NEW, seed=seed).tokens, seed
    prompts = [prompt[:25], prompt]  # a batch: a depth's children one draw over the rows, as the chain's
    for seed in range(4):
        assert ([r.tokens for r in tree.generate(prompts, NEW, seed=seed)]
                == [r.tokens for r in chain.generate(prompts, NEW, seed=seed)]), seed


def test_what_does_not_run_a_tree_yet_is_refused_before_any_work(models):
    target, draft, _ = models
    with pytest.raises(ConfigError, match="two-level method"):
        Engine(target, draft, dict(name="triforce", tree=(2, 2)), dict(temperature=0.0), EAGER)
    with pytest.raises(ConfigError, match="two-level method"):
        Engine(target, draft, dict(name="spec", tree=(2,), adaptive=True), dict(temperature=0.0), EAGER)
    with pytest.raises(ConfigError, match="positive widths"):
        Engine(target, draft, dict(METHODS["spec"], tree=(2, 0)), dict(temperature=0.0), EAGER)


def test_a_tree_given_node_by_node_is_the_same_tree_as_its_widths(models):
    """method.tree_parents (e.g. Sequoia's DP tree) runs the tree it lists: [3,2]'s parents give [3,2]'s
    tokens under sampling, seed for seed; greedy, an uneven tree is still plain greedy decoding."""
    target, draft, prompt = models
    sampling = dict(temperature=0.8, top_p=0.9)
    widths = Engine(target, draft, dict(METHODS["retrieval_spec"], tree=(3, 2)), sampling, EAGER)
    parents = Engine(target, draft, dict(METHODS["retrieval_spec"], tree_parents=(-1, -1, -1, 0, 0, 1, 1, 2, 2)),
                     sampling, EAGER)
    for seed in range(4):
        assert parents.generate(prompt, NEW, seed=seed).tokens == widths.generate(prompt, NEW, seed=seed).tokens
    uneven = Engine(target, draft, dict(METHODS["spec"], tree_parents=(-1, -1, 0, 0, 1, 2, 5)), dict(temperature=0.0),
                    EAGER)
    assert uneven.generate(prompt, NEW, seed=0).tokens == greedy_reference(target, prompt, NEW)


@pytest.mark.parametrize("parents, match", [((-1, 1), "an earlier node"), ((-1, 0, -1), "breadth-first")])
def test_a_tree_given_node_by_node_is_checked_before_any_work(models, parents, match):
    target, draft, _ = models
    with pytest.raises(ConfigError, match=match):
        Engine(target, draft, dict(METHODS["spec"], tree_parents=parents), dict(temperature=0.0), EAGER)
    with pytest.raises(ConfigError, match="both set"):
        Engine(target, draft, dict(METHODS["spec"], tree=(2,), tree_parents=(-1,)), dict(temperature=0.0), EAGER)


def test_a_batch_tree_round_reads_back_once_and_copies_nothing_that_waits(models, monkeypatch):
    """After its first round (where the tree's constant indices and masks are made), a batch's tree
    round reads the device back once — its verdicts and nodes, one `tolist` — and hands the device no
    host list by an ordinary copy (`torch.tensor(..., device=)`), which on a GPU waits for the device:
    a round's indices go through `inputs.device_index` (pinned, not waiting)."""
    target, draft, prompt = models
    engine = Engine(target, draft, dict(METHODS["spec"], tree=(2, 2)), dict(temperature=0.8), STATIC)
    reads, copies, counting = [], [], [False]
    tolist, tensor = torch.Tensor.tolist, torch.tensor

    def counted_tolist(self):
        if counting[0]:
            reads.append(self.shape)
        return tolist(self)

    def counted_tensor(*args, **kwargs):
        if counting[0] and kwargs.get("device") is not None:
            copies.append(args[0] if args else None)
        return tensor(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    monkeypatch.setattr(torch, "tensor", counted_tensor)
    stream = engine.stream([prompt[:30], prompt], NEW, seed=0, stop_at_eos=False)
    next(stream)  # the prefill, then the first round
    next(stream)
    counting[0] = True
    rounds = sum(1 for _ in stream)
    counting[0] = False
    assert rounds > 3
    assert len(reads) == rounds, reads
    assert copies == []


@pytest.mark.parametrize("executor", [EAGER, STATIC], ids=["eager", "static"])
def test_a_tree_rounds_forwards_carry_their_sampling_transform(models, monkeypatch, executor):
    """Sampling (not greedy), every forward of a tree round returns its distributions, the sampling
    transform inside it as a chain's forwards have it (in a static forward's graph): the round
    itself transforms nothing (a transform of its own is a dozen launches outside the graphs, and the
    top's logits cast to float32 first). Greedy decoding's level below returns logits (the children
    are its most likely tokens), which the round transforms."""
    import triforce.tree_round as tree_round

    target, draft, prompt = models
    calls = []
    transform = tree_round.probabilities
    monkeypatch.setattr(tree_round, "probabilities", lambda *a, **k: calls.append(1) or transform(*a, **k))
    for temperature, expected in ((0.8, False), (0.0, True)):
        calls.clear()
        engine = Engine(target, draft, dict(METHODS["spec"], tree=(2, 2)), dict(temperature=temperature), executor)
        engine.generate([prompt[:30], prompt], 8, seed=0)
        assert bool(calls) == expected, (temperature, len(calls))
