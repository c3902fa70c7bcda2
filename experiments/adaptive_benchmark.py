"""method=auto on one GPU: is it never slower than autoregressive decoding, and as fast as the best
fixed configuration, whatever the batch, the shape, the context and the acceptance? (docs/DESIGN.md §12)

    python experiments/adaptive_benchmark.py                         # every cell of conf/adaptive_benchmark.yaml
    python experiments/adaptive_benchmark.py 'cells=[[llama3-8b,32768,8]]' 'head_scales=[0.03,1.0]' \
        drift.enabled=false long.enabled=false out=docs/data

A Hydra app (config: triforce/conf/adaptive_benchmark.yaml). It measures the device-to-device copy
bandwidth first; then:

- cells (shape, context, batch), random weights at controlled acceptance (the output heads of target
  and draft scaled by s: every forward, sample and verification is the engine's own work; s = 1 is
  the unscaled worst case): the measured throughput of autoregressive decoding, of each fixed
  configuration and of method=auto, each run's acceptance, engine overhead and first-use time
  (graph capture, levels catching up), its throughput over its first 64 tokens, and auto's plans;
  a verdict table: auto against autoregressive decoding and against the best fixed configuration;
- drift: s switched between rounds (e.g. 0.03 -> 1 -> 0.03) while auto generates: tokens/s over time
  beside the plan it chose, as a plot;
- long outputs: tokens/s per window of new tokens, for TriForce with a rebuild policy and for auto.

Results: a table per section on stdout and in adaptive.md / adaptive.json (card, date, command);
adaptive.json also holds auto's rounds one by one ("timeline": plan, ms, tokens, predicted speed).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from triforce.bench import latency
from triforce.bench.shapes import DRAFT_OF, SHAPES, random_model
from triforce.config import method_config
from triforce.errors import ConfigError
from triforce.memory import check_memory, device_available, kv_bytes_per_token, plan_memory
from triforce.prefill_memo import PrefillMemo
from triforce.models.loading import parse_dtype
from triforce.report import benchmark_report, command_line
from triforce.sampling import SamplingParams

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)


def fits(shape: str, methods, context: int, batch: int, new_tokens: int, dtype_bytes: int, chunk: int) -> str | None:
    """None if every method's batch fits the free memory (the models are loaded already)."""
    for method in methods:
        plan = plan_memory(SHAPES[shape], method, context, new_tokens, dtype_bytes=dtype_bytes, prefill_chunk=chunk,
                           draft=SHAPES[DRAFT_OF[shape]], batch_size=batch).without_weights()
        try:
            check_memory(plan, device_available(), where="this GPU")
        except ConfigError as e:
            return f"{method.name}: {e}"
    return None


def prompts_for(shape: str, context: int, batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, SHAPES[shape].vocab_size, (context,), generator=g).tolist() for _ in range(batch)]


