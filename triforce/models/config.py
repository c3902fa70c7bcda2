"""The decoder's hyper-parameters, read from a `transformers` config without using its modeling code.

The families that run (docs/DESIGN.md §3) are Llama decoders up to a few precise places, each a
field here:

    llama    q/k/v/o biases only where `attention_bias` says (none in the released checkpoints)
    mistral  Llama maths with an explicit head_dim (Nemo: 128 with hidden 5120); v0.1's 4096-token
             sliding window (`sliding_window`)
    qwen2    a bias on q, k and v (not o); tied embeddings in the small sizes; a sliding window
             only where `use_sliding_window` is set (it is not, in the released configs)
    qwen3    an RMSNorm over each head's queries and keys before rotary (`qk_norm`); an explicit
             head_dim; no projection bias

Everything else (mixture-of-experts, multi-latent attention, hybrid linear attention) is refused
before any weights load.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from triforce.errors import ConfigError

# model_type values the decoder runs (same tensor names; the differences are ModelConfig fields)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# a few families people try that are not plain decoders, and what sets them apart
OUTSIDE = {"mixtral": "mixture-of-experts", "qwen2_moe": "mixture-of-experts", "qwen3_moe": "mixture-of-experts",
           "deepseek_v2": "multi-latent attention", "deepseek_v3": "multi-latent attention",
           "qwen3_next": "hybrid linear attention", "gemma2": "interleaved sliding-window attention with soft-capping",
           "gemma3": "interleaved sliding-window attention"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # rope_type plus its parameters (factor, original_max_position_embeddings, ...); None = default rope
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # a bias on the q, k and v projections (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # a bias on the output projection (Llama's attention_bias only)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before rotary (Qwen3)
    # the attention window of a sliding-window model (Mistral v0.1): within it, sliding-window
    # attention is full attention, so the engine runs such a model exactly up to that many tokens
    sliding_window: int | None = None
    family: str = "llama"  # the checkpoint's model_type
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        rope_type = self.rope_type
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    @property
    def num_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def vocabulary_words(self) -> str:
        return f"{self.vocab_size} tokens ({self.family})"

    @property
    def exact_context(self) -> int:
        """The tokens a sequence may reach with the model's own attention: its context, or its
        sliding window where it has one (beyond the window the model would attend to fewer keys
        than the engine's caches hold)."""
        return self.context_for(None)

    def context_for(self, asked: int | None) -> int:
        """The positions a run may occupy: `asked` (model.max_context: a context the checkpoint's
        config does not state, e.g. with rope scaling), else the config's; a sliding window bounds
        either."""
        context = asked or self.max_position_embeddings
        return context if self.sliding_window is None else min(context, self.sliding_window)

    @classmethod
    def from_hf(cls, hf_config: Any) -> "ModelConfig":
        """Build from a `transformers.PretrainedConfig` (4.x `rope_scaling` or 5.x `rope_parameters`)."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in FAMILIES:
            archs = getattr(hf_config, "architectures", None) or [model_type]
            why = f" ({OUTSIDE[model_type]})" if model_type in OUTSIDE else ""
            raise ConfigError(
                f"architecture {archs[0]!r} (model_type={model_type!r}{why}) is not a decoder triforce runs; "
                f"it runs the {', '.join(FAMILIES)} families (LlamaForCausalLM, MistralForCausalLM, "
                "Qwen2ForCausalLM, Qwen3ForCausalLM)"
            )
        rope_theta, rope_scaling = _read_rope(hf_config)
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        eos = hf_config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            max_position_embeddings=hf_config.max_position_embeddings,
            rms_norm_eps=hf_config.rms_norm_eps,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            # Qwen2's q/k/v biases are in its modeling code, not its config
            qkv_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=_sliding_window(hf_config, model_type),
            family=model_type,
            bos_token_id=hf_config.bos_token_id,
            eos_token_id=eos_ids,
        )


# families whose sizes pad one tokenizer's embedding table to different row counts (Qwen2.5-0.5B:
# 151,936 rows; Qwen2.5-7B: 152,064; one tokenizer of 151,665 tokens). Not Llama: Llama-2's 32,000
# and Llama-3's 128,256 rows are two tokenizers, and fewer rows there means another vocabulary.
PADDED_FAMILIES = ("qwen2", "qwen3")


def draft_vocabulary_problem(target: ModelConfig, draft: ModelConfig) -> str | None:
    """Why `draft` cannot propose tokens for `target` (None: it can). A draft's distributions are
    compared with the target's token by token, so they share one tokenizer: the same vocabulary, or,
    in a family that pads its tokenizer's table differently by size (PADDED_FAMILIES), a draft of the
    target's family with fewer rows: it proposes none of the rest (Transformer.output_rows: their
    logits are -inf)."""
    if draft.vocab_size == target.vocab_size:
        return None
    if draft.family == target.family in PADDED_FAMILIES and draft.vocab_size < target.vocab_size:
        return None
    return (f"a vocabulary of {draft.vocabulary_words} against the target's {target.vocabulary_words}: a draft must "
            f"share the target's tokenizer (llama-68m drafts for the Llama-2 family, Qwen2.5-0.5B for Qwen2.5, "
            f"Qwen3-0.6B for Qwen3); use draft=self or a draft of the same family")


def _sliding_window(hf_config: Any, model_type: str) -> int | None:
    """The attention window where the model's attention slides (None: full attention everywhere).
    transformers 5 lists each layer's kind (`layer_types`); 4.x configs say it with
    `use_sliding_window` (Qwen) or a `sliding_window` that is set (Mistral; v0.2 and later: null)."""
    window = getattr(hf_config, "sliding_window", None)
    if not window:
        return None
    kinds = getattr(hf_config, "layer_types", None)
    if kinds is not None:
        return int(window) if "sliding_attention" in kinds else None
    if model_type in ("qwen2", "qwen3"):
        return int(window) if getattr(hf_config, "use_sliding_window", False) else None
    return int(window)


def _read_rope(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    """Return (rope_theta, scaling dict or None) from either config generation."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    legacy = dict(getattr(hf_config, "rope_scaling", None) or {})
    params = {**legacy, **params}
    theta = params.pop("rope_theta", None) or getattr(hf_config, "rope_theta", None) or 10000.0
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "default":
        return float(theta), None
    if rope_type in ("yarn", "llama3") and "original_max_position_embeddings" not in params:
        params["original_max_position_embeddings"] = hf_config.max_position_embeddings
    return float(theta), {"rope_type": rope_type, **params}
