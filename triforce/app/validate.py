"""Start-time validation of a composed run config: everything that can be checked before any
weights load, with messages that name the bad value and what is allowed.

`validate(cfg)` checks the config alone; with `environment=True` (the default, what a run does)
it also checks the device exists and reads the model's config.json (never its weights) to know
its context length.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from triforce.config import method_config, sampling_params
from triforce.data.sources import check_dataset
from triforce.config import MethodConfig, context_needed
from triforce.errors import ConfigError, ModelNotFoundError, PromptTooLongError
from triforce.models import tiny
from triforce.sampling import SamplingParams

LOGGERS = ("wandb", "none")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    method: MethodConfig
    sampling: SamplingParams
    max_context: int | None  # None: only known once the weights are downloaded


def validate(cfg: Mapping, *, environment: bool = True) -> RunPlan:
    method = check_method(cfg.get("method") or {})
    sampling = sampling_params(cfg.get("sampling") or {})
    check_run(cfg)
    check_dataset(cfg.get("dataset") or {})
    check_hardware(cfg.get("hardware") or {}, environment=environment)
    check_models(cfg.get("model") or {}, cfg.get("draft") or {}, method)
    check_logger(cfg.get("logger") or {})
    method.for_prompt(cfg["dataset"]["prefill"])  # a budget fraction of the configured prompt length
    context = model_context(cfg["model"], read_files=environment)
    if context is not None:
        check_fits(cfg["dataset"]["prefill"], cfg["max_new_tokens"], method, context)
    if environment:
        check_draft_vocabulary(cfg["model"], cfg.get("draft") or {}, method)
        check_device_memory(cfg, method)
    return RunPlan(method, sampling, context)


def check_run(cfg: Mapping) -> None:
    n = cfg.get("max_new_tokens")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ConfigError(f"max_new_tokens={n!r} must be a positive integer")
    if not isinstance(cfg.get("seed", 0), int):
        raise ConfigError(f"seed={cfg.get('seed')!r} must be an integer")
    if cfg.get("reference_acceptance") and not cfg.get("baseline", True):
        raise ConfigError("reference_acceptance=true measures along the autoregressive baseline's tokens: "
                          "set baseline=true")


def check_method(values: Mapping) -> MethodConfig:
    """MethodConfig validates the fields its method uses; budget and chunk_size are checked for
    every method so a sweep never silently carries a meaningless value."""
    budget, chunk = values.get("budget", 1), values.get("chunk_size", 1)
    if isinstance(budget, int) and budget <= 0:
        raise ConfigError(f"method.budget={budget} must be a positive number of tokens (>= 2 * chunk_size)")
    if isinstance(chunk, int) and chunk <= 0:
        raise ConfigError(f"method.chunk_size={chunk} must be a positive number of tokens")
    if isinstance(budget, int) and isinstance(chunk, int) and budget < chunk:
        raise ConfigError(f"method.budget={budget} is smaller than method.chunk_size={chunk}; "
                          f"allowed: budget >= 2 * chunk_size = {2 * chunk}")
    return method_config(values)


def check_hardware(hw: Mapping, *, environment: bool) -> None:
    name = hw.get("name", "?")
    on_chip = hw.get("on_chip_layers")
    if on_chip is not None and (not isinstance(on_chip, int) or on_chip < 0):
        raise ConfigError(f"hardware.on_chip_layers={on_chip!r} must be a non-negative integer or null (0)")
    if not isinstance(hw.get("offload", False), bool):
        raise ConfigError(f"hardware.offload={hw.get('offload')!r} must be true or false")
    tp = hw.get("tensor_parallel")
    tp = 1 if tp is None else tp
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ConfigError(f"hardware.tensor_parallel={tp!r} must be a positive integer (GPUs sharing each layer)")
    if tp > 1 and environment:
        from triforce.parallel import check_launch

        check_launch(tp)  # one process per GPU, started by torchrun
    threads = hw.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads <= 0):
        raise ConfigError(f"hardware.threads={threads!r} must be a positive integer or null (torch's default)")
    shown = hw.get("progress", True)
    if not isinstance(shown, bool):
        raise ConfigError(f"hardware.progress={shown!r} must be true or false (tqdm bars for prefill and generation)")
    memo = hw.get("prefill_memo_gb", 0)
    if memo is not None and (isinstance(memo, bool) or not isinstance(memo, (int, float)) or memo < 0):
        raise ConfigError(f"hardware.prefill_memo_gb={memo!r} must be a number of GB >= 0 (0: off)")
    chunk = hw.get("prefill_chunk")
    if chunk is not None and chunk <= 0:
        raise ConfigError(f"hardware.prefill_chunk={chunk} must be positive or null (whole prompt)")
    device = str(hw.get("device", "cpu"))
    if environment and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"hardware={name} uses device {device!r} but no CUDA device is available; "
                              "use hardware=cpu")


def check_models(model: Mapping, draft: Mapping, method: MethodConfig) -> None:
    name = model.get("name")
    if not name:
        raise ConfigError("model.name is required: a model config (model=smollm2, tiny, llama2-7b-128k, ...), "
                          "a local folder or a Hugging Face id owner/name")
    _check_model_name(name, "model.name")
    draft_name = draft.get("name")
    if not method.uses_draft:
        return
    if not draft_name:
        raise ConfigError(f"method={method.name} needs a draft model: set draft=self, draft=llama-68m "
                          "or draft.name=<model>")
    if name == tiny.NAME and draft_name != "self":
        raise ConfigError(f"draft.name={draft_name!r} with the tiny random model: only draft=self is supported")
    if draft_name != "self":
        _check_model_name(draft_name, "draft.name")


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


def model_config(model: Mapping, *, read_files: bool = True):
    """The target's ModelConfig (+ rope scaling) from its config.json, never its weights; None
    when config.json is not available without downloading (a hub id not cached yet)."""
    from triforce.models.loading import load_config, resolve_model_dir, with_rope_scaling

    name = model["name"]
    if name == tiny.NAME:
        return with_rope_scaling(tiny.tiny_config(model.get("tiny")), model.get("rope_scaling"))
    if not read_files:
        return None
    try:
        model_dir = resolve_model_dir(name, download=False)
    except ModelNotFoundError:
        if name.count("/") == 1 and not Path(name).expanduser().exists():
            return None
        raise
    return with_rope_scaling(load_config(model_dir), model.get("rope_scaling"))


def model_context(model: Mapping, *, read_files: bool = True) -> int | None:
    """Context length of the target: model.max_context, else its config.json (+ rope scaling)."""
    if model.get("max_context"):
        return int(model["max_context"])
    cfg = model_config(model, read_files=read_files)
    return None if cfg is None else cfg.max_position_embeddings


def check_draft_vocabulary(model: Mapping, draft: Mapping, method: MethodConfig) -> None:
    """A draft's distributions are compared token by token with the target's: one vocabulary
    (config.json only; a hub id not downloaded yet is checked by nothing before its weights)."""
    name = draft.get("name")
    if not method.uses_draft or name in (None, "self"):
        return
    target, proposer = model_config(model), model_config({"name": name})
    if target is not None and proposer is not None and target.vocab_size != proposer.vocab_size:
        raise ConfigError(f"draft.name={name} has a vocabulary of {proposer.vocab_size} tokens, model.name="
                          f"{model['name']} one of {target.vocab_size}: a draft must share the target's tokenizer "
                          "(llama-68m drafts for the Llama-2 family); use draft=self or a draft of the same family")


def check_device_memory(cfg: Mapping, method: MethodConfig) -> None:
    """On a GPU: the memory plan of the longest prompt against the device's free memory, before
    any weights load (DESIGN: the paper's 7B / 124,928-token setting fills an 80 GB card)."""
    import torch

    from triforce.memory import check_plan, plan_memory
    from triforce.models.loading import parse_dtype

    hw, model, draft = cfg.get("hardware") or {}, cfg["model"], cfg.get("draft") or {}
    device = torch.device(str(hw.get("device", "cpu")))
    if device.type != "cuda":
        return
    target = model_config(model)
    if target is None:
        return  # a hub id not downloaded yet: the engine checks again before allocating
    dtype_bytes = parse_dtype(model.get("dtype", "auto"), device).itemsize
    draft_name = draft.get("name")
    draft_cfg = None
    if method.uses_draft and draft_name not in (None, "self"):
        draft_cfg = model_config({"name": draft_name})
    from triforce.parallel import shard_config

    target = shard_config(target, hw.get("tensor_parallel") or 1)  # one rank's share
    if draft_cfg is not None and draft_name == "self":
        draft_cfg = target
    prompt_len, chunk = int(cfg["dataset"]["prefill"]), hw.get("prefill_chunk")
    offload, on_chip = bool(hw.get("offload")), hw.get("on_chip_layers") or 0
    plan = plan_memory(target, method, prompt_len, cfg["max_new_tokens"], dtype_bytes=dtype_bytes,
                       prefill_chunk=chunk, draft=draft_cfg, draft_is_target=draft_name == "self",
                       offload=offload, on_chip_layers=on_chip)
    check_plan(plan, device)


def check_fits(prompt_len: int, max_new_tokens: int, method: MethodConfig, context: int) -> None:
    """The arithmetic of Engine.check_prompt, done before the engine (and its weights) exists."""
    need = context_needed(prompt_len, max_new_tokens, method)
    if need > context:
        room = context - (need - prompt_len)
        raise PromptTooLongError(
            f"dataset.prefill={prompt_len} is too long: with max_new_tokens={max_new_tokens} (+{method.lookahead} "
            f"speculative) the model's context of {context} allows prefill <= {room}; lower dataset.prefill "
            "or max_new_tokens, or use a longer-context model (e.g. model=smollm2_yarn32k)")
