"""A single run of the `triforce` console script on the tiny model: files, stdout contract, W&B offline."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from tests.app.helpers import cli_command, last_json, messages, run_cli, tiny_overrides

METRICS = ("prefill_s", "ms_per_token", "tokens_per_s", "mean_accepted_len", "accept_rate/draft",
           "accept_rate/middle", "forwards/top", "time_s/verify", "new_tokens", "baseline_ms_per_token", "speedup")


def test_single_run(tmp_path, books_dir):
    run_dir = tmp_path / "run"
    proc = run_cli(tiny_overrides(books_dir, "logger=wandb", "dataset.num_samples=2", f"hydra.run.dir={run_dir}"),
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["status"] == "ok" and summary["num_samples"] == 2
    for name in METRICS:
        assert isinstance(summary[name], (int, float)), name
    assert summary["new_tokens"] == 8
    assert summary["speedup"] > 0
    assert "--- generated text, sample 0" in proc.stdout
    assert " prefill:" not in proc.stderr and " generate:" not in proc.stderr  # no bars off a terminal

    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert len(samples) == 2 and set(METRICS) <= set(samples.columns)
    assert (samples["speedup"] - samples["baseline_ms_per_token"] / samples["ms_per_token"]).abs().max() < 1e-9
    record = json.loads((run_dir / "summary.json").read_text())
    assert record["status"] == "ok" and record["params"]["model"]["name"] == "tiny-random"
    assert record["metrics"]["ms_per_token"] == summary["ms_per_token"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "acceptance.png").stat().st_size > 1000 and (run_dir / "latency.png").stat().st_size > 1000
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    steps = pd.read_parquet(run_dir / "rounds.parquet")  # acceptance and latency per top-level step
    assert set(steps["sample"]) == {0, 1}
    assert {"step", "emitted", "ms", "accepted/middle", "proposed/middle", "accepted/draft"} <= set(steps.columns)
    assert steps.groupby("sample")["emitted"].sum().min() >= 8  # every new token comes from a step
    assert (steps["accepted/middle"] <= steps["proposed/middle"]).all()


def test_autoregressive_without_baseline(tmp_path, books_dir):
    proc = run_cli(tiny_overrides(books_dir, "method=autoregressive", "draft=none", "baseline=false",
                                  f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["mean_accepted_len"] == 1.0 and "speedup" not in summary


def test_greedy_methods_match_the_baseline_tokens(tmp_path, books_dir):
    proc = run_cli(tiny_overrides(books_dir, "sampling=greedy", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["baseline_same_tokens"] == 1.0


def test_every_method_runs_through_the_cli_greedy_identical(tmp_path, books_dir):
    """The four methods of the engine are all reachable from the console script (one multirun),
    and at temperature 0 each emits the autoregressive baseline's tokens."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *tiny_overrides(books_dir, "method=autoregressive,spec,retrieval_spec,triforce",
                                          "sampling=greedy", f"hydra.sweep.dir={sweep}")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(sweep / "sweep.parquet")
    assert sorted(table["method.name"]) == ["autoregressive", "retrieval_spec", "spec", "triforce"]
    assert (table["status"] == "ok").all()
    assert (table["baseline_same_tokens"] == 1.0).all()
    levels = dict(zip(table["method.name"], table["mean_accepted_len"]))
    assert levels["autoregressive"] == 1.0