class Models:
    """The random-weight target and draft of one shape, kept while cells of that shape run."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.shape, self.target, self.draft, self.scale = dtype, None, None, None, 1.0

    def of(self, shape: str):
        if shape != self.shape:
            self.target = self.draft = None
            latency.free_memory()
            self.target = random_model(SHAPES[shape], dtype=self.dtype, device="cuda")
            self.draft = random_model(SHAPES[DRAFT_OF[shape]], dtype=self.dtype, device="cuda", seed=1)
            self.shape, self.scale = shape, 1.0
        return self.target, self.draft

    def scale_heads(self, s: float) -> None:
        """Both output heads at s times the unscaled ones."""
        for model in (self.target, self.draft):
            latency.scale_heads(model, s / self.scale)
        self.scale = s


def run_cells(cfg: DictConfig, models: Models, tables: dict[str, list], save) -> None:
    fixed = {label: method_config(OmegaConf.to_container(m)) for label, m in cfg.fixed.items()}
    auto = method_config(OmegaConf.to_container(cfg.auto))
    autoregressive = method_config({"name": "autoregressive"})
    for shape, context, batch in cfg.cells:
        target, draft = models.of(shape)
        why = fits(shape, [*fixed.values(), auto], context, batch, cfg.new_tokens, models.dtype.itemsize,
                   cfg.prefill_chunk)
        if why:
            print(f"[{shape} @ {context} x{batch}] skipped: {why}", flush=True)
            tables["skipped"].append(dict(shape=shape, context=context, batch=batch, reason=why))
            continue
        prompts = prompts_for(shape, context, batch)
        # the prompts' top-level prefill once per cell (the head's scale does not touch the KV cache),
        # kept in host memory where it fits
        kv = context * batch * kv_bytes_per_token(SHAPES[shape], models.dtype.itemsize)
        memo = PrefillMemo(max_bytes=int(cfg.prefill_memo_gb * 2 ** 30)) if kv < cfg.prefill_memo_gb * 2 ** 30 else None
        for s in cfg.head_scales:
            models.scale_heads(s)
            for label, method in (("autoregressive", autoregressive), *fixed.items(), ("auto", auto)):
                row = latency.batch_end_to_end(target, draft if method.uses_draft else None, method, prompts,
                                               new_tokens=cfg.new_tokens, sampling=SAMPLING,
                                               prefill_chunk=cfg.prefill_chunk, label=label, prefill_memo=memo,
                                               timeline=label == "auto")
                for record in row.pop("timeline", []):  # auto's rounds one by one (adaptive.json only)
                    tables["timeline"].append(dict(shape=shape, context=context, batch=batch, head_scale=s, **record))
                tables["runs"].append(dict(shape=shape, head_scale=s, **row))
                print(json.dumps({k: v for k, v in tables["runs"][-1].items() if not k.startswith("plan_")},
                                 default=str), flush=True)
                save()
        models.scale_heads(1.0)


def verdicts(runs: list[dict]) -> list[dict]:
    """Per cell and head scale: auto's throughput over autoregressive decoding's and over the best
    fixed configuration's (at all its new tokens, and over its first 64)."""
    frame = pd.DataFrame(runs)
    out = []
    if frame.empty or "auto" not in set(frame["method"]):
        return out
    for key, group in frame.groupby(["shape", "context", "batch", "head_scale"]):
        by = group.set_index("method")
        if "auto" not in by.index or "autoregressive" not in by.index:
            continue
        fixed = by.drop(index=["auto", "autoregressive"], errors="ignore")
        best = fixed["throughput"].idxmax() if len(fixed) else None
        auto, ar = by.loc["auto"], by.loc["autoregressive"]
        row = dict(zip(("shape", "context", "batch", "head_scale"), key), autoregressive=ar["throughput"],
                   best_fixed=best, best_fixed_throughput=fixed["throughput"].max() if best else float("nan"),
                   auto=auto["throughput"], auto_vs_autoregressive=auto["throughput"] / ar["throughput"],
                   auto_vs_best=auto["throughput"] / fixed["throughput"].max() if best else float("nan"),
                   auto_overhead=auto["overhead"], auto_first_use_s=auto.get("first_use_s", float("nan")))
        if "throughput_first_64" in by.columns:
            row["auto_vs_autoregressive_first_64"] = auto["throughput_first_64"] / ar["throughput_first_64"]
            if best:
                row["auto_vs_best_first_64"] = auto["throughput_first_64"] / fixed["throughput_first_64"].max()
        plans = {k.removeprefix("plan_rounds/"): v for k, v in auto.items()
                 if isinstance(k, str) and k.startswith("plan_rounds/") and v == v and v > 0}
        row["auto_plans"] = ", ".join(f"{name} x{int(n)}" for name, n in sorted(plans.items(), key=lambda x: -x[1]))
        out.append(row)
    return out


def run_drift(cfg: DictConfig, models: Models, tables: dict[str, list], folders: list[Path]) -> None:
    """auto while s changes between rounds: tokens/s per window of steps, and the plan of each step."""
    shape, context, batch = cfg.drift.cell
    target, draft = models.of(shape)
    auto = method_config(OmegaConf.to_container(cfg.auto))
    prompts = prompts_for(shape, context, batch)
    schedule = sorted((int(t), float(s)) for t, s in cfg.drift.schedule)
    models.scale_heads(schedule[0][1])
    engine = latency.graph_engine(target, draft, auto, SAMPLING, {"prefill_chunk": cfg.prefill_chunk})
    engine.warm_up(prompts)
    stream = engine.stream(prompts if batch > 1 else prompts[0], cfg.drift.new_tokens, seed=0, stop_at_eos=False)
    generated, steps = 0, []
    for new in stream:
        steps.append(dict(tokens=generated, head_scale=models.scale))  # the scale this step ran at
        generated += sum(len(n) for n in new) if batch > 1 else len(new)
        s = [s for at, s in schedule if generated >= at][-1]
        if s != models.scale:
            models.scale_heads(s)  # from the next round on: the law the rounds sample changes
    result = stream.result
    records = (result.results[0] if batch > 1 else result).rounds
    for step, record in zip(steps, records):
        step.update(ms=record["ms"], plan=record["plan"], emitted=record["emitted"])
    window = int(cfg.drift.window)
    for i in range(0, len(steps), window):
        part = steps[i:i + window]
        tokens = sum(p["emitted"] for p in part) * batch
        tables["drift"].append(dict(shape=shape, context=context, batch=batch, first_step=i, tokens=part[-1]["tokens"],
                                    head_scale=part[0]["head_scale"], tokens_per_s=tokens / (sum(p["ms"] for p in part) / 1e3),
                                    plans=", ".join(sorted({p["plan"] for p in part}))))
    models.scale_heads(1.0)
    plot_drift(steps, batch, folders)


