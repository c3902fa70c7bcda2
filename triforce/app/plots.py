"""Per-run PNG plots: acceptance rate per level, and latency per phase (method vs baseline).

Uses matplotlib's object API (Figure, no pyplot): no global figure state, no GUI backend.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

LEVEL_ORDER = ("draft", "middle", "top")


def _columns(df: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in df.columns if c.startswith(prefix)]


def acceptance_plot(samples: pd.DataFrame, path: Path) -> Path | None:
    cols = _columns(samples, "accept_rate/")
    if not cols:
        return None
    cols.sort(key=lambda c: LEVEL_ORDER.index(c.split("/", 1)[1]) if c.split("/", 1)[1] in LEVEL_ORDER else 9)
    means = samples[cols].mean()
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar([c.split("/", 1)[1] for c in cols], means.values, color="tab:blue")
    for i, v in enumerate(means.values):
        ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("proposing level")
    ax.set_ylabel("accepted / proposed")
    mal = samples["mean_accepted_len"].mean() if "mean_accepted_len" in samples else float("nan")
    ax.set_title(f"acceptance per level (mean accepted length {mal:.2f})")
    fig.savefig(path, dpi=100)
    return path


def latency_plot(samples: pd.DataFrame, path: Path) -> Path:
    """Left: prefill seconds. Right: decode ms per generated token, stacked by phase."""
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax_prefill, ax_decode = fig.subplots(1, 2)
    runs = {"method": ""}
    if "baseline_ms_per_token" in samples:
        runs["baseline"] = "baseline_"
    tokens = samples["new_tokens"].clip(lower=1)
    for x, (label, prefix) in enumerate(runs.items()):
        ax_prefill.bar(label, samples[f"{prefix}prefill_s"].mean(), color="tab:gray")
        bottom = 0.0
        for col in _columns(samples, f"{prefix}time_s/"):
            phase = col.rsplit("/", 1)[1]
            if phase == "prefill":
                continue
            ms = (1000 * samples[col] / tokens).mean()
            ax_decode.bar(label, ms, bottom=bottom, label=phase if x == 0 or phase == "decode" else None)
            bottom += ms
    ax_prefill.set_ylabel("prefill (s)")
    ax_decode.set_ylabel("ms per generated token")
    ax_decode.legend(title="phase", fontsize="small")
    fig.suptitle("latency per phase")
    fig.savefig(path, dpi=100)
    return path


def run_plots(samples: pd.DataFrame, run_dir: Path) -> list[Path]:
    out = [acceptance_plot(samples, Path(run_dir) / "acceptance.png"), latency_plot(samples, Path(run_dir) / "latency.png")]
    return [p for p in out if p is not None]
