"""Shrunk copies of the Qwen2.5, Qwen3 and Mistral checkpoints (issue 27), as a new user downloads them.

As tests/paper_models.py does for the paper's checkpoints: each folder keeps its checkpoint's
config.json key for key (architectures, token ids, dtype, rope settings, the keys transformers
ignores such as Qwen2.5-1M's `dual_chunk_attention_config`, the version that wrote it) with only
the sizes shrunk, is written in the file layout the checkpoint ships, and holds the kind of
tokenizer it ships, trained here on Gutenberg text with the family's special tokens:

    Qwen2.5-7B-Instruct-1M   qwen2: q/k/v bias, rope_theta 1e7, 1,010,000 positions, 4 shards
    Qwen2.5-0.5B-Instruct    qwen2, tied embeddings, one model.safetensors: the 1M model's draft
    Qwen3-8B                 qwen3: q/k head norms, explicit head_dim, 5 shards
    Qwen3-0.6B               qwen3, tied, head_dim != hidden / heads, one file: Qwen3-8B's draft
    Mistral-Nemo-Instruct-2407  mistral, head_dim != hidden / heads, rope_theta 1e6, no window, 5
                             shards + Mistral's own consolidated.safetensors beside them
    Mistral-7B-Instruct-v0.1 mistral with a sliding window (4096, shrunk to 256), 2 safetensors
                             shards and the same 2 as `.bin` (+ both indexes), a sentencepiece tokenizer

The vocabularies shrink with the tokenizers and keep their shape: Qwen's special tokens follow
its regular ones (151,643 of them in the release: `<|endoftext|>` is 151643), Mistral's come first
(`<s>` 1, `</s>` 2), and config.json's ids move with them. The Qwen releases pad the embedding
table beyond the tokenizer (151,665 tokens; 151,936 rows in Qwen2.5-0.5B and Qwen3, 152,064 in
Qwen2.5-7B), and so do these copies, in proportion: a draft then has fewer rows than its target
(models.config.draft_vocabulary_problem, Transformer.output_rows). The Mistral checkpoints' vocab
sizes are their tokenizers' (131,072 tekken tokens; 32,000 sentencepiece tokens).

The hub is not reachable from the test machines, so the configs below are written from what is
known of those checkpoints; where a detail could not be checked, a comment says so.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from tests.paper_models import SP_VOCAB, gutenberg_lines, train_sentencepiece, write_configs, write_weights

# -- Qwen -------------------------------------------------------------------------------------

QWEN_REGULAR = 400  # the shrunk regular BPE tokens (151,643 in the release)
QWEN_FIRST_SPECIAL = 151643  # `<|endoftext|>` in the release
# Qwen2.5's added tokens in id order from 151643, and whether each is `special` (tokenizer_config's
# added_tokens_decoder): the tool and FIM tokens are added but not special
QWEN25_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
                ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
                ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
                ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
                ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]
# Qwen3 adds four more (151665..151668)
QWEN3_ADDED = QWEN25_ADDED + [("<tool_response>", False), ("</tool_response>", False), ("<think>", False),
                              ("</think>", False)]
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")

# Qwen2.5-7B-Instruct-1M. Checked against quoted copies of the raw file (not the hub itself):
# max_position_embeddings 1010000, rope_theta 1e7, sliding_window 32768 with use_sliding_window
# false, and the `dual_chunk_attention_config` its own vLLM uses beyond 256K (transformers and
# triforce ignore it: attention is plain full attention at every length). Not checked: the exact
# transformers_version (one copy says 4.47.1; the key may have come with a later revision).
QWEN25_7B_1M = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 1010000,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.47.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
    "dual_chunk_attention_config": {"chunk_size": 262144, "local_size": 8192,
                                    "original_max_position_embeddings": 262144},
}
# Qwen2.5-0.5B-Instruct: 24 layers of 896, 14 heads over 2 KV heads, tied embeddings, a 32K context.
# Not checked: transformers_version and sliding_window's value (32768 here; unused: use_sliding_window false).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# the Instruct models' generation_config.json: chat turns end with <|im_end|>, texts with
# <|endoftext|> (repetition_penalty: 1.05 for the 7B, 1.1 for the 0.5B; not checked for the 1M model)
QWEN25_GENERATION = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                     "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
                     "top_k": 20, "transformers_version": "4.37.0"}
QWEN25_05B_GENERATION = {**QWEN25_GENERATION, "repetition_penalty": 1.1}

# Qwen3-8B: head_dim 128 given explicitly (= 4096 / 32 here; not in the smaller sizes), q/k norms
# (in the modeling code, no config key), attention_bias false, 40,960 positions (YaRN only where a
# user adds it, as the model card describes).
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
# Qwen3-0.6B: 28 layers of 1024, 16 heads of 128 (!= 1024 / 16) over 8 KV heads, tied embeddings
QWEN3_06B = {**QWEN3_8B, "hidden_size": 1024, "intermediate_size": 3072, "max_window_layers": 28,
             "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
             "tie_word_embeddings": True}
QWEN3_GENERATION = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                    "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                    "transformers_version": "4.51.0"}
# the YaRN setting Qwen3's model card gives for contexts beyond 32K (added to config.json by the user)
QWEN3_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}

# -- Mistral ----------------------------------------------------------------------------------

# Mistral-Nemo's tekken tokenizer: 1,000 special tokens first, then 130,072 byte-level BPE tokens.
# The first ones are named (the order of those after [/INST] is not checked here), the rest are
# <SPECIAL_n>; shrunk to MISTRAL_SPECIAL of them.
MISTRAL_SPECIAL = 32
TEKKEN_NAMED = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "<pad>", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"]
TEKKEN_SPECIALS = TEKKEN_NAMED + [f"<SPECIAL_{i}>" for i in range(len(TEKKEN_NAMED), MISTRAL_SPECIAL)]
TEKKEN_REGULAR = 480
# tekken's split pattern (tiktoken-style); taken from what is known of tekken.json, not checked
TEKKEN_PATTERN = (r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
                  r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"""
                  r""" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Mistral-Nemo-Instruct-2407: 40 layers of 5120, 32 heads of 128 (!= 5120 / 32 = 160) over 8 KV
# heads, rope_theta 1e6, no sliding window (null), 1,024,000 positions in config.json (the model
# card speaks of a 128K context). Not checked: transformers_version.
MISTRAL_NEMO = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 1024000,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 40,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 131072,
}
MISTRAL_NEMO_GENERATION = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                           "transformers_version": "4.43.0.dev0"}
# Mistral's own format of the same weights (mistral-inference reads it with params.json); the hub
# repo ships it beside the transformers shards, and `hf download` of the repo fetches both
MISTRAL_NATIVE = {"embed_tokens": "tok_embeddings", "norm": "norm", "lm_head": "output",
                  "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
                  "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
                  "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                  "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
                  "post_attention_layernorm": "ffn_norm"}

# Mistral-7B-Instruct-v0.1: Llama-2-7B's width with GQA (8 KV heads), a 4096-token sliding window
# in every layer, 32,768 positions; the Llama-2 sentencepiece tokenizer's layout (32,000 tokens:
# <unk> 0, <s> 1, </s> 2; [INST] is plain text). The window is shrunk with the sizes (to 256) so
# that a test can pass it.
MISTRAL_7B_V01 = {
    "architectures": ["MistralForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.34.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
MISTRAL_V01_GENERATION = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                          "transformers_version": "4.34.0.dev0"}
SHRUNK_WINDOW = 256

# -- chat templates: each family's form, shortened (no tool calls) -----------------------------

QWEN25_CHAT = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == "
    "'system' and loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
QWEN3_CHAT = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is "
    "defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
MISTRAL_V01_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
    "assistant roles are supported!') }}{% endif %}{% endfor %}")
MISTRAL_NEMO_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST]' + "
    "message['content'] + '[/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}")


@dataclasses.dataclass(frozen=True)
class FamilyModel:
    repo: str  # the hub id this folder stands for
    hf_class: str  # transformers' class for the family (the parity reference)
    config: dict[str, Any]  # its config.json as shipped
    generation_config: dict[str, Any] | None
    sizes: dict[str, int]  # the shrunk sizes (config.json keys)
    shards: int  # safetensors files: 1 = one model.safetensors, else shards + index
    tokenizer: str  # "qwen2.5" | "qwen3" | "tekken" | "sentencepiece"
    late_position: int  # a far position for the parity check (within max_position_embeddings)
    also_bin: bool = False  # the same weights as `.bin` shards + index beside the safetensors
    consolidated: bool = False  # Mistral's consolidated.safetensors + params.json beside them

    @property
    def shrunk_config(self) -> dict[str, Any]:
        cfg = {**copy.deepcopy(self.config), **self.sizes}
        shift = _id_shift(self.tokenizer)
        for key in ("bos_token_id", "eos_token_id"):
            cfg[key] = _shifted(cfg[key], shift)
        return cfg

    @property
    def shrunk_generation_config(self) -> dict[str, Any] | None:
        if self.generation_config is None:
            return None
        gen, shift = copy.deepcopy(self.generation_config), _id_shift(self.tokenizer)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key in gen:
                gen[key] = _shifted(gen[key], shift)
        return gen

    @property
    def family(self) -> str:
        return self.config["model_type"]


def _id_shift(tokenizer: str) -> int:
    """How far the release's special ids move in the shrunk vocabulary (Qwen's follow the regular tokens)."""
    return QWEN_REGULAR - QWEN_FIRST_SPECIAL if tokenizer.startswith("qwen") else 0


def _shifted(ids, shift: int):
    if ids is None:
        return None
    return [i + shift for i in ids] if isinstance(ids, list) else ids + shift


def qwen_size(tokenizer: str) -> int:
    return QWEN_REGULAR + len(QWEN3_ADDED if tokenizer == "qwen3" else QWEN25_ADDED)


def qwen_id(token: str) -> int:
    """A Qwen special token's id in the shrunk vocabulary."""
    return QWEN_REGULAR + [t for t, _ in QWEN3_ADDED].index(token)


