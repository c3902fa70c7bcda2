"""`triforce`: the Hydra app (configs in triforce/conf, also reachable as ./conf).

    triforce                                     # SmolLM2, a Gutenberg book, TriForce vs autoregressive
    triforce method=triforce method.budget=4096 dataset=pg19 model=llama2-7b-128k hardware=a100
    triforce experiment=a100_triforce
    triforce -m method.budget=256,512 method.gamma=4,6

The last stdout line is one JSON object: the run's summary metrics (a multirun ends with one
line describing the sweep and its aggregated table). A bad config or missing asset prints one
`error: ...` line on stderr and exits 2; in a multirun a failing job is recorded, the sweep goes
on, and the sweep exits 1 at the end. Ctrl-C ends a run (and a sweep) with one line, exit 130,
its summary.json saying `interrupted`.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from triforce.app.callbacks import sweep_exit_code
from triforce.app.rundirs import register_resolver
from triforce.app.runner import JobContext, run_job

register_resolver()  # conf/config.yaml names the run folders with it


def _context() -> JobContext:
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep = None
    if multirun:
        parts = Path(hc.sweep.dir).parts
        sweep = "sweep-" + "_".join(parts[-2:])
    return JobContext(run_dir=Path(hc.runtime.output_dir), multirun=multirun, sweep=sweep,
                      job_num=hc.job.num if multirun else None, overrides=tuple(hc.overrides.task))


def _headline(method: str, s: dict) -> str:
    """One human-readable line before the JSON one."""
    line = (f"{method}: prefill {s.get('prefill_s', 0):.2f} s, {s.get('tokens_per_s', 0):.2f} tokens/s, "
            f"mean accepted length {s.get('mean_accepted_len', 0):.2f}")
    if s.get("baseline_ms_per_token"):
        line += (f" | autoregressive: prefill {s['baseline_prefill_s']:.2f} s, "
                 f"{s['baseline_tokens_per_s']:.2f} tokens/s | speedup {s['speedup']:.2f}x")
    return line


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _app(cfg: DictConfig) -> float | None:
    ctx = _context()
    result = run_job(cfg, ctx)
    if result.status == "interrupted":
        sys.exit(130)  # a sweep stops too: SystemExit passes Hydra's per-job error handling
    if result.ok:
        print(_headline(cfg.method.name, result.summary))
        print(json.dumps({**result.summary, "run_dir": str(ctx.run_dir)}), flush=True)
        return result.summary.get("ms_per_token")
    if not ctx.multirun:
        sys.exit(2 if result.user_error else 1)
    return None


def main() -> None:
    from triforce.parallel import quiet_other_ranks

    quiet_other_ranks()
    try:
        _app()
    except KeyboardInterrupt:  # outside a job (Hydra starting up, a sweep between jobs): no traceback either
        print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(sweep_exit_code())


if __name__ == "__main__":
    main()
