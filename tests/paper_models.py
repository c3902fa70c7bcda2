"""Shrunk copies of the paper's checkpoint folders, as a new user downloads them.

Each folder keeps its checkpoint's config.json key for key (architectures, token ids, dtype,
rope settings, the version that wrote it, ...) with only the sizes shrunk, is written in the
file layout that checkpoint ships (`.bin` shards + index, safetensors shards + index, one file),
and holds the kind of tokenizer it ships: a sentencepiece `tokenizer.model` for the Llama-2
family (trained here on Gutenberg text) and a `tokenizer.json` for Llama-3.1 (a byte-level BPE
trained here). The vocabulary shrinks with the tokenizer: config.json's vocab_size is the
tokenizer's size, and Llama-3's special-token ids keep their place after the regular tokens.

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

SP_VOCAB = 1000  # the shrunk Llama-2 vocabulary (32000 in the real checkpoints)
BPE_REGULAR = 512  # the shrunk Llama-3 regular tokens (128000); its 256 special tokens follow
LLAMA3_SPECIAL = 256

# Llama-2's sentencepiece model: BPE, byte fallback, digits split, no normalisation.
SP_OPTIONS = dict(model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                  remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, add_dummy_prefix=True,
                  unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2)


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


# Llama-2-7b-hf's tokenizer_config.json (transformers 4.32 era), which the Yarn models copy.
LLAMA2_TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": _added("<s>"), "clean_up_tokenization_spaces": False,
    "eos_token": _added("</s>"), "legacy": False, "model_max_length": 1000000000000000019884624838656,
    "pad_token": None, "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    "unk_token": _added("<unk>")}
# an older tokenizer_config (no `legacy` key), as checkpoints converted with transformers 4.29/4.30 have
OLD_LLAMA_TOKENIZER_CONFIG = {k: v for k, v in LLAMA2_TOKENIZER_CONFIG.items() if k not in ("legacy", "padding_side")}
LLAMA2_SPECIAL_TOKENS_MAP = {"bos_token": _added("<s>"), "eos_token": _added("</s>"), "unk_token": _added("<unk>")}

YARN_7B = {
    "_name_or_path": "NousResearch/Llama-2-7b-hf",
    "architectures": ["LlamaForCausalLM"],
    # the checkpoint ships its own modeling code (YaRN from before transformers had it); the
    # files are not fetched (allow_patterns) and transformers' own Llama with YaRN is used
    "auto_map": {"AutoConfig": "configuration_llama.LlamaConfig",
                 "AutoModelForCausalLM": "modeling_llama_together_yarn.LlamaForCausalLM"},
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "finetuned": True, "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.32.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
YARN_13B = {**YARN_7B, "_name_or_path": "NousResearch/Llama-2-13b-hf", "hidden_size": 5120,
            "intermediate_size": 13824, "num_attention_heads": 40, "num_hidden_layers": 40, "num_key_value_heads": 40}
LLAMA2_GENERATION = {"bos_token_id": 1, "do_sample": True, "eos_token_id": 2, "max_length": 4096, "pad_token_id": 0,
                     "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.32.0.dev0"}

# LWM-Text(-Chat)-128K: Llama-2-7B's shape, no rope scaling, rope_theta raised to 1e7 for 128K
# (the LWM paper's schedule). Converted from JAX with an older transformers: no
# num_key_value_heads / pretraining_tp keys, `max_sequence_length` beside max_position_embeddings.
# Not checked against the hub copy: the exact version string and torch_dtype.
LWM_128K = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 131072,
    "max_sequence_length": 131072,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.29.2",
    "use_cache": True,
    "vocab_size": 32000,
}
LWM_GENERATION = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                  "transformers_version": "4.29.2"}

# JackFram/llama-68m: 2 layers, 768 hidden, 12 heads, trained in float32 with its own special ids
# (bos 0, pad 1 in config.json; the tokenizer is Llama's, bos 1): kept as they are.
LLAMA_68M = {
    "_name_or_path": "JackFram/llama-68m",
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 12,
    "num_hidden_layers": 2,
    "pad_token_id": 1,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.30.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
LLAMA_68M_GENERATION = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
                        "transformers_version": "4.30.0.dev0"}

LLAMA31_8B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.3",
    "use_cache": True,
    "vocab_size": 128256,
}
LLAMA31_GENERATION = {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
                      "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.42.3"}

# Llama 3.1's 256 special tokens, in their order after the regular vocabulary.
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
assert len(LLAMA3_SPECIALS) == LLAMA3_SPECIAL


@dataclasses.dataclass(frozen=True)
class PaperModel:
    repo: str  # the hub id this folder stands for
    config: dict[str, Any]  # its config.json as shipped
    generation_config: dict[str, Any] | None
    sizes: dict[str, int]  # the shrunk sizes (config.json keys)
    shards: int  # weight files: 1 = a single file, else shards + index
    fmt: str  # "bin" | "safetensors"
    tokenizer: str  # "sentencepiece" | "bpe"
    first_position: int  # where the parity check starts: beyond the original context where it has one
    legacy_rotary: bool = False  # the .bin holds rotary_emb.inv_freq buffers (transformers < 4.35 saved them)

    @property
    def shrunk_config(self) -> dict[str, Any]:
        cfg = {**copy.deepcopy(self.config), **self.sizes}
        if self.tokenizer == "bpe":  # special ids move with the vocabulary: regular tokens first
            shift = BPE_REGULAR - (self.config["vocab_size"] - LLAMA3_SPECIAL)
            cfg["bos_token_id"] += shift
            cfg["eos_token_id"] = [i + shift for i in cfg["eos_token_id"]]
        return cfg

    @property
    def shrunk_generation_config(self) -> dict[str, Any] | None:
        if self.generation_config is None:
            return None
        gen, cfg = copy.deepcopy(self.generation_config), self.shrunk_config
        gen.update({k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in gen})
        return gen


LLAMA2_SIZES = dict(hidden_size=64, intermediate_size=172, num_attention_heads=4, num_hidden_layers=2,
                    vocab_size=SP_VOCAB)

PAPER_MODELS: dict[str, PaperModel] = {
    "yarn-llama-2-7b-128k": PaperModel(
        "NousResearch/Yarn-Llama-2-7b-128k", YARN_7B, LLAMA2_GENERATION, {**LLAMA2_SIZES, "num_key_value_heads": 4},
        shards=2, fmt="bin", tokenizer="sentencepiece", first_position=60000, legacy_rotary=True),
    "yarn-llama-2-13b-128k": PaperModel(
        "NousResearch/Yarn-Llama-2-13b-128k", YARN_13B, LLAMA2_GENERATION,
        dict(hidden_size=80, intermediate_size=216, num_attention_heads=5, num_hidden_layers=3, num_key_value_heads=5,
             vocab_size=SP_VOCAB),
        shards=3, fmt="bin", tokenizer="sentencepiece", first_position=60000, legacy_rotary=True),
    # LWM: `.bin` shards with an index; two shards assumed (a float16 7B under transformers'
    # 10 GB default shard size): not checked against the hub copy
    "lwm-text-128k": PaperModel(
        "LargeWorldModel/LWM-Text-128K", LWM_128K, LWM_GENERATION, LLAMA2_SIZES,
        shards=2, fmt="bin", tokenizer="sentencepiece", first_position=100000, legacy_rotary=True),
    "lwm-text-chat-128k": PaperModel(
        "LargeWorldModel/LWM-Text-Chat-128K", LWM_128K, LWM_GENERATION, LLAMA2_SIZES,
        shards=2, fmt="bin", tokenizer="sentencepiece", first_position=100000, legacy_rotary=True),
    "llama-68m": PaperModel(
        "JackFram/llama-68m", LLAMA_68M, LLAMA_68M_GENERATION,
        dict(hidden_size=48, intermediate_size=192, num_attention_heads=3, num_hidden_layers=2, vocab_size=SP_VOCAB),
        shards=1, fmt="bin", tokenizer="sentencepiece", first_position=1900, legacy_rotary=True),
    "llama-3.1-8b-instruct": PaperModel(
        "meta-llama/Llama-3.1-8B-Instruct", LLAMA31_8B_INSTRUCT, LLAMA31_GENERATION,
        dict(hidden_size=128, intermediate_size=448, num_attention_heads=8, num_hidden_layers=2, num_key_value_heads=2,
             vocab_size=BPE_REGULAR + LLAMA3_SPECIAL),
        shards=4, fmt="safetensors", tokenizer="bpe", first_position=60000),
}
LLAMA2_FAMILY = [name for name, m in PAPER_MODELS.items() if m.tokenizer == "sentencepiece"]


# -- tokenizers -----------------------------------------------------------------------------

def train_sentencepiece(text_lines: list[str], out: Path) -> Path:
    import sentencepiece as spm

    prefix = out / "llama2-shrunk"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text_lines), model_prefix=str(prefix),
                                   vocab_size=SP_VOCAB, **SP_OPTIONS)
    return prefix.with_suffix(".model")


def write_sentencepiece_tokenizer(folder: Path, model_file: Path, *, old_config: bool) -> None:
    (folder / "tokenizer.model").write_bytes(model_file.read_bytes())
    config = OLD_LLAMA_TOKENIZER_CONFIG if old_config else LLAMA2_TOKENIZER_CONFIG
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(LLAMA2_SPECIAL_TOKENS_MAP, indent=2))


def write_llama3_tokenizer(folder: Path, text_lines: list[str]) -> None:
    """A byte-level BPE as Llama 3's (regular tokens, then the 256 special ones; BOS prepended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_REGULAR, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text_lines, trainer)
    assert tok.get_vocab_size() == BPE_REGULAR, tok.get_vocab_size()
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, BPE_REGULAR)])
    tok.save(str(folder / "tokenizer.json"))
    added = {str(BPE_REGULAR + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": True} for i, t in enumerate(LLAMA3_SPECIALS)}
    # as Llama-3.1-8B-Instruct's, without its (long) chat_template
    config = {"added_tokens_decoder": added, "bos_token": bos, "clean_up_tokenization_spaces": True,
              "eos_token": "<|eot_id|>", "model_input_names": ["input_ids", "attention_mask"],
              "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": bos, "eos_token": "<|eot_id|>"}))


