"""experiments/window_scan.py on real weights: a budget holding the whole prompt loses nothing
whatever the window; a small one loses something."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_window_scan(smollm2_dir, gutenberg_dir, capsys):
    spec = importlib.util.spec_from_file_location("window_scan", REPO / "experiments" / "window_scan.py")
    scan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scan)
    assert scan.main(["--prompt-len", "300", "--continuation", "12", "--books", "hamlet_gut", "--fractions", "1.0",
                      "0.25", "--windows", "0", "64", "--model", str(smollm2_dir)]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    whole, small = rows
    assert whole["budget"] == 300 and all(v == pytest.approx(1.0, abs=1e-5) for k, v in whole.items()
                                           if k not in ("book", "budget"))
    assert small["budget"] == 75 and all(0.2 < small[k] < 0.999 for k in ("0", "64", "all", "default"))
