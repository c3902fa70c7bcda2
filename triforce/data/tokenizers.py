"""Text tokenizers behind one small interface: `encode(text, add_special_tokens)` and `decode(ids)`.

Hugging Face tokenizers already have it; `ByteTokenizer` is the dependency-free fallback used by
the tiny random test model (UTF-8 bytes 0..255, then BOS and EOS).
"""

from __future__ import annotations

from typing import Mapping, Protocol


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    bos_token_id = 256
    eos_token_id = 257
    vocab_size = 258

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tokenizer_name(model: Mapping) -> str:
    """What a run tokenizes with: model.tokenizer, else the model's own (model.name)."""
    return model.get("tokenizer") or model["name"]


def load_text_tokenizer(name: str, *, explicit: bool = True) -> Tokenizer:
    """`bytes` for the byte-level fallback, else the tokenizer of a model (alias, folder or HF id);
    `explicit`: `name` came from model.tokenizer (else from model.name), for the error messages."""
    if name == "bytes":
        return ByteTokenizer()
    from triforce.models.tokenizer import load_tokenizer

    return load_tokenizer(name, explicit=explicit)
