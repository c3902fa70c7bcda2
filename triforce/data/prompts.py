"""Prompt construction shared by the datasets: cut text to a token budget, wrap in chat templates."""

from __future__ import annotations

import dataclasses

from triforce.data.tokenizers import Tokenizer
from triforce.errors import ConfigError

# The LWM-Text-Chat prompt the paper uses for NarrativeQA (docs/DESIGN.md §2).
LWM_PREFIX = ("You are a helpful assistant. USER: Please read a part of the book below, and then give me "
              "the summary.\n[start of the book]\n")
LWM_SUFFIX = ("\n[end of the book]\n\nNow you have read it. Please summarize it for me. First, tell me the "
              "title and the author, and then tell the story in 400 words.\n\nASSISTANT: ")

# Characters per token rarely exceed this; texts are cut before tokenising so a 1 MB book
# costs what a `prefill`-token prompt costs.
_CHARS_PER_TOKEN = 8


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str
    title: str
    prompt_ids: list[int]


def leading_tokens(tokenizer: Tokenizer, text: str, n: int, *, add_special_tokens: bool = True) -> list[int]:
    """The first n tokens of `text` (fewer only when the whole text is shorter)."""
    chars = n * _CHARS_PER_TOKEN
    ids = tokenizer.encode(text[:chars], add_special_tokens=add_special_tokens)
    if len(ids) < n and chars < len(text):
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return list(ids[:n])


def book_prompt(tokenizer: Tokenizer, text: str, prefill: int) -> list[int]:
    """PG-19 style: the book text cut to `prefill` tokens."""
    return leading_tokens(tokenizer, text, prefill)


def chat_prompt(tokenizer: Tokenizer, book: str, prefill: int, prefix: str = LWM_PREFIX,
                suffix: str = LWM_SUFFIX) -> list[int]:
    """`prefix + book + suffix` with the book cut so that the whole prompt is `prefill` tokens."""
    return _framed(tokenizer, tokenizer.encode(prefix, add_special_tokens=True),
                   tokenizer.encode(suffix, add_special_tokens=False), book, prefill)


def _framed(tokenizer: Tokenizer, head: list[int], tail: list[int], book: str, prefill: int) -> list[int]:
    """`head + book + tail`, the book cut so that the whole prompt is `prefill` tokens."""
    room = prefill - len(head) - len(tail)
    if room <= 0:
        raise ConfigError(f"dataset.prefill={prefill} leaves no room for the book: the chat template "
                          f"alone takes {len(head) + len(tail)} tokens; use a larger prefill")
    return head + leading_tokens(tokenizer, book, room, add_special_tokens=False) + tail


# The same request for a model with a chat template of its own (Qwen2.5/Qwen3-Instruct, Mistral-Instruct,
# Llama-3.1-Instruct): one user turn, rendered by the tokenizer's template, the book inside it.
BOOK_REQUEST = ("Please read a part of the book below, and then give me the summary.\n[start of the book]\n",
                "\n[end of the book]\n\nNow you have read it. Please summarize it for me. First, tell me the "
                "title and the author, and then tell the story in 400 words.")
_BOOK = "\x00BOOK\x00"  # where the book goes in the rendered template


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def template_prompt(tokenizer, book: str, prefill: int, request: tuple[str, str] = BOOK_REQUEST) -> list[int]:
    """The model's own chat template around one user turn `request[0] + book + request[1]`, the
    assistant's turn opened (add_generation_prompt), with the book cut so that the whole prompt is
    `prefill` tokens. The template is rendered once with a marker where the book goes; the text
    before and after it is tokenised as it stands (its special tokens included, nothing added)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": request[0] + _BOOK + request[1]}],
                                         tokenize=False, add_generation_prompt=True)
    if text.count(_BOOK) != 1:
        raise ConfigError("the tokenizer's chat template does not keep the user's text whole; "
                          "set dataset.chat_template=lwm")
    before, after = text.split(_BOOK)
    return _framed(tokenizer, tokenizer.encode(before, add_special_tokens=False),
                   tokenizer.encode(after, add_special_tokens=False), book, prefill)


def require_length(sample: Sample, prefill: int, *, allow_short: bool) -> Sample:
    """Reject prompts shorter than asked unless the dataset config allows it."""
    if len(sample.prompt_ids) < prefill and not allow_short:
        raise ConfigError(f"sample {sample.id!r} ({sample.title}) has only {len(sample.prompt_ids)} tokens, "
                          f"fewer than dataset.prefill={prefill}; lower dataset.prefill or set "
                          "dataset.allow_short=true")
    return sample
