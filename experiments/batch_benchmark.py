"""Batched decoding on one GPU: every level of a batch against its floor, and measured throughput
at controlled acceptance (docs/DESIGN.md §7).

    python experiments/batch_benchmark.py                           # 8B shape at 32K, B = 1, 4, 16 (32 if it fits)
    python experiments/batch_benchmark.py 'shapes=[llama2-7b]' 'batch_sizes=[1,4]' end_to_end.enabled=false

A Hydra app (config: triforce/conf/batch_benchmark.yaml). It measures the device-to-device copy
bandwidth first; then, per random-weight shape, context and batch size that fits the GPU:

- each level's captured forward over the batch (the autoregressive step, the verify of gamma + 1
  tokens per sequence, the middle step, the draft step) against its byte floor (the weights once,
  every sequence's KV cache), and the speedup modelled from those costs at the configured
  acceptance rates;
- end to end, the engine's own batched `generate` of autoregressive decoding, TriForce and
  MagicDec's configuration (retrieval_spec with a StreamingLLM middle of 512 tokens, gamma 3) on
  random prompts, with the output heads of target and draft scaled by s (s < 1 flattens their
  distributions, so acceptance rises for real: every forward, sample and verification is the
  engine's work; s = 1 is the unscaled worst case): throughput (tokens/s over the batch), the mean
  accepted length and acceptance each s produced, the engine's overhead.

Results: a table per section on stdout and in batch.md / batch.json (card, date, command, bandwidth).
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
from triforce.models.loading import parse_dtype
from triforce.prefill_memo import PrefillMemo
from triforce.report import benchmark_report, command_line, markdown_table
from triforce.sampling import SamplingParams

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)


def fits(shape: str, method, context: int, batch: int, new_tokens: int, dtype_bytes: int, chunk: int) -> str | None:
    """None if a batch of `batch` TriForce sequences fits the memory left (the models are loaded already:
    their weights are not free, nor needed again; the blocks their construction left cached are)."""
    plan = plan_memory(SHAPES[shape], method, context, new_tokens, dtype_bytes=dtype_bytes, prefill_chunk=chunk,
                       draft=SHAPES[DRAFT_OF[shape]], batch_size=batch).without_weights()
    try:
        check_memory(plan, device_available(), where="this GPU")
    except ConfigError as e:
        return str(e)
    return None


def prompts_for(shape: str, context: int, batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, SHAPES[shape].vocab_size, (context,), generator=g).tolist() for _ in range(batch)]


def extra_methods(cfg: DictConfig) -> dict:
    """end_to_end.methods: more methods measured beside the three, by label (a chain's gamma, a tree)."""
    return {str(label): method_config(OmegaConf.to_container(m)) for label, m in (cfg.end_to_end.methods or {}).items()}


def run_shape(cfg: DictConfig, shape: str, card: latency.Card, tables: dict[str, list], save) -> None:
    dtype = parse_dtype(cfg.dtype, "cuda")
    method = method_config(OmegaConf.to_container(cfg.method))
    magicdec = method_config(OmegaConf.to_container(cfg.magicdec))
    extra = extra_methods(cfg)
    kernels = OmegaConf.to_container(cfg.kernels)
    target = random_model(SHAPES[shape], dtype=dtype, device="cuda")
    draft = random_model(SHAPES[DRAFT_OF[shape]], dtype=dtype, device="cuda", seed=1)
    for context in cfg.contexts:
        for batch in cfg.batch_sizes:
            why = fits(shape, method, context, batch, cfg.end_to_end.new_tokens, dtype.itemsize, cfg.prefill_chunk)
            if why:
                print(f"[{shape} @ {context} x{batch}] skipped: {why}", flush=True)
                tables["skipped"].append(dict(shape=shape, context=context, batch=batch, reason=why))
                continue
            if cfg.levels:
                rows = latency.level_timings(target, draft, method, context, verify_blocks=tuple(cfg.verify_blocks),
                                             bandwidth=card.bandwidth, repeats=cfg.repeats, batch=batch,
                                             hardware={"kernels": kernels}, transforms=False)
                tables["levels"] += [dict(shape=shape, **r) for r in rows]
                for r in latency.speedups(rows, method.gamma, method.draft_gamma, [tuple(a) for a in cfg.acceptance]):
                    tables["speedup"].append(dict(shape=shape, batch=batch, **r))
                print(markdown_table(pd.DataFrame(rows)), flush=True)
            if cfg.end_to_end.enabled and batch in cfg.end_to_end.batch_sizes:
                prompts = prompts_for(shape, context, batch)
                # the prompts' top-level prefill once per (context, batch) and head scale, kept in host
                # memory where it fits (every method of a scale restores it instead of computing it again)
                kv = context * batch * kv_bytes_per_token(SHAPES[shape], dtype.itemsize)
                budget = int(cfg.prefill_memo_gb * 2 ** 30)
                memo = PrefillMemo(max_bytes=budget) if kv < budget else None
                scaled = 1.0
                for s in cfg.end_to_end.head_scales:
                    for model in (target, draft):  # from the last scale to this one
                        latency.scale_heads(model, s / scaled)
                    scaled = s
                    for m, label, uses_draft in ((method_config({"name": "autoregressive"}), "autoregressive", False),
                                                 (method, "triforce", True), (magicdec, "magicdec", False),
                                                 *((x, name, x.uses_draft) for name, x in extra.items())):
                        # every method captured (a token tree: a graph per block of the tree, tree_round.py)
                        hardware = {"kernels": kernels}
                        row = latency.batch_end_to_end(target, draft if uses_draft else None, m, prompts,
                                                       new_tokens=cfg.end_to_end.new_tokens, sampling=SAMPLING,
                                                       prefill_chunk=cfg.prefill_chunk, label=label,
                                                       hardware=hardware, prefill_memo=memo)
                        row.update(tree=m.tree_label if m.has_tree else "chain")
                        tables["end_to_end"].append(dict(shape=shape, head_scale=s, **row))
                        print(json.dumps(tables["end_to_end"][-1], default=str), flush=True)
                        save()
                for model in (target, draft):
                    latency.scale_heads(model, 1.0 / scaled)
            save()
    del target, draft
    latency.free_memory()


def speedup_table(rows: list[dict]) -> list[dict]:
    """Measured throughput of each method over batched autoregressive decoding, per shape, context,
    batch and head scale."""
    out = []
    frame = pd.DataFrame(rows)
    if frame.empty:
        return out
    for key, group in frame.groupby(["shape", "context", "batch", "head_scale"]):
        base = group.loc[group["method"] == "autoregressive", "throughput"]
        if base.empty:
            continue
        for _, r in group.iterrows():
            out.append(dict(zip(("shape", "context", "batch", "head_scale"), key), method=r["method"],
                            throughput=r["throughput"], speedup=r["throughput"] / float(base.iloc[0]),
                            mean_accepted_len=r["mean_accepted_len"], overhead=r["overhead"]))
    return out


def report(card: latency.Card, tables: dict[str, list]) -> str:
    tables = {**tables, "measured speedup": speedup_table(tables["end_to_end"])}
    return benchmark_report("Batched decoding benchmark", card, command_line(), tables)


@hydra.main(version_base="1.3", config_path="../triforce/conf", config_name="batch_benchmark")
def main(cfg: DictConfig) -> None:
    latency.require_gpu("the batch benchmark", cfg.shapes)
    from triforce.kernels.policy import KernelPolicy

    try:
        policy = KernelPolicy.resolve("cuda", OmegaConf.to_container(cfg.kernels))
        method_config(OmegaConf.to_container(cfg.method)), method_config(OmegaConf.to_container(cfg.magicdec))
        extra_methods(cfg)  # every method checked before a model is built
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    card = latency.Card.measure()
    print(f"{card.name}: copy bandwidth {card.bandwidth / 1e12:.2f} TB/s; kernel policy {policy.describe()}", flush=True)
    tables: dict[str, list] = {k: [] for k in ("levels", "speedup", "end_to_end", "skipped")}
    from hydra.core.hydra_config import HydraConfig

    folders = [Path(HydraConfig.get().runtime.output_dir)] + ([Path(cfg.out)] if cfg.out else [])

    def save(complete: bool = False) -> str:
        text = report(card, tables) + ("" if complete else "\n\n(incomplete: the run was still going)")
        payload = json.dumps({"card": card.name, "bandwidth": card.bandwidth, "date": datetime.date.today().isoformat(),
                              "complete": complete, "config": OmegaConf.to_container(cfg),
                              "kernel_policy": policy.describe(), **tables}, indent=1, default=str)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "batch.json").write_text(payload)
            (folder / "batch.md").write_text(text + "\n")
        return text

    for shape in cfg.shapes:
        run_shape(cfg, shape, card, tables, save)
    print(save(complete=True), flush=True)


if __name__ == "__main__":
    main()
