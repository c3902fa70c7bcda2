"""Run results on disk: samples.parquet (one row per prompt), summary.json, and sweep tables that
aggregate any set of run folders (one row per run)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

SUMMARY = "summary.json"
SAMPLES = "samples.parquet"
ROUNDS = "rounds.parquet"  # one row per top-level step of every sample
# per-sample columns that are identifiers, not metrics to average
_NOT_METRICS = ("sample", "seed")


def clean(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf become None, numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(samples: pd.DataFrame) -> dict[str, Any]:
    """Means over samples of every numeric metric, plus num_samples."""
    numeric = samples.select_dtypes("number").drop(columns=list(_NOT_METRICS), errors="ignore")
    out = {k: clean(v) for k, v in numeric.mean().items()}
    out["num_samples"] = len(samples)
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'method': {'budget': 4}} -> {'method.budget': 4}; lists become JSON strings."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value))
        else:
            out[name] = value
    return out


def write_summary(run_dir: Path, record: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str, allow_nan=False))
    tmp.replace(path)
    return path


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Every folder at or under `roots` that holds a summary.json, sorted (job numbers numerically)."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if (root / SUMMARY).is_file():
            found.add(root)
        found.update(p.parent for p in root.rglob(SUMMARY))

    def key(p: Path):
        return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.parts)

    return sorted(found, key=key)


def run_row(run_dir: Path) -> dict[str, Any]:
    record = json.loads((Path(run_dir) / SUMMARY).read_text())
    row = {"run_dir": str(run_dir), "status": record.get("status"), "error": record.get("error"),
           "job_num": record.get("job_num"), "overrides": ",".join(record.get("overrides") or [])}
    row.update(flatten(record.get("params") or {}))
    row.update(record.get("metrics") or {})
    return row


def aggregate_runs(run_dirs: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs table: one row per run, samples table: every run's samples with its run_dir)."""
    run_dirs = list(run_dirs)
    runs = pd.DataFrame([run_row(d) for d in run_dirs])
    frames = []
    for d in run_dirs:
        if (Path(d) / SAMPLES).is_file():
            frame = pd.read_parquet(Path(d) / SAMPLES)
            frame.insert(0, "run_dir", str(d))
            frames.append(frame)
    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return runs, samples


def write_tables(runs: pd.DataFrame, samples: pd.DataFrame, out_dir: Path, stem: str = "sweep") -> dict[str, Path]:
    """<stem>.parquet + <stem>.csv (one row per run) and <stem>_samples.parquet."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out_dir / f"{stem}.parquet", "csv": out_dir / f"{stem}.csv"}
    runs = _arrow_safe(runs)
    runs.to_parquet(paths["parquet"], index=False)
    runs.to_csv(paths["csv"], index=False)
    if len(samples):
        paths["samples"] = out_dir / f"{stem}_samples.parquet"
        _arrow_safe(samples).to_parquet(paths["samples"], index=False)
    return paths


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing types (a param that is null in one run and a number in another is fine;
    a number in one and a string in another is not) are written as strings."""
    df = df.copy()
    for col in df.columns:
        kinds = {type(v) for v in df[col].dropna()}
        if len(kinds - {int, float, bool}) and len(kinds) > 1:
            df[col] = df[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df
