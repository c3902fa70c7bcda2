"""Per-generation counters and phase timers, reported under the metric names of DESIGN.md §5."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time

import torch


@dataclasses.dataclass
class GenerationStats:
    device: torch.device
    time_s: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
    forwards: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    proposed: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    accepted: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    rebuilds: int = 0

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Wall time of a phase; synchronises CUDA so asynchronous kernels are counted."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.time_s[phase] += time.perf_counter() - start

    @contextlib.contextmanager
    def round_record(self, records: list, step: int):
        """Append one record for a top-level step: per-level accepted/proposed and its wall time."""
        before = {level: (self.accepted[level], self.proposed[level]) for level in self.proposed}
        self._sync()
        start = time.perf_counter()
        record: dict[str, float] = {"step": step}
        records.append(record)
        yield record
        self._sync()
        record["ms"] = 1000 * (time.perf_counter() - start)
        for level, proposed in self.proposed.items():
            acc0, prop0 = before.get(level, (0, 0))
            if proposed > prop0:
                record[f"accepted/{level}"] = self.accepted[level] - acc0
                record[f"proposed/{level}"] = proposed - prop0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self, *, new_tokens: int, top_level: str, emitted: int | None = None,
                prefill_phase: str = "prefill") -> dict[str, float]:
        """`emitted`: tokens the top level produced, before the cut at max_new_tokens or EOS
        (the mean accepted length counts what each top-level forward yielded)."""
        emitted = new_tokens if emitted is None else emitted
        prefill = self.time_s.get(prefill_phase, 0.0)
        decode = sum(v for k, v in self.time_s.items() if k != prefill_phase)
        out: dict[str, float] = {
            "new_tokens": new_tokens,
            "prefill_s": prefill,
            "decode_s": decode,
            "ms_per_token": 1000 * decode / new_tokens if new_tokens else float("nan"),
            "tokens_per_s": new_tokens / decode if decode > 0 else float("nan"),
            "mean_accepted_len": emitted / self.forwards[top_level] if self.forwards[top_level] else float("nan"),
            "rebuilds": self.rebuilds,
        }
        for level, n in self.forwards.items():
            out[f"forwards/{level}"] = n
        for level, n in self.proposed.items():
            out[f"accept_rate/{level}"] = self.accepted[level] / n if n else float("nan")
            out[f"proposed/{level}"] = n
            out[f"accepted/{level}"] = self.accepted[level]
        for phase, t in self.time_s.items():
            out[f"time_s/{phase}"] = t
        return out