# The Qwen embedding tables are padded beyond the tokenizer (151,665 / 151,669 tokens) as released:
# 151,936 rows (a multiple of 128) in Qwen2.5-0.5B and Qwen3, 152,064 (of 256) in Qwen2.5-7B; here
# to 448 (a multiple of 64) and 512 (of 256).
QWEN_DRAFT_ROWS, QWEN25_7B_ROWS = 448, 512

FAMILY_MODELS: dict[str, FamilyModel] = {
    "qwen2.5-7b-instruct-1m": FamilyModel(
        "Qwen/Qwen2.5-7B-Instruct-1M", "Qwen2ForCausalLM", QWEN25_7B_1M, QWEN25_GENERATION,
        dict(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
             max_window_layers=2, vocab_size=QWEN25_7B_ROWS),
        shards=4, tokenizer="qwen2.5", late_position=1_000_000),
    "qwen2.5-0.5b-instruct": FamilyModel(
        "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2ForCausalLM", QWEN25_05B, QWEN25_05B_GENERATION,
        dict(hidden_size=48, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
             max_window_layers=2, vocab_size=QWEN_DRAFT_ROWS),
        shards=1, tokenizer="qwen2.5", late_position=32000),
    "qwen3-8b": FamilyModel(
        "Qwen/Qwen3-8B", "Qwen3ForCausalLM", QWEN3_8B, QWEN3_GENERATION,
        dict(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
             num_hidden_layers=2, max_window_layers=2, vocab_size=QWEN_DRAFT_ROWS),
        shards=5, tokenizer="qwen3", late_position=40000),
    "qwen3-0.6b": FamilyModel(
        "Qwen/Qwen3-0.6B", "Qwen3ForCausalLM", QWEN3_06B, QWEN3_GENERATION,
        dict(hidden_size=32, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             num_hidden_layers=2, max_window_layers=2, vocab_size=QWEN_DRAFT_ROWS),
        shards=1, tokenizer="qwen3", late_position=40000),
    "mistral-nemo-instruct-2407": FamilyModel(
        "mistralai/Mistral-Nemo-Instruct-2407", "MistralForCausalLM", MISTRAL_NEMO, MISTRAL_NEMO_GENERATION,
        dict(hidden_size=48, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
             num_hidden_layers=2, vocab_size=MISTRAL_SPECIAL + TEKKEN_REGULAR),
        shards=5, tokenizer="tekken", late_position=1_000_000, consolidated=True),
    "mistral-7b-instruct-v0.1": FamilyModel(
        "mistralai/Mistral-7B-Instruct-v0.1", "MistralForCausalLM", MISTRAL_7B_V01, MISTRAL_V01_GENERATION,
        dict(hidden_size=64, intermediate_size=224, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=2,
             sliding_window=SHRUNK_WINDOW, vocab_size=SP_VOCAB),
        shards=2, tokenizer="sentencepiece", late_position=0, also_bin=True),
}
# target -> its family's small draft (the same tokenizer)
FAMILY_DRAFTS = {"qwen2.5-7b-instruct-1m": "qwen2.5-0.5b-instruct", "qwen3-8b": "qwen3-0.6b"}


