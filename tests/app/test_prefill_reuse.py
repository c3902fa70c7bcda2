"""hardware.prefill_memo_gb: the jobs of a sweep (one process, models reloaded per job) prefill each
prompt once; results are those of fresh prefills; 0 turns it off and gives the memory back."""

from __future__ import annotations

import pandas as pd

from tests.app.helpers import compose, tiny_overrides
from triforce.app import engines
from triforce.app.runner import JobContext, run_job


def job(tmp_path, books_dir, name, *overrides):
    cfg = compose(*tiny_overrides(books_dir, "dataset.num_samples=2", "baseline=false", "warmup=false",
                                  "sampling.temperature=0.7", *overrides))
    result = run_job(cfg, JobContext(run_dir=tmp_path / name, multirun=True))
    assert result.ok, result.error
    return pd.read_parquet(tmp_path / name / "samples.parquet")


def test_jobs_reuse_prefills_exactly(tmp_path, books_dir):
    try:
        on = "hardware.prefill_memo_gb=0.5"
        first = job(tmp_path, books_dir, "a", on, "method.budget=32")
        assert list(first["prefill_reused"]) == [0.0, 0.0] and len(engines.PREFILLS) == 2
        second = job(tmp_path, books_dir, "b", on, "method.budget=64", "method.middle_cache=hybrid")
        assert list(second["prefill_reused"]) == [1.0, 1.0]
        fresh = job(tmp_path, books_dir, "c", "hardware.prefill_memo_gb=0", "method.budget=64",
                    "method.middle_cache=hybrid")
        assert list(fresh["prefill_reused"]) == [0.0, 0.0] and len(engines.PREFILLS) == 0
        for col in ("text", "accept_rate/middle", "accept_rate/draft", "mean_accepted_len"):
            assert list(second[col]) == list(fresh[col]), col
    finally:
        engines.PREFILLS.resize(0)