def as_llama30_tokenizer(folder: Path) -> None:
    """Turn a write_llama3_tokenizer folder into what Llama 3.0's tokenizer.json was when first
    released: a ByteLevel post-processor, no template adding <|begin_of_text|> (a later revision of
    the file added it; not checked against the hub from here)."""
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    path.write_text(json.dumps(spec))


# -- weights ---------------------------------------------------------------------------------

def random_hf_state(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """transformers' LlamaForCausalLM state dict for that config, O(1) random weights (tests/conftest)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import randomize_

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config)).eval()
    randomize_(model, seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _inv_freq(config: dict[str, Any]) -> torch.Tensor:
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    theta = config.get("rope_theta", 10000.0)
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def write_weights(folder: Path, state: dict[str, torch.Tensor], *, shards: int, fmt: str,
                  balance: str = "bytes") -> list[Path]:
    """`state` in `shards` files named as transformers names them (+ the index when > 1), split in
    order into parts of about equal bytes (`balance="tensors"`: about as many tensors in each, where
    at tiny sizes the embedding table alone would outweigh a byte-balanced split)."""
    names = list(state)
    total = sum(t.numel() * t.element_size() for t in state.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    done = 0
    for k, name in enumerate(names):
        part = min(shards - 1, (done * shards // total) if balance == "bytes" else (k * shards // len(names)))
        groups[part].append(name)
        done += state[name].numel() * state[name].element_size()
    assert all(groups), "a shard would be empty"
    stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    files, weight_map = [], {}
    for i, group in enumerate(groups, 1):
        fname = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k].contiguous() for k in group}
        if fmt == "bin":
            torch.save(part, folder / fname)
        else:
            from safetensors.torch import save_file

            save_file(part, folder / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in group})
        files.append(folder / fname)
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=2))
    return files


def write_configs(folder: Path, model) -> tuple[dict[str, Any], torch.dtype]:
    """A shrunk checkpoint's config.json and generation_config.json (where it ships one); its config
    and the dtype its weights are written in (`model`: a PaperModel or tests/family_models.FamilyModel)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = model.shrunk_config
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if model.shrunk_generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(model.shrunk_generation_config, indent=2))
    return config, getattr(torch, config["torch_dtype"])


