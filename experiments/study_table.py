"""Markdown tables of an acceptance study (experiment=acceptance_study or rebuild_study sweeps).

    python experiments/study_table.py outputs/acceptance_study/4k outputs/acceptance_study/8k
    python experiments/study_table.py outputs/rebuild_study --windows 64

Reads every run folder under the given folders (a sweep root, or several parts of one sweep run
separately), and prints:
- per cell (prompt length, chunk size, budget, middle cache): mean and 95% interval over prompts of
  the middle acceptance (`accept_rate/middle`: accepted / proposed; `token_accept/middle`: accepted /
  (accepted + rejections), from the per-step records; `ref_accept/middle` when measured) and the
  mean accepted length;
- the hybrid against the better of retrieval and StreamingLLM in each cell, paired by prompt;
- each middle cache against the better of the other two: cells where it is better, tied, worse;
- with --windows N: the middle acceptance per window of N generated tokens, per rebuild policy.
The last line is JSON: the verdict counts per metric.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from triforce.app.tables import ROUNDS, aggregate_runs, find_run_dirs
from triforce.report import markdown_table
from triforce.study import (MIDDLE, cell_table, mean_ci, robustness, study_rows, versus_best,
                            windowed_acceptance, with_token_acceptance)

METRICS = ("accept_rate/middle", "token_accept/middle", "ref_accept/middle", "mean_accepted_len")
PARAMS = (MIDDLE, "method.chunk_size", "method.budget_fraction", "method.rebuild", "method.gamma")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="sweep folders (run folders are found below them)")
    p.add_argument("--windows", type=int, default=0, help="also: middle acceptance per window of N tokens")
    return p.parse_args(argv)


def budget_column(rows: pd.DataFrame) -> str:
    """The budget as the sweep gave it: a fraction of the prompt, else the tokens."""
    if "method.budget_fraction" in rows and rows["method.budget_fraction"].notna().all():
        return "method.budget_fraction"
    return "middle_budget"


def with_ci(table: pd.DataFrame, metrics) -> pd.DataFrame:
    """Each metric's mean and interval as one 'mean ± half' column."""
    out = table.drop(columns=[c for m in metrics for c in (m, f"{m} ±")])
    for m in metrics:
        out[m] = [f"{v:.3f} ± {h:.3f}" for v, h in zip(table[m], table[f"{m} ±"])]
    return out


def window_table(run_dirs: list[Path], runs: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per (middle cache, rebuild policy) and window: middle acceptance, mean ± 95% CI over prompts."""
    frames = []
    for d in run_dirs:
        if not (Path(d) / ROUNDS).is_file():
            continue
        windows = windowed_acceptance(pd.read_parquet(Path(d) / ROUNDS), window)
        settings = runs.set_index("run_dir").loc[str(d)]
        frames.append(windows.assign(**{MIDDLE: settings[MIDDLE], "method.rebuild": settings["method.rebuild"]}))
    rows = pd.concat(frames, ignore_index=True)
    out = []
    for (middle, rebuild, w), group in rows.groupby([MIDDLE, "method.rebuild", "window"]):
        mean, half = mean_ci(group["accept"])
        out.append({MIDDLE: middle, "method.rebuild": rebuild, "tokens": f"{w * window}-{(w + 1) * window - 1}",
                    "window": w, "accept_rate/middle": f"{mean:.3f} ± {half:.3f}", "prompts": len(group)})
    table = pd.DataFrame(out)
    return table.pivot_table(index=[MIDDLE, "method.rebuild"], columns="window", values="accept_rate/middle",
                             aggfunc="first").rename(columns=lambda w: f"{w * window}-{(w + 1) * window - 1}")


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dirs = find_run_dirs(args.dirs)
    if not run_dirs:
        print(f"error: no run folders under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    runs, samples = aggregate_runs(run_dirs)
    rows = with_token_acceptance(study_rows(runs, samples, [p for p in PARAMS if p in runs]))
    metrics = [m for m in METRICS if m in rows]
    budget = budget_column(rows)
    varied = [p for p in ("method.rebuild", "method.gamma") if p in rows and rows[p].nunique() > 1]
    keys = ["prompt_tokens", "method.chunk_size", budget, *varied, MIDDLE]  # a cell: all but the cache
    failed = int((runs["status"] != "ok").sum())
    print(f"{len(runs)} jobs ({failed} failed), {rows['sample_id'].nunique()} prompts\n")
    print(markdown_table(with_ci(cell_table(rows, keys, metrics), metrics)))
    verdicts = {}
    if "hybrid" in set(rows[MIDDLE]):
        for m in metrics:
            table = versus_best(rows, keys[:-1], m)
            verdicts[m] = table["verdict"].value_counts().to_dict()
            print(f"\nhybrid vs the better of retrieval and StreamingLLM: {m} (difference: mean over prompts "
                  "± 95% interval, paired)\n")
            print(markdown_table(table))
    if len(set(rows[MIDDLE])) > 2:
        for m in metrics:
            print(f"\neach middle cache against the better of the other two, cell by cell: {m}\n")
            print(markdown_table(robustness(rows, keys[:-1], m)))
    if args.windows:
        print(f"\nmiddle acceptance per {args.windows}-token window (mean ± 95% CI over prompts)\n")
        print(markdown_table(window_table(run_dirs, runs, args.windows).reset_index()))
        rebuilds = rows.groupby([MIDDLE, "method.rebuild"])["rebuilds"].mean().reset_index()
        print("\nrebuilds per generation\n")
        print(markdown_table(rebuilds))
    print(json.dumps({"jobs": len(runs), "failed": failed, "verdicts": verdicts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
