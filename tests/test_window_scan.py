"""experiments/window_scan.py on real weights: a budget holding the whole prompt loses nothing
whatever the window; a small one loses something."""

from __future__ import annotations

import json

import pytest

from tests.script_module import load_script


@pytest.mark.slow
def test_window_scan(smollm2_dir, gutenberg_dir, capsys):
    scan = load_script("experiments/window_scan.py")
    assert scan.main(["--prompt-len", "300", "--continuation", "12", "--books", "hamlet_gut", "--fractions", "1.0",
                      "0.25", "--windows", "0", "64", "--model", str(smollm2_dir)]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    whole, small = rows
    assert whole["budget"] == 300 and all(v == pytest.approx(1.0, abs=1e-5) for k, v in whole.items()
                                           if k not in ("book", "budget"))
    assert small["budget"] == 75 and all(0.2 < small[k] < 0.999 for k in ("0", "64", "all", "default"))
