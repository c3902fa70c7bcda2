"""triforce.warmup: the warm-up prompt of every benchmark (and of the app) fills what the measured
run fills, so that no kernel compiles inside a measurement."""

from __future__ import annotations

from triforce.warmup import warm_length, warm_prompts
from triforce.config import method_config


def test_the_warm_up_prompt_outgrows_the_middles_budget_and_the_drafts_window():
    assert warm_length(method_config({"name": "autoregressive"}), 32768) == 64
    # a StreamingLLM draft (sink 16 + window 240): full (the warm-up's tokens then run it past its slack)
    assert warm_length(method_config({"name": "spec", "gamma": 8}), 32768) == 16 + 240 + 1
    assert warm_length(method_config({"name": "spec", "gamma": 8, "draft_cache": "full"}), 32768) == 64
    # a retrieval middle of 4096: chunks are chosen
    triforce = method_config({"name": "triforce", "budget": 4096, "chunk_size": 8})
    assert warm_length(triforce, 32768) == 4096 + 2 * 8 + 1
    assert warm_length(triforce, 1000) == 1000  # never more than the prompt


def test_the_warm_up_cuts_each_prompt():
    spec = method_config({"name": "spec", "gamma": 8})  # warm_length 257
    assert warm_prompts(spec, [list(range(1000))]) == [list(range(257))]
    assert warm_prompts(spec, [list(range(1000)), list(range(100))]) == [list(range(257)), list(range(100))]
    assert warm_prompts(spec, [list(range(1000))], thorough=False) == [list(range(64))]  # where nothing compiles


def test_the_warm_up_takes_prompts_as_generate_does():
    """One prompt, a batch as lists, or a batch as a 2-D tensor: the warm-up generates what generate
    would (a batch of as many rows: graphs are per batch size)."""
    import torch

    from tests.engine.conftest import random_model
    from triforce.engine import Engine

    target = random_model(11, kv_heads=2)
    engine = Engine(target, None, method_config({"name": "autoregressive"}), {"temperature": 0.0})
    prompt = torch.randint(0, 64, (100,), generator=torch.Generator().manual_seed(3))
    assert len(engine.warm_up(prompt.tolist()).tokens) == 4  # one prompt: one result (light: 4 tokens)
    for batch in ([prompt.tolist(), prompt[:80].tolist()], torch.stack([prompt, prompt]), [prompt, prompt[:80]]):
        assert len(engine.warm_up(batch).results) == 2


def test_the_warm_up_is_thorough_where_first_forwards_compile():
    import torch

    from triforce.warmup import compiles

    assert compiles(torch.device("cuda", 0)) and compiles("cuda")
    assert not compiles(torch.device("cpu"))


def test_the_warm_up_runs_a_streaming_draft_past_its_slack(monkeypatch):
    """The draft's window evicts only once it runs over by its slack (a prefill keeps `window` recent
    tokens): the warm-up generates enough tokens that its first eviction, and so the shift kernel's
    compilation, happens there and not in the measured run."""
    import torch

    import triforce.cache.streaming as streaming
    from tests.engine.conftest import perturbed, random_model
    from triforce.warmup import warm_tokens
    from triforce.engine import Engine

    assert warm_tokens(method_config({"name": "autoregressive"})) == 8
    assert warm_tokens(method_config({"name": "spec", "gamma": 8})) == 32 + 2  # the default slack: 32
    assert warm_tokens(method_config({"name": "spec", "draft_window": 40, "draft_slack": 0})) == 8
    shifts = []
    shift = streaming.shift_window
    monkeypatch.setattr(streaming, "shift_window", lambda *a, **k: (shifts.append(1), shift(*a, **k))[1])
    target = random_model(11, kv_heads=2)
    draft = perturbed(target, random_model(12, kv_heads=2), 0.3)
    prompt = torch.randint(0, 64, (400,), generator=torch.Generator().manual_seed(3)).tolist()
    method = method_config({"name": "spec", "gamma": 2})
    engine = Engine(target, draft, method, {"temperature": 0.0}, {"executor": "eager"})
    engine.warm_up(prompt, thorough=True)  # (a GPU's; a CPU's is light: nothing compiles there)
    assert shifts  # the window shifted during the warm-up


def test_an_adaptive_method_s_warm_up_runs_every_candidate_plan_and_teaches_nothing():
    """method=auto's warm-up (Engine.for_warm_up) runs a round of each candidate plan, so that what any
    plan launches compiles there and not inside the measured generation (a first three-level round
    took 0.29 s in one measured run, 0.04 s in the others); its step costs are its own, so the
    measured generation's planner starts from what it measures itself."""
    import torch

    from tests.engine.conftest import perturbed, random_model
    from triforce.warmup import warm_tokens
    from triforce.engine import Engine

    target = random_model(11, kv_heads=2)
    draft = perturbed(target, random_model(12, kv_heads=2), 0.3)
    prompt = torch.randint(0, 64, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    method = method_config({"name": "auto", "middle_caches": ["hybrid", "streaming"], "budget": 32,
                            "streaming_budget": 16, "chunk_size": 4, "gammas": [2, 4], "draft_gammas": [1],
                            "draft_sink": 2, "draft_window": 24})
    engine = Engine(target, draft, method, {"temperature": 0.0}, {"executor": "static"})
    plans = engine.candidates()
    assert warm_tokens(method) > len(plans) == 1 + 2 + 4 + 4
    warm = engine.for_warm_up()
    result = warm.generate(prompt[:100], warm_tokens(method), seed=0, stop_at_eos=False)
    ran = {k.removeprefix("plan_rounds/") for k in result.metrics if k.startswith("plan_rounds/")}
    assert ran == {plan.name for plan in plans}
    engine.warm_up(prompt, thorough=True)  # (a GPU's; a CPU's is light: nothing compiles there)
    assert engine.costs.measured() == [] and warm.costs.measured() != []
    # a fixed method's warm-up runs its own plan, as a measured generation does
    fixed = Engine(target, draft, method_config({"name": "spec", "gamma": 2}), {"temperature": 0.0})
    assert fixed.for_warm_up().candidates() == fixed.candidates()
