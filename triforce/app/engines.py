"""Build the method's engine and the autoregressive baseline (sharing the target's weights).

PREFILLS is the one piece of state that outlives a job: Hydra's basic launcher runs a sweep's jobs
one after another in this process, and with `hardware.prefill_memo_gb` > 0 each job's engines take
the top level's prefill of a prompt from it when an earlier job prefilled the same prompt with the
same weights (triforce.prefill_memo: exact, keyed by a checksum of the weights). A sweep over
method settings then prefills each prompt once instead of once per job."""

from __future__ import annotations

import gc
from typing import Mapping

import torch

from triforce.app.validate import RunPlan
from triforce.config import MethodConfig
from triforce.engine import Engine
from triforce.prefill_memo import PrefillMemo

ENGINE_SECTIONS = ("model", "draft", "method", "sampling", "hardware")


PREFILLS = PrefillMemo(max_bytes=0)
GB = 1024 ** 3


def build_engine(cfg: Mapping, plan: RunPlan) -> Engine:
    """The run's engine (`model.name: tiny-random` builds the seeded tiny model, no files)."""
    hw = cfg.get("hardware") or {}
    if hw.get("threads"):
        torch.set_num_threads(int(hw["threads"]))
    engine = Engine.from_config({k: cfg.get(k) for k in ENGINE_SECTIONS})
    PREFILLS.resize(int(float(hw.get("prefill_memo_gb") or 0) * GB))  # 0: off, and memory given back
    engine.prefill_memo = PREFILLS if PREFILLS.max_bytes else None
    return engine


def baseline_of(engine: Engine) -> Engine:
    """Autoregressive decoding of the same target, same sampling and context."""
    return Engine(engine.target, None, MethodConfig(name="autoregressive"), engine.sampling,
                  max_context=engine.max_context, prefill_chunk=engine.prefill_chunk, executor=engine.executor_name,
                  offload=engine.offload, on_chip_layers=engine.on_chip_layers, prefill_memo=engine.prefill_memo)


def release(device: torch.device | str | None) -> None:
    """Between sweep jobs in one process: free cached memory and reset the peak statistics."""
    gc.collect()
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
