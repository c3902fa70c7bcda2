"""triforce.bench.latency.round_timeline: an adaptive run's rounds one by one, from the per-row
step records (what the adaptive benchmark keeps to tell the planner's choices from their speed)."""

from __future__ import annotations

from triforce.bench.latency import round_timeline


def test_round_timeline_sums_a_batch_step_and_keeps_the_plan():
    rounds = [[{"ms": 20.0, "emitted": 5, "plan": "spec g8", "predicted_tokens_per_s": 1800.0},
               {"ms": 10.0, "emitted": 1, "plan": "autoregressive", "capture_ms": 3.0}],
              [{"ms": 20.0, "emitted": 3, "plan": "spec g8", "predicted_tokens_per_s": 1800.0}]]  # a row done early
    first, second = round_timeline(rounds)
    assert (first["step"], first["plan"], first["emitted"], first["tokens_per_s"]) == (0, "spec g8", 8, 400.0)
    assert first["predicted_tokens_per_s"] == 1800.0 and first["capture_ms"] == 0.0
    assert (second["emitted"], second["tokens_per_s"], second["capture_ms"]) == (1, 100.0, 3.0)
    assert second["predicted_tokens_per_s"] is None
    assert round_timeline([]) == []
