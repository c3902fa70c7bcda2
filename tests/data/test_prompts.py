"""Prompt construction: book text cut to `prefill` tokens; the LWM chat prompt is exactly `prefill` tokens."""

from __future__ import annotations

import pytest

from triforce.data.prompts import (BOOK_REQUEST, LWM_PREFIX, LWM_SUFFIX, Sample, book_prompt, chat_prompt,
                                   has_chat_template, leading_tokens, require_length, template_prompt)
from triforce.data.tokenizers import ByteTokenizer, load_text_tokenizer
from triforce.errors import ConfigError

TEXT = "It was the best of times, it was the worst of times. " * 200


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == "héllo"
    assert tok.encode("a", add_special_tokens=False) == [97]
    assert isinstance(load_text_tokenizer("bytes"), ByteTokenizer)


def test_book_prompt_is_the_first_prefill_tokens():
    tok = ByteTokenizer()
    ids = book_prompt(tok, TEXT, 100)
    assert ids == tok.encode(TEXT)[:100]


def test_leading_tokens_of_a_short_text_is_the_whole_text():
    tok = ByteTokenizer()
    assert leading_tokens(tok, "short", 100) == tok.encode("short")


def test_chat_prompt_is_exactly_prefill_tokens():
    tok = ByteTokenizer()
    ids = chat_prompt(tok, TEXT, 900)
    assert len(ids) == 900
    text = tok.decode(ids)
    assert text.startswith(LWM_PREFIX + "It was the best") and text.endswith(LWM_SUFFIX)
    assert "ASSISTANT: " in text and "[end of the book]" in text


def test_chat_prompt_with_the_real_tokenizer(smollm2_dir):
    tok = load_text_tokenizer("smollm2-135m")
    ids = chat_prompt(tok, TEXT, 512)
    assert len(ids) == 512
    assert tok.decode(ids).rstrip().endswith("ASSISTANT:")


def test_chat_prompt_needs_room_for_the_book():
    with pytest.raises(ConfigError, match="dataset.prefill=50 leaves no room"):
        chat_prompt(ByteTokenizer(), TEXT, 50)


def test_short_samples_are_rejected_unless_allowed():
    s = Sample("x", "X", [1, 2, 3])
    with pytest.raises(ConfigError, match="only 3 tokens, fewer than dataset.prefill=10"):
        require_length(s, 10, allow_short=False)
    assert require_length(s, 10, allow_short=True) is s


def test_the_models_own_chat_template_is_exactly_prefill_tokens(smollm2_dir):
    """A tokenizer with a chat template (SmolLM2's ChatML): one user turn around the book, the
    assistant's turn opened, the special tokens as the template writes them, nothing added."""
    tok = load_text_tokenizer("smollm2-135m")
    assert has_chat_template(tok) and not has_chat_template(ByteTokenizer())
    ids = template_prompt(tok, TEXT, 512)
    assert len(ids) == 512
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" + BOOK_REQUEST[0] in text
    assert text.endswith(BOOK_REQUEST[1] + "<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant: no stray BOS
    with pytest.raises(ConfigError, match="no room for the book"):
        template_prompt(tok, TEXT, 30)


def test_narrativeqa_uses_the_template_unless_told_lwm(smollm2_dir, monkeypatch):
    import triforce.data.narrativeqa as nq

    tok = load_text_tokenizer("smollm2-135m")
    doc = {"document": {"id": "d1", "text": "abc" + TEXT, "summary": {"title": "T"}}}
    monkeypatch.setattr(nq, "iter_records", lambda *a, **k: iter([doc]))
    cfg = dict(path="json", rows=None, num_samples=1, text_start=3, prefill=400)
    own = next(nq.narrativeqa_samples(cfg, tok)).prompt_ids
    lwm = next(nq.narrativeqa_samples(dict(cfg, chat_template="lwm"), tok)).prompt_ids
    assert own == template_prompt(tok, TEXT, 400) and lwm == chat_prompt(tok, TEXT, 400)
