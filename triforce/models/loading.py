"""Resolve a model name, read its config and checkpoint, and build the project's decoder.

transformers is used only for what it is good at and keeps stable: `AutoConfig`, tokenizers,
and the GGUF reader. Weights are read from safetensors (single or sharded with an index) or
PyTorch `.bin` shards, and assigned into a model built on the meta device, so no random
weights are ever materialised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from triforce.attention import AttentionFn, sdpa_attention
from triforce.config import DTYPE_NAMES
from triforce.errors import ConfigError, ModelNotFoundError
from triforce.models.checkpoint import check_weight_file, read_weight_file
from triforce.models.folders import LOCAL_ALIASES, hf_download, resolve_model_dir, weight_files  # noqa: F401
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer
from triforce.models.rope import RotaryEmbedding

DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}


def parse_dtype(dtype: str | torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """A dtype name; "auto" is bfloat16 on a GPU (decoding is memory-bound: half the bytes) and
    float32 on a CPU (where bfloat16 matrix products are slow and the reference is exact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


class _YarnFinetunedFlag(logging.Filter):
    """Yarn-Llama-2's config.json carries YaRN's `finetuned` flag (read by its own modeling code for
    dynamic scaling only; static YaRN, what transformers and triforce compute, has no use for it):
    transformers warns about it on every load, a line that would only puzzle a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Unrecognized keys in `rope_parameters`") and message.endswith("{'finetuned'}"))


_QUIET_YARN = _YarnFinetunedFlag()


def load_config(model_dir: Path) -> ModelConfig:
    from transformers import AutoConfig

    logging.getLogger("transformers.modeling_rope_utils").addFilter(_QUIET_YARN)  # once: the same filter object
    try:
        hf_config = AutoConfig.from_pretrained(model_dir)
    except ValueError as e:  # unknown model_type
        raise ConfigError(f"{model_dir}: {str(e).splitlines()[0]}; triforce runs Llama, Mistral, Qwen2 and "
                          "Qwen3 checkpoints") from None
    cfg = ModelConfig.from_hf(hf_config)
    extra = [i for i in generation_eos_ids(model_dir) if i not in cfg.eos_token_id]
    return dataclasses.replace(cfg, eos_token_id=cfg.eos_token_id + tuple(extra)) if extra else cfg


def generation_eos_ids(model_dir: Path) -> tuple[int, ...]:
    """End-of-sequence ids of generation_config.json, where many checkpoints keep the ones chat
    turns end with (Llama-3-8B-Instruct: config.json 128001, generation_config [128001, 128009])."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (ValueError, AttributeError):
        raise ConfigError(f"{path} is not a JSON object (an interrupted download?); download it again "
                          "or delete it") from None
    if eos is None:
        return ()
    return tuple(int(i) for i in eos) if isinstance(eos, list) else (int(eos),)




def checked_weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files, each present and whole as far as a cheap look tells (headers,
    sizes, a zip directory), none of them read: a broken last shard costs no minutes of reading, and
    the app checks the draft's files with the target's before either loads (assemble.py)."""
    files = weight_files(model_dir)
    if not files:
        raise ModelNotFoundError(f"no weights (*.safetensors or pytorch_model*.bin) in {model_dir}; "
                                 "download the checkpoint's weight files into that folder")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelNotFoundError(f"{model_dir} is missing weight shards {missing}; the download is "
                                 "incomplete: download the checkpoint again")
    for f in files:
        check_weight_file(f)
    return files


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in checked_weight_files(model_dir):
        state.update(read_weight_file(f))
    return state


# The model's fused projections and the checkpoint tensors they concatenate (along the output dim).
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def _split_name(name: str) -> tuple[str, str, str] | None:
    """'layers.3.mlp.gate_up_proj.weight' -> ('layers.3.', 'mlp.gate_up_proj', '.weight')."""
    for fused in FUSED:
        marker = f".{fused}."
        if marker in name:
            prefix, suffix = name.split(marker)
            return prefix + ".", fused, "." + suffix
    return None


def _parts(name: str) -> list[str] | None:
    """The checkpoint names a fused model parameter concatenates (None if not fused)."""
    split = _split_name(name)
    if split is None:
        return None
    prefix, fused, suffix = split
    return [prefix + part + suffix for part in FUSED[fused]]


def match_checkpoint(state: dict[str, torch.Tensor], model_names) -> tuple[dict, list[str], list[str]]:
    """(state in the model's layout, missing names, unexpected names). A checkpoint may hold the
    Hugging Face layout (q/k/v, gate/up apart: concatenated here, where the checkpoint lies, one
    new tensor each) or the model's own fused layout."""
    state, model_names = dict(state), set(model_names)
    allowed, missing = set(model_names), []
    for name in sorted(model_names - set(state)):
        parts = _parts(name)
        if parts is None:
            missing.append(name)
            continue
        allowed.update(parts)
        absent = [p for p in parts if p not in state]
        if absent:
            missing.extend(absent)
        else:
            state[name] = torch.cat([state.pop(p) for p in parts])
    unexpected = sorted(set(state) - allowed)
    return state, missing, unexpected


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], *, dtype: torch.dtype,
                device: torch.device | str, attention: AttentionFn = sdpa_attention) -> Transformer:
    """Assign checkpoint tensors into a meta-device model; never materialises random weights."""
    state = {k.removeprefix("model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if "rotary_emb" not in k}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Transformer(cfg, attention)
    model_names = set(model.state_dict())
    if cfg.tie_word_embeddings:
        model_names.discard("lm_head.weight")
    state, missing, unexpected = match_checkpoint(state, model_names)
    if missing or unexpected:
        raise ModelNotFoundError(
            f"checkpoint does not match the {cfg.family} layout: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary = RotaryEmbedding(cfg).to(device)  # non-persistent buffer: compute on the real device
    return model.eval().requires_grad_(False)


def with_rope_scaling(cfg: ModelConfig, rope_scaling: dict | None) -> ModelConfig:
    """Override a checkpoint's rope scaling, e.g. YaRN factor 4 to run SmolLM2 (8K) at 32K.

    The context grows to original * factor, where `original` defaults to the checkpoint's own
    max_position_embeddings."""
    if not rope_scaling:
        return cfg
    scaling = dict(rope_scaling)
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    if scaling["rope_type"] == "default":
        return dataclasses.replace(cfg, rope_scaling=None)
    original = scaling.setdefault("original_max_position_embeddings", cfg.max_position_embeddings)
    factor = scaling.get("factor", 1.0)
    return dataclasses.replace(cfg, rope_scaling=scaling, max_position_embeddings=int(original * factor))


def load_model(name_or_path: str | Path, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
               attention: AttentionFn = sdpa_attention, download: bool = True,
               rope_scaling: dict | None = None) -> Transformer:
    """The model of an alias, folder or hub id (a Path: a folder already resolved, taken as it is)."""
    model_dir = name_or_path if isinstance(name_or_path, Path) else resolve_model_dir(name_or_path, download=download)
    # cheap: validates the architecture before any weights are read
    cfg = with_rope_scaling(load_config(model_dir), rope_scaling)
    return build_model(cfg, read_state_dict(model_dir), dtype=parse_dtype(dtype, device), device=device,
                       attention=attention)
