"""Settings that run but do not do what their names promise, said as `warning: ...` lines on
stderr before any weights load (a refusal would stop sweeps and tests that use them on purpose)."""

from __future__ import annotations

from typing import Mapping, Sequence

from triforce.engine import MethodConfig


def offload_warning(hardware: Mapping) -> str | None:
    device = str(hardware.get("device", "cpu"))
    if hardware.get("offload") and not device.startswith("cuda"):
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


def run_warnings(values: Mapping, method: MethodConfig, prompt_lengths: Sequence[int]) -> list[str]:
    found = (offload_warning(values.get("hardware") or {}), budget_warning(method, prompt_lengths))
    return [w for w in found if w]
