"""triforce.study: intervals, paired comparisons and windowed acceptance on hand-made tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from triforce.study import (cell_table, mean_ci, robustness, study_rows, t975, token_acceptance, versus_best,
                            windowed_acceptance, with_token_acceptance)


@pytest.mark.parametrize("dof", [1, 2, 3, 7, 15, 30])
def test_t_quantiles_match_scipy(dof):
    assert t975(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=1e-3)


def test_mean_ci():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(stats.t.ppf(0.975, 3) * stats.sem([1, 2, 3, 4]), rel=1e-3)
    assert math.isnan(mean_ci([0.5])[1]) and math.isnan(mean_ci([])[0])


def rows_for(values: dict[str, list[float]], budget: float = 0.125) -> pd.DataFrame:
    return pd.DataFrame([{"method.middle_cache": cache, "method.budget_fraction": budget, "sample_id": f"book{i}",
                          "accept": v} for cache, vs in values.items() for i, v in enumerate(vs)])


def test_versus_best_pairs_prompts():
    # prompts differ a lot (0.5 .. 0.9), the hybrid is better on every one by 0.02-0.03: unpaired
    # intervals would overlap, the paired difference says better
    rows = rows_for({"retrieval": [0.50, 0.70, 0.90, 0.60], "streaming": [0.52, 0.71, 0.88, 0.62],
                     "hybrid": [0.55, 0.73, 0.91, 0.64]})
    out = versus_best(rows, ["method.budget_fraction"], "accept").iloc[0]
    assert out["best other"] == "streaming" and out["verdict"] == "better"
    assert out["difference"] == pytest.approx(0.025)
    worse = versus_best(rows_for({"retrieval": [0.5, 0.7, 0.9], "hybrid": [0.4, 0.61, 0.79]}),
                        ["method.budget_fraction"], "accept").iloc[0]
    assert worse["verdict"] == "worse"
    tie = versus_best(rows_for({"streaming": [0.5, 0.7, 0.9], "hybrid": [0.55, 0.65, 0.92]}),
                      ["method.budget_fraction"], "accept").iloc[0]
    assert tie["verdict"] == "tie"


def test_robustness_counts_each_cache_against_the_better_other():
    # budget 0.1: streaming clearly best (retrieval worse, hybrid ties); budget 0.2: retrieval clearly
    # best (streaming worse, hybrid ties): only the hybrid is never worse
    rows = pd.concat([
        rows_for({"retrieval": [0.50, 0.60, 0.70], "streaming": [0.60, 0.70, 0.80],
                  "hybrid": [0.61, 0.69, 0.80]}, budget=0.1),
        rows_for({"retrieval": [0.70, 0.80, 0.90], "streaming": [0.60, 0.70, 0.80],
                  "hybrid": [0.70, 0.81, 0.89]}, budget=0.2)])
    out = robustness(rows, ["method.budget_fraction"], "accept").set_index("method.middle_cache")
    assert out.loc["hybrid", ["cells", "better", "tie", "worse"]].tolist() == [2, 0, 2, 0]
    assert out.loc["retrieval", ["tie", "worse"]].tolist() == [1, 1]
    assert out.loc["streaming", ["tie", "worse"]].tolist() == [1, 1]


def test_cell_table_and_study_rows():
    runs = pd.DataFrame({"run_dir": ["a", "b", "c"], "status": ["ok", "ok", "failed"],
                         "method.middle_cache": ["retrieval", "hybrid", "hybrid"]})
    samples = pd.DataFrame({"run_dir": ["a", "a", "b", "b", "c"], "accept": [0.5, 0.7, 0.8, 0.9, 0.0]})
    rows = study_rows(runs, samples, ["method.middle_cache", "not.a.column"])
    assert len(rows) == 4  # the failed job's row is dropped
    table = cell_table(rows, ["method.middle_cache"], ["accept"]).set_index("method.middle_cache")
    assert table.loc["hybrid", "accept"] == pytest.approx(0.85) and table.loc["hybrid", "n"] == 2
    assert table.loc["retrieval", "accept ±"] == pytest.approx(12.706 * 0.1, rel=1e-3)


def test_windowed_acceptance():
    # sample 0: steps emit 30, 30, 10, 40 tokens: windows of 64 start at tokens 0, 30, 60 (window 0)
    # and 70 (window 1); sample 1: one step
    rounds = pd.DataFrame({"sample": [0, 0, 0, 0, 1], "step": [0, 1, 2, 3, 0], "emitted": [30, 30, 10, 40, 5],
                           "accepted/middle": [5, 6, 1, 4, 2], "proposed/middle": [6, 6, 6, 6, 6]})
    out = windowed_acceptance(rounds, window=64)
    assert out.to_dict("records") == [
        {"sample": 0, "window": 0, "accept": 12 / 18, "steps": 3},
        {"sample": 0, "window": 1, "accept": 4 / 6, "steps": 1},
        {"sample": 1, "window": 0, "accept": 2 / 6, "steps": 1}]


def test_token_acceptance_counts_one_rejection_per_round_that_had_one():
    # sample 0: rounds accept 6/6, 2/6 (rejected), 0/6 (rejected): 8 accepted, 2 rejections;
    # sample 1: 3/6 then a round of another level only
    rounds = pd.DataFrame({"sample": [0, 0, 0, 1, 1], "step": [0, 1, 2, 0, 1],
                           "accepted/middle": [6, 2, 0, 3, None], "proposed/middle": [6, 6, 6, 6, None]})
    got = token_acceptance(rounds)
    assert got[0] == pytest.approx(8 / 10) and got[1] == pytest.approx(3 / 4)


def test_with_token_acceptance_reads_each_run(tmp_path):
    for name, accepted in (("a", [6, 1]), ("b", [2, 2])):
        (tmp_path / name).mkdir()
        pd.DataFrame({"sample": [0, 0], "step": [0, 1], "accepted/middle": accepted,
                      "proposed/middle": [6, 6]}).to_parquet(tmp_path / name / "rounds.parquet")
    rows = pd.DataFrame({"run_dir": [str(tmp_path / "a"), str(tmp_path / "b")], "sample": [0, 0]})
    out = with_token_acceptance(rows)
    assert out["token_accept/middle"].tolist() == pytest.approx([7 / 8, 4 / 6])
