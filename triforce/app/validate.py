"""Start-time validation of a composed run config: everything that can be checked before any
weights load, with messages that name the bad value and what is allowed.

`validate(cfg)` parses the composed config once into typed objects (config.RunConfig: wrong types
and unknown keys are refused there) and checks what they cannot alone; with `environment=True`
(the default, what a run does) it also checks the device exists, reads the model's config.json
(never its weights) to know its context length, and makes the run's memory plan.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from triforce.config import (DraftSpec, MethodConfig, ModelSpec, RunConfig, SamplingParams, check_tree_setting,
                             context_needed)
from triforce.data.sources import check_dataset
from triforce.errors import ConfigError, ModelNotFoundError, PromptTooLongError
from triforce.models import tiny

LOGGERS = ("wandb", "none")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A job's configuration, parsed once (config.RunConfig), and what the pre-flight found: the
    target's context and the run's memory plan (GPU runs; handed to the engine)."""
    run: RunConfig
    max_context: int | None  # None: only known once the weights are downloaded
    memory: Any = None  # memory.MemoryPlan
    sliding_window: int | None = None  # the target's, where its attention slides (it bounds max_context)

    @property
    def method(self) -> MethodConfig:
        return self.run.method

    @property
    def sampling(self) -> SamplingParams:
        return self.run.sampling


def validate(cfg: Mapping, *, environment: bool = True) -> RunPlan:
    """Every check that needs no weights, in one pass over the typed configuration."""
    run = RunConfig.parse(cfg)
    check_dataset(run.dataset)
    check_hardware(run, environment=environment)
    check_models(run)
    check_logger(run.logger)
    prefill = run.dataset["prefill"]
    run.method.for_prompt(prefill)  # a budget fraction of the configured prompt length
    target = model_config(run.model, read_files=environment)
    context = model_context(run.model, target)
    window = None if target is None else target.sliding_window
    if context is not None:
        check_fits(prefill, run.max_new_tokens, run.method, context, window)
    memory = None
    if environment:
        check_draft_vocabulary(run)
        memory = check_device_memory(run)
    return RunPlan(run, context, memory, window)


def check_hardware(run: RunConfig, *, environment: bool) -> None:
    hw = run.hardware
    executor = hw.check_executor()  # graphs on a CPU: refused before any work
    check_tree_setting(run.method, executor, hw.tensor_parallel > 1)
    if hw.tensor_parallel > 1 and environment:
        from triforce.parallel import check_launch

        check_launch(hw.tensor_parallel)  # one process per GPU, started by torchrun
    if environment and hw.cuda:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(no_cuda_message(hw))
    if hw.kernels:  # the kernel policy's overrides: their names and values checked now, resolved by the engine
        from triforce.kernels.policy import KernelPolicy

        # kernels=true on a CPU needs Triton's interpreter in this environment: asked only of a run's
        KernelPolicy.check_overrides("cuda" if hw.cuda or not environment else "cpu", hw.kernels)


def no_cuda_message(hw) -> str:
    """A CUDA device asked for where there is none: the setting to change is the one that asked."""
    if hw.name == "cpu":  # the CPU profile with its device overridden: hardware.device is the culprit
        return (f"hardware.device={hw.device} needs a CUDA device and none is available here; set "
                "hardware.device=cpu (or leave it out: hardware=cpu runs on the CPU)")
    return (f"hardware={hw.name} runs on device {hw.device!r} and no CUDA device is available here; use "
            "hardware=cpu on this machine")


def check_models(run: RunConfig) -> None:
    """The model names exist as something the run can load (the draft rule itself:
    config.check_draft, run when the RunConfig was made)."""
    _check_model_name(run.model.name, "model.name")
    if run.method.uses_draft and not run.draft.is_self:
        _check_model_name(run.draft.name, "draft.name")


def _check_model_name(name: str, key: str) -> None:
    from triforce.models.loading import LOCAL_ALIASES

    if name == tiny.NAME or name in LOCAL_ALIASES or Path(name).expanduser().exists():
        return
    if name.count("/") == 1 and not name.startswith(("/", ".", "~")):
        return  # a Hugging Face id: resolved (and downloaded if needed) when the run starts
    raise ModelNotFoundError(f"{key}={name!r} is unknown: use a model config (model=smollm2, tiny, llama2-7b-128k, "
                             f"llama2-13b-128k, lwm-text-128k, lwm-text-chat-128k), an alias "
                             f"({', '.join([*LOCAL_ALIASES, tiny.NAME])}), a local folder or a Hugging Face "
                             "id owner/name")


def check_logger(logger: Mapping) -> None:
    if logger.get("name", "none") not in LOGGERS:
        raise ConfigError(f"logger.name={logger.get('name')!r}: choose one of {', '.join(LOGGERS)}")


