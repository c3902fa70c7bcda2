"""The engine's parts from typed config sections (config.py): resolve and load the models, join
tensor parallelism, and the Engine's keyword arguments.

Everything that can fail without reading weights fails first: both model folders are resolved
(downloaded if needed) and both checkpoints' weight files checked before the target's weights load,
so an unreachable or broken draft or a bad dtype is reported in seconds, not after a 13 GB
checkpoint loaded.
"""

from __future__ import annotations

from typing import Any

from triforce.config import DraftSpec, HardwareConfig, MethodConfig, ModelSpec, SamplingParams
from triforce.errors import ConfigError


def _is_tiny(spec: ModelSpec) -> bool:
    from triforce.models import tiny

    return spec.name == tiny.NAME


def engine_kwargs(sections: dict[str, Any]) -> dict[str, Any]:
    """Engine(**engine_kwargs(sections)): the models loaded, the settings passed through."""
    from triforce.attention import get_attention
    from triforce.models.loading import load_model, parse_dtype, resolve_model_dir
    from triforce.parallel import init_parallel, shard_model

    model: ModelSpec = sections["model"]
    draft: DraftSpec = sections["draft"]
    method: MethodConfig = sections["method"]
    sampling: SamplingParams = sections["sampling"]
    hw: HardwareConfig = sections["hardware"]
    hw.check_executor()
    attention = get_attention(hw.attention)
    dtype = parse_dtype(model.dtype, hw.device)
    draft_dtype = parse_dtype(draft.dtype or dtype, hw.device)
    if method.uses_draft and not draft.name:
        raise ConfigError(f"method={method.name} needs a draft model: set draft=self or draft=<model>")
    separate_draft = method.uses_draft and not draft.is_self
    checkpoints = []  # (setting, folder) of every checkpoint the run reads
    if separate_draft:
        if _is_tiny(model):
            raise ConfigError(f"draft.name={draft.name!r} with the tiny random model: only draft=self is supported")
        # reachable (downloaded if needed) before the target's weights load
        checkpoints.append((f"draft.name={draft.name}", resolve_model_dir(draft.name)))
    if not _is_tiny(model):
        checkpoints.insert(0, (f"model.name={model.name}", resolve_model_dir(model.name)))
    for setting, folder in checkpoints:  # the draft's files with the target's, before either loads
        _check_weight_files(setting, folder)
    from triforce.kernels.policy import KernelPolicy

    # every kernel choice, resolved once (its all-reduce choice is needed to join the ranks)
    policy = KernelPolicy.resolve(hw.device, hw.kernels)
    # tensor parallelism: join the process group, take this rank's GPU, keep this rank's slice
    par, device = init_parallel(hw.tensor_parallel, hw.device, allreduce=policy.allreduce)
    if par.enabled:
        policy = KernelPolicy.resolve(device, hw.kernels)  # this rank's own GPU
    target = shard_model(_load_target(model, dtype=dtype, device=device, attention=attention), par)
    draft_model = None  # replicated on every rank
    if method.uses_draft:
        draft_model = target if draft.is_self else load_model(draft.name, dtype=draft_dtype, device=device,
                                                              attention=attention)
    return dict(target=target, draft=draft_model, method=method, sampling=sampling, max_context=model.max_context,
                prefill_chunk=hw.prefill_chunk, executor=hw.executor, offload=hw.offload,
                on_chip_layers=hw.on_chip_layers, kernels=policy)


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

    if _is_tiny(spec):
        return tiny.build_tiny(spec.tiny, seed=spec.seed, rope_scaling=spec.rope_scaling, **kw)
    return load_model(spec.name, rope_scaling=spec.rope_scaling, **kw)