def plot_drift(steps: list[dict], batch: int, folders: list[Path]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p["plan"] for p in steps))
    fig, ax = plt.subplots(figsize=(10, 4))
    speed = pd.Series([p["emitted"] * batch / (p["ms"] / 1e3) for p in steps]).rolling(8, min_periods=1).mean()
    ax.plot(speed, color="tab:blue", label="tokens/s (8-step mean)")
    ax.set(xlabel="top-level step", ylabel="tokens/s")
    twin = ax.twinx()
    twin.step(range(len(steps)), [names.index(p["plan"]) for p in steps], where="post", color="tab:orange",
              label="plan")
    twin.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(1, len(steps)):
        if steps[i]["head_scale"] != steps[i - 1]["head_scale"]:
            ax.axvline(i, color="grey", linestyle=":")
            ax.text(i, ax.get_ylim()[1], f" s={steps[i]['head_scale']}", va="top", fontsize=8)
    fig.tight_layout()
    for folder in folders:
        fig.savefig(folder / "adaptive_drift.png", dpi=120)
    plt.close(fig)


def run_long(cfg: DictConfig, models: Models, tables: dict[str, list], save) -> None:
    """Long outputs: tokens/s per window of new tokens for TriForce with a rebuild policy and for auto."""
    for shape, context, new_tokens in cfg.long.cells:
        target, draft = models.of(shape)
        models.scale_heads(float(cfg.long.head_scale))
        triforce = method_config({**OmegaConf.to_container(cfg.fixed.triforce), **OmegaConf.to_container(cfg.long.rebuild)})
        auto = method_config(OmegaConf.to_container(cfg.auto))
        prompt = prompts_for(shape, context, 1)[0]
        for label, method in (("triforce+rebuild", triforce), ("auto", auto)):
            why = fits(shape, [method], context, 1, new_tokens, models.dtype.itemsize, cfg.prefill_chunk)
            if why:
                tables["skipped"].append(dict(shape=shape, context=context, batch=1, reason=why))
                continue
            engine = latency.graph_engine(target, draft, method, SAMPLING, {"prefill_chunk": cfg.prefill_chunk})
            engine.warm_up(prompt)
            result = engine.generate(prompt, int(new_tokens), seed=0, stop_at_eos=False)
            window, tokens, seconds, first = int(cfg.long.window), 0, 0.0, None
            done = 0
            for record in result.rounds:  # tokens/s of each window of `window` new tokens
                done += record["emitted"]
                tokens += record["emitted"]
                seconds += record["ms"] / 1e3
                if tokens >= window:
                    speed = tokens / seconds
                    first = first or speed
                    tables["long"].append(dict(shape=shape, context=context, method=label, tokens=done,
                                               tokens_per_s=speed, vs_first_window=speed / first,
                                               rebuilds=result.metrics.get("rebuilds", 0)))
                    tokens, seconds = 0, 0.0
            del engine, result
            latency.free_memory()
            save()
        models.scale_heads(1.0)


def report(card: latency.Card, tables: dict[str, list]) -> str:
    shown = {"verdicts": verdicts(tables["runs"]),
             "runs": [{k: v for k, v in r.items() if not k.startswith(("plan_", "time_s/", "forwards/", "alpha/"))}
                      for r in tables["runs"]],
             **{k: v for k, v in tables.items() if k not in ("runs", "timeline")}}
    return benchmark_report("Adaptive plans benchmark", card, command_line(), shown)


@hydra.main(version_base="1.3", config_path="../triforce/conf", config_name="adaptive_benchmark")
def main(cfg: DictConfig) -> None:
    latency.require_gpu("the adaptive benchmark", [c[0] for c in [*cfg.cells, cfg.drift.cell, *cfg.long.cells]])
    try:
        for m in (*cfg.fixed.values(), cfg.auto):
            method_config(OmegaConf.to_container(m))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    card = latency.Card.measure()
    print(f"{card.name}: copy bandwidth {card.bandwidth / 1e12:.2f} TB/s", flush=True)
    tables: dict[str, list] = {k: [] for k in ("runs", "timeline", "drift", "long", "skipped")}
    from hydra.core.hydra_config import HydraConfig

    folders = [Path(HydraConfig.get().runtime.output_dir)] + ([Path(cfg.out)] if cfg.out else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in card.name.lower()).strip("-")

    def save(complete: bool = False) -> str:
        text = report(card, tables) + ("" if complete else "\n\n(incomplete: the run was still going)")
        payload = json.dumps({"card": card.name, "bandwidth": card.bandwidth, "date": datetime.date.today().isoformat(),
                              "complete": complete, "config": OmegaConf.to_container(cfg),
                              "verdicts": verdicts(tables["runs"]), **tables}, indent=1, default=str)
        for folder in folders:
            (folder / "adaptive.json").write_text(payload)
            (folder / f"adaptive_{slug}.json").write_text(payload)
            (folder / "adaptive.md").write_text(text + "\n")
        return text

    models = Models(parse_dtype(cfg.dtype, "cuda"))
    run_cells(cfg, models, tables, save)
    if cfg.drift.enabled:
        run_drift(cfg, models, tables, folders)
        save()
    if cfg.long.enabled:
        run_long(cfg, models, tables, save)
    print(save(complete=True), flush=True)


if __name__ == "__main__":
    main()
