"""Text tokenizers behind one small interface: `encode(text, add_special_tokens)` and `decode(ids)`.

Hugging Face tokenizers already have it; `ByteTokenizer` is the dependency-free fallback used by
the tiny random test model (UTF-8 bytes 0..255, then BOS and EOS). `with_model_bos` adds the BOS
token a Llama-family model was trained with where its tokenizer files leave it out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from triforce.config import ModelSpec

# The BOS tokens the Llama families were trained with at the start of every text: Llama 1/2's
# sentencepiece `<s>` and Llama 3's `<|begin_of_text|>`. Not every BOS a config.json names starts a
# text: SmolLM2's config names its chat-turn token `<|im_start|>` and the model was trained without
# one, so only these are added where a tokenizer leaves them out.
TEXT_STARTS = ("<s>", "<|begin_of_text|>")


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


def tokenizer_name(model: ModelSpec) -> str:
    """What a run tokenizes with: model.tokenizer, else the model's own (model.name)."""
    return model.tokenizer or model.name


def load_text_tokenizer(name: str, *, explicit: bool = True) -> Tokenizer:
    """`bytes` for the byte-level fallback, else the tokenizer of a model (alias, folder or HF id);
    `explicit`: `name` came from model.tokenizer (else from model.name), for the error messages."""
    if name == "bytes":
        return ByteTokenizer()
    from triforce.models.tokenizer import load_tokenizer

    return load_tokenizer(name, explicit=explicit)


class WithBos:
    """A tokenizer whose encodings with special tokens start with `bos_id` (added where the inner
    tokenizer leaves it out); everything else is the inner tokenizer's."""

    def __init__(self, inner: Any, bos_id: int) -> None:
        self.inner, self.bos_id = inner, bos_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(self.inner.encode(text, add_special_tokens=add_special_tokens))
        return [self.bos_id, *ids] if add_special_tokens and ids[:1] != [self.bos_id] else ids

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def missing_bos(tokenizer: Any, bos_id: int | None) -> str | None:
    """The model's BOS token (config.json's bos_token_id) when the tokenizer leaves it out of its
    encodings and it is one the Llama families start every text with (TEXT_STARTS); else None."""
    to_token = getattr(tokenizer, "convert_ids_to_tokens", None)
    if bos_id is None or to_token is None:
        return None
    if tokenizer.encode("a", add_special_tokens=True)[:1] == [bos_id]:
        return None
    token = to_token(bos_id)
    return token if token in TEXT_STARTS else None


def with_model_bos(tokenizer: Any, bos_id: int | None, where: str) -> tuple[Any, str | None]:
    """`tokenizer`, made to start every prompt with the model's BOS where its files leave it out (a
    Llama-2 `tokenizer.model` without its tokenizer_config.json, Llama 3.0's first tokenizer.json),
    and the warning that says so; `where`: the tokenizer's name, for the warning."""
    token = missing_bos(tokenizer, bos_id)
    if token is None:
        return tokenizer, None
    return WithBos(tokenizer, bos_id), (
        f"the tokenizer of {where} leaves out {token} (id {bos_id}), the BOS token the model's config.json names and "
        "its family was trained with at the start of every text: it is added to every prompt (a Llama-2 "
        "tokenizer.model without its tokenizer_config.json, or Llama 3.0's first tokenizer.json, loads this way)")
