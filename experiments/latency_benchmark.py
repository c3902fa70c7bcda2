"""Latency benchmark on one GPU: every level at its memory-bandwidth floor? (docs/DESIGN.md §7)

    python experiments/latency_benchmark.py                       # llama2-7b + llama3-8b shapes, 32K/64K/120K
    python experiments/latency_benchmark.py shapes=[llama2-7b] contexts=[32768] transformers=false
    python experiments/latency_benchmark.py smollm2.enabled=true   # + real SmolLM2 weights at 64K/120K
    python experiments/latency_benchmark.py pdl=false              # kernels without programmatic dependent launch

A Hydra app (config: triforce/conf/latency_benchmark.yaml). It measures the device-to-device copy
bandwidth first, then for each random-weight shape and context: each level's forward (captured
graph replays) against its byte floor, the speedup modelled from those costs at the configured
acceptance rates beside the speedup the floors allow, the engine's own autoregressive and
TriForce generation (wall ms per token, the levels' GPU time, engine overhead, prefill, peak
memory) and transformers' decoding at the same shape. Prints markdown tables (the card and the
date first) and writes latency.json + latency.md to the run folder (and to `out`).
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
from triforce.memory import check_memory, device_available, plan_memory
from triforce.models.loading import parse_dtype
from triforce.report import benchmark_report, command_line, markdown_table
from triforce.sampling import SamplingParams

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)


def fits(shape: str, method, context: int, new_tokens: int, dtype_bytes: int, chunk: int) -> str | None:
    """None if the TriForce run fits the free memory (weights not yet loaded), else why not."""
    plan = plan_memory(SHAPES[shape], method, context, new_tokens, dtype_bytes=dtype_bytes, prefill_chunk=chunk,
                       draft=SHAPES[DRAFT_OF[shape]])
    try:
        check_memory(plan, device_available(), where="this GPU")
    except ConfigError as e:
        return str(e)
    return None


def kernels(cfg: DictConfig) -> dict:
    """The kernel policy's overrides this run asks for (kernels/policy.py)."""
    return {"pdl": bool(cfg.pdl), "linear": str(cfg.linear)}


def run_shape(cfg: DictConfig, shape: str, card: latency.Card, tables: dict[str, list], save) -> None:
    dtype = parse_dtype(cfg.dtype, "cuda")
    method = method_config(OmegaConf.to_container(cfg.method))
    for context in cfg.contexts:
        why = fits(shape, method, context, cfg.new_tokens, dtype.itemsize, cfg.prefill_chunk)
        if why:
            print(f"[{shape} @ {context}] skipped: {why}", flush=True)
            tables["skipped"].append(dict(shape=shape, context=context, reason=why))
            continue
        target = random_model(SHAPES[shape], dtype=dtype, device="cuda")
        draft = random_model(SHAPES[DRAFT_OF[shape]], dtype=dtype, device="cuda", seed=1)
        if cfg.levels:
            levels = latency.level_timings(target, draft, method, context, verify_blocks=tuple(cfg.verify_blocks),
                                           trees=tuple(tuple(t) for t in cfg.tree_verify),
                                           bandwidth=card.bandwidth, repeats=cfg.repeats,
                                           hardware={"kernels": kernels(cfg)})
            for row in levels:
                tables["levels"].append(dict(shape=shape, **row))
            for row in latency.speedups(levels, method.gamma, method.draft_gamma,
                                        [tuple(a) for a in cfg.acceptance]):
                tables["speedup"].append(dict(shape=shape, **row))
            print(markdown_table(pd.DataFrame(levels)), flush=True)
        if cfg.end_to_end:
            prompt = torch.randint(0, SHAPES[shape].vocab_size, (context,),
                                   generator=torch.Generator().manual_seed(0)).tolist()
            for m in (method_config({"name": "autoregressive"}), method):
                row = latency.end_to_end(target, draft if m.uses_draft else None, m, prompt,
                                         hardware={"kernels": kernels(cfg)},
                                         new_tokens=cfg.new_tokens, sampling=SAMPLING, prefill_chunk=cfg.prefill_chunk)
                tables["end_to_end"].append(dict(shape=shape, **row))
                print(json.dumps(tables["end_to_end"][-1]), flush=True)
        del target, draft
        latency.free_memory()
        if cfg.transformers:
            row = latency.transformers_decode(SHAPES[shape], context, cfg.transformers_new_tokens, dtype=dtype)
            tables["transformers"].append(dict(shape=shape, **row))
            print(json.dumps(tables["transformers"][-1]), flush=True)
        save()  # what is measured so far survives a run cut short


def run_smollm2(cfg: DictConfig, tables: dict[str, list]) -> None:
    from triforce.bench.real import smollm2_end_to_end

    for row in smollm2_end_to_end(cfg.smollm2.model, list(cfg.smollm2.contexts), new_tokens=cfg.smollm2.new_tokens,
                                  budget=cfg.smollm2.budget, sampling=SAMPLING):
        tables["smollm2"].append(row)
        print(json.dumps(row), flush=True)


def report(cfg: DictConfig, card: latency.Card, tables: dict[str, list]) -> str:
    return benchmark_report("Latency benchmark", card, command_line(), tables)


@hydra.main(version_base="1.3", config_path="../triforce/conf", config_name="latency_benchmark")
def main(cfg: DictConfig) -> None:
    latency.require_gpu("the latency benchmark", cfg.shapes)
    from triforce.kernels.policy import KernelPolicy

    try:
        policy = KernelPolicy.resolve("cuda", kernels(cfg))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    card = latency.Card.measure()
    print(f"{card.name}: copy bandwidth {card.bandwidth / 1e12:.2f} TB/s; kernel policy {policy.describe()}", flush=True)
    tables: dict[str, list] = {k: [] for k in ("levels", "speedup", "end_to_end", "transformers", "smollm2", "skipped")}
    from hydra.core.hydra_config import HydraConfig

    folders = [Path(HydraConfig.get().runtime.output_dir)] + ([Path(cfg.out)] if cfg.out else [])

    def save(complete: bool = False) -> str:
        text = report(cfg, card, tables) + ("" if complete else "\n\n(incomplete: the run was still going)")
        payload = json.dumps({"card": card.name, "bandwidth": card.bandwidth, "date": datetime.date.today().isoformat(),
                              "complete": complete, "config": OmegaConf.to_container(cfg),
                              "kernel_policy": policy.describe(), **tables},
                             indent=1, default=str)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "latency.json").write_text(payload)
            (folder / "latency.md").write_text(text + "\n")
        return text

    for shape in cfg.shapes:
        run_shape(cfg, shape, card, tables, save)
    if cfg.smollm2.enabled:
        run_smollm2(cfg, tables)
    print(save(complete=True), flush=True)


if __name__ == "__main__":
    main()
