"""Progress of one generation that a user can watch: a tqdm bar for the prefill (prompt tokens the
top level has absorbed) and one for the generation (new tokens), each with its tokens/s.

A long run is otherwise silent between prompts: a 120K-token prefill or a 512-token generation
on a CPU takes minutes. The engine reports through two hooks (`GenerationProgress`); passing no
progress object keeps it silent. Bars go to stderr, so the last stdout line of the app stays
its JSON summary.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Protocol, TextIO

from tqdm.auto import tqdm

# TRIFORCE_PROGRESS=1 shows the bars even when stdout is not a terminal (tests; logs you want them in)
FORCE_ENV = "TRIFORCE_PROGRESS"


class GenerationProgress(Protocol):
    """What `Engine.generate(..., progress=)` calls."""

    def prefill(self, done_tokens: int, total_tokens: int) -> None:
        """Called when the top level starts its prefill (done 0) and after each prefill chunk."""

    def generated(self, new_tokens: int, max_new_tokens: int) -> None:
        """Called when decoding starts (0 new tokens) and after each top-level step."""


def enabled(requested: bool = True, *, stdout: TextIO | None = None,
            environ: Mapping[str, str] | None = None) -> bool:
    """Bars are on when they are `requested` (hardware.progress, true by default) and stdout is a
    terminal: in a pipe or a batch log, carriage-return redraws are noise. TRIFORCE_PROGRESS=1
    forces them on."""
    if not requested:
        return False
    environ = os.environ if environ is None else environ
    if environ.get(FORCE_ENV) == "1":
        return True
    stdout = sys.stdout if stdout is None else stdout
    return bool(getattr(stdout, "isatty", lambda: False)())


class TokenProgress:
    """tqdm bars for one generation: `<desc> prefill` then `<desc> generate`, in tokens and tokens/s
    (the average since the phase began). A bar disappears when its phase is complete (leave=False),
    so a run's per-prompt bar stays the only lasting line. Use as a context manager: a generation
    that stops early (EOS) still closes its bar."""

    def __init__(self, desc: str, *, file: TextIO | None = None, mininterval: float = 0.1):
        self.desc, self.file, self.mininterval = desc, file, mininterval
        self._bar: tqdm | None = None
        self._phase: str | None = None

    def prefill(self, done_tokens: int, total_tokens: int) -> None:
        self._advance("prefill", done_tokens, total_tokens)

    def generated(self, new_tokens: int, max_new_tokens: int) -> None:
        self._advance("generate", new_tokens, max_new_tokens)

    def _advance(self, phase: str, n: int, total: int) -> None:
        if self._phase != phase:
            self.close()
            self._phase = phase
            # smoothing=0: the rate shown is tokens since the phase began / seconds since then
            self._bar = tqdm(total=total, initial=n, desc=f"{self.desc} {phase}", unit=" tokens", leave=False,
                             file=self.file, mininterval=self.mininterval, smoothing=0, dynamic_ncols=True)
        if self._bar is None:  # this phase already completed
            return
        self._bar.update(n - self._bar.n)
        if n >= total:
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.refresh()  # the final count and rate are drawn once even if updates came faster
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
        self._phase = None

    def __enter__(self) -> "TokenProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
