"""Build the method's engine and the autoregressive baseline (sharing the target's weights).

PREFILLS is the one piece of state that outlives a job: Hydra's basic launcher runs a sweep's jobs
one after another in this process, and with `hardware.prefill_memo_gb` > 0 each job's engines take
the top level's prefill of a prompt from it when an earlier job prefilled the same prompt with the
same weights (triforce.prefill_memo: exact, keyed by a checksum of the weights). A sweep over
method settings then prefills each prompt once instead of once per job."""

from __future__ import annotations

import gc

import torch

from triforce.app.validate import RunPlan
from triforce.assemble import build_engine as assemble
from triforce.config import MethodConfig
from triforce.costs import StepCosts
from triforce.engine import Engine, EngineOptions
from triforce.prefill_memo import PrefillMemo

PREFILLS = PrefillMemo(max_bytes=0)
GB = 1024 ** 3


def build_engine(plan: RunPlan) -> Engine:
    """The run's engine from its typed configuration (`model.name: tiny-random` builds the seeded
    tiny model, no files), with the run's memory plan."""
    hw = plan.run.hardware
    if hw.threads:
        torch.set_num_threads(hw.threads)
    PREFILLS.resize(int(hw.prefill_memo_gb * GB))  # 0: off, and memory given back
    costs = StepCosts.load(hw.costs_file, plan.method.memory_rounds) if hw.costs_file else None
    return assemble(plan.run.engine, EngineOptions(memory_plan=plan.memory, costs=costs,
                                                   prefill_memo=PREFILLS if PREFILLS.max_bytes else None))


def baseline_of(engine: Engine) -> Engine:
    """Autoregressive decoding of the same target, same sampling, context, hardware settings."""
    return engine.with_method(MethodConfig(name="autoregressive"))


def release(device: torch.device | str | None) -> None:
    """Between sweep jobs in one process: free cached memory and reset the peak statistics."""
    gc.collect()
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
