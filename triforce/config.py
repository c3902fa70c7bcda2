"""Turn a composed config (Hydra DictConfig or a plain dict) into engine parts.

Expected keys (all but `model` optional):

    model:    {name, dtype, max_context, rope_scaling}
    draft:    {name: null | self | <alias/path/HF id>, dtype}
    method:   fields of engine.MethodConfig
    sampling: fields of sampling.SamplingParams
    hardware: {device, attention, prefill_chunk, executor, offload, on_chip_layers, tensor_parallel}
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

from triforce.errors import ConfigError

if TYPE_CHECKING:  # imported lazily at run time: composing configs must not import torch
    from triforce.engine import MethodConfig
    from triforce.sampling import SamplingParams


def to_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def _known_fields(cls, values: Mapping, section: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {section} option(s) {sorted(unknown)}; known: {sorted(names)}")
    return dict(values)


def method_config(values: Mapping) -> "MethodConfig":
    from triforce.engine import MethodConfig

    return MethodConfig(**_known_fields(MethodConfig, values, "method"))


def sampling_params(values: Mapping) -> "SamplingParams":
    from triforce.sampling import SamplingParams

    return SamplingParams(**_known_fields(SamplingParams, values, "sampling"))


def _load_target(model_cfg: Mapping, **kw):
    """The target model: the seeded tiny random model (`tiny-random`, no files) or a checkpoint."""
    from triforce.models import tiny
    from triforce.models.loading import load_model

    if model_cfg["name"] == tiny.NAME:
        return tiny.build_tiny(model_cfg.get("tiny"), seed=model_cfg.get("seed", 0),
                               rope_scaling=model_cfg.get("rope_scaling"), **kw)
    return load_model(model_cfg["name"], rope_scaling=model_cfg.get("rope_scaling"), **kw)


def engine_kwargs_from_config(cfg: Any) -> dict:
    """Validate everything cheap first, then load the weights."""
    from triforce.attention import get_attention
    from triforce.models.loading import load_model, parse_dtype

    cfg = to_dict(cfg)
    model_cfg, draft_cfg = to_dict(cfg.get("model")), to_dict(cfg.get("draft"))
    hardware = to_dict(cfg.get("hardware"))
    method = method_config(to_dict(cfg.get("method")))
    sampling = sampling_params(to_dict(cfg.get("sampling")))
    if "name" not in model_cfg:
        raise ConfigError("model.name is required (an alias such as smollm2-135m, a local folder or an HF id)")
    device = hardware.get("device", "cpu")
    attention = get_attention(hardware.get("attention", "sdpa"))
    dtype = parse_dtype(model_cfg.get("dtype", "auto"), device)
    draft_name = draft_cfg.get("name")
    if method.uses_draft and not draft_name:
        raise ConfigError(f"method={method.name} needs a draft model: set draft=self or draft=<model>")

    from triforce.parallel import init_parallel, shard_model

    # tensor parallelism: join the process group, take this rank's GPU, keep this rank's slice
    par, device = init_parallel(hardware.get("tensor_parallel") or 1, device)
    target = shard_model(_load_target(model_cfg, dtype=dtype, device=device, attention=attention), par)
    draft = None  # replicated on every rank
    if method.uses_draft:
        if draft_name == "self":  # self-speculation: the same weights at every level
            draft = target
        else:
            draft = load_model(draft_name, dtype=parse_dtype(draft_cfg.get("dtype") or dtype, device),
                               device=device, attention=attention)
    return dict(target=target, draft=draft, method=method, sampling=sampling,
                max_context=model_cfg.get("max_context"), prefill_chunk=hardware.get("prefill_chunk"),
                executor=hardware.get("executor") or "auto", offload=bool(hardware.get("offload")),
                on_chip_layers=hardware.get("on_chip_layers"))