# -- tokenizers -----------------------------------------------------------------------------

def _added_decoder(tokens: list[tuple[str, bool]], first: int) -> dict[str, dict]:
    return {str(first + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": special} for i, (t, special) in enumerate(tokens)}


def _byte_level_bpe(text_lines: list[str], regular: int, pattern: str):
    """A byte-level BPE of `regular` tokens split as Qwen2Tokenizer / tekken split (NFC, the
    pattern isolated, then bytes without a regex of their own)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=regular, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text_lines, trainer)
    assert tok.get_vocab_size() == regular, tok.get_vocab_size()
    return tok


def write_qwen_tokenizer(folder: Path, text_lines: list[str], kind: str, *, model_max_length: int) -> None:
    """Qwen2.5's / Qwen3's tokenizer files: tokenizer.json (byte-level BPE, the added tokens after
    the regular ones, no BOS), vocab.json + merges.txt, tokenizer_config.json with the chat template."""
    from tokenizers import AddedToken, processors

    tok = _byte_level_bpe(text_lines, QWEN_REGULAR, QWEN_PATTERN)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = QWEN3_ADDED if kind == "qwen3" else QWEN25_ADDED
    for token, special in added:  # one at a time: ids in the release's order
        tok.add_tokens([AddedToken(token, normalized=False, special=special)])
    assert tok.get_vocab_size() == qwen_size(kind)
    assert tok.token_to_id("<|endoftext|>") == QWEN_REGULAR
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json, merges.txt (shipped beside tokenizer.json)
    config = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": _added_decoder(added, QWEN_REGULAR),
        "additional_special_tokens": [t for t, special in added if special and t != "<|endoftext|>"],
        "bos_token": None, "chat_template": QWEN3_CHAT if kind == "qwen3" else QWEN25_CHAT,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": model_max_length, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tekken_tokenizer(folder: Path, text_lines: list[str]) -> None:
    """Mistral-Nemo's tokenizer.json: the special tokens first, then a byte-level BPE; <s> prepended."""
    from tokenizers import AddedToken, Tokenizer, processors

    bpe = _byte_level_bpe(text_lines, TEKKEN_REGULAR, TEKKEN_PATTERN)
    spec = json.loads(bpe.to_str())
    vocab = {t: i + MISTRAL_SPECIAL for t, i in spec["model"]["vocab"].items()}
    vocab.update({t: i for i, t in enumerate(TEKKEN_SPECIALS)})
    spec["model"]["vocab"] = vocab
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in TEKKEN_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    assert tok.get_vocab_size() == MISTRAL_SPECIAL + TEKKEN_REGULAR and tok.token_to_id("[INST]") == 3
    tok.save(str(folder / "tokenizer.json"))
    config = {"add_bos_token": True, "add_eos_token": False,
              "added_tokens_decoder": _added_decoder([(t, True) for t in TEKKEN_SPECIALS], 0),
              "bos_token": "<s>", "chat_template": MISTRAL_NEMO_CHAT, "clean_up_tokenization_spaces": False,
              "eos_token": "</s>", "model_max_length": 1000000000000000019884624838656,
              "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "unk_token": "<unk>"}, indent=2))


def write_mistral_v01_tokenizer(folder: Path, sp_model: Path) -> None:
    """Mistral-7B-v0.1's tokenizer: Llama-2's kind (sentencepiece tokenizer.model, <s> prepended)
    and the tokenizer.json transformers converts it to, both shipped."""
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    config = {"add_bos_token": True, "add_eos_token": False,
              "added_tokens_decoder": _added_decoder([("<unk>", True), ("<s>", True), ("</s>", True)], 0),
              "additional_special_tokens": [], "bos_token": "<s>", "chat_template": MISTRAL_V01_CHAT,
              "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": True,
              "model_max_length": 1000000000000000019884624838656, "pad_token": None, "sp_model_kwargs": {},
              "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
              "use_default_system_prompt": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "unk_token": "<unk>"}, indent=2))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))


