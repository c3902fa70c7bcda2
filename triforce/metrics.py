"""Per-generation counters and phase timers, reported under the metric names of docs/DESIGN.md §5.

Two kinds of time:
- wall time of a phase (`wall`): host clock around it, with the device synchronised before and
  after (prefill, retrieval rebuilds, graph capture, the whole decode loop);
- device time of the forwards (`timed`): on a GPU, CUDA events around each forward, read once at
  the end, so timing never adds a host synchronisation to the decode loop; on a CPU, where every
  op is synchronous, the host clock.
`time_s/overhead` is then the decode wall time the forwards do not account for: sampling,
verification, host work and synchronisation (the engine's overhead).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time

import torch

FORWARD_PHASES = ("draft", "middle", "verify", "decode")  # decode: the autoregressive top level


@dataclasses.dataclass
class GenerationStats:
    device: torch.device
    time_s: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
    forwards: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    proposed: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    accepted: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    rebuilds: int = 0
    prefill_reused: bool = False  # the top level's prefill came from a PrefillMemo
    _events: dict[str, list] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

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
    def timed(self, phase: str):
        """Device time of a forward, without synchronising (CUDA events, read in `summary`)."""
        if not self._cuda:
            start = time.perf_counter()
            try:
                yield
            finally:
                self.time_s[phase] += time.perf_counter() - start
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        try:
            yield
        finally:
            end.record()
            self._events[phase].append((begin, end))

    @contextlib.contextmanager
    def round_record(self, records: list, step: int):
        """Append one record for a top-level step: per-level accepted/proposed and its wall time."""
        before = {level: (self.accepted[level], self.proposed[level]) for level in self.proposed}
        self.sync()
        start = time.perf_counter()
        record: dict[str, float] = {"step": step}
        records.append(record)
        yield record
        self.sync()
        record["ms"] = 1000 * (time.perf_counter() - start)
        for level, proposed in self.proposed.items():
            acc0, prop0 = before.get(level, (0, 0))
            if proposed > prop0:
                record[f"accepted/{level}"] = self.accepted[level] - acc0
                record[f"proposed/{level}"] = proposed - prop0

    def sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def _read_events(self) -> None:
        if self._events:
            self.sync()
            for phase, pairs in self._events.items():
                self.time_s[phase] += sum(b.elapsed_time(e) for b, e in pairs) / 1000
            self._events.clear()

    def summary(self, *, new_tokens: int, top_level: str, decode_s: float,
                emitted: int | None = None) -> dict[str, float]:
        """`decode_s`: wall time of the decode loop (graph capture excluded). `emitted`: tokens the
        top level produced, before the cut at max_new_tokens or EOS (the mean accepted length
        counts what each top-level forward yielded)."""
        self._read_events()
        emitted = new_tokens if emitted is None else emitted
        prefill = self.time_s.get("prefill", 0.0)
        forwards = sum(t for phase, t in self.time_s.items() if phase in FORWARD_PHASES)
        out: dict[str, float] = {
            "new_tokens": new_tokens,
            "prefill_s": prefill,
            "decode_s": decode_s,
            "ms_per_token": 1000 * decode_s / new_tokens if new_tokens else float("nan"),
            "tokens_per_s": new_tokens / decode_s if decode_s > 0 else float("nan"),
            "mean_accepted_len": emitted / self.forwards[top_level] if self.forwards[top_level] else float("nan"),
            "rebuilds": self.rebuilds,
            "prefill_reused": float(self.prefill_reused),
        }
        for level, n in self.forwards.items():
            out[f"forwards/{level}"] = n
        for level, n in self.proposed.items():
            out[f"accept_rate/{level}"] = self.accepted[level] / n if n else float("nan")
            out[f"proposed/{level}"] = n
            out[f"accepted/{level}"] = self.accepted[level]
        for phase, t in self.time_s.items():
            out[f"time_s/{phase}"] = t
        out["time_s/overhead"] = max(0.0, decode_s - forwards - self.time_s.get("rebuild", 0.0))
        return out
