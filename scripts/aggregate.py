"""Aggregate run folders (any folder holding a summary.json, searched recursively) into one table.

    python scripts/aggregate.py outputs/multirun/2026-11-25/17-04-05
    python scripts/aggregate.py outputs/runs outputs/multirun --out outputs/all

Writes <out>/<stem>.parquet and .csv (one row per run) and <stem>_samples.parquet (one row per
prompt); the last stdout line is JSON naming them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from triforce.app.tables import aggregate_runs, find_run_dirs, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run folders or folders above them")
    parser.add_argument("--out", type=Path, help="output folder (default: the first DIR)")
    parser.add_argument("--stem", default="sweep", help="file name stem (default: sweep)")
    args = parser.parse_args(argv)
    run_dirs = find_run_dirs(args.dirs)
    if not run_dirs:
        print(f"error: no run folders (with summary.json) under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    runs, samples = aggregate_runs(run_dirs)
    paths = write_tables(runs, samples, args.out or args.dirs[0], args.stem)
    print(json.dumps({"runs": len(runs), **{k: str(v) for k, v in paths.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
