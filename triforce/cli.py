"""`triforce`: the Hydra app (configs in triforce/conf, also reachable as ./conf).

    triforce                                     # SmolLM2, a Gutenberg book, TriForce vs autoregressive
    triforce method=triforce method.budget=4096 dataset=pg19 model=llama2-7b-128k hardware=a100
    triforce experiment=a100_triforce
    triforce -m method.budget=256,512 method.gamma=4,6

The last stdout line is one JSON object: the run's summary metrics (a multirun ends with one
line describing the sweep and its aggregated table). A bad config, a bad override or a missing
asset prints one `error: ...` line on stderr and exits 2; in a multirun a failing job is recorded,
the sweep goes on, and the sweep exits 1 at the end. Ctrl-C ends a run (and a sweep) with one
line, exit 130, its summary.json saying `interrupted` — from the first moment: the console script
imports this module before `main` runs, so its top imports nothing heavy, and hydra, torch and
pandas are imported once the Ctrl-C handling is in place.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from triforce.app.interrupts import InterruptWatch  # signal and threading only

    try:
        with InterruptWatch() as watch:  # Ctrl-C: KeyboardInterrupt, and remembered if an import swallows it
            code = _main(watch)
    except KeyboardInterrupt:  # outside a job (imports, Hydra starting up, a sweep between jobs): no traceback
        from triforce.app.interrupts import end_progress_lines

        end_progress_lines()
        print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(code)


def _main(watch) -> int:
    if "RANK" in os.environ:  # under torchrun (triforce.parallel imports torch: only where it is needed)
        from triforce.parallel import quiet_other_ranks

        quiet_other_ranks()
    app = _hydra_app()
    watch.check()
    # Hydra prints its override and composition errors in its own format, exit code 1; asked to
    # raise them (its documented switch), they are said here as one `error:` line, exit code 2
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except Exception as e:  # noqa: BLE001 - Hydra's errors become one line; anything else is re-raised
        from triforce.app.hydra_errors import describe

        line = None if previous == "1" else describe(e, sys.argv[1:])  # the user asked for Hydra's traceback
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 2
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    watch.check()
    from triforce.app.callbacks import sweep_exit_code

    return sweep_exit_code()


def _hydra_app():
    """The Hydra app. The job's own modules (torch, pandas, the engine) are imported when the first
    job starts, so `--help` and a bad override answer without them."""
    import hydra
    from omegaconf import DictConfig

    from triforce.app.rundirs import register_resolver

    register_resolver()  # conf/config.yaml names the run folders with it

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def app(cfg: DictConfig) -> float | None:
        return _job(cfg)

    return app


def _context():
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from triforce.app.runner import JobContext

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


def _job(cfg) -> float | None:
    import json

    from triforce.app.runner import run_job

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


if __name__ == "__main__":
    main()