def write_paper_model(folder: Path, model: PaperModel, *, seed: int, sentencepiece_model: Path | None,
                      text_lines: list[str]) -> Path:
    config, dtype = write_configs(folder, model)
    state = {k: v.to(dtype) for k, v in random_hf_state(config, seed).items()}
    if model.legacy_rotary:
        for layer in range(config["num_hidden_layers"]):
            state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = _inv_freq(config)
    write_weights(folder, state, shards=model.shards, fmt=model.fmt)
    if model.tokenizer == "sentencepiece":
        write_sentencepiece_tokenizer(folder, sentencepiece_model, old_config=config["transformers_version"] < "4.31")
    else:
        write_llama3_tokenizer(folder, text_lines)
    return folder


def gutenberg_lines(gutenberg_dir: Path, chars: int = 400_000) -> list[str]:
    from triforce.data.gutenberg import load_books

    text = "".join(book.text for book in load_books(gutenberg_dir, names=["hamlet_gut", "macbeth_gut"]))
    return [line for line in text[:chars].splitlines() if line.strip()]


def build_paper_models(root: Path, gutenberg_dir: Path) -> dict[str, Path]:
    lines = gutenberg_lines(gutenberg_dir)
    spm_model = train_sentencepiece(lines, root)
    return {name: write_paper_model(root / name, model, seed=i, sentencepiece_model=spm_model, text_lines=lines)
            for i, (name, model) in enumerate(PAPER_MODELS.items())}