def test_progress_during_prefill_and_generation(tmp_path, books_dir):
    """The default CPU profile with the bars forced on (stderr is not a terminal here): the prefill
    (in chunks) and the generation of the method and of the baseline each show tokens and tokens/s."""
    proc = run_cli(tiny_overrides(books_dir, "hardware=cpu", "hardware.prefill_chunk=32",
                                  f"hydra.run.dir={tmp_path / 'run'}"), tmp_path, env={"TRIFORCE_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bar in (r"triforce #0 prefill: +100%.*128/128", r"triforce #0 generate: +100%.*8/8",
                r"autoregressive #0 prefill: +100%.*128/128", r"autoregressive #0 generate: +100%.*8/8"):
        assert re.search(bar + r" \[[^\]]*, \d+(\.\d+)? tokens/s\]", proc.stderr), bar
    assert last_json(proc.stdout)["status"] == "ok"  # the bars stay off stdout: its last line is still JSON
    quiet = run_cli(tiny_overrides(books_dir, "hardware.progress=false", f"hydra.run.dir={tmp_path / 'quiet'}"),
                    tmp_path, env={"TRIFORCE_PROGRESS": "1"})
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "tokens/s" not in quiet.stderr and "prompt/s" not in quiet.stderr


def test_tensor_parallel_run_under_torchrun_writes_once(tmp_path, books_dir):
    """`torchrun --nproc-per-node 2 --no-python triforce ...`: two gloo ranks, KV offloaded; rank 0
    alone prints and writes the run folder, with the tokens of a single-process run."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    script = Path(sys.executable).with_name("triforce")
    args = tiny_overrides(books_dir, "sampling=greedy", "hardware.offload=true", "hardware.on_chip_layers=1")
    single = run_cli(args + [f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    run_dir = tmp_path / "tp"
    cmd = [str(torchrun), "--nproc-per-node", "2", "--no-python", str(script), *args,
           "hardware.tensor_parallel=2", f"hydra.run.dir={run_dir}"]
    from tests.app.helpers import cli_env

    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(line.startswith("{") for line in proc.stdout.splitlines()) == 1  # rank 0 only
    summary = last_json(proc.stdout)
    assert summary["status"] == "ok" and summary["run_dir"] == str(run_dir)
    assert summary["baseline_same_tokens"] == 1.0
    tp_text = pd.read_parquet(run_dir / "samples.parquet")["text"].tolist()
    assert tp_text == pd.read_parquet(tmp_path / "single" / "samples.parquet")["text"].tolist()
    assert not list(tmp_path.glob("outputs"))  # the other rank kept its Hydra folder out of the cwd
    shutil.rmtree(run_dir)


@pytest.mark.slow  # a CLI start plus the wait for the run to begin (~10 s)
def test_ctrl_c_ends_the_run_without_a_traceback(tmp_path, books_dir):
    """SIGINT (Ctrl-C) during a long generation: one error line, exit 130, summary.json `interrupted`.
    stderr is not a terminal here, and the per-prompt bar is drawn before the signal: the error line
    still starts a line of its own (the bar's line is ended first)."""
    import os
    import signal
    import subprocess

    from tests.app.helpers import cli_env

    run_dir = tmp_path / "run"
    args = tiny_overrides(books_dir, "max_new_tokens=6000", "method=autoregressive", "draft=none", "warmup=false",
                          "dataset.num_samples=2", f"hydra.run.dir={run_dir}")
    # the run gets SIGINT's default disposition, as a terminal's foreground job has it: a test
    # runner started in the background of a script holds it ignored, and children inherit that
    proc = subprocess.Popen(cli_command() + args, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while b"prompt/s]" not in seen:  # the per-prompt bar, drawn as the first generation starts
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, (seen + proc.stderr.read()).decode()[-3000:]
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    err = (seen + rest).decode()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out.decode() + err and "KeyboardInterrupt" not in err
    note = f"error: interrupted (Ctrl-C); {run_dir / 'summary.json'} records the run as interrupted"
    assert messages(err) == [note], repr(err[-3000:])
    assert note in err.split("\n")  # on a line of its own, not after the bar's carriage-return redraws
    record = json.loads((run_dir / "summary.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "interrupted (Ctrl-C)"


def test_the_console_scripts_module_imports_nothing_heavy():
    """`triforce` imports triforce.cli before main() runs: what it imports is outside the Ctrl-C handling."""
    import subprocess
    import sys

    code = ("import sys, triforce.cli; "
            "print(sorted(m for m in ('hydra', 'torch', 'pandas', 'omegaconf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="watches /proc/<pid>/maps")
def test_ctrl_c_while_the_cli_imports_is_one_line(tmp_path):
    """SIGINT while the CLI imports torch (its library just mapped into the process, the rest of the
    import still to run): one line, exit 130, no KeyboardInterrupt traceback."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    from tests.app.helpers import cli_env

    proc = subprocess.Popen(cli_command() + ["model=tiny", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and "libtorch_cpu" not in maps.read_text():
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert err.decode().split("\n") == ["error: interrupted (Ctrl-C)", ""]