def model_config(model: ModelSpec, *, read_files: bool = True):
    """A model's ModelConfig (+ rope scaling) from its config.json, never its weights; None when
    config.json is not available without downloading (a hub id not cached yet)."""
    from triforce.models.loading import load_config, resolve_model_dir, with_rope_scaling

    name = model.name
    if name == tiny.NAME:
        return with_rope_scaling(tiny.tiny_config(model.tiny), model.rope_scaling)
    if not read_files:
        return None
    try:
        model_dir = resolve_model_dir(name, download=False)
    except ModelNotFoundError:
        if name.count("/") == 1 and not Path(name).expanduser().exists():
            return None
        raise
    return with_rope_scaling(load_config(model_dir), model.rope_scaling)


def draft_config(draft: DraftSpec):
    """The draft's ModelConfig, read as the target's is (None: no separate draft, or not cached)."""
    if draft.name is None or draft.is_self:
        return None
    return model_config(ModelSpec(name=draft.name))


def model_context(model: ModelSpec, cfg) -> int | None:
    """Context length of the target: model.max_context, else its config (`cfg`: model_config's,
    None when not available; + rope scaling; a sliding-window model's window bounds either:
    ModelConfig.exact_context)."""
    if cfg is None:
        return model.max_context or None
    return cfg.context_for(model.max_context)


def check_draft_vocabulary(run: RunConfig) -> None:
    """A draft's distributions are compared token by token with the target's: one vocabulary
    (config.json only; a hub id not downloaded yet is checked by nothing before its weights)."""
    if not run.method.uses_draft:
        return
    from triforce.models.config import draft_vocabulary_problem

    proposer = draft_config(run.draft)
    target = model_config(run.model) if proposer is not None else None
    problem = None if target is None else draft_vocabulary_problem(target, proposer)
    if problem:
        raise ConfigError(f"draft.name={run.draft.name} has {problem} (model.name={run.model.name})")


def check_device_memory(run: RunConfig):
    """On a GPU: the memory plan of the run (a batch of its longest prompts) against the device's
    free memory, before any weights load (the paper's 7B / 124,928-token setting fills an 80 GB
    card); the plan, for the engine (None off a GPU or for a hub id not downloaded yet: the engine
    then plans for itself)."""
    import torch

    from triforce.memory import check_plan, plan_memory
    from triforce.models.loading import parse_dtype
    from triforce.parallel import shard_config

    hw, model, draft, method = run.hardware, run.model, run.draft, run.method
    device = torch.device(hw.device)
    if device.type != "cuda":
        return None
    target = model_config(model)
    if target is None:
        return None
    dtype_bytes = parse_dtype(model.dtype, device).itemsize
    draft_cfg = draft_config(draft) if method.uses_draft else None
    target = shard_config(target, hw.tensor_parallel)  # one rank's share
    plan = plan_memory(target, method, int(run.dataset["prefill"]), run.max_new_tokens, dtype_bytes=dtype_bytes,
                       prefill_chunk=hw.prefill_chunk, draft=draft_cfg, draft_is_target=draft.is_self,
                       offload=hw.offload, on_chip_layers=hw.on_chip_layers or 0, batch_size=hw.batch_size)
    check_plan(plan, device)
    return plan


def check_fits(prompt_len: int, max_new_tokens: int, method: MethodConfig, context: int,
               sliding_window: int | None = None) -> None:
    """The arithmetic of Engine.check_prompt, done before the engine (and its weights) exists. A
    sliding-window model's context is its window (ModelConfig.exact_context): the message says so."""
    need = context_needed(prompt_len, max_new_tokens, method)
    if need > context:
        room = context - (need - prompt_len)
        if sliding_window is not None and sliding_window == context:
            raise PromptTooLongError(
                f"dataset.prefill={prompt_len} is too long for a sliding-window model: with max_new_tokens="
                f"{max_new_tokens} (+{method.lookahead} speculative) a sequence would pass its window of "
                f"{sliding_window} tokens, beyond which its attention slides and the engine's caches (which keep "
                f"every token) would no longer compute the model exactly; prefill <= {room} runs exactly, or use a "
                "checkpoint without a sliding window (Mistral-7B v0.2 and later, Mistral-Nemo)")
        raise PromptTooLongError(
            f"dataset.prefill={prompt_len} is too long: with max_new_tokens={max_new_tokens} (+{method.lookahead} "
            f"speculative) the model's context of {context} allows prefill <= {room}; lower dataset.prefill "
            "or max_new_tokens, or use a longer-context model (e.g. model=smollm2_yarn32k)")
