"""Hydra callbacks of the app.

- AggregateSweep: at the end of a multirun, aggregate every job folder into one sweep table
  (sweep.parquet + sweep.csv, one row per job; sweep_samples.parquet, one row per prompt) at the
  sweep root, and print one JSON line describing the sweep; when a job failed, one `error:` line
  on stderr, and the CLI exits non-zero (sweep_exit_code).
- AnnounceJobs: as each job of a multirun starts, log "job i/N: <its swept values>", so a long
  sweep shows where it is.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from triforce.app.tables import aggregate_runs, find_run_dirs, write_tables

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def aggregate_sweep(sweep_dir: Path) -> dict[str, Any]:
    runs, samples = aggregate_runs(find_run_dirs([sweep_dir]))
    if runs.empty:
        return {"sweep_dir": str(sweep_dir), "jobs": 0}
    paths = write_tables(runs, samples, sweep_dir)
    failed = int((runs["status"] != "ok").sum())
    return {"sweep_dir": str(sweep_dir), "jobs": len(runs), "ok": len(runs) - failed, "failed": failed,
            "table": str(paths["parquet"]), "csv": str(paths["csv"])}


class AggregateSweep(Callback):
    # the last sweep's outcome in this process, for the CLI's exit code (Hydra builds the callback
    # itself, so the CLI reads it here)
    last: dict[str, Any] | None = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            info = aggregate_sweep(sweep_dir)
        except Exception as e:  # noqa: BLE001 - report, never lose the jobs' own folders
            log.error("could not aggregate the sweep in %s: %s", sweep_dir, e)
            info = {"sweep_dir": str(sweep_dir), "error": f"{type(e).__name__}: {e}"}
        AggregateSweep.last = info
        print(json.dumps(info), flush=True)
        if info.get("failed"):
            print(f"error: {info['failed']} of {info['jobs']} sweep jobs failed; {info['csv']} has each job's status "
                  "and error", file=sys.stderr, flush=True)


def sweep_exit_code() -> int:
    """0 unless the last sweep had a failed job or could not be aggregated (1); 0 when no sweep ran."""
    info = AggregateSweep.last
    return 1 if info is not None and (info.get("failed") or "error" in info) else 0


def sweep_plan(config: DictConfig) -> tuple[int | None, frozenset[str]]:
    """(number of jobs, swept keys) of a multirun, known for Hydra's basic sweeper only: it runs the
    cartesian product of its overrides (hydra.sweeper.params first, then the command line; a later
    value for a key replaces an earlier one). Other sweepers (Optuna, ...) choose jobs as they go."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None, frozenset()
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - e.g. a glob() sweep needs Hydra's config loader: N unknown
        return None, frozenset()
    sizes: dict[str, int] = {}
    swept: set[str] = set()
    for o in overrides:
        key = o.get_key_element()
        if not o.is_sweep_override():
            sizes[key] = 1
            swept.discard(key)
        elif o.is_discrete_sweep():
            sizes[key] = len(list(o.sweep_string_iterator()))
            swept.add(key)
        else:  # an interval: the basic sweeper refuses it
            return None, frozenset()
    return math.prod(sizes.values()), frozenset(swept)


class AnnounceJobs(Callback):
    """The basic launcher runs the jobs in this process, after on_multirun_start: the plan made
    there is known to every job. A job started without it (another process) logs "job i"."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.swept: frozenset[str] = frozenset()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.total, self.swept = sweep_plan(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hc = config.hydra
        if hc.mode != RunMode.MULTIRUN:
            return
        overrides = list(hc.overrides.task)
        shown = [o for o in overrides if o.split("=", 1)[0] in self.swept] or overrides
        of = f"/{self.total}" if self.total else ""
        log.info("job %d%s: %s", hc.job.num + 1, of, " ".join(shown) or "(no overrides)")
