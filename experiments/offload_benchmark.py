"""Offloading and tensor-parallel benchmark: the paper's consumer-GPU modes against their floors.

    python experiments/offload_benchmark.py                                       # one GPU
    torchrun --nproc-per-node 2 experiments/offload_benchmark.py tensor_parallel=2 \\
        identity.reference=<one-GPU run>/identity.json                            # two GPUs

A Hydra app (config: triforce/conf/offload_benchmark.yaml). It measures the device copy bandwidth
and the pinned host -> device bandwidth first (every rank copying at once under TP), then, for the
random-weight shape at each context:
- levels: the offloaded top level's autoregressive step and verify (KV streamed from host
  memory) against the offloaded floor, the middle and draft steps (captured graphs) against
  theirs, and the speedup over offloaded autoregressive decoding modelled from those costs;
  with `onchip_levels`, the same levels with the full cache on the GPU where it fits;
- end to end: `generate` with the cache offloaded, autoregressive and TriForce, at each prefill
  context: prefill time, bytes moved over the host link during the prefill (linear in the
  prompt: layer-major prefill), ms per token;
- identity: greedy tokens of every method in float32, on-chip and offloaded, written to
  identity.json and compared with `identity.reference` (another run's, e.g. one GPU's).
Only rank 0 prints and writes (offload.json, offload.md, identity.json in the run folder and `out`).
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
from triforce.bench.floors import host_to_device_bandwidth
from triforce.bench.shapes import DRAFT_OF, SHAPES, random_model
from triforce.config import method_config
from triforce.engine import Engine
from triforce.errors import ConfigError
from triforce.memory import check_memory, device_available, plan_memory
from triforce.models.loading import parse_dtype
from triforce.parallel import Parallel, init_parallel, quiet_other_ranks, shard_config, shard_model
from triforce.report import benchmark_report, command_line, markdown_table
from triforce.sampling import SamplingParams
from triforce.tree import method_tree
from triforce.tree_shapes import best_tree

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)
IDENTITY_METHODS = {
    "autoregressive": dict(name="autoregressive"),
    "spec": dict(name="spec", gamma=4),
    "retrieval_spec": dict(name="retrieval_spec", gamma=6, budget=512),
    "triforce": dict(name="triforce", gamma=6, budget=512),
}


def models(cfg: DictConfig, par: Parallel, device, dtype: torch.dtype):
    """The random target (this rank's slice) and the replicated draft; the same weights on every
    rank and in every run (seeded), so runs on different GPU counts compute the same function."""
    target = shard_model(random_model(SHAPES[cfg.shape], dtype=dtype, device=device), par)
    draft = random_model(SHAPES[DRAFT_OF[cfg.shape]], dtype=dtype, device=device, seed=1)
    return target, draft


def fits_on_chip(cfg: DictConfig, method, context: int, dtype_bytes: int, par: Parallel) -> bool:
    plan = plan_memory(shard_config(SHAPES[cfg.shape], par.world), method, context, 64, dtype_bytes=dtype_bytes,
                       prefill_chunk=cfg.prefill_chunk, draft=SHAPES[DRAFT_OF[cfg.shape]])
    # the weights are loaded already: their memory is not free but is not needed again either
    try:
        check_memory(plan.without_weights(), device_available(), where="this GPU")
    except ConfigError:
        return False
    return True


def run_levels(cfg, par, device, card, h2d, tables, say) -> None:
    dtype = parse_dtype(cfg.dtype, "cuda")
    method = method_config(OmegaConf.to_container(cfg.method))
    kernels = {"linear": str(cfg.linear)}  # the kernel policy's overrides (kernels/policy.py)
    offload = dict(offload=True, on_chip_layers=cfg.on_chip_layers, kernels=kernels)
    target, draft = models(cfg, par, device, dtype)
    if cfg.head_scale is not None:  # controlled acceptance (docs/DESIGN.md §7): both output heads times s
        for model in (target, draft):
            latency.scale_heads(model, float(cfg.head_scale))
    for context in cfg.contexts:
        for where, kw in (("offloaded", offload), ("on-chip", {"kernels": kernels})):
            if where == "offloaded" and not cfg.offloaded_levels:
                continue
            if where == "on-chip" and not (cfg.onchip_levels and fits_on_chip(cfg, method, context, dtype.itemsize, par)):
                say(f"[{where} @ {context}] skipped: the full cache does not fit this GPU")
                continue
            rows = latency.level_timings(target, draft, method, context, verify_blocks=tuple(cfg.verify_blocks),
                                         bandwidth=card.bandwidth, repeats=cfg.repeats, hardware=kw, h2d=h2d)
            for row in rows:
                tables["levels"].append(dict(cache=where, gpus=par.world, **row))
            for row in latency.speedups(rows, method.gamma, method.draft_gamma, [tuple(a) for a in cfg.acceptance]):
                tables["speedup"].append(dict(cache=where, gpus=par.world, **row))
            say(markdown_table(pd.DataFrame(rows)))
    if cfg.end_to_end:
        for context in cfg.prefill_contexts:
            prompt = torch.randint(0, SHAPES[cfg.shape].vocab_size, (context,),
                                   generator=torch.Generator().manual_seed(0)).tolist()
            # the chain method, then each tree (docs/DESIGN.md §13: its level below proposes; the same executor),
            # then Sequoia's DP tree of each size in dp_trees for the acceptance by rank the widest tree measured
            tree_method = OmegaConf.to_container(cfg.tree_method)
            ar_ms = None

            def run(m) -> list[float]:
                """One end-to-end row of method m (tabled); the acceptance by child rank it measured."""
                nonlocal ar_ms
                tokens = cfg.new_tokens
                if m.name == "autoregressive" and cfg.autoregressive_tokens:  # (flat per token: fewer suffice)
                    tokens = int(cfg.autoregressive_tokens)
                row = latency.end_to_end(target, draft if m.uses_draft else None, m, prompt, new_tokens=tokens,
                                         sampling=SAMPLING, prefill_chunk=cfg.prefill_chunk, hardware=offload)
                ar_ms = row["ms_per_token"] if m.name == "autoregressive" else ar_ms
                row.update(tree=m.tree_label if m.has_tree else "chain", head_scale=cfg.head_scale,
                           tokens_per_top_forward=row["new_tokens"] / max(row.get("forwards/top", 1), 1),
                           vs_autoregressive=ar_ms / row["ms_per_token"])
                ranks = [row[f"tree/rank_accept_{k}"] for k in range(1, 65) if f"tree/rank_accept_{k}" in row]
                if ranks:  # the best tree of as many nodes for the acceptance by rank it measured
                    best, expected = best_tree(ranks, m.tree_nodes, max_depth=method_tree(m).depth + 2)
                    row.update(dp_tree=str(best.parents), dp_expected_accepted=expected)
                tables["end_to_end"].append(dict(cache="offloaded", gpus=par.world, **row))
                say(json.dumps(tables["end_to_end"][-1]))
                return ranks

            for m in (method_config({"name": "autoregressive"}), method):
                run(m)
            measured = [run(method_config({**tree_method, "tree": list(t)})) for t in cfg.trees]
            ranks = max(reversed(measured), key=len, default=[])  # the widest tree's (of equals, the last)
            for nodes in cfg.dp_trees if ranks else ():
                best, expected = best_tree(ranks, int(nodes), max_depth=int(cfg.dp_depth))
                say(f"DP tree of {nodes} nodes for rank acceptance {[round(r, 3) for r in ranks]}: depth "
                    f"{best.depth}, expected accepted {expected:.2f}")
                run(method_config({**tree_method, "tree_parents": list(best.parents)}))
    del target, draft
    latency.free_memory()


@torch.inference_mode()
def run_identity(cfg, par, device, tables, say) -> dict:
    """Greedy tokens of every method, float32 (where reduction order cannot flip an argmax)."""
    target, draft = models(cfg, par, device, torch.float32)
    prompt = torch.randint(0, SHAPES[cfg.shape].vocab_size, (cfg.identity.context,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    tokens = {}
    for where, kw in (("on-chip", {}), ("offloaded", dict(offload=True, on_chip_layers=cfg.on_chip_layers))):
        for name, m in IDENTITY_METHODS.items():
            engine = Engine(target, draft if name in ("spec", "triforce") else None, m, SamplingParams(0.0),
                            dict(executor="graphs", prefill_chunk=cfg.prefill_chunk, kernels={"linear": str(cfg.linear)},
                                 **kw))
            tokens[f"{where}/{name}"] = engine.generate(prompt, cfg.identity.new_tokens, seed=0,
                                                        stop_at_eos=False).tokens
    reference = json.loads(Path(cfg.identity.reference).read_text()) if cfg.identity.reference else None
    ar = tokens["on-chip/autoregressive"]
    for key, toks in tokens.items():
        row = dict(run=key, gpus=par.world, same_as_autoregressive=toks == ar)
        if reference is not None:
            row.update(reference_gpus=reference["gpus"], same_as_reference=toks == reference["tokens"].get(key))
        tables["identity"].append(row)
    say(markdown_table(pd.DataFrame(tables["identity"])))
    del target, draft
    latency.free_memory()
    return {"gpus": par.world, "tokens": tokens}


def report(cfg, card, h2d, par, tables) -> str:
    launcher = f"torchrun --nproc-per-node {par.world}" if par.enabled else "python"
    lines = [benchmark_report(f"Offloading benchmark ({par.world} GPU{'s' if par.world > 1 else ''})", card,
                              command_line(launcher), tables,
                              header=[f"pinned host -> device {h2d / 1e9:.1f} GB/s per GPU (all GPUs copying)"])]
    prefill = [r for r in tables["end_to_end"] if r["method"] == "autoregressive"]
    if len(prefill) >= 2:
        small, large = prefill[0], prefill[-1]
        bound = 1.05 * large["context"] / small["context"] * small["offload/prefill_gb"]
        lines += ["", f"prefill traffic: {large['offload/prefill_gb']:.2f} GB at {large['context']} vs "
                  f"{small['offload/prefill_gb']:.2f} GB at {small['context']}: ratio "
                  f"{large['offload/prefill_gb'] / small['offload/prefill_gb']:.3f} (linear: "
                  f"{large['context'] / small['context']:.3f}; bound {bound:.2f} GB)"]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../triforce/conf", config_name="offload_benchmark")
def main(cfg: DictConfig) -> None:
    latency.require_gpu("the offloading benchmark", [cfg.shape])
    try:
        par, device = init_parallel(cfg.tensor_parallel, "cuda")
        shard_config(SHAPES[cfg.shape], par.world)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    card = latency.Card.measure()
    h2d = host_to_device_bandwidth(device)
    latency.free_memory()

    def say(text: str) -> None:
        if par.is_main:
            print(text, flush=True)

    say(f"{card.name} x{par.world}: copy {card.bandwidth / 1e12:.2f} TB/s, host -> device {h2d / 1e9:.1f} GB/s")
    tables: dict[str, list] = {k: [] for k in ("levels", "speedup", "end_to_end", "identity")}
    from hydra.core.hydra_config import HydraConfig

    folders = [Path(HydraConfig.get().runtime.output_dir)] + ([Path(cfg.out)] if cfg.out else [])
    identity = None

    def save(complete: bool = False) -> None:
        if not par.is_main:
            return
        text = report(cfg, card, h2d, par, tables) + ("" if complete else "\n\n(incomplete: the run was still going)")
        payload = json.dumps({"card": card.name, "gpus": par.world, "bandwidth": card.bandwidth, "h2d": h2d,
                              "date": datetime.date.today().isoformat(), "complete": complete,
                              "config": OmegaConf.to_container(cfg), **tables}, indent=1, default=str)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "offload.json").write_text(payload)
            (folder / "offload.md").write_text(text + "\n")
            if identity is not None:
                (folder / "identity.json").write_text(json.dumps(identity))
        if complete:
            print(text, flush=True)

    if cfg.identity.enabled:
        identity = run_identity(cfg, par, device, tables, say)
        save()
    run_levels(cfg, par, device, card, h2d, tables, say)
    save(complete=True)


if __name__ == "__main__":
    quiet_other_ranks()
    main()
