"""The engine's overhead as the metrics report it (docs/DESIGN.md §7): decode wall time less the
levels' GPU work, their forwards and the fills they run outside a round (rebuilds, catch-ups)."""

import pytest
import torch

from triforce.metrics import GenerationStats, overhead_s


def test_overhead_leaves_out_forwards_rebuilds_and_catch_ups_but_not_prefill_or_capture():
    time_s = {"verify": 1.0, "draft": 0.5, "middle-streaming": 0.25, "rebuild": 0.5, "catchup": 0.25,
              "prefill": 9.0, "capture": 9.0}
    assert overhead_s(time_s, 3.0) == pytest.approx(0.5)
    assert overhead_s(time_s, 2.0) == 0.0  # never negative (wall and device clocks differ a little)


def test_summaries_report_the_same_overhead():
    stats = GenerationStats(torch.device("cpu"), batch_size=2)
    for phase, t in {"decode": 1.0, "catchup": 0.5, "rebuild": 0.25}.items():
        stats.time_s[phase] += t
    one = stats.summary(new_tokens=4, top_level="decode", decode_s=2.0)
    batch = stats.batch_summary(new_tokens=[4, 4], decode_s=2.0)
    assert one["time_s/overhead"] == pytest.approx(0.25) == batch["time_s/overhead"]
