"""Scratch memory kernels keep between launches, owned by whoever launches them.

Split-K products and the verification race count their finished programs in an int32 array that
the last program of each launch sets back to zero, so one zeroed array serves every launch that
follows on the same stream. The decode plan and the executors own one `Workspace` each (a captured
graph records the addresses it was captured with, so the arrays must live as long as the graphs);
a kernel called without one (tests, tuning scripts) gets fresh zeros.
"""

from __future__ import annotations

import torch


class Workspace:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._counters: dict[str, torch.Tensor] = {}
        self._retired: list[torch.Tensor] = []

    def counters(self, name: str, size: int) -> torch.Tensor:
        """A zeroed int32 array of at least `size` entries, the same one on every call (a larger
        size replaces it; the old one stays allocated, as a graph captured with it reads it)."""
        have = self._counters.get(name)
        if have is None or have.numel() < size:
            if have is not None:
                self._retired.append(have)
            have = self._counters[name] = torch.zeros(size, dtype=torch.int32, device=self.device)
        return have


def counters(workspace: Workspace | None, name: str, size: int, device: torch.device) -> torch.Tensor:
    return workspace.counters(name, size) if workspace is not None else torch.zeros(size, dtype=torch.int32,
                                                                                    device=device)
