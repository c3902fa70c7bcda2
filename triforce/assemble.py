"""An engine from its typed configuration (config.EngineConfig): resolve and load the models, join
tensor parallelism, build the Engine.

Everything that can fail without reading weights fails first: both model folders are resolved
(downloaded if needed) and both checkpoints' weight files checked before the target's weights load,
so an unreachable or broken draft or a bad dtype is reported in seconds, not after a 13 GB
checkpoint loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from triforce.config import ModelSpec, engine_config

if TYPE_CHECKING:
    from triforce.engine import Engine, EngineOptions


def build_engine(cfg, options: "EngineOptions | None" = None) -> "Engine":
    """The engine of `cfg` (an EngineConfig, the app's RunConfig, or a composed config / mapping
    with `model`, `draft`, `method`, `sampling` and `hardware` sections): its models loaded, tensor
    parallelism joined (hardware.tensor_parallel), the kernel policy resolved by the engine itself
    from hardware.kernels. `options`: what the run resolved beyond the configs (memory plan, prefill
    memo); its max_context is the model's."""
    import dataclasses

    from triforce.attention import get_attention
    from triforce.engine import Engine, EngineOptions
    from triforce.kernels.policy import KernelPolicy
    from triforce.models import tiny
    from triforce.models.loading import load_model, parse_dtype, resolve_model_dir
    from triforce.parallel import init_parallel, shard_model

    cfg = engine_config(cfg)
    model, draft, method, hw = cfg.model, cfg.draft, cfg.method, cfg.hardware
    hw.check_executor()
    attention = get_attention(hw.attention)
    dtype = parse_dtype(model.dtype, hw.device)
    draft_dtype = parse_dtype(draft.dtype or dtype, hw.device)
    separate_draft = method.uses_draft and not draft.is_self
    checkpoints = []  # (setting, folder) of every checkpoint the run reads
    if separate_draft:
        # reachable (downloaded if needed) before the target's weights load
        checkpoints.append((f"draft.name={draft.name}", resolve_model_dir(draft.name)))
    if model.name != tiny.NAME:
        checkpoints.insert(0, (f"model.name={model.name}", resolve_model_dir(model.name)))
    for setting, folder in checkpoints:  # the draft's files with the target's, before either loads
        _check_weight_files(setting, folder)
    # tensor parallelism: join the process group, take this rank's GPU, keep this rank's slice
    par, device = init_parallel(hw.tensor_parallel, hw.device, allreduce=KernelPolicy.allreduce_of(hw.kernels))
    target = shard_model(_load_target(model, dtype=dtype, device=device, attention=attention), par)
    draft_model = None  # replicated on every rank
    if method.uses_draft:
        draft_model = target if draft.is_self else load_model(draft.name, dtype=draft_dtype, device=device,
                                                              attention=attention)
    options = dataclasses.replace(options or EngineOptions(), max_context=model.max_context)
    return Engine(target, draft_model, method, cfg.sampling, hw, options)


def _check_weight_files(setting: str, folder) -> None:
    """A checkpoint's weight files present and whole, or one error that names the setting it came from."""
    from triforce.errors import CorruptCheckpointError, ModelNotFoundError
    from triforce.models.loading import checked_weight_files

    try:
        checked_weight_files(folder)
    except (CorruptCheckpointError, ModelNotFoundError) as e:
        raise type(e)(f"{setting}: {e}") from None


def _load_target(spec: ModelSpec, **kw):
    """The target model: the seeded tiny random model (`tiny-random`, no files) or a checkpoint."""
    from triforce.models import tiny
    from triforce.models.loading import load_model

    if spec.name == tiny.NAME:
        return tiny.build_tiny(spec.tiny, seed=spec.seed, rope_scaling=spec.rope_scaling, **kw)
    return load_model(spec.name, rope_scaling=spec.rope_scaling, **kw)
