"""Ctrl-C that something swallowed still stops the run (triforce/app/interrupts.py)."""

from __future__ import annotations

import os
import signal

import pytest

from triforce.app.interrupts import InterruptWatch, StopOnInterrupt, end_progress_lines


class Bars:
    def __init__(self):
        self.calls = []

    def prefill(self, done, total):
        self.calls.append(("prefill", done, total))

    def generated(self, new, max_new):
        self.calls.append(("generated", new, max_new))


def swallowing_sigint():
    """A Ctrl-C raised where a library drops it (a catch-all, a finalizer)."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next bytecode
            pass
    except BaseException:  # noqa: BLE001 - what the library does
        pass


@pytest.fixture
def terminal_sigint():
    """SIGINT as a terminal's foreground job has it (a test runner started in the background of a
    script inherits it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_swallowed_ctrl_c_stops_the_generation_at_its_next_hook_and_is_remembered(terminal_sigint):
    before = signal.getsignal(signal.SIGINT)
    bars = Bars()
    with InterruptWatch() as watch:
        stop = StopOnInterrupt(watch, bars)
        stop.prefill(0, 10)
        stop.generated(0, 8)
        assert bars.calls == [("prefill", 0, 10), ("generated", 0, 8)]  # passed on while nobody pressed Ctrl-C
        swallowing_sigint()
        assert watch.seen
        with pytest.raises(KeyboardInterrupt):
            stop.generated(4, 8)
        with pytest.raises(KeyboardInterrupt):
            watch.check()  # the job's end: never reported ok
    assert len(bars.calls) == 2
    assert signal.getsignal(signal.SIGINT) is before  # the handler is the job's only


def test_an_ignored_sigint_stays_ignored():
    """A run started with SIGINT ignored (a script's background job) keeps it ignored."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with InterruptWatch() as watch:
            swallowing_sigint()  # ignored: nothing raised to swallow
            watch.check()
            assert not watch.seen and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_without_ctrl_c_the_hooks_only_pass_calls_on(terminal_sigint):
    with InterruptWatch() as watch:
        StopOnInterrupt(watch).generated(3, 8)  # no bars: silent
        watch.check()
        assert not watch.seen


def test_a_ctrl_c_swallowed_while_the_cli_imports_still_ends_the_run(terminal_sigint, monkeypatch, capsys):
    """The CLI's handler is in place before its heavy imports: a KeyboardInterrupt that an imported
    module swallowed still ends the run with the one line and exit code 130."""
    from triforce import cli

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(cli, "_hydra_app", lambda: swallowing_sigint() or (lambda: None))
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130 and capsys.readouterr().err == "error: interrupted (Ctrl-C)\n"


def test_a_bar_left_open_by_a_ctrl_c_ends_its_line_before_the_error_line(capsys):
    """A Ctrl-C inside tqdm's constructor (the bar drawn, `with` not yet entered) leaves the bar open:
    the error line must still start a line of its own where stderr is not a terminal."""
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(total=2, desc="autoregressive", unit="prompt", file=sys.stderr)  # never closed by a `with`
    end_progress_lines()
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    err = capsys.readouterr().err
    assert "error: interrupted (Ctrl-C)" in err.split("\n"), repr(err)
    assert bar.disable  # closed: its finalizer writes nothing later
    end_progress_lines()  # nothing open: nothing written
    assert capsys.readouterr().err == ""
    # the constructor interrupted after its first display, before it set its timestamps (the last
    # thing it does): tqdm's close() then returns without ending the line
    bar = tqdm(total=2, desc="autoregressive", unit="prompt", file=sys.stderr)
    del bar.last_print_t, bar.start_t
    end_progress_lines()
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    err = capsys.readouterr().err
    assert "error: interrupted (Ctrl-C)" in err.split("\n"), repr(err)
