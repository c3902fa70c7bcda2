"""Acceptance-study tables over a sweep: one row per (job, prompt), means with 95% confidence
intervals over prompts, paired comparisons of middle caches, and acceptance per window of
generated tokens. Used by notebooks/acceptance_analysis.ipynb and experiments/study_table.py.

Every cell of a study runs the same prompts with the same seeds, so two cells are compared prompt
by prompt: the interval of the mean per-prompt difference is much narrower than the two cells'
own intervals whenever prompts differ more from each other than the caches do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then the normal's)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
MIDDLE = "method.middle_cache"


def t975(dof: int) -> float:
    if dof < 1:
        return math.nan
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% t-interval); the half-width is NaN for a single value."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, t975(len(xs) - 1) * math.sqrt(var / len(xs))


def load_sweep(sweep_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, samples) tables a sweep wrote at its root (triforce.app.tables.write_tables)."""
    sweep_dir = Path(sweep_dir)
    return pd.read_parquet(sweep_dir / "sweep.parquet"), pd.read_parquet(sweep_dir / "sweep_samples.parquet")


def study_rows(runs: pd.DataFrame, samples: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Per-prompt rows of the successful jobs, with the job's settings `params` as columns."""
    ok = runs[runs["status"] == "ok"]
    settings = ok[["run_dir", *[p for p in params if p in ok.columns]]]
    return samples.merge(settings, on="run_dir", how="inner")


def cell_table(rows: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per cell (`keys`): `n` prompts, and for each metric its mean and `<metric> ±` (the
    half-width of the 95% interval over prompts)."""
    out = []
    for cell, group in rows.groupby(list(keys), sort=True, dropna=False):
        row = dict(zip(keys, cell if isinstance(cell, tuple) else (cell,)))
        row["n"] = len(group)
        for metric in metrics:
            row[metric], row[f"{metric} ±"] = mean_ci(group[metric])
        out.append(row)
    return pd.DataFrame(out)


def versus_best(rows: pd.DataFrame, keys: Sequence[str], metric: str, *, candidate: str = "hybrid",
                others: Sequence[str] = ("retrieval", "streaming"), by: str = MIDDLE,
                pair_on: str = "sample_id") -> pd.DataFrame:
    """Per group of `keys`: the candidate's mean `metric` against the better (by mean) of `others`,
    with the 95% interval of their mean per-prompt difference. verdict: `better` / `worse` when the
    interval excludes 0, else `tie`."""
    out = []
    for cell, group in rows.groupby(list(keys), sort=True, dropna=False):
        per = {name: g.set_index(pair_on)[metric] for name, g in group.groupby(by)}
        if candidate not in per or not any(o in per for o in others):
            continue
        best = max((o for o in others if o in per), key=lambda o: per[o].mean())
        diff = (per[candidate] - per[best]).dropna()  # aligned on the prompt
        d, half = mean_ci(diff)
        row = dict(zip(keys, cell if isinstance(cell, tuple) else (cell,)))
        row.update({candidate: per[candidate].mean(), "best other": best, "other": per[best].mean(),
                    "difference": d, "difference ±": half, "prompts": len(diff),
                    "verdict": _verdict(d, half)})
        out.append(row)
    return pd.DataFrame(out)


def robustness(rows: pd.DataFrame, keys: Sequence[str], metric: str, *, by: str = MIDDLE) -> pd.DataFrame:
    """Each cache against the better of the others, over every cell of `keys`: in how many cells it
    is better, tied (interval holds 0) or worse — the cache never worse is the safe default."""
    caches = sorted(set(rows[by]))
    out = []
    for cache in caches:
        table = versus_best(rows, keys, metric, candidate=cache, others=[c for c in caches if c != cache], by=by)
        counts = table["verdict"].value_counts() if len(table) else pd.Series(dtype=int)
        out.append({by: cache, "cells": len(table), **{v: int(counts.get(v, 0)) for v in ("better", "tie", "worse")},
                    "mean difference": float(table["difference"].mean()) if len(table) else float("nan")})
    return pd.DataFrame(out)


def _verdict(diff: float, half: float) -> str:
    if math.isnan(half):
        return "tie" if diff == 0 else ("better" if diff > 0 else "worse")
    if diff - half > 0:
        return "better"
    return "worse" if diff + half < 0 else "tie"


def token_acceptance(rounds: pd.DataFrame, level: str = "middle") -> pd.Series:
    """Per sample: accepted / (accepted + rejections) of `level`'s proposals in a generation — the
    per-token acceptance it observed. accepted / proposed (`accept_rate/<level>`) counts the
    proposals after a round's first rejection, which are never judged, as rejected: for a per-token
    acceptance a it is about a(1 - a^γ) / (γ(1 - a)): 0.70 for a = 0.9 and γ = 6."""
    acc, prop = f"accepted/{level}", f"proposed/{level}"
    steps = rounds.dropna(subset=[acc])
    rejections = (steps[acc] < steps[prop]).groupby(steps["sample"]).sum()
    accepted = steps.groupby("sample")[acc].sum()
    return accepted / (accepted + rejections)


def with_token_acceptance(rows: pd.DataFrame, level: str = "middle") -> pd.DataFrame:
    """`rows` (study_rows) with `token_accept/<level>` from each run folder's per-step records."""
    from triforce.app.tables import ROUNDS

    parts = []
    for run_dir, group in rows.groupby("run_dir"):
        path = Path(run_dir) / ROUNDS
        per = token_acceptance(pd.read_parquet(path), level) if path.is_file() else pd.Series(dtype=float)
        parts.append(group.assign(**{f"token_accept/{level}": group["sample"].map(per)}))
    return pd.concat(parts).sort_index() if parts else rows


def windowed_acceptance(rounds: pd.DataFrame, window: int = 64, level: str = "middle") -> pd.DataFrame:
    """Acceptance of `level` per window of generated tokens, per sample: a top-level step belongs to
    the window holding the first token it emits; acceptance = accepted / proposed over its steps.
    `rounds`: the per-step records (rounds.parquet: sample, step, emitted, accepted/<level>,
    proposed/<level>). Columns: sample, window (0 = tokens 0..window-1), accept, steps."""
    acc, prop = f"accepted/{level}", f"proposed/{level}"
    frames = []
    for sample, steps in rounds.sort_values(["sample", "step"]).groupby("sample"):
        first_token = steps["emitted"].cumsum() - steps["emitted"]
        per = steps.assign(window=(first_token // window).astype(int)).groupby("window")
        frame = pd.DataFrame({"accept": per[acc].sum() / per[prop].sum(), "steps": per.size()}).reset_index()
        frame.insert(0, "sample", sample)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["sample", "window", "accept",
                                                                                      "steps"])
