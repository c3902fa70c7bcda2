"""One job of the experiment app: validate, build prompts, load the models, run the method and
the autoregressive baseline on every prompt, and write the run folder.

Everything that can fail on a bad config fails before any weights load. A job never raises: it
returns a JobResult (status ok | failed | interrupted) so a sweep goes on past a failing job; the
caller (the CLI) turns a failed single run into a non-zero exit, and an interrupted one (Ctrl-C)
into exit code 130 that ends a sweep too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from triforce import progress
from triforce.app import advice, engines, plots, tables
from triforce.app.interrupts import InterruptWatch, StopOnInterrupt, end_progress_lines
from triforce.app.tracking import NullTracker, Tracker, open_tracker
from triforce.app.validate import RunPlan, check_fits, validate
from triforce.errors import ConfigError, TriforceError

log = logging.getLogger(__name__)


def is_main_rank() -> bool:
    """False in the ranks > 0 of a tensor-parallel run (torchrun): they compute, rank 0 reports."""
    from triforce.parallel import launched_ranks

    return launched_ranks()[0] == 0


@dataclasses.dataclass(frozen=True)
class JobContext:
    run_dir: Path
    multirun: bool = False
    sweep: str | None = None  # the sweep's name (W&B group) in a multirun
    job_num: int | None = None
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """W&B run name: the job's own overrides (sweep parameters included)."""
        shown = [o for o in self.overrides if not o.startswith(("hydra.", "logger", "+logger"))]
        return ",".join(shown) or "default"


