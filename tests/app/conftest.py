"""Fixtures for the app tests: a tiny offline book folder and one tiny sweep shared by several tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.helpers import run_cli, tiny_overrides, write_books


@pytest.fixture(scope="session")
def books_dir(tmp_path_factory) -> Path:
    return write_books(tmp_path_factory.mktemp("books"))


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, books_dir):
    """A 2x2 multirun (method.budget x method.gamma) of the tiny model, W&B left to pick offline."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir = tmp / "outputs" / "multirun" / "2026-01-01" / "00-00-00"
    proc = run_cli(["-m", *tiny_overrides(books_dir, "logger=wandb", f"hydra.sweep.dir={sweep_dir}"),
                    "method.budget=32,64", "method.gamma=2,4"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, books_dir):
    """A 3x2 middle-cache study (method.middle_cache x method.budget_fraction) of the tiny model on
    two prompts, with the reference acceptance, as experiment=acceptance_study runs it."""
    tmp = tmp_path_factory.mktemp("study")
    sweep_dir = tmp / "outputs" / "multirun" / "2026-01-02" / "00-00-00"
    proc = run_cli(["-m", *tiny_overrides(books_dir, f"hydra.sweep.dir={sweep_dir}", "dataset.num_samples=2",
                                          "reference_acceptance=true", "method.budget=null", "method.recent=0.5",
                                          "method.recent_min=0", "warmup=false", "max_new_tokens=12"),
                    "method.middle_cache=streaming,retrieval,hybrid", "method.budget_fraction=0.25,0.5"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir, proc
