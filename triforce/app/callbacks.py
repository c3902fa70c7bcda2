"""Hydra callback: at the end of a multirun, aggregate every job folder into one sweep table
(sweep.parquet + sweep.csv, one row per job; sweep_samples.parquet, one row per prompt) at the
sweep root, and print one JSON line describing the sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from triforce.app.tables import aggregate_runs, find_run_dirs, write_tables

log = logging.getLogger(__name__)


def aggregate_sweep(sweep_dir: Path) -> dict[str, Any]:
    runs, samples = aggregate_runs(find_run_dirs([sweep_dir]))
    if runs.empty:
        return {"sweep_dir": str(sweep_dir), "jobs": 0}
    paths = write_tables(runs, samples, sweep_dir)
    failed = int((runs["status"] != "ok").sum())
    return {"sweep_dir": str(sweep_dir), "jobs": len(runs), "ok": len(runs) - failed, "failed": failed,
            "table": str(paths["parquet"]), "csv": str(paths["csv"])}


class AggregateSweep(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            info = aggregate_sweep(sweep_dir)
        except Exception as e:  # noqa: BLE001 - report, never lose the jobs' own folders
            log.error("could not aggregate the sweep in %s: %s", sweep_dir, e)
            info = {"sweep_dir": str(sweep_dir), "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(info), flush=True)
