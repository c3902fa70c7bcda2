"""scripts/profile_rounds.py's attribution of the device's idle time to the host's phases: the
arithmetic on a made-up timeline, and the profiler ranges wrapped around the engine only while
asked (a run through them gives the same tokens)."""

from __future__ import annotations

import torch

from tests.script_module import load_script


def _script():
    return load_script("scripts/profile_rounds.py")


def test_each_idle_stretch_is_charged_to_the_innermost_host_phase_when_it_began():
    script = _script()
    kernels = [(10, 20), (15, 30), (40, 50), (52, 90)]  # busy 10-30, 40-50, 52-90
    ranges = [(0, 100, "round: bookkeeping"), (28, 45, "forward: host work"), (32, 35, "forward: replay"),
              (49, 60, "read-back (the sync)")]
    idle = script.idle_by_phase(kernels, ranges, start=0, end=100)
    # 0-10 in the round's own work; 30-40 began in a forward's host work; 50-52 in the read-back;
    # 90-100 in the round again
    assert idle == {"round: bookkeeping": 20, "forward: host work": 10, "read-back (the sync)": 2}
    assert script.idle_by_phase(kernels, [], start=0, end=100) == {script.OUTSIDE: 32}
    assert script.idle_by_phase([(0, 100)], ranges, start=0, end=100) == {}


def test_the_phases_are_wrapped_only_inside_the_block_and_change_no_token(make_tiny):
    from triforce.engine import Engine, Generation
    from triforce.sampling import Verdict

    script = _script()
    target, draft = make_tiny(seed=1, num_key_value_heads=2).ours, make_tiny(seed=2, num_key_value_heads=2).ours
    prompt = list(range(3, 40))
    engine = Engine(target, draft, {"name": "spec", "gamma": 3}, {"temperature": 0.8, "top_p": 0.9},
                    {"executor": "static", "device": "cpu"})
    plain = engine.generate(prompt, 12, seed=3, stop_at_eos=False).tokens
    step, read = Generation.step, Verdict.__dict__["read"]
    with script.host_phases():
        assert Generation.step is not step and isinstance(Verdict.__dict__["read"], classmethod)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            wrapped = engine.generate(prompt, 12, seed=3, stop_at_eos=False).tokens
    assert Generation.step is step and Verdict.__dict__["read"] is read
    assert wrapped == plain
    names = {e.name for e in prof.events()}
    assert {"round: bookkeeping", "forward: host work", "read-back (the sync)"} <= names
