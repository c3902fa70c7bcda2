"""Text tokenizers behind one small interface: `encode(text, add_special_tokens)` and `decode(ids)`.

Hugging Face tokenizers already have it; `ByteTokenizer` is the dependency-free fallback used by
the tiny random test model (UTF-8 bytes 0..255, then BOS and EOS).
"""

from __future__ import annotations

from typing import Protocol


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


def load_text_tokenizer(name: str) -> Tokenizer:
    """`bytes` for the byte-level fallback, else the tokenizer of a model (alias, folder or HF id)."""
    if name == "bytes":
        return ByteTokenizer()
    from triforce.models.loading import load_tokenizer

    return load_tokenizer(name)
