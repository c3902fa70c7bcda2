"""Build the method's engine and the autoregressive baseline (sharing the target's weights)."""

from __future__ import annotations

import gc
from typing import Mapping

import torch

from triforce.app.validate import RunPlan
from triforce.engine import Engine, MethodConfig

ENGINE_SECTIONS = ("model", "draft", "method", "sampling", "hardware")


def build_engine(cfg: Mapping, plan: RunPlan) -> Engine:
    """The run's engine (`model.name: tiny-random` builds the seeded tiny model, no files)."""
    hw = cfg.get("hardware") or {}
    if hw.get("threads"):
        torch.set_num_threads(int(hw["threads"]))
    return Engine.from_config({k: cfg.get(k) for k in ENGINE_SECTIONS})


def baseline_of(engine: Engine) -> Engine:
    """Autoregressive decoding of the same target, same sampling and context."""
    return Engine(engine.target, None, MethodConfig(name="autoregressive"), engine.sampling,
                  max_context=engine.max_context, prefill_chunk=engine.prefill_chunk, executor=engine.executor_name,
                  offload=engine.offload, on_chip_layers=engine.on_chip_layers)


def release(device: torch.device | str | None) -> None:
    """Between sweep jobs in one process: free cached memory and reset the peak statistics."""
    gc.collect()
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
