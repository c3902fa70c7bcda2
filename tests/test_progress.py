"""Progress a user can watch: the tqdm bars (tokens and tokens/s per phase), when they are on, and
the engine's two hooks (prefill chunks of the top level, then every top-level step)."""

from __future__ import annotations

import io
import re

import pytest

from triforce import Engine
from triforce.models import tiny
from triforce.progress import TokenProgress, enabled

RATE = re.compile(r"\d+(\.\d+)? tokens/s")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_tokens_and_tokens_per_second_per_phase():
    out = io.StringIO()
    with TokenProgress("triforce #0", file=out, mininterval=0) as p:
        for done in (0, 50, 100):
            p.prefill(done, 100)
        for n in (0, 3, 6, 8):
            p.generated(n, 8)
    text = out.getvalue()
    prefill = [line for line in text.split("\r") if "triforce #0 prefill" in line]
    generate = [line for line in text.split("\r") if "triforce #0 generate" in line]
    assert any("50/100" in line for line in prefill) and any("100/100" in line for line in prefill)
    assert any("6/8" in line for line in generate) and any("8/8" in line for line in generate)
    assert RATE.search(prefill[-1]) and RATE.search(generate[-1])


def test_an_early_stop_still_closes_the_bar():
    out = io.StringIO()
    with TokenProgress("spec #1", file=out, mininterval=0) as p:
        p.generated(0, 32)
        p.generated(5, 32)  # EOS: no further step
    assert "5/32" in out.getvalue()
    assert p._bar is None


def test_bars_only_on_a_terminal_unless_forced_or_turned_off():
    assert enabled(True, stdout=Terminal(), environ={})
    assert not enabled(True, stdout=io.StringIO(), environ={})
    assert enabled(True, stdout=io.StringIO(), environ={"TRIFORCE_PROGRESS": "1"})
    assert not enabled(False, stdout=Terminal(), environ={"TRIFORCE_PROGRESS": "1"})
    assert enabled(stdout=Terminal(), environ={})  # the default: on, on a terminal


class Recorder:
    def __init__(self):
        self.prefills, self.steps = [], []

    def prefill(self, done, total):
        self.prefills.append((done, total))

    def generated(self, new, max_new):
        self.steps.append((new, max_new))


@pytest.mark.parametrize("method", ["autoregressive", "triforce"])
def test_engine_reports_prefill_chunks_and_every_step(method):
    model = tiny.build_tiny()
    engine = Engine(model, model, {"name": method, "budget": 32, "gamma": 4}, {"temperature": 0.6}, {"prefill_chunk": 40})
    seen = Recorder()
    state_before = set(vars(engine))
    result = engine.generate(list(range(100)), 12, seed=0, stop_at_eos=False, progress=seen)
    # the top level absorbs the 100-token prompt in chunks of 40: reported at 0, 40, 80, 100
    assert seen.prefills == [(0, 100), (40, 100), (80, 100), (100, 100)]
    news = [n for n, _ in seen.steps]
    assert {m for _, m in seen.steps} == {12}
    assert news[0] == 0 and news[-1] == 12 and news == sorted(news)
    assert len(news) == len(result.rounds) + 1  # once when decoding starts, then after every top-level step
    # the progress sink is per-generation state: it lives with the generation, never on the engine
    assert set(vars(engine)) == state_before
    assert seen not in vars(engine).values()


def test_engine_without_progress_is_silent(capsys):
    model = tiny.build_tiny()
    Engine(model, None, {"name": "autoregressive"}, {"temperature": 0}).generate(list(range(20)), 4)
    assert capsys.readouterr() == ("", "")
