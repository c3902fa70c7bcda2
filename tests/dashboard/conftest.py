"""A real sweep logged to W&B (offline) whose names the dashboard must refer to."""

from __future__ import annotations

import pytest

from tests.app.helpers import run_cli, tiny_overrides, write_books


@pytest.fixture(scope="session")
def logged_sweep(tmp_path_factory):
    """Three tiny jobs that between them log every phase: autoregressive (time_s/decode), TriForce
    with retrieval-cache rebuilds (time_s/draft, middle, verify, rebuild) and method=auto (its
    plans' metrics), each in batches of two prompts (throughput, batch size)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    books = write_books(tmp / "books")
    sweep_dir = tmp / "outputs" / "multirun" / "2026-02-03" / "04-05-06"
    proc = run_cli(["-m", *tiny_overrides(books, "logger=wandb", f"hydra.sweep.dir={sweep_dir}",
                                          "method=autoregressive,triforce,auto", "method.rebuild=every_n",
                                          "method.rebuild_every=4", "hardware.batch_size=2",
                                          "dataset.num_samples=2")], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir
