"""The benchmarks' shared rendering (triforce/report.py): header, command line, tables."""

import dataclasses
import sys

from triforce.report import benchmark_report, command_line, markdown_table

import pandas as pd


@dataclasses.dataclass
class FakeCard:
    name: str = "Some GPU"
    bandwidth: float = 3.0e12


def test_markdown_table_formats_floats():
    text = markdown_table(pd.DataFrame([{"a": 1, "b": 0.12345}]))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |"]


def test_command_line_quotes_what_the_shell_needs(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/experiments/x_benchmark.py", "cells=[[llama3-8b,32768,8]]", "a=1"])
    assert command_line() == "python experiments/x_benchmark.py 'cells=[[llama3-8b,32768,8]]' a=1"
    monkeypatch.setattr(sys, "argv", ["x.py"])
    assert command_line("torchrun --nproc-per-node 2") == "torchrun --nproc-per-node 2 x.py"


def test_benchmark_report_names_card_bandwidth_command_and_skips_empty_tables():
    text = benchmark_report("Latency benchmark", FakeCard(), "python experiments/l.py", {
        "levels": [{"level": "top", "ratio": 1.05}], "empty": []}, header=["pinned host -> device 55.0 GB/s"])
    lines = text.splitlines()
    assert lines[0].startswith("# Latency benchmark: Some GPU, ")
    assert lines[1].startswith("device-to-device copy bandwidth 3.00 TB/s")
    assert lines[2:4] == ["pinned host -> device 55.0 GB/s", "command: python experiments/l.py"]
    assert "## levels" in text and "| top | 1.050 |" in text and "## empty" not in text
