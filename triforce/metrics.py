"""Per-generation counters and phase timers, reported under the metric names of docs/DESIGN.md §9.

Two kinds of time:
- wall time of a phase (`wall`): host clock around it, with the device synchronised before and
  after (prefill, retrieval rebuilds, graph capture, the whole decode loop);
- device time of the forwards (`timed`): on a GPU, CUDA events around each forward, read once at
  the end, so timing never adds a host synchronisation to the decode loop; on a CPU, where every
  op is synchronous, the host clock.
`time_s/overhead` is then the decode wall time the levels' own work does not account for:
sampling, verification, host work and synchronisation (the engine's overhead). The levels' work is
their forwards' device time and the fills they run outside a round (`LEVEL_FILLS`: a retrieval
rebuild, a level catching up with the sequence when a plan brings it back), wall-timed.

In a batch the times and the forwards are the batch's (one forward serves every sequence); what
each sequence accepted, was proposed, emitted and took part in is counted per sequence (`Counts`),
and each sequence gets its own summary (`summary(row=b)`); `batch_summary` adds the batch's
throughput (generated tokens per second over the batch).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time

import torch

FORWARD_PHASES = ("draft", "middle", "verify", "decode")  # decode: the autoregressive top level
LEVEL_FILLS = ("rebuild", "catchup")  # a level's own GPU work outside a round's forwards


def overhead_s(time_s: dict[str, float], decode_s: float) -> float:
    """The engine's overhead in a decode of decode_s seconds: what the levels' forwards and fills
    (time_s, by phase) leave of it."""
    levels = sum(t for phase, t in time_s.items() if forward_phase(phase) or phase in LEVEL_FILLS)
    return max(0.0, decode_s - levels)


def forward_phase(phase: str) -> bool:
    """A phase of forwards' device time: draft, middle (or a middle-<cache> level), verify, decode."""
    return phase in FORWARD_PHASES or phase.startswith("middle-")


@dataclasses.dataclass
class Counts:
    """What one sequence of a generation accepted, was proposed and emitted, per level, and the
    forwards of each level it took part in."""
    forwards: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    proposed: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    accepted: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    rebuilds: int = 0

    def frozen(self) -> dict[str, tuple[int, int]]:
        return {level: (self.accepted[level], self.proposed[level]) for level in self.proposed}