@dataclasses.dataclass
class JobResult:
    status: str  # ok | failed | interrupted (Ctrl-C)
    summary: dict[str, Any]
    error: str | None = None
    user_error: bool = False  # a TriforceError (bad config, missing asset): exit code 2

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_job(cfg: DictConfig | Mapping, ctx: JobContext) -> JobResult:
    started = time.perf_counter()
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    tracker: Tracker = NullTracker()
    result = JobResult("failed", {})
    values: dict = {}  # the config as composed: what the run's record says was asked for
    plan: RunPlan | None = None
    frame = None
    try:
        with InterruptWatch() as watch:  # restored when the job's work ends, however it ends
            values = resolve(cfg)
            (ctx.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(values)))
            plan = validate(values)  # parsed once into typed objects, checked before any weights load
            if not is_main_rank():  # tensor parallelism: rank 0 alone logs and writes
                run = plan.run
                plan = dataclasses.replace(plan, run=dataclasses.replace(
                    run, logger={"name": "none"}, print_text=False,
                    hardware=dataclasses.replace(run.hardware, progress=False)))
            run = plan.run
            tracker = open_tracker(run.logger, config={**values, "overrides": list(ctx.overrides)},
                                   run_dir=ctx.run_dir, name=ctx.name, group=ctx.sweep, job_type=plan.method.name,
                                   tags=list(run.tags))
            frame = _run(plan, ctx, tracker, watch)
            watch.check()  # a Ctrl-C that something swallowed: the user still stopped this run
        summary = tables.summarize(frame)
        summary["wall_s"] = time.perf_counter() - started
        result = JobResult("ok", summary)
    except TriforceError as e:
        result = JobResult("failed", {}, error=str(e), user_error=True)
        print(f"error: {e}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - a sweep must go on; the traceback is kept
        result = JobResult("failed", {}, error=f"{type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        print(f"error: {result.error}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # the user stopped it: no traceback, and the folder says so
        result = JobResult("interrupted", {}, error="interrupted (Ctrl-C)")
        end_progress_lines()
        print(f"error: {interrupted_note(ctx)}", file=sys.stderr, flush=True)
    finally:
        result.summary = {**result.summary, "status": result.status}
        _finish(values, ctx, result, frame, tracker)
        engines.release(plan.run.hardware.device if plan is not None else None)
    return result


def interrupted_note(ctx: JobContext) -> str:
    note = f"interrupted (Ctrl-C); {ctx.run_dir / tables.SUMMARY} records the run as interrupted"
    if ctx.multirun:  # the sweep stops here: its table is not written, the finished jobs' folders are whole
        note += f"; the sweep stops (`python scripts/aggregate.py {ctx.run_dir.parent}` tables the finished jobs)"
    return note


def resolve(cfg: DictConfig | Mapping) -> dict:
    """Plain resolved values; a broken interpolation is a config error, not a crash."""
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config does not resolve: {str(e).splitlines()[0]}") from None


def _finish(values: Mapping, ctx: JobContext, result: JobResult, frame, tracker: Tracker) -> None:
    record = {"status": result.status, "error": result.error, "run_dir": str(ctx.run_dir), "job_num": ctx.job_num,
              "overrides": list(ctx.overrides), "params": values, "metrics": result.summary}
    if frame is not None and "kernel_policy" in frame.attrs:  # every kernel choice the run made
        record["kernel_policy"] = frame.attrs["kernel_policy"]
    try:
        tables.write_summary(ctx.run_dir, record)
    finally:
        try:
            tracker.finish(summary=result.summary, table=frame, failed=not result.ok)
        except Exception as e:  # noqa: BLE001 - tracking must never turn a result into a crash
            log.warning("W&B finish failed: %s", e)


def _run(plan: RunPlan, ctx: JobContext, tracker: Tracker, watch: InterruptWatch) -> pd.DataFrame:
    from triforce.app.validate import model_config
    from triforce.data.sources import load_samples
    from triforce.data.tokenizers import load_text_tokenizer, tokenizer_name, with_model_bos

    run = plan.run
    model, dataset = run.model, run.dataset
    max_new = run.max_new_tokens
    tokenizer = load_text_tokenizer(tokenizer_name(model), explicit=bool(model.tokenizer))
    target = model_config(model)  # config.json only (None: a hub id not downloaded yet)
    tokenizer, bos_warning = with_model_bos(tokenizer, target and target.bos_token_id, tokenizer_name(model))
    if bos_warning:
        print(f"warning: {bos_warning}", file=sys.stderr, flush=True)
    samples = load_samples(dataset, tokenizer)
    if plan.max_context is not None:
        for s in samples:
            check_fits(len(s.prompt_ids), max_new, plan.method, plan.max_context, plan.sliding_window)
    for warning in advice.run_warnings(run, [len(s.prompt_ids) for s in samples]):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    log.info("%d prompt(s) of %s tokens from %s", len(samples), dataset["prefill"], dataset["name"])

    t0 = time.perf_counter()
    engine = engines.build_engine(plan)
    load_s = time.perf_counter() - t0
    log.info("loaded %s in %.1f s", model.name, load_s)
    baseline = engines.baseline_of(engine) if run.baseline else None
    same_method = plan.method.name == "autoregressive"
    stop = run.stop_at_eos
    size = run.hardware.batch_size
    batches = [samples[i:i + size] for i in range(0, len(samples), size)]
    if run.warmup:  # first forwards pay one-off costs (kernels compile, graphs are captured): keep them out
        warm = [s.prompt_ids for s in batches[0]]  # the first batch's size: graphs are per batch size
        t0, plans = time.perf_counter(), set()
        for e in (engine, baseline):
            if e is not None:  # on a GPU every plan an adaptive method may choose (Engine.warm_up)
                out = e.warm_up(warm if size > 1 else warm[0])
                plans |= {k for k in out.metrics if k.startswith("plan_rounds/")}
        log.info("warm-up: %d plan(s) in %.1f s, outside the timed prompts", len(plans), time.perf_counter() - t0)

    show = progress.enabled(run.hardware.progress)  # per-generation bars: a terminal and hardware.progress

    def watched(desc: str):
        return progress.TokenProgress(desc) if show else contextlib.nullcontext()

    def generate(e, batch, seed: int, desc: str):
        """One result per prompt of the batch, and the batch's metrics."""
        with watched(desc) as bars:  # a Ctrl-C stops the generation at its next chunk or step
            out = e.generate([s.prompt_ids for s in batch] if size > 1 else batch[0].prompt_ids, max_new,
                             seed=seed, stop_at_eos=stop, progress=StopOnInterrupt(watch, bars))
        return (out.results, out.metrics) if size > 1 else ([out], out.metrics)

    rows, rounds = [], []
    # the per-prompt bar stays on off a terminal (a batch log then shows a line per prompt);
    # hardware.progress=false turns it off with the others
    # closed however the loop ends: after a Ctrl-C its line ends before the error line, which would
    # otherwise land on the bar's line where stderr is not a terminal
    with tqdm(total=len(samples), desc=f"{plan.method.name}", unit="prompt", dynamic_ncols=True,
               disable=not run.hardware.progress) as bar:
        for k, batch in enumerate(batches):
            first = k * size
            seed = run.seed + first  # a batch of one: sample i's seed is seed + i, as always
            tag = f"#{first}" if size == 1 else f"batch #{k}"
            outs, batch_metrics = generate(engine, batch, seed, f"{plan.method.name} {tag}")
            bases = None
            if baseline is not None:
                bases = (outs, batch_metrics) if same_method else generate(baseline, batch, seed,
                                                                           f"autoregressive {tag}")
            for j, (sample, out) in enumerate(zip(batch, outs)):
                i = first + j
                row = {"sample": i, "sample_id": sample.id, "title": sample.title,
                       "prompt_tokens": len(sample.prompt_ids), "seed": seed, "load_s": load_s, "batch": k,
                       "batch_size": len(batch), **out.metrics, "throughput": batch_metrics["throughput"]}
                if bases is not None:
                    base, base_batch = bases[0][j], bases[1]
                    row.update({f"baseline_{key}": v for key, v in base.metrics.items()
                                if key in ("prefill_s", "ms_per_token", "tokens_per_s") or key.startswith("time_s/")})
                    row["baseline_throughput"] = base_batch["throughput"]
                    row["speedup"] = base.metrics["ms_per_token"] / out.metrics["ms_per_token"]
                    row["throughput_speedup"] = batch_metrics["throughput"] / base_batch["throughput"]
                    if plan.sampling.greedy:
                        row["baseline_same_tokens"] = float(base.tokens == out.tokens)
                    if run.reference_acceptance and not same_method:
                        # expected acceptance of each lower level along the baseline's tokens: the target's
                        # own continuation with this sample's seed, the same in every cell of a sweep
                        for level, probs in engine.reference_acceptance(sample.prompt_ids, base.tokens).items():
                            row[f"ref_accept/{level}"] = sum(probs) / len(probs)
                row["text"] = tokenizer.decode(out.tokens)
                rows.append(row)
                rounds.extend({"sample": i, **r} for r in out.rounds)
                tracker.log_sample(i, row)
                bar.update(1)
                bar.set_postfix(ms_per_token=f"{out.metrics['ms_per_token']:.1f}",
                                **({"tokens_per_s": f"{batch_metrics['throughput']:.1f}"} if size > 1 else {}),
                                **({"speedup": f"{row['speedup']:.2f}"} if "speedup" in row else {}))
                if i == 0 and run.print_text:
                    tqdm.write(f"--- generated text, sample 0 ({sample.title}) ---\n{row['text']}\n---",
                               file=sys.stdout)

    frame = pd.DataFrame(rows)
    frame.attrs["kernel_policy"] = {**engine.policy.describe(),
                                    "tuning_used": sorted({e for o in outs for e in o.tuning_used})}
    frame.to_parquet(ctx.run_dir / tables.SAMPLES, index=False)
    # the step costs the run's forwards measured: a later run on this card and these shapes starts
    # its adaptive plans from them (hardware.costs_file=<this file>)
    engine.costs.about = {"device": str(engine.device), "model": model.name, "dtype": str(engine.target.dtype)}
    engine.costs.save(ctx.run_dir / "costs.json")
    steps = pd.DataFrame(rounds)
    steps.to_parquet(ctx.run_dir / tables.ROUNDS, index=False)
    tracker.log_rounds(steps)
    plots.run_plots(frame, ctx.run_dir)
    return frame
