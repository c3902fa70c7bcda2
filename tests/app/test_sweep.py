"""A tiny 2x2 multirun: the aggregated table at the sweep root, per-job folders with W&B offline runs,
the notebook on that table, and a failing job that does not stop the sweep."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.app.helpers import last_json, run_cli, tiny_overrides, write_books

REPO = Path(__file__).resolve().parents[2]


def test_sweep_writes_the_aggregated_table(tiny_sweep):
    sweep_dir, proc = tiny_sweep
    info = last_json(proc.stdout)
    assert info == {"sweep_dir": str(sweep_dir), "jobs": 4, "ok": 4, "failed": 0,
                    "table": str(sweep_dir / "sweep.parquet"), "csv": str(sweep_dir / "sweep.csv")}
    runs = pd.read_parquet(sweep_dir / "sweep.parquet")
    assert len(runs) == 4 and (runs["status"] == "ok").all()
    grid = sorted(zip(runs["method.budget"], runs["method.gamma"]))
    assert grid == [(32, 2), (32, 4), (64, 2), (64, 4)]
    for col in ("accept_rate/middle", "mean_accepted_len", "ms_per_token", "speedup", "time_s/verify"):
        assert runs[col].notna().all(), col
    assert len(pd.read_csv(sweep_dir / "sweep.csv")) == 4
    samples = pd.read_parquet(sweep_dir / "sweep_samples.parquet")
    assert len(samples) == 4 and samples["run_dir"].nunique() == 4


def test_sweep_jobs_have_their_files_and_wandb_offline_runs(tiny_sweep):
    sweep_dir, _ = tiny_sweep
    for job in range(4):
        job_dir = sweep_dir / str(job)
        for name in ("summary.json", "samples.parquet", "config.yaml", "acceptance.png", "latency.png"):
            assert (job_dir / name).is_file(), (job, name)
        runs = list((job_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, job
        record = json.loads((job_dir / "summary.json").read_text())
        assert record["job_num"] == job and any(o.startswith("method.budget=") for o in record["overrides"])


def test_notebook_renders_the_sweep(tiny_sweep, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    sweep_dir, _ = tiny_sweep
    nb = nbformat.read(REPO / "notebooks" / "acceptance_analysis.ipynb", as_version=4)
    # the kernel inherits this environment: the notebook finds the newest sweep under TRIFORCE_OUTPUTS
    monkeypatch.setenv("TRIFORCE_OUTPUTS", str(sweep_dir.parents[2]))
    monkeypatch.delenv("TRIFORCE_SWEEP_TABLE", raising=False)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"{sweep_dir / 'sweep.parquet'}: 4 jobs, 4 ok, 0 failed" in text
    assert (sweep_dir / "acceptance_vs_params.png").is_file() and (sweep_dir / "latency_breakdown.png").is_file()
    assert "not a middle-cache study" in text  # the study section says why it has nothing to show


def execute_notebook(sweep_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "acceptance_analysis.ipynb", as_version=4)
    monkeypatch.setenv("TRIFORCE_OUTPUTS", str(sweep_dir.parents[2]))
    monkeypatch.delenv("TRIFORCE_SWEEP_TABLE", raising=False)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    return images, text


def test_notebook_renders_the_middle_cache_study(tiny_study, tmp_path, monkeypatch):
    sweep_dir, _ = tiny_study
    images, text = execute_notebook(sweep_dir, tmp_path, monkeypatch)
    assert f"{sweep_dir / 'sweep.parquet'}: 6 jobs, 6 ok, 0 failed" in text
    assert len(images) >= 3  # acceptance vs parameters, latency, the study's figure
    assert (sweep_dir / "middle_cache_study.png").is_file()
    assert "hybrid vs the better of retrieval and StreamingLLM" in text
    assert "not a middle-cache study" not in text


def test_study_sweep_rows_carry_the_resolved_budget_and_reference_acceptance(tiny_study):
    from triforce.study import load_sweep, study_rows

    sweep_dir, _ = tiny_study
    rows = study_rows(*load_sweep(sweep_dir), ["method.middle_cache", "method.budget_fraction"])
    assert len(rows) == 12 and set(rows["method.middle_cache"]) == {"streaming", "retrieval", "hybrid"}
    assert (rows["middle_budget"] == rows["prompt_tokens"] * rows["method.budget_fraction"]).all()
    assert rows["ref_accept/middle"].between(0.05, 1).all()
    # the same prompts and seeds in every cell: the baseline (and so the reference continuation) agrees
    assert rows.groupby("sample_id")["baseline_ms_per_token"].count().eq(6).all()
    assert rows.groupby("sample_id")["seed"].nunique().eq(1).all()


def test_study_table_script(tiny_study):
    sweep_dir, _ = tiny_study
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "study_table.py"), str(sweep_dir),
                           "--windows", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("6 jobs (0 failed), 2 prompts")
    # one row per cell: 1 prompt length x 1 chunk size x 2 budgets x 3 caches, mean ± interval
    cells = [line for line in out.splitlines() if line.startswith("| 128")]
    assert len(cells) >= 6 and all(" ± " in line for line in cells[:6])
    assert "hybrid vs the better of retrieval and StreamingLLM: ref_accept/middle" in out
    # 12 new tokens: three windows of 4, one row per (cache, rebuild policy)
    assert "| method.middle_cache | method.rebuild | 0-3 | 4-7 | 8-11 |" in out
    assert "| hybrid | never | " in out
    summary = last_json(out)
    assert summary["jobs"] == 6 and set(summary["verdicts"]) == {
        "accept_rate/middle", "token_accept/middle", "ref_accept/middle", "mean_accepted_len"}


def test_failing_job_does_not_stop_the_sweep_but_fails_it(tmp_path, books_dir):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *tiny_overrides(books_dir, f"hydra.sweep.dir={sweep_dir}", "method.gamma=0,4,-1")],
                   tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # every job ran and is in the table; the sweep failed
    assert last_json(proc.stdout)["failed"] == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: 2 of 3 sweep jobs failed; {sweep_dir / 'sweep.csv'} has "
                                                    "each job's status and error")
    runs = pd.read_parquet(sweep_dir / "sweep.parquet").sort_values("job_num")
    assert list(runs["status"]) == ["failed", "ok", "failed"]
    assert "method.gamma=0 must be a positive" in runs["error"].iloc[0]
    assert runs["ms_per_token"].iloc[1] > 0
    assert proc.stderr.count("error: method.gamma=") == 2


def test_sweep_exit_code_follows_the_last_sweep(monkeypatch):
    from triforce.app.callbacks import AggregateSweep, sweep_exit_code

    for info, code in ((None, 0), ({"jobs": 4, "ok": 4, "failed": 0}, 0), ({"jobs": 4, "ok": 3, "failed": 1}, 1),
                       ({"sweep_dir": "x", "error": "OSError: disk full"}, 1), ({"sweep_dir": "x", "jobs": 0}, 0)):
        monkeypatch.setattr(AggregateSweep, "last", info)
        assert sweep_exit_code() == code, info


def test_interrupted_job_says_so(tmp_path, books_dir, monkeypatch):
    """Ctrl-C mid-run (here: while the models load): status interrupted, not failed with no error."""
    from triforce.app import runner
    from triforce.app.runner import JobContext, run_job
    from tests.app.helpers import compose

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.engines, "build_engine", ctrl_c)
    result = run_job(compose(*tiny_overrides(books_dir)), JobContext(run_dir=tmp_path / "job"))
    assert result.status == "interrupted" and not result.ok
    record = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "interrupted (Ctrl-C)"


def test_crashing_job_is_recorded_and_wandb_finished(tmp_path, books_dir, monkeypatch):
    """An unexpected exception mid-run (not a config error): status failed, W&B run closed, sweep goes on."""
    from triforce.app import runner
    from triforce.app.runner import JobContext, run_job
    from tests.app.helpers import compose

    closed = []

    class Tracker:
        def log_sample(self, step, metrics):
            pass

        def finish(self, *, summary, table=None, failed):
            closed.append(failed)

    def boom(*a, **k):
        raise RuntimeError("device on fire")

    monkeypatch.setattr(runner, "open_tracker", lambda *a, **k: Tracker())
    monkeypatch.setattr(runner.engines, "build_engine", boom)
    result = run_job(compose(*tiny_overrides(books_dir)), JobContext(run_dir=tmp_path / "job", multirun=True))
    assert result.status == "failed" and not result.user_error and "device on fire" in result.error
    assert closed == [True]
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["status"] == "failed"


def test_each_job_is_announced_with_its_number_and_swept_values(tiny_sweep):
    _, proc = tiny_sweep
    announced = [line.split("] - ", 1)[1] for line in proc.stdout.splitlines() if "] - job " in line]
    assert announced == ["job 1/4: method.budget=32 method.gamma=2", "job 2/4: method.budget=32 method.gamma=4",
                         "job 3/4: method.budget=64 method.gamma=2", "job 4/4: method.budget=64 method.gamma=4"]


def test_sweep_plan_counts_the_basic_sweepers_product():
    from omegaconf import OmegaConf

    from triforce.app.callbacks import BASIC_SWEEPER, sweep_plan

    def plan(task, params=None, target=BASIC_SWEEPER):
        return sweep_plan(OmegaConf.create({"hydra": {"sweeper": {"_target_": target, "params": params},
                                                       "overrides": {"task": task}}}))

    assert plan(["method.budget=1,2,3", "model=tiny", "method=spec,triforce"]) == (6, {"method.budget", "method"})
    # sweeper params come first; the command line replaces a key they share
    assert plan(["method.gamma=2,4"], params={"method.gamma": "4,6,8", "seed": "0,1"}) == (4, {"method.gamma", "seed"})
    assert plan(["method.gamma=2,4", "method.gamma=6"]) == (1, set())
    assert plan(["+extra=range(0,5)"]) == (5, {"+extra"})
    assert plan(["method.gamma=2,4"], target="hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper") \
        == (None, set())


def test_batch_size_sweep_tables_and_plots_throughput(tmp_path, monkeypatch):
    """`triforce -m experiment=smoke method=auto,triforce hardware.batch_size=1,4`: one row per prompt
    in every job's samples.parquet (each with its batch), throughput and batch size in the sweep
    table beside each method's plan counts (method=auto: its plans, docs/DESIGN.md §12), the step
    costs each job measured, and the notebook's throughput-vs-batch and plans-over-time sections."""
    sweep_dir = tmp_path / "outputs" / "multirun" / "2026-01-03" / "00-00-00"
    books_dir = write_books(tmp_path / "books", n=4)
    proc = run_cli(["-m", "experiment=smoke", "method=auto,triforce", "hardware.batch_size=1,4",
                    f"dataset.folder={books_dir}", "dataset.num_samples=4", "max_new_tokens=6", "method.budget=32",
                    f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each job warms up through Engine.warm_up (on a GPU: every plan auto may choose, so that none
    # compiles inside a timed prompt; here, a CPU's light warm-up: auto's first plans in turn), its
    # engine and its baseline's: triforce's one plan and plain decoding
    warm = [int(n) for n in re.findall(r"warm-up: (\d+) plan\(s\)", proc.stdout + proc.stderr)]
    assert len(warm) == 4 and sorted(warm)[:2] == [2, 2] and min(sorted(warm)[2:]) >= 2, warm
    runs = pd.read_parquet(sweep_dir / "sweep.parquet")
    assert sorted(zip(runs["method.name"], runs["hardware.batch_size"])) == [("auto", 1), ("auto", 4),
                                                                            ("triforce", 1), ("triforce", 4)]
    assert (runs["status"] == "ok").all()
    assert runs["throughput"].gt(0).all() and runs["baseline_throughput"].gt(0).all()
    plans = [c for c in runs.columns if c.startswith("plan_rounds/")]
    auto = runs[runs["method.name"] == "auto"]
    assert auto[plans].sum(axis=1).gt(0).all() and auto["plan/probes"].notna().all()
    assert runs.loc[runs["method.name"] == "triforce", "plan_rounds/triforce g4/2"].gt(0).all()  # its own plan
    for job in range(4):
        samples = pd.read_parquet(sweep_dir / str(job) / "samples.parquet")
        assert len(samples) == 4 and samples["new_tokens"].eq(6).all()
        size = int(runs.loc[runs["job_num"] == job, "hardware.batch_size"].iloc[0])
        assert samples["batch_size"].eq(size).all() and samples["batch"].tolist() == [i // size for i in range(4)]
        assert "plan" in pd.read_parquet(sweep_dir / str(job) / "rounds.parquet").columns
        assert json.loads((sweep_dir / str(job) / "costs.json").read_text())["seconds"]
    images, text = execute_notebook(sweep_dir, tmp_path, monkeypatch)
    assert (sweep_dir / "throughput_vs_batch.png").is_file()
    assert "throughput section skipped" not in text
    assert (sweep_dir / "plans_over_time.png").is_file() and "plans section skipped" not in text


def test_a_tree_sweep_tables_and_plots_accepted_length_by_shape(tmp_path, books_dir, monkeypatch):
    """`triforce -m method=retrieval_spec 'method.tree=[],[2,2],[3,2,1]'` (the middle proposes each tree):
    the sweep table has the tree of each job, and the notebook's tree section plots the tokens per
    top-level forward by shape."""
    from tests.app.helpers import run_cli, tiny_overrides

    sweep_dir = tmp_path / "outputs" / "multirun" / "2026-01-03" / "00-00-00"
    proc = run_cli(["-m", *tiny_overrides(books_dir, "method=retrieval_spec", "hardware.executor=eager",
                                          "warmup=false", f"hydra.sweep.dir={sweep_dir}"),
                    "method.tree=[],[2,2],[3,2,1]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_parquet(sweep_dir / "sweep.parquet")
    assert sorted(runs["method.tree"]) == ["[2, 2]", "[3, 2, 1]", "[]"]  # the table keeps a list as its text
    assert (runs["status"] == "ok").all() and (runs["mean_accepted_len"] >= 1).all()
    images, text = execute_notebook(sweep_dir, tmp_path, monkeypatch)
    assert "3-2-1 (15 nodes)" in text and "2-2 (6 nodes)" in text and "chain (gamma 4)" in text
    assert (sweep_dir / "accepted_by_tree.png").is_file()