# -- weights ---------------------------------------------------------------------------------

def random_family_state(model: FamilyModel, config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """transformers' own model of the family for that config, O(1) random weights (biases and the
    q/k norms included: tests/conftest.randomize_), as its save_pretrained writes them (a tied
    lm_head left out)."""
    import transformers

    from tests.conftest import randomize_

    config_class = getattr(transformers, model.hf_class.replace("ForCausalLM", "Config"))
    torch.manual_seed(seed)
    hf = getattr(transformers, model.hf_class)(config_class.from_dict(config)).eval()
    randomize_(hf, seed)
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight")
    return state


def mistral_native(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under mistral-inference's names (consolidated.safetensors)."""
    out = {}
    for name, t in state.items():
        name = name.removeprefix("model.")
        for hf, native in MISTRAL_NATIVE.items():
            name = name.replace(hf + ".", native + ".")
        out[name] = t
    return out


def write_family_model(folder: Path, model: FamilyModel, *, seed: int, text_lines: list[str],
                       sp_model: Path | None = None) -> Path:
    config, dtype = write_configs(folder, model)
    state = {k: v.to(dtype) for k, v in random_family_state(model, config, seed).items()}
    write_weights(folder, state, shards=model.shards, fmt="safetensors", balance="tensors")  # 1: one model.safetensors, no index
    if model.also_bin:
        write_weights(folder, state, shards=model.shards, fmt="bin", balance="tensors")
    if model.consolidated:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in mistral_native(state).items()}, folder / "consolidated.safetensors")
        c = config
        params = {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"], "head_dim": c["head_dim"],
                  "hidden_dim": c["intermediate_size"], "n_heads": c["num_attention_heads"],
                  "n_kv_heads": c["num_key_value_heads"], "rope_theta": c["rope_theta"], "norm_eps": c["rms_norm_eps"],
                  "vocab_size": c["vocab_size"]}
        (folder / "params.json").write_text(json.dumps(params, indent=2))
    if model.tokenizer.startswith("qwen"):
        write_qwen_tokenizer(folder, text_lines, model.tokenizer,
                             model_max_length=1010000 if "1M" in model.repo else 131072)
    elif model.tokenizer == "tekken":
        write_tekken_tokenizer(folder, text_lines)
    else:
        write_mistral_v01_tokenizer(folder, sp_model)
    return folder


def build_family_models(root: Path, gutenberg_dir: Path) -> dict[str, Path]:
    lines = gutenberg_lines(gutenberg_dir, chars=200_000)
    sp_model = train_sentencepiece(lines, root)
    return {name: write_family_model(root / name, model, seed=100 + i, text_lines=lines, sp_model=sp_model)
            for i, (name, model) in enumerate(FAMILY_MODELS.items())}
