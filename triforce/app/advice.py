"""Settings that run but do not do what their names promise, said as `warning: ...` lines on
stderr before any weights load (a refusal would stop sweeps and tests that use them on purpose):
offloading on a CPU, a budget as large as the prompt, fewer prompts than num_samples or batch_size
asks for."""

from __future__ import annotations

from typing import Mapping, Sequence

from triforce.config import HardwareConfig, MethodConfig, RunConfig


def offload_warning(hardware: HardwareConfig) -> str | None:
    device = hardware.device
    if hardware.offload and not hardware.cuda:
        return (f"hardware.offload=true on device {device}: the KV cache is in host memory already, so offloading "
                "saves nothing there; the offloaded cache still runs (copying between host buffers what a GPU would "
                "stream over its host link), which tests that path but only adds work; set hardware.offload=false "
                "unless that is the point")
    return None


def budget_warning(method: MethodConfig, prompt_lengths: Sequence[int]) -> str | None:
    """A middle cache of `budget` tokens keeps every token of a prompt no longer than the budget: it is
    then the full cache, the middle level verifies exactly as the target does and only adds work."""
    if not method.uses_middle or method.budget is None or not prompt_lengths:
        return None
    shortest = min(prompt_lengths)
    if method.budget < shortest:
        return None
    return (f"method.budget={method.budget} is not smaller than the {shortest}-token prompt: the middle level's "
            "cache then holds the whole prompt, the same as the full cache, so it retrieves nothing and verifies "
            "exactly as the target does (middle acceptance 1, no speedup from it); use a budget below the prompt "
            "length, or method.budget=null method.budget_fraction=0.125")


def samples_warning(dataset: Mapping, prompts: int) -> str | None:
    """Fewer prompts than dataset.num_samples asks for (a small local file, a short book folder): the
    run's tables would otherwise look like the set asked for."""
    wanted = dataset.get("num_samples")
    if wanted is None or prompts >= wanted:
        return None
    return (f"dataset.num_samples={wanted} but dataset {dataset.get('name')!r} gives only {prompts} prompt(s): the "
            f"run uses those {prompts}; set dataset.num_samples={prompts} (or null: all there are) to ask for what is "
            "there")


def batch_warning(hardware: HardwareConfig, prompts: int) -> str | None:
    """A batch larger than the prompts: the batch that runs is smaller than the one asked for, and so
    are its throughput and memory."""
    size = hardware.batch_size
    if size <= prompts:
        return None
    return (f"hardware.batch_size={size} but the run has only {prompts} prompt(s): they run as one batch of "
            f"{prompts}, and its throughput is that of a batch of {prompts}; lower hardware.batch_size to {prompts}, "
            "or give the run more prompts (dataset.num_samples)")


def run_warnings(run: RunConfig, prompt_lengths: Sequence[int]) -> list[str]:
    n = len(prompt_lengths)
    found = (offload_warning(run.hardware), budget_warning(run.method, prompt_lengths),
             samples_warning(run.dataset, n), batch_warning(run.hardware, n))
    return [w for w in found if w]