@dataclasses.dataclass
class GenerationStats:
    device: torch.device
    batch_size: int = 1
    time_s: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
    forwards: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    prefill_reused: bool = False  # the top level's prefill came from a PrefillMemo (every sequence's)
    rows: list[Counts] = dataclasses.field(default_factory=list)
    _events: dict[str, list] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    _keyed: list = dataclasses.field(default_factory=list)  # ((level, tokens), seconds or CUDA events, forwards)
    _stream: object = None  # the CUDA stream of the generation's forwards (the current one at their first)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = [Counts() for _ in range(self.batch_size)]

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def wall(self, phase: str):
        """Wall time of a phase; synchronises CUDA so asynchronous kernels are counted."""
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.time_s[phase] += time.perf_counter() - start

    @contextlib.contextmanager
    def timed(self, phase: str, key: tuple | None = None, share: int = 1):
        """Device time of a forward, without synchronising (CUDA events, read in `summary`). `key`
        (level, tokens per sequence): also kept per forward for the adaptive planner, which reads them
        after the round's synchronisation (`drain`). share: the forwards the timed work holds (a
        proposer's steps run as one graph), each `key`'s with an equal part of its time."""
        if not self._cuda:
            start = time.perf_counter()
            try:
                yield
            finally:
                seconds = time.perf_counter() - start
                self.time_s[phase] += seconds
                if key is not None:
                    self._keyed.append((key, seconds, share))
            return
        # the stream the forwards run on, looked up once: torch.cuda.current_stream() costs ~30 us of
        # host time per call (two per forward: docs/data/profile_rounds_8b_32k_b8_h100.txt)
        stream = self._stream if self._stream is not None else self._current_stream()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            self._events[phase].append((begin, end))
            if key is not None:
                self._keyed.append((key, (begin, end), share))

    def _current_stream(self):
        self._stream = torch.cuda.current_stream(self.device)
        return self._stream

    def drain(self) -> list[tuple[tuple, float]]:
        """The keyed forwards' seconds since the last drain. Call after a synchronisation (the step's):
        their CUDA events have completed, so reading them waits for nothing."""
        out = []
        for key, t, share in self._keyed:
            seconds = t if isinstance(t, float) else t[0].elapsed_time(t[1]) / 1000
            out += [(key, seconds / share)] * share
        self._keyed.clear()
        return out

    def forward_of(self, level: str, rows) -> None:
        """One forward of `level`, serving the sequences `rows` (booleans)."""
        self.forwards[level] += 1
        for b, on in enumerate(rows):
            if on:
                self.rows[b].forwards[level] += 1

    def verified(self, below: str, b: int, proposed: int, accepted: int) -> None:
        self.rows[b].proposed[below] += proposed
        self.rows[b].accepted[below] += accepted

    @staticmethod
    def step_record(step: int, before: dict[str, tuple[int, int]], counts: Counts) -> dict[str, float]:
        """One top-level step of one sequence: accepted/proposed per level since `before`."""
        record: dict[str, float] = {"step": step}
        for level, proposed in counts.proposed.items():
            acc0, prop0 = before.get(level, (0, 0))
            if proposed > prop0:
                record[f"accepted/{level}"] = counts.accepted[level] - acc0
                record[f"proposed/{level}"] = proposed - prop0
        return record

    def sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def _read_events(self) -> None:
        if self._events:
            self.sync()
            for phase, pairs in self._events.items():
                self.time_s[phase] += sum(b.elapsed_time(e) for b, e in pairs) / 1000
            self._events.clear()

    def summary(self, *, new_tokens: int, top_level: str, decode_s: float, emitted: int | None = None,
                row: int = 0) -> dict[str, float]:
        """Sequence `row`'s metrics. `decode_s`: wall time of the decode loop (graph capture
        excluded; in a batch, the batch's). `emitted`: tokens the top level produced for it, before
        the cut at max_new_tokens or EOS (the mean accepted length counts what each top-level
        forward yielded)."""
        self._read_events()
        counts = self.rows[row]
        emitted = new_tokens if emitted is None else emitted
        prefill = self.time_s.get("prefill", 0.0)
        top_forwards = counts.forwards[top_level]
        out: dict[str, float] = {
            "new_tokens": new_tokens,
            "prefill_s": prefill,
            "decode_s": decode_s,
            "ms_per_token": 1000 * decode_s / new_tokens if new_tokens else float("nan"),
            "tokens_per_s": new_tokens / decode_s if decode_s > 0 else float("nan"),
            "mean_accepted_len": emitted / top_forwards if top_forwards else float("nan"),
            "rebuilds": counts.rebuilds,
            "prefill_reused": float(self.prefill_reused),
        }
        for level, n in counts.forwards.items():
            out[f"forwards/{level}"] = n
        for level, n in counts.proposed.items():
            out[f"accept_rate/{level}"] = counts.accepted[level] / n if n else float("nan")
            out[f"proposed/{level}"] = n
            out[f"accepted/{level}"] = counts.accepted[level]
        for phase, t in self.time_s.items():
            out[f"time_s/{phase}"] = t
        out["time_s/overhead"] = overhead_s(self.time_s, decode_s)
        return out

    def batch_summary(self, *, new_tokens: list[int], decode_s: float) -> dict[str, float]:
        """The batch's own metrics: its size, the tokens it generated and their rate over the batch."""
        self._read_events()
        total = sum(new_tokens)
        return {"batch_size": self.batch_size, "new_tokens": total, "decode_s": decode_s,
                "prefill_s": self.time_s.get("prefill", 0.0),
                "throughput": total / decode_s if decode_s > 0 else float("nan"),
                "time_s/overhead": overhead_s(self.time_s, decode_s),
                **{f"forwards/{level}": n for level, n in self.forwards.items()},
                **{f"time_s/{phase}": t for phase, t in self.time_s.items()}}
