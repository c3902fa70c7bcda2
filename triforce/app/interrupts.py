"""Ctrl-C during a job: stop at once, and never report a run the user stopped as complete.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. Raised inside
a finalizer or a library's catch-all it is printed or dropped, and the run would go on to finish
and exit 0 as if nobody had asked it to stop. So the job's handler also records the signal: the
generation then stops at its next prefill chunk or step (`StopOnInterrupt`), and a job that ends
after a Ctrl-C is reported interrupted (`InterruptWatch.seen`), never ok.
"""

from __future__ import annotations

import signal
import threading


class InterruptWatch:
    """Within `with`: SIGINT raises KeyboardInterrupt (as Python's default does) and is recorded."""

    def __init__(self) -> None:
        self.seen = False
        self._previous = None

    def __enter__(self) -> "InterruptWatch":
        # signal handlers live in the main thread only; an ignored SIGINT (a script's background
        # job, nohup-like launchers) stays ignored, as the shell meant
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _on_sigint(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C came (and was swallowed where it was raised)."""
        if self.seen:
            raise KeyboardInterrupt


class StopOnInterrupt:
    """A GenerationProgress (triforce.progress) that stops the generation at its next hook after a
    Ctrl-C, passing every call on to `inner` (a progress bar, or None)."""

    def __init__(self, watch: InterruptWatch, inner=None) -> None:
        self.watch, self.inner = watch, inner

    def prefill(self, done_tokens: int, total_tokens: int) -> None:
        self.watch.check()
        if self.inner is not None:
            self.inner.prefill(done_tokens, total_tokens)

    def generated(self, new_tokens: int, max_new_tokens: int) -> None:
        self.watch.check()
        if self.inner is not None:
            self.inner.generated(new_tokens, max_new_tokens)


def end_progress_lines() -> None:
    """Close the progress bars a Ctrl-C left open, so that the error line that follows starts a line
    of its own. A `with tqdm(...)` block closes its bar (ending its line) as the KeyboardInterrupt
    passes through it, but a Ctrl-C that lands inside tqdm's constructor, after the bar is drawn and
    before `with` has entered, leaves the bar open and its line unended: where stderr is not a
    terminal the error line would be glued to the bar's. Closing such a bar is not enough: tqdm's
    `close` ends the line only for a bar whose constructor finished (it returns early without the
    timestamps the constructor sets last), so the line is ended here."""
    import sys

    if "tqdm" not in sys.modules:  # nothing drew a bar (Ctrl-C while the CLI imports)
        return
    from tqdm import tqdm

    with tqdm.get_lock():
        bars = sorted(getattr(tqdm, "_instances", ()), key=lambda bar: abs(getattr(bar, "pos", 0)), reverse=True)
    for bar in bars:  # the lowest line first, the first bar's last: the cursor ends below them all
        drawn = getattr(bar, "sp", None) is not None and not getattr(bar, "disable", True)
        finished = hasattr(bar, "last_print_t")  # its constructor ran to the end: close() ends the line
        bar.close()
        if drawn and not finished:
            bar.fp.write("\n")
            bar.fp.flush()
