"""experiments/acceptance_benchmark.py: its grid of chains and token trees, checked before anything
loads, and a small run on real weights (SmolLM2 on a Gutenberg book) that compares a tree with a
chain over several seeds."""

from __future__ import annotations

import json

import pytest

from tests.script_module import load_script


def _benchmark():
    return load_script("experiments/acceptance_benchmark.py")


def test_the_grid_holds_each_gamma_s_chain_and_each_tree():
    bench = _benchmark()
    args = bench.parse_args(["--method", "retrieval_spec", "--middle-caches", "hybrid", "--budgets", "512",
                             "--chunk-sizes", "8", "--prompt-lens", "2048", "--gammas", "4", "6",
                             "--trees", "4-2-1-1", "2-2-1"])
    configs = bench.configs_of(args)
    assert [(n, m.name, m.gamma, m.tree) for n, m in configs][:2] == [(2048, "retrieval_spec", 4, ()),
                                                                      (2048, "retrieval_spec", 6, ())]
    assert [m.tree for _, m in configs[2:]] == [(4, 2, 1, 1), (2, 2, 1)]
    assert all(m.middle_cache == "hybrid" and m.budget == 512 and not m.uses_draft for _, m in configs)


@pytest.mark.parametrize("argv, message", [
    (["--trees", "2-1"], "add --method retrieval_spec"),
    (["--method", "retrieval_spec", "--trees", "2-0-1"], "each at least 1"),
    (["--method", "retrieval_spec", "--trees", "two"], "widths per depth"),
])
def test_a_bad_tree_stops_before_anything_loads(argv, message):
    bench = _benchmark()
    with pytest.raises(SystemExit, match=message):
        bench.configs_of(bench.parse_args(argv))


@pytest.mark.slow
def test_a_tree_and_a_chain_on_real_text_over_two_seeds(smollm2_dir, gutenberg_dir, capsys, tmp_path):
    bench = _benchmark()
    assert bench.main(["--method", "retrieval_spec", "--middle-caches", "hybrid", "--budgets", "128",
                       "--chunk-sizes", "8", "--prompt-lens", "400", "--gammas", "3", "--trees", "2-1-1",
                       "--books", "1", "--seeds", "0", "1", "--new-tokens", "12", "--model", str(smollm2_dir),
                       "--out", str(tmp_path / "rows.csv")]) == 0
    out = capsys.readouterr().out
    assert "| chain 3 |" in out and "| 2-1-1 |" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["runs"] == 4  # two proposals x one book x two seeds
    best = summary["best"]
    assert best["runs"] == 2 and 1.0 <= best["mean_accepted_len"] <= 4.0
    rows = (tmp_path / "rows.csv").read_text().splitlines()
    assert len(rows) == 5 and "rank_accept_1" in rows[0]
