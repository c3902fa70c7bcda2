"""hardware.prefill_memo_gb: the jobs of a sweep (one process, models reloaded per job) prefill each
prompt once; results are those of fresh prefills; 0 turns it off and gives the memory back. And
reference_acceptance: the expected acceptance along the baseline's tokens in the samples table."""

from __future__ import annotations

import pandas as pd

from tests.app.helpers import compose, tiny_overrides
from triforce.app import engines
from triforce.app.runner import JobContext, run_job


def job(tmp_path, books_dir, name, *overrides):
    defaults = ("dataset.num_samples=2", "baseline=false", "warmup=false", "sampling.temperature=0.7")
    keys = {o.split("=", 1)[0] for o in overrides}
    cfg = compose(*tiny_overrides(books_dir, *[d for d in defaults if d.split("=", 1)[0] not in keys], *overrides))
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


def test_reference_acceptance_along_the_baseline(tmp_path, books_dir):
    """ref_accept/<level>: the expected acceptance along the baseline's tokens, the same whatever
    the engine's own sampled trajectory (a cell's seed changes its generation, not this)."""
    on = ("reference_acceptance=true", "baseline=true", "method.middle_cache=hybrid")
    a = job(tmp_path, books_dir, "a", *on, "seed=0")
    for level in ("draft", "middle"):
        assert a[f"ref_accept/{level}"].between(0.05, 1.0).all()
    b = job(tmp_path, books_dir, "b", *on, "seed=0", "method.budget=64")
    assert (b["ref_accept/middle"] != a["ref_accept/middle"]).any()  # another budget, another cache
