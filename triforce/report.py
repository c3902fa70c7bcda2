"""Plain-text renderings of result tables (no extra dependency)."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    def fmt(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def command_line(launcher: str = "python") -> str:
    """How this process was started, as a user would type it again: `python experiments/x.py
    'cells=[[...]]' ...` (each argument quoted where the shell needs it)."""
    script = Path(sys.argv[0])
    where = f"{script.parent.name}/{script.name}" if script.parent.name else script.name
    return " ".join([launcher, where, shlex.join(sys.argv[1:])]).rstrip()


def benchmark_report(title: str, card, command: str, tables: dict[str, list], header: Sequence[str] = ()) -> str:
    """A benchmark's markdown: the title with the card and the date, the copy bandwidth measured in
    the same run (`card`: bench.latency.Card), torch's version and any further `header` lines, the
    command that ran, then every table that has rows."""
    import torch

    lines = [f"# {title}: {card.name}, {datetime.date.today().isoformat()}",
             f"device-to-device copy bandwidth {card.bandwidth / 1e12:.2f} TB/s (read + write counted); "
             f"torch {torch.__version__}", *header, f"command: {command}"]
    for name, rows in tables.items():
        if rows:
            lines += ["", f"## {name}", "", markdown_table(pd.DataFrame(rows))]
    return "\n".join(lines)
