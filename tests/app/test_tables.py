"""Run summaries and sweep aggregation (scripts/aggregate.py works on any set of run folders)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from triforce.app.tables import aggregate_runs, find_run_dirs, flatten, summarize, write_summary

REPO = Path(__file__).resolve().parents[2]


def fake_run(folder: Path, budget: int, ms: float, status: str = "ok") -> Path:
    folder.mkdir(parents=True)
    metrics = {"ms_per_token": ms, "accept_rate/middle": 0.5} if status == "ok" else {}
    write_summary(folder, {"status": status, "error": None if status == "ok" else "boom", "job_num": None,
                           "overrides": [f"method.budget={budget}"], "params": {"method": {"budget": budget}},
                           "metrics": {**metrics, "status": status}})
    if status == "ok":
        pd.DataFrame({"sample": [0, 1], "ms_per_token": [ms, ms]}).to_parquet(folder / "samples.parquet")
    return folder


def test_summarize_means_numeric_metrics_only():
    df = pd.DataFrame({"sample": [0, 1], "seed": [0, 1], "ms_per_token": [1.0, 3.0], "title": ["a", "b"],
                       "accept_rate/draft": [float("nan"), float("nan")]})
    out = summarize(df)
    assert out == {"ms_per_token": 2.0, "accept_rate/draft": None, "num_samples": 2}


def test_flatten():
    assert flatten({"method": {"budget": 4, "x": {"y": None}}, "tags": ["a"]}) == {
        "method.budget": 4, "method.x.y": None, "tags": '["a"]'}


def test_aggregate_any_run_folders(tmp_path):
    fake_run(tmp_path / "a" / "10", 256, 2.0)
    fake_run(tmp_path / "a" / "9", 512, 1.0)
    fake_run(tmp_path / "b", 1024, 0.0, status="failed")
    dirs = find_run_dirs([tmp_path])
    assert [d.relative_to(tmp_path).as_posix() for d in dirs] == ["a/9", "a/10", "b"]
    runs, samples = aggregate_runs(dirs)
    assert list(runs["method.budget"]) == [512, 256, 1024]
    assert list(runs["status"]) == ["ok", "ok", "failed"]
    assert math.isnan(runs["ms_per_token"].iloc[2])
    assert len(samples) == 4


def test_aggregate_script(tmp_path):
    fake_run(tmp_path / "runs" / "x", 256, 2.0)
    fake_run(tmp_path / "runs" / "y", 512, 1.0)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "aggregate.py"), str(tmp_path / "runs"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["runs"] == 2
    assert len(pd.read_parquet(tmp_path / "out" / "sweep.parquet")) == 2
    assert len(pd.read_csv(tmp_path / "out" / "sweep.csv")) == 2
    empty = subprocess.run([sys.executable, str(REPO / "scripts" / "aggregate.py"), str(tmp_path / "out")],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no run folders")
